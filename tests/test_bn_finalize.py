"""bn_finalize and bn_update_running_stats against nn.BatchNorm2d / plain torch.

Tolerances (relative error vs a float64 reference):
  * bn_finalize fp32: 1e-6 — a sqrt, a division and a multiply-add per channel (~4 ulp);
  * running stats vs nn.BatchNorm2d: fp32 buffers 1e-6 (a few roundings per step,
    the batch stats themselves agree to ~1e-7); fp64 buffers 1e-12 (our batch stats and
    PyTorch's differ only in summation order).
"""
import pytest
import torch

import wrn_fast
from wrn_fast.ops import ext

from _checks import needs_ext, rel_err

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
pytestmark = needs_ext


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_bn_finalize_matches_formula(device, affine):
    g = torch.Generator().manual_seed(1)
    c = 37
    mean = torch.randn(c, generator=g, dtype=torch.float64) * 3
    var = torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.01
    weight = torch.randn(c, generator=g, dtype=torch.float64) if affine in ("both", "weight") else None
    bias = torch.randn(c, generator=g, dtype=torch.float64) if affine in ("both", "bias") else None
    eps = 1e-3
    to = lambda t: None if t is None else t.float().to(device)  # noqa: E731
    scale, shift = ext.bn_finalize(to(mean), to(var), to(weight), to(bias), eps)
    ref_scale = (weight if weight is not None else 1.0) / torch.sqrt(var.float().double() + eps)
    ref_shift = (bias if bias is not None else 0.0) - mean.float().double() * ref_scale
    assert scale.dtype == shift.dtype == torch.float32
    assert rel_err(scale, ref_scale) < 1e-6 and rel_err(shift, ref_shift) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_bn_finalize_reads_weights_of_any_float_dtype(device, param_dtype):
    mean, var = torch.randn(8, device=device), torch.rand(8, device=device) + 0.5
    weight, bias = torch.randn(8, device=device).to(param_dtype), torch.randn(8, device=device).to(param_dtype)
    scale, shift = ext.bn_finalize(mean, var, weight, bias, 1e-5)
    ref_scale = weight.float() * torch.rsqrt(var + 1e-5)
    assert rel_err(scale, ref_scale) < 1e-6 and rel_err(shift, bias.float() - mean * ref_scale) < 1e-6


def test_bn_finalize_gradcheck_float64():
    c = 5
    mean = torch.randn(c, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(c, dtype=torch.float64) + 0.5).requires_grad_()
    weight = torch.randn(c, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v, w, b: ext.bn_finalize(m, v, w, b, 1e-5), (mean, var, weight, bias))
    assert torch.autograd.gradcheck(lambda m, v: ext.bn_finalize(m, v, None, None, 1e-5), (mean, var))


@pytest.mark.parametrize("device", DEVICES)
def test_bn_finalize_grad_dtype_follows_half_weight(device):
    mean, var = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
    weight = torch.randn(4, device=device).half().requires_grad_()
    scale, shift = ext.bn_finalize(mean, var, weight, None, 1e-5)
    (scale.sum() + shift.sum()).backward()
    assert weight.grad.dtype == torch.float16


def test_bn_finalize_errors_name_the_argument():
    with pytest.raises(RuntimeError, match=r"wrn_fast::bn_finalize: var must be a per-channel vector of shape \[3\]"):
        ext.bn_finalize(torch.zeros(3), torch.zeros(4))
    with pytest.raises(RuntimeError, match=r"wrn_fast::bn_finalize: weight must be a per-channel vector"):
        ext.bn_finalize(torch.zeros(3), torch.ones(3), torch.ones(2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, 0.001, None])
@pytest.mark.parametrize("buffer_dtype", [torch.float32, torch.float64])
def test_running_stats_match_batchnorm2d_over_steps(device, momentum, buffer_dtype):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6, momentum=momentum).to(device=device, dtype=buffer_dtype).train()
    running_mean = torch.randn(6, device=device, dtype=buffer_dtype)  # non-trivial starting buffers
    running_var = torch.rand(6, device=device, dtype=buffer_dtype) + 0.5
    bn.running_mean.copy_(running_mean)
    bn.running_var.copy_(running_var)
    tracked = torch.zeros((), dtype=torch.long, device=device)
    for step in range(5):
        x = (torch.randn(4, 6, 5, 3, device=device) * (step + 1) + step).to(buffer_dtype)
        with torch.no_grad():
            bn(x)
        mean, var = ext.channel_stats(x)
        ext.bn_update_running_stats(running_mean, running_var, tracked, mean, var, x.numel() // 6, momentum)
    tol = 1e-12 if buffer_dtype == torch.float64 else 1e-6
    assert tracked.item() == bn.num_batches_tracked.item() == 5
    assert running_mean.dtype == buffer_dtype
    assert rel_err(running_mean, bn.running_mean) < tol
    assert rel_err(running_var, bn.running_var) < tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("buffer_dtype", [torch.float16, torch.bfloat16])
def test_running_stats_update_half_buffers_in_place(device, buffer_dtype):
    running_mean = torch.zeros(4, device=device, dtype=buffer_dtype)
    running_var = torch.ones(4, device=device, dtype=buffer_dtype)
    tracked = torch.zeros((), dtype=torch.long, device=device)
    mean, var = torch.randn(4, device=device), torch.rand(4, device=device)
    ext.bn_update_running_stats(running_mean, running_var, tracked, mean, var, 10, 0.5)
    ref_mean, ref_var = 0.5 * mean, 0.5 + 0.5 * var * 10 / 9
    assert running_mean.dtype == buffer_dtype
    assert rel_err(running_mean, ref_mean) < 1e-2  # one rounding to 8 (bf16) / 11 (fp16) bits
    assert rel_err(running_var, ref_var) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_count_of_one_raises_pytorch_error_and_leaves_buffers_untouched(device):
    running_mean = torch.randn(3, device=device)
    running_var = torch.rand(3, device=device)
    tracked = torch.full((), 7, dtype=torch.long, device=device)
    before = [t.clone() for t in (running_mean, running_var, tracked)]
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size "
                                         r"torch.Size\(\[1, 3, 1, 1\]\)"):
        ext.bn_update_running_stats(running_mean, running_var, tracked, torch.zeros(3, device=device),
                                    torch.zeros(3, device=device), 1, 0.1, input_size=(1, 3, 1, 1))
    for b, t in zip(before, (running_mean, running_var, tracked)):
        assert torch.equal(b, t)
    # the op itself refuses too, before mutating (for callers that skip the wrapper)
    with pytest.raises(RuntimeError, match=r"Expected more than 1 value per channel"):
        torch.ops.wrn_fast.bn_update_running_stats(running_mean, running_var, tracked, torch.zeros(3, device=device),
                                                   torch.zeros(3, device=device), 1, 0.1)
    for b, t in zip(before, (running_mean, running_var, tracked)):
        assert torch.equal(b, t)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_only_counts_like_batchnorm2d(device):
    bn = torch.nn.BatchNorm2d(3).to(device).train()
    bn.running_mean.fill_(0.5)
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    tracked = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        bn(torch.randn(0, 3, 4, 4, device=device))
    mean, var = ext.channel_stats(torch.randn(0, 3, 4, 4, device=device))
    ext.bn_update_running_stats(running_mean, running_var, tracked, mean, var, 0, 0.1)
    assert torch.equal(running_mean, bn.running_mean) and torch.equal(running_var, bn.running_var)
    assert tracked.item() == bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_finalize_and_running_stats(device):
    mean, var = torch.randn(5, device=device), torch.rand(5, device=device) + 0.5
    w, b = torch.randn(5, device=device, requires_grad=True), torch.randn(5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.wrn_fast.bn_finalize.default, (mean.requires_grad_(), var, w, b, 1e-5))
    torch.library.opcheck(torch.ops.wrn_fast.bn_finalize.default, (mean.detach(), var, None, None, 1e-5))
    args = (torch.zeros(5, device=device), torch.ones(5, device=device), torch.zeros((), dtype=torch.long,
                                                                                     device=device),
            torch.randn(5, device=device), torch.rand(5, device=device), 8)
    torch.library.opcheck(torch.ops.wrn_fast.bn_update_running_stats.default, args + (0.1,))
    torch.library.opcheck(torch.ops.wrn_fast.bn_update_running_stats.default, args + (None,))
