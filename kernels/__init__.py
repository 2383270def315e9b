"""Triton kernels of wrn_fast (installed as ``wrn_fast.kernels``).

One fused op per file: kernel(s) + launcher + input checks.
  bn_act_conv      implicit-GEMM convolution with a BN-act-dropout prologue and a
                   stats / residual epilogue (forward, dgrad, wgrad): the public names of
                   conv_fwd / conv_dgrad / conv_wgrad (one kernel each), conv_common
                   (shared jit helpers, checks) and conv_config (tiles, routing)
  bn_act_dropout   elementwise y = dropout(act(x*scale+shift)) forward/backward
  _common          activation / dropout-mask helpers shared by the kernels

Importing this package imports triton; set TRITON_INTERPRET=1 before that to run
the kernels on CPU tensors.
"""
