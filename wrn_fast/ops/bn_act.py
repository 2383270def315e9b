"""bn_act_dropout: the Triton elementwise y = dropout(act(x * scale[c] + shift[c])).

Registered as torch.library custom ops (schemas, fake kernels, autograd) so that
it composes with autograd, torch.compile and CUDA graphs:

  wrn_fast::triton_bn_act_dropout           (x, scale, shift, seed?, *, act, negative_slope, dropout_p) -> y
  wrn_fast::triton_bn_act_dropout_backward  (grad_y, x, scale, shift, seed?, *, ...) -> (grad_x, grad_scale, grad_shift)

Autograd saves only x, scale, shift and seed: z = x * scale + shift and the dropout
mask (a function of seed and the logical NCHW index) are recomputed in backward.
Gradients flow to x, scale and shift (the BN affine; the statistics part of BN's
backward is added by whoever produced mean/var, see wrn_fast.ops).

The kernels (kernels/bn_act_dropout.py) are imported on first use, so importing
this module does not import triton (TRITON_INTERPRET must be set before that).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._counters import bump
from . import output_memory_format

__all__ = ["bn_act_dropout", "bn_act_dropout_backward"]


def _kernels():
    from wrn_fast.kernels import bn_act_dropout as k

    return k


def _check_meta(x: Tensor, scale: Tensor, shift: Tensor, what: str) -> None:
    # Shape checks that the fake kernels can make (the launchers check everything).
    if x.dim() not in (2, 4):
        raise ValueError(f"{what}: x must be [N, C, H, W] or [N, C], got shape {tuple(x.shape)}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dim() != 1 or t.shape[0] != x.shape[1]:
            raise ValueError(f"{what}: {name} must have shape [C] = [{x.shape[1]}], got {tuple(t.shape)}")


@torch.library.custom_op("wrn_fast::triton_bn_act_dropout", mutates_args=())
def bn_act_dropout(
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    seed: Optional[Tensor] = None,
    *,
    act: str = "relu",
    negative_slope: float = 0.0,
    dropout_p: float = 0.0,
) -> Tensor:
    """y = dropout(act(x * scale[c] + shift[c])) with the Triton kernel.

    x: [N, C, H, W] (or [N, C]) float16/bfloat16/float32/float64, any strides; y has x's
    dtype and memory format. scale, shift: [C] float32. seed: int64 [1]
    (``wrn_fast.ops.new_dropout_seed``), required when dropout_p > 0.
    """
    y = _kernels().bn_act_dropout_fwd(
        x, scale, shift, act=act, negative_slope=negative_slope, dropout_p=dropout_p, seed=seed
    )
    bump("bn_act_dropout_fwd")
    return y


@bn_act_dropout.register_fake
def _(x, scale, shift, seed=None, *, act="relu", negative_slope=0.0, dropout_p=0.0):
    _check_meta(x, scale, shift, "triton_bn_act_dropout")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


@torch.library.custom_op("wrn_fast::triton_bn_act_dropout_backward", mutates_args=())
def bn_act_dropout_backward(
    grad_y: Tensor,
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    seed: Optional[Tensor] = None,
    *,
    act: str = "relu",
    negative_slope: float = 0.0,
    dropout_p: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_scale, grad_shift) of ``bn_act_dropout`` (mask regenerated from seed)."""
    grads = _kernels().bn_act_dropout_bwd(
        grad_y, x, scale, shift, act=act, negative_slope=negative_slope, dropout_p=dropout_p, seed=seed
    )
    bump("bn_act_dropout_bwd")
    return grads


@bn_act_dropout_backward.register_fake
def _(grad_y, x, scale, shift, seed=None, *, act="relu", negative_slope=0.0, dropout_p=0.0):
    _check_meta(x, scale, shift, "triton_bn_act_dropout_backward")
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return grad_x, scale.new_empty(scale.shape), scale.new_empty(scale.shape)


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    x, scale, shift, seed = inputs
    ctx.save_for_backward(x, scale, shift, seed)
    ctx.act = keyword_only_inputs.get("act", "relu")
    ctx.negative_slope = keyword_only_inputs.get("negative_slope", 0.0)
    ctx.dropout_p = keyword_only_inputs.get("dropout_p", 0.0)


def _backward(ctx, grad_y):
    x, scale, shift, seed = ctx.saved_tensors
    grad_x, grad_scale, grad_shift = bn_act_dropout_backward(
        grad_y, x, scale, shift, seed,
        act=ctx.act, negative_slope=ctx.negative_slope, dropout_p=ctx.dropout_p,
    )
    need_x, need_scale, need_shift = ctx.needs_input_grad[:3]
    return (grad_x if need_x else None, grad_scale if need_scale else None,
            grad_shift if need_shift else None, None)


bn_act_dropout.register_autograd(_backward, setup_context=_setup_context)
