"""bn_act_dropout: y = dropout(act(x * scale[c] + shift[c])), one op with one kernel per device.

  wrn_fast::bn_act_dropout           (x, scale, shift, act, negative_slope, dropout_p, seed?) -> y
  wrn_fast::bn_act_dropout_backward  (grad_y, x, scale, shift, act, negative_slope, dropout_p, seed?)
                                     -> (grad_x, grad_scale, grad_shift)

The schemas are C++ (csrc/schemas.cpp), so the op exists only with the extension
``wrn_fast._C``. Its kernels:

  CPU   C++ (csrc/bn_act_dropout.cpp), registered by the extension;
  CUDA  Triton (kernels/bn_act_dropout.py), registered here with
        ``torch.library.register_kernel`` when triton is installed.

This module is the op's one home on the Python side: the wrappers, the fake kernels
(one for every device: the kernels allocate outputs alike, ``empty_like_output``), the
autograd formula and the CUDA registration. Autograd saves only x, scale, shift and
seed: z = x * scale + shift and the dropout mask (a function of seed and the logical
NCHW index, bit-identical in both kernels: csrc/philox.h is Triton's ``tl.rand``) are
recomputed in backward. Gradients flow to x, scale and shift (the BN affine; the
statistics part of BN's backward is added by whoever produced mean/var, see
wrn_fast.ops).

The kernels differ where their launchers do: the Triton one takes [N, C, H, W] or
[N, C] x of any strides and passes float scalars as fp32; the C++ one takes any rank
>= 2 and copies a non-dense x first; each reports bad arguments in its own words
(ValueError / TypeError from Triton's launcher, RuntimeError from C++).

Triton is imported on the first CUDA call, not here: TRITON_INTERPRET must be set
before that import on machines without a GPU.
"""
import importlib.util
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _ext
from .._counters import bump
from . import check_activation, empty_like_output

__all__ = ["bn_act_dropout", "bn_act_dropout_backward", "triton_bn_act_dropout", "triton_bn_act_dropout_backward"]

_OP = "wrn_fast::bn_act_dropout"
_BACKWARD_OP = "wrn_fast::bn_act_dropout_backward"


def _ops():
    if not _ext.ext_available():
        raise RuntimeError(
            "wrn_fast: bn_act_dropout needs the compiled extension wrn_fast._C, which is unavailable "
            f"({_ext._C_ERROR or 'it loaded but registered no ops'}); reinstall with "
            "`pip install --no-build-isolation -e .` to build it, or use the reference backend."
        )
    return torch.ops.wrn_fast


# ----------------------------------------------------------------- wrappers
def bn_act_dropout(x: Tensor, scale: Tensor, shift: Tensor, act: str, negative_slope: float,
                   dropout_p: float = 0.0, seed: Optional[Tensor] = None) -> Tensor:
    """y = dropout(act(x * scale[c] + shift[c])); differentiable w.r.t. x, scale, shift.

    x: [N, C, ...] float16/bfloat16/float32/float64 (the CUDA kernel: [N, C, H, W] or
    [N, C]); y has x's dtype and memory format. scale, shift: [C] float32 (float64 for
    float64 x). act: 'identity', 'relu', 'leaky_relu' (with ``negative_slope``), 'silu'.
    seed: int64 [1] on x's device (``wrn_fast.ops.new_dropout_seed``), required when
    dropout_p > 0.
    """
    check_activation(act)
    return _ops().bn_act_dropout.default(x, scale, shift, act, float(negative_slope), float(dropout_p), seed)


def bn_act_dropout_backward(grad_y: Tensor, x: Tensor, scale: Tensor, shift: Tensor, act: str,
                            negative_slope: float, dropout_p: float = 0.0,
                            seed: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_scale, grad_shift) of ``bn_act_dropout`` (mask regenerated from seed):
    grad_x = g_z * scale, grad_scale = sum(g_z * x), grad_shift = sum(g_z) over all dims but 1."""
    check_activation(act)
    return _ops().bn_act_dropout_backward.default(grad_y, x, scale, shift, act, float(negative_slope),
                                                  float(dropout_p), seed)


# ----------------------------------------------------------------- the CUDA kernels (Triton)
def _kernels():
    from wrn_fast.kernels import bn_act_dropout as k

    return k


def triton_bn_act_dropout(x: Tensor, scale: Tensor, shift: Tensor, act: str, negative_slope: float,
                          dropout_p: float, seed: Optional[Tensor]) -> Tensor:
    """The op's Triton kernel (its CUDA kernel; on CPU tensors it runs under TRITON_INTERPRET=1)."""
    y = _kernels().bn_act_dropout_fwd(x, scale, shift, act=act, negative_slope=negative_slope,
                                      dropout_p=dropout_p, seed=seed, out=empty_like_output(x))
    bump("bn_act_dropout_fwd")
    return y


def triton_bn_act_dropout_backward(grad_y: Tensor, x: Tensor, scale: Tensor, shift: Tensor, act: str,
                                   negative_slope: float, dropout_p: float,
                                   seed: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """The backward op's Triton kernel (as ``triton_bn_act_dropout``)."""
    grads = _kernels().bn_act_dropout_bwd(grad_y, x, scale, shift, act=act, negative_slope=negative_slope,
                                          dropout_p=dropout_p, seed=seed, grad_x_out=empty_like_output(x))
    bump("bn_act_dropout_bwd")
    return grads


# ----------------------------------------------------------------- registration
def _fake(x, scale, shift, act, negative_slope, dropout_p, seed):
    return empty_like_output(x)


def _fake_backward(grad_y, x, scale, shift, act, negative_slope, dropout_p, seed):
    return empty_like_output(x), scale.new_empty(scale.shape), scale.new_empty(scale.shape)


def _setup_context(ctx, inputs, output):
    x, scale, shift, act, negative_slope, dropout_p, seed = inputs
    ctx.act, ctx.negative_slope, ctx.dropout_p = act, negative_slope, dropout_p
    ctx.save_for_backward(x, scale, shift, seed)


def _backward(ctx, grad_y):
    x, scale, shift, seed = ctx.saved_tensors
    grad_x, grad_scale, grad_shift = torch.ops.wrn_fast.bn_act_dropout_backward.default(
        grad_y, x, scale, shift, ctx.act, ctx.negative_slope, ctx.dropout_p, seed)
    need_x, need_scale, need_shift = ctx.needs_input_grad[:3]
    return (grad_x if need_x else None, grad_scale if need_scale else None,
            grad_shift if need_shift else None, None, None, None, None)


def _register() -> None:
    torch.library.register_fake(_OP)(_fake)
    torch.library.register_fake(_BACKWARD_OP)(_fake_backward)
    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
    # find_spec does not import triton (TRITON_INTERPRET may not be set yet)
    if importlib.util.find_spec("triton") is not None:
        torch.library.register_kernel(_OP, "cuda")(triton_bn_act_dropout)
        torch.library.register_kernel(_BACKWARD_OP, "cuda")(triton_bn_act_dropout_backward)


if _ext.ext_available():
    _register()
