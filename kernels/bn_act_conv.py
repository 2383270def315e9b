"""BN-act-dropout -> conv2d (+ bias + residual, + partial BN stats) as Triton implicit GEMMs.

Three kernels share one prologue (``a = dropout(act(x * scale[c] + shift[c]))``,
then zero padding) so the normalised activation ``a`` never exists in memory:

  forward   y[n,co,oh,ow] = sum_{c,kh,kw} a[n,c,oh*s-pt+kh,ow*s-pl+kw] * w[co,c,kh,kw]
                            (+ bias[co]) (+ residual[n,co,oh,ow])
            GEMM  M = N*Ho*Wo, N = Cout, K = kh*kw*Cin; epilogue emits per-(row
            chunk, channel) partial mean / M2 / count of the stored y (Chan merge).
  dgrad     g_a[n,c,ih,iw] = sum_{co,kh,kw} gy[n,co,oh,ow] * w[co,c,kh,kw], where
            oh = (ih + pt - kh) / s when divisible and in range (gather form);
            GEMM  M = N*H*W, N = Cin, K = kh*kw*Cout.  Epilogue (with BN):
            g_z = g_a * keep/(1-p) * act'(z), z = x*scale+shift recomputed,
            grad_x = g_z*scale, per-channel partial sums of g_z and g_z*x.
  wgrad     gw[co,c,kh,kw] = sum_{n,oh,ow} gy[n,co,oh,ow] * a[n,c,ih,iw], ``a``
            recomputed in the prologue; GEMM M = Cout, N = Cin (one tap per
            program column), K = N*Ho*Wo with split-K (partials summed in fp32).

Tensors are logical NCHW with arbitrary strides (channels_last is the fast
layout). The dropout mask is a function of (seed, logical NCHW index of the input
element) only (``kernels._common``); it is evaluated once into a bitmask
(``dropout_bits``: 1 bit per element, one int32 word per pixel and 32 channels),
which the three kernels test instead of running Philox per element in their K
loops. ``p`` reaches the kernels as an fp32 scalar: the mask is ``rand >= fp32(p)``
and kept values are scaled by ``1/(1-fp32(p))``.

Accumulation is fp32 (fp64 for fp64 inputs). fp32 inputs use TF32 tensor cores when
``allow_tf32`` (PyTorch's convention for convolutions), else exact ("ieee")
products; fp16/bf16 go to tl.dot natively.

Tile configs: with WRN_FAST_AUTOTUNE=0 (or in the interpreter) each launch uses
``default_config`` (a per-shape heuristic, no timing); otherwise the autotuner picks
from the kind's list, keyed on the shape and every compile-time variant.

Files (this module gathers their public names):
  conv_fwd.py / conv_dgrad.py / conv_wgrad.py   one kernel each: kernel + launcher
  conv_common.py   shared jit helpers (prologue, dot), argument checks, dropout bitmask
  conv_config.py   tile configs, autotune key, ``default_config``, ``conv_route``, and
                   the module flags (INTERPRET, AUTOTUNE, _GPU_TILES): patch them there
"""
from .contract import out_hw  # noqa: F401 - re-exported for callers of this module
from ._common import launch_device  # noqa: F401
from .conv_common import _check_common, dropout_bits, max_batch, stats_rows  # noqa: F401
from .conv_config import (ALL_CONFIGS, ROUTES, STATS_M, TWO_PASS_MAX_COUT, _cfg, _dot_modes,  # noqa: F401
                          _INTERPRET_CONFIGS, _WIDE_16, conv_route, default_config, two_pass_layer)
from .conv_dgrad import _dgrad_kernel, bn_act_conv_dgrad  # noqa: F401
from .conv_fwd import _fwd_kernel, bn_act_conv_fwd  # noqa: F401
from .conv_wgrad import _wgrad_kernel, bn_act_conv_wgrad  # noqa: F401

__all__ = ["ALL_CONFIGS", "ROUTES", "STATS_M", "TWO_PASS_MAX_COUT", "bn_act_conv_dgrad", "bn_act_conv_fwd",
           "bn_act_conv_wgrad", "conv_route", "default_config", "dropout_bits", "max_batch", "stats_rows",
           "two_pass_layer"]
