"""channel_stats and merge_partial_stats (wrn_fast._C) against float64 torch references.

Tolerances are relative errors ||out - ref|| / ||ref|| against a float64 reference
computed from the very same (already rounded) input values:
  * float64 inputs: 1e-12 (summation-order differences only);
  * fp32 / fp16 / bf16 inputs: 1e-5. The kernels accumulate in fp32 (CUDA) or double
    (CPU) with Welford / corrected two-pass merges, so the only error is fp32 rounding
    of a few operations per element (~1e-7 each) plus the final cast; 1e-5 leaves room
    for the sums over ~1e5 elements per channel on the GPU and is still 100x tighter
    than what a naive E[x^2] - E[x]^2 gives on the large-mean data below.
"""
import pytest
import torch

import wrn_fast
from wrn_fast.ops import ext

from _checks import needs_ext, rel_err
from _partials import tile_partials
from _references import batch_stats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}

pytestmark = needs_ext


def make_input(shape, dtype, device, mean=0.0, std=1.0, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    # per-channel offsets so that channels differ (a mixed-up channel index shows)
    offsets = torch.randn(c, generator=g, dtype=torch.float64) * std
    view = [1, c] + [1] * (len(shape) - 2)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * std + mean + offsets.view(view)).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return x.to(device)


SHAPES = [(4, 3, 8, 8), (1, 5, 7, 9), (16, 10), (2, 33, 5, 3), (3, 4, 2, 3, 5), (64, 7, 1, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_stats_matches_float64_reference(device, dtype, shape, channels_last):
    if channels_last and len(shape) < 4:
        pytest.skip("channels_last needs rank 4 or 5")
    if dtype == torch.float64 and device == "cuda":
        pass  # float64 is supported on CUDA too
    x = make_input(shape, dtype, device, channels_last=channels_last)
    mean, var = ext.channel_stats(x)
    ref_mean, ref_var = batch_stats(x.cpu().double())
    assert mean.dtype == var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert mean.shape == var.shape == (shape[1],)
    assert rel_err(mean.cpu(), ref_mean) < TOL[dtype]
    assert rel_err(var.cpu(), ref_var) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_stats_large_mean_small_variance(device, channels_last):
    # mean 1e4, std 1e-1 in fp32: E[x^2] - E[x]^2 would lose every digit of var.
    x = make_input((8, 6, 16, 16), torch.float32, device, mean=1e4, std=1e-1, channels_last=channels_last)
    mean, var = ext.channel_stats(x)
    ref_mean, ref_var = batch_stats(x.cpu().double())
    assert rel_err(mean.cpu(), ref_mean) < 1e-7  # fp32 rounding of a 1e4 mean
    assert rel_err(var.cpu(), ref_var) < 1e-4  # var of values whose fp32 ulp is 1e-3 of ~0.1 spreads


@pytest.mark.parametrize("device", DEVICES)
def test_channel_stats_non_dense_input_is_accepted(device):
    base = make_input((4, 6, 10, 10), torch.float32, device)
    x = base[:, ::2, 1:, ::3]  # strided view: neither NCHW- nor channels-last-contiguous
    mean, var = ext.channel_stats(x)
    ref_mean, ref_var = batch_stats(x.cpu().double())
    assert rel_err(mean.cpu(), ref_mean) < 1e-5 and rel_err(var.cpu(), ref_var) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_channel_stats_empty_batch_gives_nan_like_var_mean(device):
    # Decision: N = 0 gives NaN mean and var (what torch.var_mean gives); C = 0 gives empty stats.
    mean, var = ext.channel_stats(torch.randn(0, 3, 4, 4, device=device))
    assert torch.isnan(mean).all() and torch.isnan(var).all() and mean.shape == (3,)
    mean, var = ext.channel_stats(torch.randn(2, 0, 4, 4, device=device))
    assert mean.shape == var.shape == (0,)


def test_channel_stats_rejects_bad_input_with_clear_error():
    with pytest.raises(RuntimeError, match=r"wrn_fast::channel_stats: x must have rank >= 2"):
        ext.channel_stats(torch.randn(5))
    with pytest.raises(RuntimeError, match=r"wrn_fast::channel_stats: x must be float32, float16 or bfloat16"):
        ext.channel_stats(torch.ones(2, 3, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_merge_partial_stats_matches_channel_stats_on_random_partitions(device, seed):
    g = torch.Generator().manual_seed(seed)
    x = make_input((4, 5, 6, 7), torch.float32, device, mean=3.0, std=2.0, seed=seed)
    rows = x.numel() // x.shape[1]
    cuts = sorted(torch.randint(0, rows + 1, (6,), generator=g).tolist())
    boundaries = [0] + cuts + [cuts[-1]] + [rows]  # the repeated cut makes an empty tile
    mean_p, m2_p, count_p = tile_partials(x.cpu(), boundaries)
    mean, var = ext.merge_partial_stats(x, mean_p.float().to(device), m2_p.float().to(device),
                                        count_p.float().to(device))
    ref_mean, ref_var = ext.channel_stats(x)
    assert rel_err(mean.cpu(), ref_mean.cpu()) < 1e-6
    assert rel_err(var.cpu(), ref_var.cpu()) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_merge_partial_stats_all_tiles_empty_gives_nan(device):
    x = torch.randn(2, 3, device=device)
    mean, var = ext.merge_partial_stats(x, torch.ones(2, 3, device=device), torch.ones(2, 3, device=device),
                                        torch.zeros(2, device=device))
    assert torch.isnan(mean).all() and torch.isnan(var).all()


def test_merge_partial_stats_checks_shapes():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"wrn_fast::merge_partial_stats: mean_p must have shape \[P, C\]"):
        ext.merge_partial_stats(x, torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(RuntimeError, match=r"count_p must have shape \[P\]"):
        ext.merge_partial_stats(x, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def stats_autograd_reference(x, grad_mean, grad_var):
    xd = x.detach().double().requires_grad_()
    m, v = batch_stats(xd)
    torch.autograd.backward([m, v], [grad_mean.double(), grad_var.double()])
    return xd.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("which", ["channel_stats", "merge_partial_stats"])
def test_stats_backward_matches_autograd(device, channels_last, which):
    x = make_input((3, 4, 5, 6), torch.float32, device, mean=1.0, channels_last=channels_last).requires_grad_()
    if which == "channel_stats":
        mean, var = ext.channel_stats(x)
    else:
        mean_p, m2_p, count_p = tile_partials(x.detach().cpu(), [0, 20, 20, 90])
        mean, var = ext.merge_partial_stats(x, mean_p.float().to(device), m2_p.float().to(device),
                                            count_p.float().to(device))
    grad_mean, grad_var = torch.randn(4, device=device), torch.randn(4, device=device)
    torch.autograd.backward([mean, var], [grad_mean, grad_var])
    ref = stats_autograd_reference(x, grad_mean.cpu(), grad_var.cpu())
    assert x.grad.dtype == x.dtype and x.grad.stride() == x.stride()
    assert rel_err(x.grad.cpu(), ref) < 1e-5


def test_channel_stats_gradcheck_float64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ext.channel_stats(t), (x,))
    xcl = torch.randn(3, 2, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ext.channel_stats(t), (xcl,))


def test_merge_partial_stats_gradcheck_float64():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(t):
        mean_p, m2_p, count_p = tile_partials(t.detach(), [0, 3, 8])
        return ext.merge_partial_stats(t, mean_p, m2_p, count_p)

    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_channel_stats_and_merge(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    torch.library.opcheck(torch.ops.wrn_fast.channel_stats.default, (x,))
    torch.library.opcheck(torch.ops.wrn_fast.channel_stats.default, (x.to(memory_format=torch.channels_last),))
    torch.library.opcheck(torch.ops.wrn_fast.channel_stats.default, (torch.randn(5, 3, device=device,
                                                                                 requires_grad=True),))
    xg = x.clone().requires_grad_()
    mean_p, m2_p, count_p = (t.float().to(device) for t in tile_partials(x.cpu(), [0, 10, 32]))
    torch.library.opcheck(torch.ops.wrn_fast.merge_partial_stats.default, (xg, mean_p, m2_p, count_p))
