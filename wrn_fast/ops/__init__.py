"""Op wiring: every fused op as a Python function with autograd and a fake kernel.

This package is the one place where ops get their autograd / torch.library
registration; the model only calls these functions.

  ext.py      C++/CUDA extension ops (torch.ops.wrn_fast.*): wrappers, fake
              kernels, autograd registrations
  bn_act.py   bn_act_dropout (torch.ops.wrn_fast.bn_act_dropout, schema in C++):
              its wrapper, fake kernels, autograd, and its CUDA kernels (Triton);
              its CPU kernels are C++
  conv.py     bn_act_conv: the Triton implicit-GEMM convolution with BN-act-dropout
              prologue and residual/stats epilogue (custom op + autograd)
  sync_bn.py  all_gather_stats (custom op)

Conventions shared by every op (the contract)
---------------------------------------------
Tensors are logical NCHW ``[N, C, H, W]``; memory may be contiguous NCHW,
channels_last, or any strided view (kernels take strides). Outputs of the fused
convolution are channels_last when the input is channels_last, else contiguous.

Per-channel BN statistics are ``mean`` and biased ``var`` of shape ``[C]``; they, the
convolutions' partial statistics, ``scale`` / ``shift`` and the BN backward coefficients
are fp32, or fp64 for fp64 x (``stats_dtype``): one rule that the C++ and Triton kernels
check (an fp64 x with fp32 scale is an error, not a silent loss of precision).
A BatchNorm in training mode is split into differentiable pieces:

    mean, var      = stats of its input x      (emitted by x's producer, or channel_stats)
    scale, shift   = bn_finalize(mean, var, weight, bias, eps)
                     scale = weight * rsqrt(var + eps);  shift = bias - mean * scale
    z              = x * scale + shift          (applied in the consumer's prologue)

so the gradient w.r.t. x is the sum of the consumer's direct term
``grad_z * scale`` and the statistics term that the *producer* of x adds when it
receives grad_mean / grad_var:  ``grad_x += grad_mean / n + 2 * (x - mean) * grad_var / n``.
Eval mode uses running_mean / running_var in bn_finalize (no stats).
Two ops compose these pieces as one autograd node with a C++ backward, to keep
Python out of the per-BN chain rule: ``bn_finalize_partials`` (producer partials ->
merged stats -> scale, shift; Triton backend) and ``batch_norm_act`` (stats ->
finalize -> act(x*scale+shift) (+dropout); CPU backend).

Activation ``act`` is one of 'identity', 'relu', 'leaky_relu' (with
``negative_slope``), 'silu'. Activation derivatives follow PyTorch's backward
(relu'(0) = 0, leaky_relu'(0) = slope).

Dropout: ``seed`` is an int64 tensor of shape [1] on the tensor's device, values
in [0, 2**31), drawn from torch's generator (``new_dropout_seed``). The keep mask
is a function of (seed, logical NCHW index) only:
``keep = philox_uniform(seed, ((n*C + c)*H + h)*W + w) >= p`` with the
Philox4x32-10 of ``tl.rand``; kept values are scaled by 1/(1-p). p = 0 means no
dropout and no random numbers drawn.
"""
import torch

# The contract's plain facts live in the kernels' leaf module (the bottom layer, so
# that kernels/ never imports from above it); re-exported here under their old names.
from wrn_fast.kernels.contract import (  # noqa: F401
    ACT_CODES, IndexRangeError, check_activation, conv_out_shape, dropout_bits_shape, norm_padding, out_hw,
    output_memory_format, stats_dtype)


def empty_like_output(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of x's shape, dtype and device laid out as the ops lay out
    outputs of x's shape: x's own strides when x is dense (contiguous NCHW or
    channels-last), else ``output_memory_format(x)`` (what the C++ kernels' dense copy
    of x, csrc/common.h dense_channel_tensor, and the Triton launchers give)."""
    if x.is_contiguous() or (x.dim() >= 3 and x.movedim(1, -1).is_contiguous()):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def new_dropout_seed(device) -> torch.Tensor:
    """A fresh dropout seed: int64 tensor [1] on ``device``, from torch's generator.

    Drawn on the device itself (no host sync; a captured CUDA graph draws a new one
    on every replay).
    """
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)
