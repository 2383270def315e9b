"""The C++/CUDA extension ops (``torch.ops.wrn_fast.*``): typed wrappers, fake
kernels and autograd registrations.

Kernels live in ``csrc/`` (CPU) and ``csrc/cuda/`` (CUDA); the schemas are
registered by ``wrn_fast._C`` (csrc/schemas.cpp). Each wrapper below is one call to
its op. ``bn_act_dropout`` (CUDA kernel: Triton) has its own home,
``wrn_fast.ops.bn_act``, imported here so that its registrations are made too. When the
extension failed to load, importing this module still works and every wrapper
raises a RuntimeError that says why the extension is unavailable.

Dtypes: data tensors are float32 / float16 / bfloat16 (float64 too, for
gradcheck); statistics, scale / shift and BN coefficients are float32, or float64
for float64 data. Memory: logical ``[N, C, *spatial]``, contiguous NCHW or
channels-last; outputs of data shape keep that memory format.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _ext
from . import bn_act as _bn_act  # noqa: F401 -- registers bn_act_dropout's fake, autograd and CUDA kernels
from . import check_activation, empty_like_output, stats_dtype


def _ops():
    if not _ext.ext_available():
        raise RuntimeError(
            "wrn_fast: the compiled extension wrn_fast._C is unavailable "
            f"({_ext._C_ERROR or 'it loaded but registered no ops'}); reinstall with "
            "`pip install --no-build-isolation -e .` to build it, or use the reference backend."
        )
    return torch.ops.wrn_fast


# ----------------------------------------------------------------- wrappers
def channel_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel (dim 1) mean and biased variance of ``x``; differentiable w.r.t. x."""
    return _ops().channel_stats.default(x)


def merge_partial_stats(x: Tensor, mean_p: Tensor, m2_p: Tensor, count_p: Tensor) -> Tuple[Tensor, Tensor]:
    """Chan-merge per-tile partials (mean_p, m2_p: [P, C]; count_p: [P]) into mean, biased var.

    ``x`` is the tensor the partials describe: it is not read, but the result is
    differentiable w.r.t. it exactly like ``channel_stats(x)``. Tiles with count 0 are
    ignored; ``sum(count_p)`` is trusted to equal ``x.numel() / C`` (not checked: that
    would need a device sync).
    """
    return _ops().merge_partial_stats.default(x, mean_p, m2_p, count_p)


def bn_finalize_partials(x: Tensor, mean_p: Tensor, m2_p: Tensor, count_p: Tensor, weight: Optional[Tensor],
                         bias: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``merge_partial_stats`` then ``bn_finalize`` as one autograd node (C++ backward):
    ``(scale, shift, mean, var)`` of a training-mode BN of ``x`` from its producer's
    per-tile partials. Differentiable w.r.t. x (through the statistics), weight, bias.
    """
    return _ops().bn_finalize_partials.default(x, mean_p, m2_p, count_p, weight, bias, float(eps))


def bn_finalize(mean: Tensor, var: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                eps: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """scale = weight * rsqrt(var + eps), shift = bias - mean * scale (stats dtype)."""
    return _ops().bn_finalize.default(mean, var, weight, bias, float(eps))


def _batch_stat_count_error(count: int, input_size) -> ValueError:
    got = f"input size {input_size}" if input_size is not None else f"{count} value(s) per channel"
    return ValueError(f"Expected more than 1 value per channel when training, got {got}")


def bn_update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor, mean: Tensor,
                            var: Tensor, count: int, momentum: Optional[float] = 0.1,
                            input_size: Optional[Sequence[int]] = None) -> None:
    """In-place running-stat update with nn.BatchNorm2d's exact semantics.

    ``count`` is the number of values per channel (N * H * W); ``momentum=None`` is the
    cumulative moving average. ``input_size`` (the BN input's shape) only improves the
    error message. count == 1 raises PyTorch's ValueError before anything is mutated
    (nn.BatchNorm2d increments num_batches_tracked before raising; we do not). count == 0
    (an empty batch) only increments num_batches_tracked, like nn.BatchNorm2d.
    """
    count = int(count)
    if count == 1 or count < 0:
        raise _batch_stat_count_error(count, torch.Size(input_size) if input_size is not None else None)
    _ops().bn_update_running_stats.default(
        running_mean, running_var, num_batches_tracked, mean, var, count,
        None if momentum is None else float(momentum))


def bn_backward_apply(grad: Optional[Tensor], x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """dX = a[c] * grad + b[c] * x + c[c] (the a-term is skipped when grad is None)."""
    return _ops().bn_backward_apply.default(grad, x, a, b, c)


def batch_norm_act(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, act: str,
                   negative_slope: float, dropout_p: float = 0.0,
                   seed: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Training-mode BN with batch statistics, then act and dropout: ``(y, mean, var)``.

    y = dropout(act((x - mean) * rsqrt(var + eps) * weight + bias)) with x's dtype and
    memory format; mean and biased var are x's per-channel statistics (fp32, fp64 for
    fp64 x), for the running-stat update. One autograd node whose backward is C++
    (``csrc/batch_norm_act.cpp``); differentiable w.r.t. x, weight, bias (and through
    mean / var).
    """
    check_activation(act)
    return _ops().batch_norm_act.default(x, weight, bias, float(eps), act, float(negative_slope), float(dropout_p),
                                         seed)


def dropout_mask(seed: Tensor, size: Sequence[int], dropout_p: float) -> Tensor:
    """The contract's keep mask (bool, contiguous ``size``) on ``seed``'s device."""
    return _ops().dropout_mask.default(seed, [int(s) for s in size], float(dropout_p))


def pack_mask(mask: Tensor) -> Tensor:
    """Bool mask -> uint8 [ceil(numel/8)]; bit j of byte i is element 8*i + j (row-major)."""
    return _ops().pack_mask.default(mask)


def unpack_mask(packed: Tensor, numel: int) -> Tensor:
    """Inverse of ``pack_mask``: a flat bool tensor of ``numel`` elements."""
    return _ops().unpack_mask.default(packed, int(numel))


# ------------------------------------------------- fake kernels and autograd
def _reduce_to_channels(t: Tensor) -> Tensor:
    return t.sum(dim=[d for d in range(t.dim()) if d != 1])


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    return v.view([1, -1] + [1] * (like.dim() - 2))


def channel_stats_backward(x: Tensor, mean: Tensor, grad_mean: Optional[Tensor], grad_var: Optional[Tensor],
                           grad: Optional[Tensor] = None) -> Tensor:
    """grad_x of (mean, var) = per-channel batch statistics of x, plus ``grad`` (x's gradient
    from elsewhere, x's dtype and shape; None = 0) in the same pass over x:
    ``grad + b[c] * x + c[c]`` with b = 2 grad_var / n, c = grad_mean / n - b * mean (n = x's
    elements per channel). mean, grad_mean, grad_var: [C] in the statistics dtype (fp32, fp64
    for fp64 x); None = 0. The one C++ formula (csrc/bn_backward_formula.h)."""
    return torch.ops.wrn_fast.channel_stats_backward.default(x, mean, grad_mean, grad_var, grad)


def _register() -> None:
    lib = "wrn_fast::"

    @torch.library.register_fake(lib + "channel_stats")
    def _(x):
        torch._check(x.dim() >= 2, lambda: f"wrn_fast::channel_stats: x must have rank >= 2, got {x.dim()}")
        dtype = stats_dtype(x.dtype)
        return x.new_empty((x.shape[1],), dtype=dtype), x.new_empty((x.shape[1],), dtype=dtype)

    def stats_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[0])

    def stats_backward(ctx, grad_mean, grad_var):
        x, mean = ctx.saved_tensors
        return channel_stats_backward(x, mean, grad_mean, grad_var) if ctx.needs_input_grad[0] else None

    torch.library.register_autograd(lib + "channel_stats", stats_backward, setup_context=stats_setup)

    @torch.library.register_fake(lib + "merge_partial_stats")
    def _(x, mean_p, m2_p, count_p):
        return mean_p.new_empty((mean_p.shape[1],)), mean_p.new_empty((mean_p.shape[1],))

    def merge_backward(ctx, grad_mean, grad_var):
        x, mean = ctx.saved_tensors
        grad_x = channel_stats_backward(x, mean, grad_mean, grad_var) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None  # the partials are x's summaries, not independent inputs

    torch.library.register_autograd(lib + "merge_partial_stats", merge_backward, setup_context=stats_setup)

    @torch.library.register_fake(lib + "bn_finalize")
    def _(mean, var, weight, bias, eps):
        return torch.empty_like(mean, memory_format=torch.contiguous_format), torch.empty_like(
            mean, memory_format=torch.contiguous_format)

    def finalize_setup(ctx, inputs, output):
        mean, var, weight, bias, eps = inputs
        ctx.eps = eps
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.weight_dtype = weight.dtype if weight is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(mean, var, weight, output[0])

    def finalize_backward(ctx, grad_scale, grad_shift):
        mean, var, weight, scale = ctx.saved_tensors
        # the one C++ formula (csrc/bn_backward_formula.h), shared with the composite ops
        grad_mean, grad_var, grad_weight = torch.ops.wrn_fast.bn_finalize_backward.default(
            grad_scale, grad_shift, mean, var, weight, scale, ctx.eps)
        grad_weight = grad_weight.to(ctx.weight_dtype) if ctx.has_weight else None
        grad_bias = None
        if ctx.has_bias:
            grad_bias = (grad_shift if grad_shift is not None else torch.zeros_like(mean)).to(ctx.bias_dtype)
        return grad_mean, grad_var, grad_weight, grad_bias, None

    torch.library.register_autograd(lib + "bn_finalize", finalize_backward, setup_context=finalize_setup)

    @torch.library.register_fake(lib + "bn_update_running_stats")
    def _(running_mean, running_var, num_batches_tracked, mean, var, count, momentum):
        return None

    @torch.library.register_fake(lib + "bn_backward_apply")
    def _(grad, x, a, b, c):
        return empty_like_output(x)

    def apply_setup(ctx, inputs, output):
        grad, x, a, b, c = inputs
        ctx.has_grad = grad is not None
        ctx.save_for_backward(grad, x, a, b)

    def apply_backward(ctx, grad_out):
        # dX is linear in (grad, x, a, b, c): plain torch is enough (double backward only).
        grad, x, a, b = ctx.saved_tensors
        g = grad_out.to(a.dtype)
        d_grad = (g * _per_channel(a, x)).to(x.dtype) if ctx.has_grad else None
        d_x = (g * _per_channel(b, x)).to(x.dtype)
        d_a = _reduce_to_channels(g * grad.to(a.dtype)) if ctx.has_grad else torch.zeros_like(a)
        d_b = _reduce_to_channels(g * x.to(a.dtype))
        d_c = _reduce_to_channels(g)
        return d_grad, d_x, d_a, d_b, d_c

    torch.library.register_autograd(lib + "bn_backward_apply", apply_backward, setup_context=apply_setup)

    @torch.library.register_fake(lib + "batch_norm_act")
    def _(x, weight, bias, eps, act, negative_slope, dropout_p, seed):
        dtype = stats_dtype(x.dtype)
        return empty_like_output(x), x.new_empty((x.shape[1],), dtype=dtype), x.new_empty((x.shape[1],), dtype=dtype)
    # (its autograd is the C++ kernel registered for the Autograd key)

    @torch.library.register_fake(lib + "batch_norm_act_backward")
    def _(grad_y, x, weight, bias, mean, var, scale, shift, grad_mean, grad_var, eps, act, negative_slope, dropout_p,
          seed):
        c = x.shape[1]
        return (empty_like_output(x), mean.new_empty((c,), dtype=mean.dtype if weight is None else weight.dtype),
                mean.new_empty((c,), dtype=mean.dtype if bias is None else bias.dtype))

    @torch.library.register_fake(lib + "bn_finalize_partials")
    def _(x, mean_p, m2_p, count_p, weight, bias, eps):
        c = mean_p.shape[1]
        return tuple(mean_p.new_empty((c,)) for _ in range(4))
    # (autograd: C++, like batch_norm_act)

    @torch.library.register_fake(lib + "pack_mask")
    def _(mask):
        return mask.new_empty(((mask.numel() + 7) // 8,), dtype=torch.uint8)

    @torch.library.register_fake(lib + "unpack_mask")
    def _(packed, numel):
        return packed.new_empty((numel,), dtype=torch.bool)

    @torch.library.register_fake(lib + "dropout_mask")
    def _(seed, size, dropout_p):
        return seed.new_empty(size, dtype=torch.bool)


if _ext.ext_available():
    _register()

__all__: List[str] = [
    "channel_stats", "merge_partial_stats", "bn_finalize_partials", "bn_finalize", "bn_update_running_stats", "bn_backward_apply",
    "channel_stats_backward", "batch_norm_act", "dropout_mask", "pack_mask", "unpack_mask",
]
