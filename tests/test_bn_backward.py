"""bn_backward_apply (dX = a[c]*grad + b[c]*x + c[c]) against plain torch, and the
full BN backward assembled from the wrn_fast pieces against F.batch_norm's autograd.

Tolerances (relative error vs float64): fp32 1e-6 (two multiply-adds per element);
fp16 / bf16: one final rounding of the output, 2**-11 resp. 2**-8 relative, so 1e-3
and 8e-3; float64 1e-12.
"""
import pytest
import torch
import torch.nn.functional as F

import wrn_fast
from wrn_fast.ops import ext
from wrn_fast.ops.bn_act import bn_act_dropout

from _checks import needs_ext, rel_err

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
pytestmark = needs_ext


def per_channel(v, like):
    return v.view([1, -1] + [1] * (like.dim() - 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,channels_last", [((2, 5, 4, 3), False), ((2, 5, 4, 3), True), ((7, 9), False),
                                                 ((1, 3, 6, 6), True), ((2, 3, 2, 2, 2), False)])
@pytest.mark.parametrize("with_grad", [True, False])
def test_bn_backward_apply_matches_torch(device, dtype, shape, channels_last, with_grad):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.contiguous()  # mixed layouts on purpose
    coef_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    a, b, c = (torch.randn(shape[1], generator=g, dtype=coef_dtype) for _ in range(3))
    out = ext.bn_backward_apply(grad.to(device) if with_grad else None, x.to(device), a.to(device), b.to(device),
                                c.to(device))
    ref = per_channel(b, x).double() * x.double() + per_channel(c, x).double()
    if with_grad:
        ref = ref + per_channel(a, x).double() * grad.double()
    assert out.dtype == dtype and out.stride() == x.stride()
    assert rel_err(out, ref) < TOL[dtype]


def test_bn_backward_apply_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"wrn_fast::bn_backward_apply: a must be Float, got Double"):
        ext.bn_backward_apply(None, x, torch.zeros(3, dtype=torch.float64), torch.zeros(3), torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"grad must have the shape of x"):
        ext.bn_backward_apply(torch.zeros(2, 3), x, torch.zeros(3), torch.zeros(3), torch.zeros(3))


def test_bn_backward_apply_gradcheck_float64():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    a, b, c = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(ext.bn_backward_apply, (grad, x, a, b, c))
    assert torch.autograd.gradcheck(lambda x_, b_, c_: ext.bn_backward_apply(None, x_, a.detach(), b_, c_), (x, b, c))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_training_backward_assembled_from_ops(device, channels_last):
    """channel_stats -> bn_finalize -> bn_act_dropout (identity): same grads as F.batch_norm."""
    torch.manual_seed(0)
    x = (torch.randn(4, 6, 5, 5, device=device) * 3 + 2)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, device=device), torch.randn(6, device=device)
    grad_y = torch.randn(4, 6, 5, 5, device=device)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    mean, var = ext.channel_stats(leaves[0])
    scale, shift = ext.bn_finalize(mean, var, leaves[1], leaves[2], 1e-5)
    y = bn_act_dropout(leaves[0], scale, shift, "identity", 0.0, 0.0, None)
    y.backward(grad_y)
    refs = [t.detach().double().cpu().requires_grad_() for t in (x, weight, bias)]
    y_ref = F.batch_norm(refs[0], None, None, refs[1], refs[2], training=True, eps=1e-5)
    y_ref.backward(grad_y.double().cpu())
    assert rel_err(y, y_ref) < 1e-5
    for got, ref in zip(leaves, refs):
        assert rel_err(got.grad, ref.grad) < 1e-4  # grad_x cancels (sum g, sum g*xhat terms): ~1e-6 typical


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_bn_backward_apply(device):
    x = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    grad = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    a, b, c = (torch.randn(3, device=device, requires_grad=True) for _ in range(3))
    op = torch.ops.wrn_fast.bn_backward_apply.default
    torch.library.opcheck(op, (grad, x, a, b, c))
    torch.library.opcheck(op, (None, x.to(memory_format=torch.channels_last), a, b, c))
    torch.library.opcheck(op, (grad.detach().half(), x.detach().half(), a, b, c))


@pytest.mark.usefixtures("poison_uninitialized_outputs")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_stats_backward_adds_a_gradient_in_the_same_pass(device, dtype, channels_last):
    """channel_stats_backward(x, mean, grad_mean, grad_var, grad) = grad + d(mean, var)/dx
    (the one C++ formula, used by bn_batch_act_conv's backward to add dgrad's grad_x) against
    float64 autograd of torch's mean / biased var; grad=None is the statistics term alone;
    x's dtype and memory format kept."""
    torch.manual_seed(1)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    x = (torch.randn(3, 5, 4, 6, dtype=torch.float64) * 2 + 1).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    grad_mean, grad_var = torch.randn(5, dtype=sd), torch.randn(5, dtype=sd)
    x64 = x.double().requires_grad_()
    mean64 = x64.mean(dim=(0, 2, 3))
    var64 = x64.var(dim=(0, 2, 3), unbiased=False)
    (stats_term,) = torch.autograd.grad((mean64 * grad_mean.double()).sum() + (var64 * grad_var.double()).sum(), x64)
    mean = mean64.detach().to(sd)
    dev = dict(device=device)
    got = ext.channel_stats_backward(x.to(**dev), mean.to(**dev), grad_mean.to(**dev), grad_var.to(**dev),
                                     grad=grad.to(**dev))
    alone = ext.channel_stats_backward(x.to(**dev), mean.to(**dev), grad_mean.to(**dev), grad_var.to(**dev))
    for out, ref in ((got, stats_term + grad.double()), (alone, stats_term)):
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert not out.isnan().any()
        assert rel_err(out.cpu(), ref) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_channel_stats_backward(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    grad = torch.randn(2, 3, 4, 4, device=device)
    mean, gm, gv = (torch.randn(3, device=device) for _ in range(3))
    op = torch.ops.wrn_fast.channel_stats_backward.default
    torch.library.opcheck(op, (x, mean, gm, gv), {"grad": grad}, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(op, (x.to(memory_format=torch.channels_last), mean, None, gv),
                          test_utils=("test_schema", "test_faketensor"))
