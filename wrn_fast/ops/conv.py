"""bn_act_conv: the fused BN-act-dropout -> conv2d (+ bias + residual, + partial stats) op.

``torch.ops.wrn_fast.bn_act_conv`` (forward) and ``torch.ops.wrn_fast.bn_act_conv_backward``
are torch.library custom ops over the Triton launchers in ``wrn_fast.kernels.bn_act_conv``,
with fake kernels (torch.compile can trace them) and autograd. With dropout, the keep
mask is evaluated once per forward as a bitmask (``wrn_fast::conv_dropout_bits``: 1 bit
per element of x, a function of seed and the logical NCHW index) and passed to the
forward, dgrad and wgrad kernels. Saved for backward: x, weight, scale, shift and the
bitmask; the backward recomputes the activation (dgrad epilogue and wgrad prologue).

fp32 follows PyTorch's convention for convolutions: ``allow_tf32=None`` (the default)
reads ``torch.backends.cudnn.allow_tf32`` (True by default: TF32 tensor cores); False
gives exact fp32 products.

The partial statistics outputs are not differentiable here: the gradient of the
batch statistics reaches x through the stats-merge op's own autograd, or, for a
training BN feeding the conv (``batch_bn=``, ``wrn_fast::bn_batch_act_conv``),
through the conv's own backward, summed into grad_x in one pass.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._counters import bump
from . import check_activation, conv_out_shape, dropout_bits_shape, norm_padding, output_memory_format, stats_dtype

__all__ = ["BatchBN", "bn_act_conv"]


def _k():
    # Imported lazily: importing the kernels imports triton, and TRITON_INTERPRET
    # must be set before that on machines without a GPU.
    from wrn_fast.kernels import bn_act_conv as k
    return k


# --------------------------------------------------------------------------- dropout bitmask

@torch.library.custom_op("wrn_fast::conv_dropout_bits", mutates_args=())
def _dropout_bits_op(seed: Tensor, x_shape: List[int], dropout_p: float) -> Tensor:
    """int32 [N*H*W, ceil(C/32)] keep bitmask of an input of shape x_shape (see kernels/_common.py)."""
    bits = _k().dropout_bits(seed, x_shape, dropout_p)
    bump("conv_dropout_bits")
    return bits


@_dropout_bits_op.register_fake
def _(seed, x_shape, dropout_p):
    return torch.empty(dropout_bits_shape(x_shape), dtype=torch.int32, device=seed.device)


# --------------------------------------------------------------------------- forward op

@torch.library.custom_op("wrn_fast::bn_act_conv", mutates_args=())
def _bn_act_conv_op(
    x: Tensor, weight: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], bias: Optional[Tensor],
    residual: Optional[Tensor], seed: Optional[Tensor], keep_bits: Optional[Tensor], stride: int,
    padding: List[int], act: str, negative_slope: float, dropout_p: float, compute_stats: bool, allow_tf32: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _one_pass_fwd(x, weight, scale, shift, bias, residual, seed, keep_bits, stride, padding, act,
                         negative_slope, dropout_p, compute_stats, allow_tf32)


def _one_pass_fwd(x, weight, scale, shift, bias, residual, seed, keep_bits, stride, padding, act, negative_slope,
                  dropout_p, compute_stats, allow_tf32):
    """(y, mean_p, m2_p, count_p) from one kernel: BN-act-dropout in the conv's prologue."""
    y, stats = _k().bn_act_conv_fwd(
        x, weight, scale, shift, stride=stride, padding=padding, act=act, negative_slope=negative_slope,
        dropout_p=dropout_p, seed=seed, keep_bits=keep_bits, bias=bias, residual=residual,
        compute_stats=compute_stats, allow_tf32=allow_tf32)
    bump("bn_act_conv_fwd")
    return _with_stats(y, stats, weight.shape[0])


def _with_stats(y, stats, cout):
    """(y, mean_p, m2_p, count_p); empty statistics tensors when none were computed."""
    if stats is None:
        e = y.new_empty((0, cout), dtype=stats_dtype(y.dtype))
        return y, e, e.clone(), y.new_empty((0,), dtype=stats_dtype(y.dtype))
    return y, stats[0], stats[1], stats[2]


@_bn_act_conv_op.register_fake
def _(x, weight, scale, shift, bias, residual, seed, keep_bits, stride, padding, act, negative_slope, dropout_p,
      compute_stats, allow_tf32):
    return _fake_fwd(x, weight, stride, padding, compute_stats)


def _fake_fwd(x, weight, stride, padding, compute_stats):
    n, cout, ho, wo = conv_out_shape(x.shape, weight.shape, stride, padding)
    y = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    p = _k().stats_rows(n * ho * wo) if compute_stats else 0
    sd = dict(dtype=stats_dtype(x.dtype), device=x.device)
    return y, torch.empty((p, cout), **sd), torch.empty((p, cout), **sd), torch.empty((p,), **sd)


# --------------------------------------------------------------------------- backward op

@torch.library.custom_op("wrn_fast::bn_act_conv_backward", mutates_args=())
def _bn_act_conv_backward_op(
    grad_y: Tensor, x: Tensor, weight: Tensor, scale: Optional[Tensor], shift: Optional[Tensor],
    seed: Optional[Tensor], keep_bits: Optional[Tensor], stride: int, padding: List[int], act: str,
    negative_slope: float, dropout_p: float, allow_tf32: bool, need_x: bool, need_weight: bool,
    need_affine: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_scale, grad_shift); an unneeded gradient is an empty tensor."""
    k = _k()
    kw = dict(stride=stride, padding=padding, act=act, negative_slope=negative_slope, dropout_p=dropout_p,
              seed=seed, keep_bits=keep_bits, allow_tf32=allow_tf32)
    gx = gsc = gsh = None
    if need_x or (need_affine and scale is not None):
        gx, gsc, gsh = k.bn_act_conv_dgrad(grad_y, weight, x, scale, shift, **kw)
        bump("bn_act_conv_dgrad")
    gw = None
    if need_weight:
        gw = k.bn_act_conv_wgrad(grad_y, x, scale, shift, weight_shape=tuple(weight.shape), out_dtype=weight.dtype,
                                 **kw)
        bump("bn_act_conv_wgrad")

    def empty():  # distinct tensors: outputs of a custom op must not alias each other
        return x.new_empty((0,))
    return (gx if (need_x and gx is not None) else empty(),
            gw if gw is not None else empty(),
            gsc if (need_affine and gsc is not None) else empty(),
            gsh if (need_affine and gsh is not None) else empty())


@_bn_act_conv_backward_op.register_fake
def _(grad_y, x, weight, scale, shift, seed, keep_bits, stride, padding, act, negative_slope, dropout_p,
      allow_tf32, need_x, need_weight, need_affine):
    gx = (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x)) if need_x
          else x.new_empty((0,)))
    gw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else x.new_empty((0,))
    if need_affine and scale is not None:
        gsc, gsh = torch.empty_like(scale), torch.empty_like(shift)
    else:
        gsc, gsh = x.new_empty((0,)), x.new_empty((0,))
    return gx, gw, gsc, gsh


# --------------------------------------------------------------------------- autograd

def _setup_context(ctx, inputs, output):
    (x, weight, scale, shift, bias, residual, seed, keep_bits, stride, padding, act, negative_slope, dropout_p,
     compute_stats, allow_tf32) = inputs
    ctx.save_for_backward(x, weight, scale, shift, seed, keep_bits)
    ctx.mark_non_differentiable(*output[1:])  # the partial stats (see module doc)
    _save_conf(ctx, weight, bias, residual, stride, padding, act, negative_slope, dropout_p, allow_tf32)


def _save_conf(ctx, weight, bias, residual, stride, padding, act, negative_slope, dropout_p, allow_tf32):
    ctx.conf = (stride, list(padding), act, float(negative_slope), float(dropout_p), bool(allow_tf32))
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    ctx.bias_dtype = weight.dtype


def _conv_grads(grad_y, x, a, weight, scale, shift, seed, keep_bits, conf, need_x, need_w, need_affine,
                route="fused"):
    """(grad_x, grad_weight, grad_scale, grad_shift) of the conv, None where not needed.
    dgrad through the prologue (act' and the mask recomputed from x in its epilogue);
    wgrad recomputes the activation from x in its prologue, or reads ``a``: the saved one
    (route two_pass) or, route pass_fwd_wgrad, one the elementwise pass writes again here
    (the forward's, bit for bit: same kernel, same seed). A pass route without bits gets
    its dropout bitmask here, once for dgrad and a fused wgrad."""
    stride, padding, act, slope, p, tf32 = conf
    need_x, need_w, need_affine = bool(need_x), bool(need_w), bool(need_affine) and scale is not None
    if need_w and a is None and route == "pass_fwd_wgrad":
        a = _pass_op(x, scale, shift, act, slope, p, seed)
    wgrad_on_a = need_w and a is not None
    need_fused = need_x or need_affine or (need_w and not wgrad_on_a)
    if (keep_bits is None and p > 0 and isinstance(seed, Tensor) and (need_x or need_affine)
            and need_w and not wgrad_on_a):
        keep_bits = _dropout_bits_op(seed, list(x.shape), float(p))  # one bitmask for dgrad and wgrad
    gx = gw = gsc = gsh = None
    if need_fused:
        gx, gw, gsc, gsh = _bn_act_conv_backward_op(
            grad_y, x, weight, scale, shift, seed, keep_bits, stride, padding, act, slope, p, tf32,
            need_x, need_w and not wgrad_on_a, need_affine)
    if wgrad_on_a:
        _, gw, _, _ = _bn_act_conv_backward_op(
            grad_y, a, weight, None, None, None, None, stride, padding, "identity", 0.0, 0.0, tf32,
            False, True, False)
    return (gx if need_x else None, gw if need_w else None, gsc if need_affine else None,
            gsh if need_affine else None)


def _bias_residual_grads(ctx, grad_y, need_bias, need_residual):
    gb = grad_y.sum((0, 2, 3)).to(ctx.bias_dtype) if (ctx.has_bias and need_bias) else None
    gr = grad_y if (ctx.has_residual and need_residual) else None
    return gb, gr


def _backward(ctx, grad_y, grad_mean, grad_m2, grad_count):
    x, weight, scale, shift, seed, keep_bits = ctx.saved_tensors
    nig = ctx.needs_input_grad
    if grad_y is None:  # only the (non-differentiable) stats were used
        return (None,) * 15
    gx, gw, gsc, gsh = _conv_grads(grad_y, x, None, weight, scale, shift, seed, keep_bits, ctx.conf, nig[0], nig[1],
                                   nig[2] or nig[3])
    gb, gr = _bias_residual_grads(ctx, grad_y, nig[4], nig[5])
    return (gx, gw, gsc if nig[2] else None, gsh if nig[3] else None, gb, gr) + (None,) * 9


torch.library.register_autograd("wrn_fast::bn_act_conv", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- the pass routes

def _kb():
    from wrn_fast.kernels import bn_act_dropout as kb
    return kb


def _pass(x, scale, shift, act, negative_slope, dropout_p, seed):
    """a = dropout(act(x*scale + shift)) by the elementwise kernel (kernels/bn_act_dropout.py;
    its mask is the conv's: a function of seed and the logical NCHW index)."""
    a = _kb().bn_act_dropout_fwd(x, scale, shift, act=act, negative_slope=negative_slope, dropout_p=dropout_p,
                                 seed=seed)
    bump("bn_act_dropout_fwd")
    return a


@torch.library.custom_op("wrn_fast::conv_pass_activation", mutates_args=())
def _pass_op(x: Tensor, scale: Tensor, shift: Tensor, act: str, negative_slope: float, dropout_p: float,
             seed: Optional[Tensor]) -> Tensor:
    """``_pass`` as an op of its own: route pass_fwd_wgrad's backward writes the activation
    again for wgrad (an op, so that a traced backward sees it, with its fake kernel)."""
    return _pass(x, scale, shift, act, negative_slope, dropout_p, seed)


@_pass_op.register_fake
def _(x, scale, shift, act, negative_slope, dropout_p, seed):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def _check_route(route):
    if route not in _k().ROUTES:
        raise ValueError(f"route must be one of {_k().ROUTES}, got {route!r}")


@torch.library.custom_op("wrn_fast::bn_act_conv_two_pass", mutates_args=())
def _two_pass_op(
    x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
    seed: Optional[Tensor], stride: int, padding: List[int], act: str, negative_slope: float, dropout_p: float,
    compute_stats: bool, allow_tf32: bool, route: str = "two_pass",
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """bn_act_conv as two kernels: a = dropout(act(x*scale + shift)) by the elementwise
    kernel, then the implicit GEMM on ``a`` without a prologue. Returns
    (y, mean_p, m2_p, count_p, a); ``a`` is kept for wgrad with route two_pass, freed
    (an empty tensor is returned) with pass_fwd / pass_fwd_wgrad (see conv_config.ROUTES)."""
    return _two_pass_fwd(x, weight, scale, shift, bias, residual, seed, stride, padding, act, negative_slope,
                         dropout_p, compute_stats, allow_tf32, route)


def _two_pass_fwd(x, weight, scale, shift, bias, residual, seed, stride, padding, act, negative_slope, dropout_p,
                  compute_stats, allow_tf32, route="two_pass"):
    # every argument checked before the first launch (as the one-kernel launcher does)
    _check_route(route)
    if route == "fused":
        raise ValueError("bn_act_conv_two_pass runs the pass routes; route 'fused' is wrn_fast::bn_act_conv")
    _k()._check_common(x, weight.shape, scale, shift, stride, padding, act, dropout_p, seed, None, weight=weight)
    a = _pass(x, scale, shift, act, negative_slope, dropout_p, seed)
    y, stats = _k().bn_act_conv_fwd(a, weight, None, None, stride=stride, padding=padding, act="identity",
                                    bias=bias, residual=residual, compute_stats=compute_stats,
                                    allow_tf32=allow_tf32)
    bump("bn_act_conv_fwd")
    return (*_with_stats(y, stats, weight.shape[0]), a if route == "two_pass" else x.new_empty((0,)))


def _fake_a(x, route):
    if route == "two_pass":
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return x.new_empty((0,))


@_two_pass_op.register_fake
def _(x, weight, scale, shift, bias, residual, seed, stride, padding, act, negative_slope, dropout_p, compute_stats,
      allow_tf32, route="two_pass"):
    return (*_fake_fwd(x, weight, stride, padding, compute_stats), _fake_a(x, route))


def _two_pass_setup_context(ctx, inputs, output):
    (x, weight, scale, shift, bias, residual, seed, stride, padding, act, negative_slope, dropout_p,
     compute_stats, allow_tf32, *rest) = inputs
    ctx.route = rest[0] if rest else "two_pass"
    ctx.save_for_backward(x, output[4] if ctx.route == "two_pass" else None, weight, scale, shift, seed)
    ctx.mark_non_differentiable(*output[1:])
    _save_conf(ctx, weight, bias, residual, stride, padding, act, negative_slope, dropout_p, allow_tf32)


def _two_pass_backward(ctx, grad_y, grad_mean, grad_m2, grad_count, grad_a):
    """dgrad fused as in the one-kernel path (act' and the mask recomputed from x in its
    epilogue, with the BN affine gradients); wgrad on the saved activation (two_pass), on
    the pass's output written again (pass_fwd_wgrad) or fused on x (pass_fwd)."""
    x, a, weight, scale, shift, seed = ctx.saved_tensors
    nig = ctx.needs_input_grad
    if grad_y is None:
        return (None,) * 15
    gx, gw, gsc, gsh = _conv_grads(grad_y, x, a, weight, scale, shift, seed, None, ctx.conf, nig[0], nig[1],
                                   nig[2] or nig[3], ctx.route)
    gb, gr = _bias_residual_grads(ctx, grad_y, nig[4], nig[5])
    return (gx, gw, gsc if nig[2] else None, gsh if nig[3] else None, gb, gr) + (None,) * 9


torch.library.register_autograd("wrn_fast::bn_act_conv_two_pass", _two_pass_backward,
                                setup_context=_two_pass_setup_context)


# --------------------------------------------------------------------------- with the BN's statistics backward

# A training BatchNorm between two convs: its scale / shift come from the batch statistics
# of x (bn_finalize_partials over the producer's epilogue partials). Autograd would give
# x two gradients, the conv's (dgrad through the prologue) and the statistics' term
# b[c]*x + c[c] from the finalize node, and sum them: dgrad writes g1, the finalize
# backward reads x and writes g2, the sum reads g1 and g2 and writes grad_x. This op is
# the conv and the statistics' backward in one autograd node: dgrad writes g1 (and the
# grad_scale / grad_shift reductions), bn_finalize_backward turns those into the
# coefficients, and one channel_stats_backward pass (bn_backward_apply) reads g1 and x and
# writes grad_x.

@torch.library.custom_op("wrn_fast::bn_batch_act_conv", mutates_args=())
def _bn_batch_act_conv_op(
    x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, mean: Tensor, var: Tensor,
    bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], eps: float, bias: Optional[Tensor],
    residual: Optional[Tensor], seed: Optional[Tensor], keep_bits: Optional[Tensor], stride: int,
    padding: List[int], act: str, negative_slope: float, dropout_p: float, compute_stats: bool, allow_tf32: bool,
    route: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """bn_act_conv (one kernel, or the pass and the GEMM: ``route``) whose scale / shift are
    ``bn_finalize(mean, var, bn_weight, bn_bias, eps)`` of x's batch statistics (given,
    computed without autograd); differentiable w.r.t. x (statistics included), weight,
    bn_weight, bn_bias, bias, residual. Returns (y, mean_p, m2_p, count_p, a); ``a`` is the
    activation kept for wgrad by route two_pass (empty otherwise)."""
    if route != "fused":
        return _two_pass_fwd(x, weight, scale, shift, bias, residual, seed, stride, padding, act, negative_slope,
                             dropout_p, compute_stats, allow_tf32, route)
    return (*_one_pass_fwd(x, weight, scale, shift, bias, residual, seed, keep_bits, stride, padding, act,
                           negative_slope, dropout_p, compute_stats, allow_tf32), x.new_empty((0,)))


@_bn_batch_act_conv_op.register_fake
def _(x, weight, scale, shift, mean, var, bn_weight, bn_bias, eps, bias, residual, seed, keep_bits, stride, padding,
      act, negative_slope, dropout_p, compute_stats, allow_tf32, route):
    return (*_fake_fwd(x, weight, stride, padding, compute_stats), _fake_a(x, route))


def _bn_batch_setup_context(ctx, inputs, output):
    (x, weight, scale, shift, mean, var, bn_weight, bn_bias, eps, bias, residual, seed, keep_bits, stride, padding,
     act, negative_slope, dropout_p, compute_stats, allow_tf32, route) = inputs
    ctx.route = route
    ctx.save_for_backward(x, output[4] if route == "two_pass" else None, weight, scale, shift, mean, var, bn_weight,
                          seed, keep_bits)
    ctx.mark_non_differentiable(*output[1:])
    _save_conf(ctx, weight, bias, residual, stride, padding, act, negative_slope, dropout_p, allow_tf32)
    ctx.eps = float(eps)
    ctx.bn_dtypes = (None if bn_weight is None else bn_weight.dtype, None if bn_bias is None else bn_bias.dtype)


def _bn_batch_backward(ctx, grad_y, grad_mean_p, grad_m2_p, grad_count_p, grad_a):
    x, a, weight, scale, shift, mean, var, bn_weight, seed, keep_bits = ctx.saved_tensors
    nig = ctx.needs_input_grad  # x, weight, scale, shift, mean, var, bn_weight, bn_bias, eps, bias, residual, ...
    if grad_y is None:
        return (None,) * 21
    need_bn = bool(nig[0] or nig[6] or nig[7])
    gx, gw, gsc, gsh = _conv_grads(grad_y, x, a, weight, scale, shift, seed, keep_bits, ctx.conf, nig[0], nig[1],
                                   need_bn, ctx.route)
    g_bn_w = g_bn_b = None
    if need_bn:
        from . import ext  # the C++ ops: the BatchNorm backward formula (csrc/bn_backward_formula.h)

        grad_mean, grad_var, grad_bn_w = torch.ops.wrn_fast.bn_finalize_backward.default(
            gsc, gsh, mean, var, bn_weight, scale, ctx.eps)
        if nig[0]:
            gx = ext.channel_stats_backward(x, mean, grad_mean, grad_var, grad=gx)  # g1 + b*x + c, one pass
            bump("bn_batch_act_conv_backward")
        g_bn_w = grad_bn_w.to(ctx.bn_dtypes[0]) if (nig[6] and ctx.bn_dtypes[0] is not None) else None
        g_bn_b = gsh.to(ctx.bn_dtypes[1]) if (nig[7] and ctx.bn_dtypes[1] is not None) else None
    gb, gr = _bias_residual_grads(ctx, grad_y, nig[9], nig[10])
    return (gx, gw, None, None, None, None, g_bn_w, g_bn_b, None, gb, gr) + (None,) * 10


torch.library.register_autograd("wrn_fast::bn_batch_act_conv", _bn_batch_backward,
                                setup_context=_bn_batch_setup_context)


# --------------------------------------------------------------------------- public function

class BatchBN(NamedTuple):
    """A training BatchNorm whose batch statistics gave a conv's scale / shift:
    ``scale, shift = bn_finalize(mean, var, weight, bias, eps)``, all computed without
    autograd (``bn_act_conv(..., batch_bn=)`` differentiates through them itself)."""

    mean: Tensor
    var: Tensor
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float


def bn_act_conv(x: Tensor, weight: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                bias: Optional[Tensor] = None, residual: Optional[Tensor] = None, seed: Optional[Tensor] = None,
                *, stride: int = 1, padding=(1, 1, 1, 1), act: str = "identity", negative_slope: float = 0.0,
                dropout_p: float = 0.0, compute_stats: bool = False, allow_tf32: Optional[bool] = None,
                two_pass: Optional[bool] = None, route: Optional[str] = None,
                batch_bn: Optional[BatchBN] = None):
    """y = conv2d(zero_pad(dropout(act(x*scale + shift))), weight) (+ bias) (+ residual).

    padding: int, (ph, pw) or (top, bottom, left, right) (TF-SAME stride 2 is (0, 1, 0, 1)).
    allow_tf32 (fp32 only): None = ``torch.backends.cudnn.allow_tf32`` (PyTorch's rule for
    convolutions), True = TF32 tensor cores, False = exact fp32 products.
    Returns ``(y, mean_p, m2_p, count_p)``: the partial statistics of y (see
    ``kernels.bn_act_conv.bn_act_conv_fwd``) when ``compute_stats``, else empty tensors.
    Differentiable w.r.t. x, weight, scale, shift, bias and residual.
    route (only with scale/shift): how the BN-act-dropout reaches the convolution, one of
    ``kernels.bn_act_conv.ROUTES``: 'fused' (the conv's prologue), 'two_pass' (an
    elementwise kernel writes the activation, the convolution and its wgrad read it, kept
    for backward), 'pass_fwd' (the elementwise kernel for the forward only, the activation
    freed after it), 'pass_fwd_wgrad' (as pass_fwd, and the backward writes it again for
    wgrad); dgrad is fused on x in every route. None = ``kernels.bn_act_conv.conv_route``
    decides from dtype, widths and dropout (16-bit on the GPU). ``two_pass`` True / False is
    route 'two_pass' / 'fused'. Same results, same dropout mask.
    batch_bn (with scale/shift, which must then not require grad): scale / shift are a
    training BN's affine from x's batch statistics; the backward then also carries the
    statistics' gradient to x, bn weight and bias, summed into grad_x in one pass
    (``wrn_fast::bn_batch_act_conv``; needs the C++ extension).
    """
    check_activation(act, "act")
    pads = list(norm_padding(padding))
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    if batch_bn is not None and scale is None:
        raise ValueError("batch_bn needs scale and shift (the BN's affine)")
    if two_pass is not None:
        if route is not None and route != ("two_pass" if two_pass else "fused"):
            raise ValueError(f"two_pass={two_pass} contradicts route={route!r}")
        route = "two_pass" if two_pass else "fused"
    if route is not None:
        _check_route(route)
    prologue = scale is not None and isinstance(x, Tensor) and isinstance(weight, Tensor) and weight.dim() == 4
    if prologue and route is None:
        route = _k().conv_route(x.dtype, int(weight.shape[1]), int(weight.shape[0]),
                                int(weight.shape[2]) * int(weight.shape[3]), int(stride), dropout=dropout_p > 0)
    route = route if prologue else "fused"
    conf = (int(stride), pads, act, float(negative_slope), float(dropout_p), bool(compute_stats), bool(allow_tf32))
    if route != "fused" and batch_bn is None:
        return _two_pass_op(x, weight, scale, shift, bias, residual, seed, *conf, route)[:4]
    keep_bits = None
    if route == "fused" and dropout_p > 0 and isinstance(seed, Tensor) and isinstance(x, Tensor) and x.dim() == 4:
        keep_bits = _dropout_bits_op(seed, list(x.shape), float(dropout_p))
    if batch_bn is not None:
        return _bn_batch_act_conv_op(x, weight, scale, shift, batch_bn.mean, batch_bn.var, batch_bn.weight,
                                     batch_bn.bias, float(batch_bn.eps), bias, residual, seed, keep_bits, *conf,
                                     route)[:4]
    return _bn_act_conv_op(x, weight, scale, shift, bias, residual, seed, keep_bits, *conf)
