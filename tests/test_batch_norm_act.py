"""batch_norm_act (one C++ autograd node: batch statistics + BN + act + dropout)
against the float64 composition ``F.batch_norm(training=True) -> act -> * keep / (1 - p)``
(keep = dropout_mask(seed, shape, p)), differentiated by autograd.

Tolerances, relative L2 error vs float64:
- fp32: forward 2e-6 (fp32 scale/shift from double-accumulated statistics, one fp32
  FMA, one rounding); gradients 2e-5 (the BN backward g*scale + b*x + c cancels: its
  terms are O(|g| * scale) while the result is smaller, so a few fp32 ulps of the
  terms grow by the cancellation ratio, seen <= 3e-6 here).
- fp16 / bf16 outputs: one rounding of the output, 2**-11 / 2**-8 -> 1e-3 / 8e-3;
  grad_x is rounded twice (direct term, then the sum) and cancels as above ->
  4e-3 / 3e-2; grad_weight / grad_bias are fp32 sums of exact products -> 1e-5.
- fp64: 1e-12, or 1e-7 with dropout: the kernels take p as an fp32 scalar (like the
  Triton kernels), so 1/(1-p) carries fp32 rounding. negative_slope is exact (fp64).
"""
import pytest
import torch
import torch.nn.functional as F

import wrn_fast
from wrn_fast.ops import ext
from wrn_fast.ops.bn_act import bn_act_dropout

from _checks import needs_ext, poison_outputs, rel_err
from _references import activation, batch_stats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
ACTS = ["identity", "relu", "leaky_relu", "silu"]
OUT_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
GRAD_X_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
PARAM_GRAD_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
pytestmark = [needs_ext, poison_outputs]


def reference(x, weight, bias, eps, act, slope, p, seed):
    """The specification, in float64: BN with batch statistics, act, dropout."""
    xd = x.double()
    z = F.batch_norm(xd, None, None, None if weight is None else weight.double(),
                     None if bias is None else bias.double(), True, 0.0, eps)
    a = activation(z, act, slope)
    if p > 0:
        a = a * ext.dropout_mask(seed, x.shape, p).to(a.device) / (1 - p)
    mean, var = batch_stats(xd)
    return a, mean, var


def make_case(shape, dtype, device, channels_last, affine, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a non-zero mean per channel, so the statistics matter
    x = (torch.randn(shape, generator=g) * 2 + torch.randn(shape[1], generator=g).view(
        [1, -1] + [1] * (len(shape) - 2))).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    coef = torch.float64 if dtype == torch.float64 else torch.float32  # BN parameters: fp32 (fp64 models: fp64)
    weight = (torch.rand(shape[1], generator=g) + 0.5).to(coef) if affine else None
    bias = (torch.randn(shape[1], generator=g) * 0.5).to(coef) if affine else None
    return x.to(device), None if weight is None else weight.to(device), None if bias is None else bias.to(device)


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channels_last,affine", [((4, 5, 6, 7), False, True), ((4, 5, 6, 7), True, True),
                                                        ((33, 4), False, True), ((2, 3, 5, 5), True, False)])
def test_forward_and_backward_match_float64_batch_norm(device, act, p, dtype, shape, channels_last, affine):
    slope, eps = 0.1, 1e-3
    x, weight, bias = make_case(shape, dtype, device, channels_last, affine)
    seed = torch.tensor([4321], device=device) if p > 0 else None
    xs, ws, bs = leaves(x, weight, bias)
    y, mean, var = ext.batch_norm_act(xs, ws, bs, eps, act, slope, p, seed)
    xr, wr, br = leaves(x.double(), None if weight is None else weight.double(), None if bias is None else bias.double())
    y_ref, mean_ref, var_ref = reference(xr, wr, br, eps, act, slope, p, seed)

    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == var.dtype == stats_dtype
    fp32_scalars = dtype == torch.float64 and p > 0
    assert rel_err(y, y_ref) <= (1e-7 if fp32_scalars else OUT_TOL[dtype])
    assert rel_err(mean, mean_ref) <= 1e-6 and rel_err(var, var_ref) <= 1e-6

    grad_y = torch.randn(shape, generator=torch.Generator().manual_seed(9)).to(dtype).to(device)
    inputs = [t for t in (xs, ws, bs) if t is not None]
    refs = [t for t in (xr, wr, br) if t is not None]
    grads = torch.autograd.grad(y, inputs, grad_y)
    grads_ref = torch.autograd.grad(y_ref, refs, grad_y.double())
    assert grads[0].dtype == dtype and grads[0].shape == x.shape
    assert rel_err(grads[0], grads_ref[0]) <= (1e-7 if fp32_scalars else GRAD_X_TOL[dtype])
    for g, g_ref in zip(grads[1:], grads_ref[1:]):
        assert g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert rel_err(g, g_ref) <= (1e-7 if fp32_scalars else PARAM_GRAD_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_through_every_output(device):
    """Gradients through y, mean and var at once (sync-BN / user code may use the statistics)."""
    x, weight, bias = make_case((3, 4, 3, 3), torch.float64, device, False, True)
    weight, bias = weight.double(), bias.double()
    seed = torch.tensor([77], device=device)
    for act, p in (("relu", 0.0), ("silu", 0.25), ("leaky_relu", 0.0)):
        def f(x, w, b, act=act, p=p):
            y, mean, var = ext.batch_norm_act(x, w, b, 1e-5, act, 0.1, p, seed)
            return y, mean * 3.0, var.sqrt()
        assert torch.autograd.gradcheck(f, leaves(x, weight, bias))


@pytest.mark.parametrize("device", DEVICES)
def test_forward_is_exactly_the_decomposition(device):
    """Same kernels as channel_stats -> bn_finalize -> bn_act_dropout: bit-identical forward."""
    x, weight, bias = make_case((4, 6, 5, 5), torch.float32, device, True, True)
    seed = torch.tensor([5], device=device)
    y, mean, var = ext.batch_norm_act(x, weight, bias, 1e-5, "relu", 0.0, 0.2, seed)
    m2, v2 = ext.channel_stats(x)
    scale, shift = ext.bn_finalize(m2, v2, weight, bias, 1e-5)
    assert torch.equal(mean, m2) and torch.equal(var, v2)
    assert torch.equal(y, bn_act_dropout(x, scale, shift, "relu", 0.0, 0.2, seed))


def test_one_cpp_autograd_node():
    """The point of the op: the whole BN-act-dropout backward is one node with a C++ backward."""
    x, weight, bias = leaves(*make_case((4, 3, 4, 4), torch.float32, "cpu", False, True))
    y, mean, var = ext.batch_norm_act(x, weight, bias, 1e-5, "relu", 0.0, 0.0, None)
    assert type(y.grad_fn).__name__ == "CppFunction", type(y.grad_fn)
    assert "BatchNormActFunction" in y.grad_fn.name()
    inputs = {fn.variable for fn, _ in y.grad_fn.next_functions if fn is not None and hasattr(fn, "variable")}
    assert {id(t) for t in inputs} == {id(x), id(weight), id(bias)}


def test_mean_var_only_backward():
    """y unused: only the statistics' gradient flows (grad_y undefined in the C++ backward)."""
    x, weight, bias = make_case((5, 3, 2, 2), torch.float64, "cpu", False, True)
    xs, = leaves(x)
    _, mean, var = ext.batch_norm_act(xs, weight.double(), bias.double(), 1e-5, "relu", 0.0, 0.0, None)
    g, = torch.autograd.grad((mean * 2 + var).sum(), xs)
    xr, = leaves(x)
    mr, vr = batch_stats(xr)
    g_ref, = torch.autograd.grad((mr * 2 + vr).sum(), xr)
    assert rel_err(g, g_ref) <= 1e-12


def test_opcheck():
    x, weight, bias = make_case((3, 4, 3, 3), torch.float32, "cpu", True, True)
    torch.library.opcheck(torch.ops.wrn_fast.batch_norm_act.default,
                          (x.requires_grad_(), weight.requires_grad_(), bias, 1e-5, "silu", 0.0, 0.3,
                           torch.tensor([3])))


@pytest.mark.parametrize("case,message", [
    (dict(weight=torch.ones(5)), "weight must be a per-channel vector of shape [4]"),
    (dict(bias=torch.ones(4, dtype=torch.int64)), "bias must be a floating-point tensor"),
    (dict(act="gelu"), "act must be one of"),
    (dict(dropout_p=0.5), "seed is required when dropout_p > 0"),
    (dict(dropout_p=1.5, seed=torch.tensor([1])), "dropout_p must be in [0, 1]"),
    (dict(eps=-1.0), "eps must be >= 0"),
    (dict(x=torch.randn(1, 4, 1, 1)), "Expected more than 1 value per channel when training"),
    (dict(x=torch.randn(8, 4, 2, 2).to(torch.int32)), "x must be float32, float16 or bfloat16"),
])
def test_bad_arguments_name_the_argument(case, message):
    args = dict(x=torch.randn(2, 4, 3, 3), weight=torch.ones(4), bias=torch.zeros(4), eps=1e-5, act="relu",
                slope=0.0, dropout_p=0.0, seed=None)
    args.update(case)
    with pytest.raises((RuntimeError, ValueError), match=message.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.wrn_fast.batch_norm_act(args["x"], args["weight"], args["bias"], args["eps"], args["act"],
                                          args["slope"], args["dropout_p"], args["seed"])


def test_nan_input_propagates():
    x, weight, bias = make_case((4, 3, 4, 4), torch.float32, "cpu", False, True)
    x[1, 2, 0, 0] = float("nan")
    y, mean, var = ext.batch_norm_act(x, weight, bias, 1e-5, "identity", 0.0, 0.0, None)
    assert torch.isnan(mean[2]) and torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, :2]).all()
