"""Reference compositions of the fused ops, shared by the benchmarks and tests/ (one copy):
what the eager PyTorch path runs (the speedup baseline, drawing torch's RNG for dropout), the
high-precision reference with a given keep mask (the validation oracle; the fused ops' mask is
bench.philox's), the activations by name, the per-channel batch statistics, and the merge of
the conv's partial statistics.

Depends on torch and the specification (the package wrn_fast/reference/) only, never on the fused ops it
checks nor on tests/.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wrn_fast.reference import apply_activation


def eager_bn_act_dropout(x, scale, shift, *, p, return_mask=False):
    """relu(batch_norm(x)) with the affine (scale, shift) as eager runs it, then F.dropout.

    With ``return_mask``: keep (where the output is nonzero) and nz (where the pre-dropout
    value is nonzero: elsewhere the mask does not matter)."""
    c = x.shape[1]
    rm = torch.zeros(c, device=x.device, dtype=torch.float32)
    rv = torch.ones(c, device=x.device, dtype=torch.float32)
    a = F.relu(F.batch_norm(x, rm, rv, scale, shift, training=False, eps=0.0))
    keep = nz = None
    if p > 0:
        if return_mask:
            nz = a != 0
        a = F.dropout(a, p, training=True)
        if return_mask:
            keep = a != 0
    return a, keep, nz


def eager_bn_act_conv(x, w, scale, shift, res, *, stride, pad, p, stats, return_mask=False):
    """The eager composition the fused conv replaces: separate PyTorch ops."""
    if scale is None and p > 0:
        raise ValueError("p: dropout needs the BN prologue (scale/shift), as in the fused op")
    a, keep, nz = (x, None, None) if scale is None else eager_bn_act_dropout(x, scale, shift, p=p,
                                                                             return_mask=return_mask)
    y = F.conv2d(a, w, None, stride, pad)
    if res is not None:
        y = y + res
    mean = var = None
    if stats:
        var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    return y, mean, var, keep, nz


def activation(z, act, slope=0.0):
    """The activation named ``act`` of z: the specification's (wrn_fast/reference/options.py: "relu",
    "leaky_relu" with ``slope``, "silu"), plus "identity" (the ops' BN without activation)."""
    return z if act == "identity" else apply_activation(z, act, slope)


def batch_stats(x):
    """Per-channel (mean, biased variance) of x over every dim but 1, in x's dtype: ([C], [C]).

    Differentiable (the stats ops' backward is checked against its autograd)."""
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


def reference_bn_act_conv(x, w, scale, shift, res, keep, *, stride, pad, p, rdt, act="relu", slope=0.0):
    """High-precision reference (explicit math) with a given keep mask. ``pad``: F.conv2d's
    padding, or (top, bottom, left, right) zero padding of the activation."""
    a = x.to(rdt)
    if scale is not None:
        a = activation(a * scale.to(rdt)[None, :, None, None] + shift.to(rdt)[None, :, None, None], act, slope)
    if p > 0:
        a = a * keep.to(rdt) / (1.0 - p)
    if isinstance(pad, (tuple, list)) and len(pad) == 4:
        a, pad = F.pad(a, (pad[2], pad[3], pad[0], pad[1])), 0
    y = F.conv2d(a, w.to(rdt), None, stride, pad)
    if res is not None:
        y = y + res.to(rdt)
    return y


def reference_bn_act_dropout(x, scale, shift, keep, *, p, rdt, act="relu", slope=0.0):
    """act(x * scale + shift) * keep / (1 - p) in ``rdt`` (explicit math, differentiable).

    x: [N, C, ...] any float dtype; scale, shift: [C]; keep: bool of x's shape (unused when p == 0)."""
    view = [1, -1] + [1] * (x.dim() - 2)
    a = activation(x.to(rdt) * scale.to(rdt).view(view) + shift.to(rdt).view(view), act, slope)
    if p > 0:
        a = a * keep.to(rdt) / (1.0 - p)
    return a


def combine_partials(mean_p, m2_p, count_p, C: int):
    """Per-channel (mean, biased var, count) from the op's partial statistics (Chan et al. merge).

    Accepts [T, C] partials (or [C]) with counts of shape [T], [T, 1], [T, C] or a scalar."""
    mp = mean_p.detach().to(torch.float64).reshape(-1, C)
    m2 = m2_p.detach().to(torch.float64).reshape(-1, C)
    cnt = count_p.detach().to(torch.float64)
    if cnt.numel() == 1:
        cnt = cnt.reshape(1, 1).expand(mp.shape[0], C)
    elif cnt.numel() == mp.shape[0]:
        cnt = cnt.reshape(-1, 1).expand(mp.shape[0], C)
    else:
        cnt = cnt.reshape(-1, C)
    n = cnt.sum(0)
    mean = (cnt * mp).sum(0) / n
    M2 = m2.sum(0) + (cnt * (mp - mean) ** 2).sum(0)
    return mean, M2 / n, n
