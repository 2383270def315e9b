"""bn_finalize_partials (one C++ autograd node: merge the producer's per-tile partial
statistics, then bn_finalize) against float64 torch: scale = w / sqrt(var + eps),
shift = b - mean * scale with mean / biased var of x, differentiated by autograd.

Tolerances, relative L2 error vs float64:
- forward: 1e-6 (fp32 statistics merged in double on the CPU / Chan-merged in fp32
  on CUDA from partials rounded to fp32, then a sqrt, a division and an FMA);
- gradients fp32: 1e-5 (the statistics term b*x + c cancels against itself: a few
  fp32 ulps of |b*x| ~ |c| grow by that ratio, seen <= 1e-6); fp16/bf16 x: grad_x is
  rounded once to x's dtype (2**-11 / 2**-8) -> 2e-3 / 1e-2; grad_weight / grad_bias
  come from fp32 math on the fp32 statistics -> 1e-5; fp64: 1e-12.
"""
import pytest
import torch

import wrn_fast
from wrn_fast.ops import ext

from _checks import needs_ext, poison_outputs, rel_err
from _partials import tile_partials
from _references import batch_stats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
GRAD_X_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
pytestmark = [needs_ext, poison_outputs]


def make_case(shape, dtype, device, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
         + torch.randn(c, generator=g, dtype=torch.float64).view([1, c] + [1] * (len(shape) - 2)) * 2).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(stats_dtype)
    bias = torch.randn(c, generator=g, dtype=torch.float64).to(stats_dtype)
    rows = x.numel() // c
    cuts = sorted(torch.randint(0, rows + 1, (3,), generator=g).tolist())
    partials = tile_partials(x, [0] + cuts + [cuts[-1], rows])  # the repeated cut: an empty tile
    partials = tuple(t.to(stats_dtype).to(device) for t in partials)
    return x.to(device), weight.to(device), bias.to(device), partials


def reference(x, weight, bias, eps):
    mean, var = batch_stats(x)
    scale = weight / torch.sqrt(var + eps)
    return scale, bias - mean * scale, mean, var


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channels_last", [((4, 5, 6, 7), False), ((4, 5, 6, 7), True), ((33, 4), False)])
def test_matches_float64_batch_norm_affine(device, dtype, shape, channels_last):
    eps = 1e-3
    x, weight, bias, partials = make_case(shape, dtype, device, channels_last)
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = ext.bn_finalize_partials(xs, *partials, ws, bs, eps)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ref = reference(xr, wr, br, eps)
    for o, r in zip(out, ref):
        assert o.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert rel_err(o, r) <= (1e-12 if dtype == torch.float64 else 1e-6)

    # gradients arrive as from a consumer's prologue (grad_scale, grad_shift) and, for
    # the running-stat / sync-BN users, through mean and var directly
    g = torch.Generator().manual_seed(3)
    upstream = [torch.randn(shape[1], generator=g, dtype=torch.float64) for _ in range(4)]
    grads = torch.autograd.grad(out, (xs, ws, bs), [u.to(out[0].dtype).to(device) for u in upstream])
    grads_ref = torch.autograd.grad(ref, (xr, wr, br), [u.to(device) for u in upstream])
    assert grads[0].dtype == dtype and grads[0].stride() == xs.stride()
    assert rel_err(grads[0], grads_ref[0]) <= GRAD_X_TOL[dtype]
    for gp, gr in zip(grads[1:], grads_ref[1:]):
        assert rel_err(gp, gr) <= (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_is_exactly_merge_then_finalize(device):
    x, weight, bias, partials = make_case((3, 6, 5, 5), torch.float32, device, channels_last=True)
    scale, shift, mean, var = ext.bn_finalize_partials(x, *partials, weight, bias, 1e-5)
    m2, v2 = ext.merge_partial_stats(x, *partials)
    s2, h2 = ext.bn_finalize(m2, v2, weight, bias, 1e-5)
    assert torch.equal(mean, m2) and torch.equal(var, v2) and torch.equal(scale, s2) and torch.equal(shift, h2)


@pytest.mark.parametrize("affine", ["both", "none", "bias"])
def test_gradcheck_float64(affine):
    x, weight, bias, _ = make_case((3, 4, 2, 3), torch.float64, "cpu")
    w = weight.requires_grad_() if affine == "both" else None
    b = bias.requires_grad_() if affine in ("both", "bias") else None
    x.requires_grad_()

    def f(x, w, b):
        partials = tile_partials(x.detach(), [0, 7, 18])  # the partials describe x; no gradient of their own
        scale, shift, mean, var = ext.bn_finalize_partials(x, *partials, w, b, 1e-5)
        return scale, shift, mean * 2, var.sqrt()

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_one_cpp_autograd_node():
    x, weight, bias, partials = make_case((4, 3, 4, 4), torch.float32, "cpu")
    x.requires_grad_()
    weight.requires_grad_()
    scale, shift, mean, var = ext.bn_finalize_partials(x, *partials, weight, bias, 1e-5)
    assert type(scale.grad_fn).__name__ == "CppFunction" and "BnFinalizePartials" in scale.grad_fn.name()
    assert scale.grad_fn.name() == var.grad_fn.name()


def test_opcheck():
    x, weight, bias, partials = make_case((3, 4, 3, 3), torch.float32, "cpu", channels_last=True)
    torch.library.opcheck(torch.ops.wrn_fast.bn_finalize_partials.default,
                          (x.requires_grad_(), *partials, weight.requires_grad_(), bias, 1e-5))


@pytest.mark.parametrize("case,message", [
    (dict(weight=torch.ones(5)), "bn_finalize_partials: weight must be a per-channel vector of shape [4]"),
    (dict(bias=torch.ones(4, dtype=torch.int64)), "bn_finalize_partials: bias must be a floating-point tensor"),
    (dict(eps=-1.0), "bn_finalize_partials: eps must be >= 0"),
    (dict(mean_p=torch.zeros(2, 5)), "merge_partial_stats: mean_p must have shape [P, C]"),
    (dict(x=torch.randn(5)), "bn_finalize_partials: x must have rank >= 2"),
])
def test_bad_arguments_name_the_argument(case, message):
    args = dict(x=torch.randn(2, 4, 3, 3), mean_p=torch.zeros(2, 4), m2_p=torch.ones(2, 4),
                count_p=torch.tensor([9.0, 9.0]), weight=torch.ones(4), bias=torch.zeros(4), eps=1e-5)
    args.update(case)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.wrn_fast.bn_finalize_partials(*args.values())
