"""The register-blocked channels-last fp32 loops of the CPU BN kernels (csrc/cpu_loops.h:
shifted_sums_blocked in channel_stats, grad_sums_blocked in batch_norm_act's backward).

They handle the first 16 * (C // 16) channels of a channels-last fp32 tensor; the scalar
loops do the rest. The op tests elsewhere use C < 16, so these cases use C = 37 (two
blocks of 16 + 5 scalar channels) and the job's C = 32:
  * against float64 batch_norm + act, differentiated by autograd: forward 2e-6, gradients
    2e-5 (the fp32 tolerances of tests/test_batch_norm_act.py, same reasoning);
  * blocked vs scalar channels bit for bit: channel 33 (scalar) is a copy of channel 1
    (blocked) with the same weight and bias, and both loops sum each channel from 0 in
    row order without FMA, so mean, var, y, grad_x, grad_weight and grad_bias of the two
    channels must be equal exactly.
"""
import pytest
import torch
import torch.nn.functional as F

from wrn_fast.ops import ext

from _checks import needs_ext, poison_outputs, rel_err
from _references import activation

pytestmark = [needs_ext, poison_outputs]


def _case(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * 2 + torch.randn(c, generator=g).view(1, -1, 1, 1) * 3
    weight = torch.rand(c, generator=g) + 0.5
    bias = torch.randn(c, generator=g) * 0.5
    grad_y = torch.randn(n, c, h, w, generator=g)
    return x, weight, bias, grad_y


def _run(x, weight, bias, grad_y, act):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y, mean, var = ext.batch_norm_act(x, weight, bias, 1e-5, act, 0.01, 0.0, None)
    y.backward(grad_y)
    return y, mean, var, x.grad, weight.grad, bias.grad


@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu"])  # leaky_relu: scalar loops only
@pytest.mark.parametrize("shape", [(8, 37, 5, 3), (16, 32, 4, 4)])
def test_channels_last_fp32_matches_float64(shape, act):
    x, weight, bias, grad_y = _case(*shape)
    x_cl, g_cl = x.contiguous(memory_format=torch.channels_last), grad_y.contiguous(memory_format=torch.channels_last)
    y, mean, var, gx, gw, gb = _run(x_cl, weight, bias, g_cl, act)

    xd, wd, bd = (t.double().requires_grad_() for t in (x, weight, bias))
    yd = activation(F.batch_norm(xd, None, None, wd, bd, True, 0.0, 1e-5), act, 0.01)
    yd.backward(grad_y.double())
    assert rel_err(mean, xd.mean(dim=(0, 2, 3))) <= 2e-6
    assert rel_err(var, xd.var(dim=(0, 2, 3), unbiased=False)) <= 2e-6
    assert rel_err(y, yd) <= 2e-6
    assert rel_err(gx, xd.grad) <= 2e-5
    assert rel_err(gw, wd.grad) <= 2e-5
    assert rel_err(gb, bd.grad) <= 2e-5


@pytest.mark.parametrize("act", ["identity", "relu"])
def test_blocked_and_scalar_channels_agree_bit_for_bit(act):
    x, weight, bias, grad_y = _case(8, 37, 5, 3, seed=1)
    blocked, scalar = 1, 33  # channel 1: first 16-channel block; channel 33: the scalar tail
    x[:, scalar] = x[:, blocked]
    grad_y[:, scalar] = grad_y[:, blocked]
    weight[scalar], bias[scalar] = weight[blocked], bias[blocked]
    out = _run(x.contiguous(memory_format=torch.channels_last), weight, bias,
               grad_y.contiguous(memory_format=torch.channels_last), act)
    y, mean, var, gx, gw, gb = out
    assert not any(torch.isnan(t).any() for t in out)
    for t in (mean, var, gw, gb):
        assert torch.equal(t[scalar], t[blocked])
    for t in (y, gx):
        assert torch.equal(t[:, scalar], t[:, blocked])
