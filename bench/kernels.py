"""Kernel microbenchmarks: each fused op against the eager PyTorch composition it replaces
and torch.compile of that composition, on the real WRN convolution shapes.

Ops and their compositions
  bn_act_conv     y = conv(dropout(act(x * scale + shift))) [+ residual], optionally with the
                  per-channel mean / variance of y (the next BatchNorm's statistics).
                  Eager: F.batch_norm (eval form with mean 0, var 1, eps 0 == the affine) ->
                  F.relu -> F.dropout -> F.conv2d (cuDNN on GPU) -> + residual -> torch.var_mean.
  bn_act_dropout  y = dropout(act(x * scale + shift)), the same eager pieces without the conv.

Each WRN conv gets the fusion its place in the block needs (``role``):
  stem      no prologue, statistics out                (conv1 of the network)
  conv1     BN-ReLU prologue, statistics out            (first conv of a block; bn2 needs them)
  conv2     BN-ReLU-dropout prologue, residual add, statistics out (second conv of a block)
  shortcut  BN-ReLU prologue ('preact' projection), no statistics
  bnrelu    BN-ReLU prologue, statistics out            (WRN-50-2's post-activation convs)

Validation: a reference in float64 (CPU) or float32 with TF32 off (GPU) from the same inputs and
the same dropout keep mask. The fused ops' mask is the op contract's Philox (regenerated here by
an independent torch implementation, ``philox_keep``); the eager / compiled compositions draw
torch's RNG, so their validation call also returns the mask they drew (a separate call of the
same function; the timed call does not).
"""
from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import common
from .common import STATUS_ERROR, STATUS_INVALID, STATUS_OK, STATUS_SKIPPED, Skip

# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ConvSpec:
    N: int
    Cin: int
    Cout: int
    k: int
    stride: int
    H: int
    W: int
    role: str

    @property
    def pad(self) -> int:
        return self.k // 2

    @property
    def Ho(self) -> int:
        return (self.H + 2 * self.pad - self.k) // self.stride + 1

    @property
    def Wo(self) -> int:
        return (self.W + 2 * self.pad - self.k) // self.stride + 1

    @property
    def label(self) -> str:
        return (f"{self.role} N{self.N} {self.Cin}->{self.Cout} k{self.k}s{self.stride} {self.H}x{self.W}")

    def as_dict(self) -> Dict[str, object]:
        return {"N": self.N, "Cin": self.Cin, "Cout": self.Cout, "k": self.k, "stride": self.stride,
                "H": self.H, "W": self.W, "Ho": self.Ho, "Wo": self.Wo, "role": self.role}


def wrn_cifar_convs(depth: int, k: int, batch: int, res: int = 32, distinct: bool = True) -> List[ConvSpec]:
    """Every distinct (geometry, role) convolution of CIFAR WRN-depth-k (B(3,3), 'preact' shortcut);
    with ``distinct=False`` every convolution of the network in order (repeats included).

    Widths 16, 16k, 32k, 64k; groups at resolution res, res/2, res/4 (stride 2 on the first conv of
    groups 2 and 3); a 1x1 projection where a block changes width or stride; the 3x3 stem.
    """
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"depth: expected 6n + 4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    widths = (16, 16 * k, 32 * k, 64 * k)
    specs: List[ConvSpec] = [ConvSpec(batch, 3, widths[0], 3, 1, res, res, "stem")]
    cin, h = widths[0], res
    for g in range(3):
        cout, stride = widths[g + 1], (1 if g == 0 else 2)
        for b in range(n):
            s = stride if b == 0 else 1
            specs.append(ConvSpec(batch, cin, cout, 3, s, h, h, "conv1"))
            ho = (h + 2 - 3) // s + 1
            specs.append(ConvSpec(batch, cout, cout, 3, 1, ho, ho, "conv2"))
            if cin != cout or s != 1:
                specs.append(ConvSpec(batch, cin, cout, 1, s, h, h, "shortcut"))
            cin, h = cout, ho
    return _distinct(specs) if distinct else specs


def wrn50_2_convs(batch: int, res: int = 224) -> List[ConvSpec]:
    """Distinct convolutions of torchvision-style WRN-50-2 (bottleneck width x2, stride on the 3x3)."""
    specs = [ConvSpec(batch, 3, 64, 7, 2, res, res, "stem")]
    h = (res + 6 - 7) // 2 + 1
    h = (h + 2 - 3) // 2 + 1  # max pool 3x3 s2 p1
    inplanes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        width, out = planes * 2, planes * 4
        for b in range(blocks):
            s = stride if b == 0 else 1
            specs.append(ConvSpec(batch, inplanes, width, 1, 1, h, h, "bnrelu"))
            specs.append(ConvSpec(batch, width, width, 3, s, h, h, "bnrelu"))
            ho = (h + 2 - 3) // s + 1
            specs.append(ConvSpec(batch, width, out, 1, 1, ho, ho, "bnrelu"))
            if b == 0 and (s != 1 or inplanes != out):
                specs.append(ConvSpec(batch, inplanes, out, 1, s, h, h, "shortcut"))
            inplanes, h = out, ho
    return _distinct(specs)


def _distinct(specs: Sequence[ConvSpec]) -> List[ConvSpec]:
    seen, out = set(), []
    for s in specs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# name -> (kind, depth, k, default batches, resolution)
KERNEL_MODELS = {
    "wrn-28-10": ("cifar", 28, 10, (128, 512, 960), 32),
    "wrn-28-2": ("cifar", 28, 2, (128, 512, 960), 32),
    "wrn-16-8": ("cifar", 16, 8, (128, 512, 960), 32),
    "wrn-70-16": ("cifar", 70, 16, (128, 512, 960), 32),
    "wrn-50-2": ("imagenet", 50, 2, (64,), 224),
}
QUICK_KERNEL_MODELS = {"wrn-10-2": ("cifar", 10, 2, (8,), 16)}


def model_convs(name: str, batch: int, table=None) -> List[ConvSpec]:
    kind, depth, k, _, res = (table or {**KERNEL_MODELS, **QUICK_KERNEL_MODELS})[name]
    return wrn_cifar_convs(depth, k, batch, res) if kind == "cifar" else wrn50_2_convs(batch, res)


ROLE_CONFIG = {  # role -> (prologue, dropout, residual, stats)
    "stem": (False, False, False, True),
    "conv1": (True, False, False, True),
    "conv2": (True, True, True, True),
    "shortcut": (True, False, False, False),
    "bnrelu": (True, False, False, True),
}

# ----------------------------------------------------------------------------- dropout mask

_PHILOX_A, _PHILOX_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_M32 = 0xFFFFFFFF


def _umulhi(a: int, x: torch.Tensor) -> torch.Tensor:
    # high 32 bits of a * x for a, x < 2**32, in int64 without overflow (16-bit split)
    return (a * (x >> 16) + ((a * (x & 0xFFFF)) >> 16)) >> 16


def philox_uniform(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.rand(seed, idx)`` (Philox4x32-10, int32 offsets) in torch int64 arithmetic."""
    c0 = idx.to(torch.int64) & _M32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        n0 = _umulhi(_PHILOX_B, c2) ^ c1 ^ k0
        n2 = _umulhi(_PHILOX_A, c0) ^ c3 ^ k1
        c1 = (_PHILOX_B * c2) & _M32  # wraps mod 2**64; the low 32 bits are exact
        c3 = (_PHILOX_A * c0) & _M32
        c0, c2 = n0, n2
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    x = torch.where(c0 >= 2 ** 31, c0 - 2 ** 32, c0)  # bitcast to int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32, device=x.device)


def philox_keep(seed: int, shape: Sequence[int], p: float, device, chunk: int = 1 << 24) -> torch.Tensor:
    """The op contract's keep mask for a logical NCHW tensor: rand(seed, NCHW index) >= p."""
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.bool, device=device)
    pt = torch.tensor(p, dtype=torch.float32, device=device)
    for s in range(0, numel, chunk):
        idx = torch.arange(s, min(numel, s + chunk), device=device, dtype=torch.int64)
        out[s:s + idx.numel()] = philox_uniform(seed, idx) >= pt
    return out.view(*shape)


# ----------------------------------------------------------------------------- compositions


def eager_bn_act_conv(x, w, scale, shift, res, *, stride, pad, p, stats, return_mask=False):
    """The eager composition the fused conv replaces: separate PyTorch ops."""
    a = x
    if scale is not None:
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
            keep = a != 0  # where the pre-dropout value is 0 the mask does not matter
    y = F.conv2d(a, w, None, stride, pad)
    if res is not None:
        y = y + res
    mean = var = None
    if stats:
        var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    return y, mean, var, keep, nz


def eager_bn_act_dropout(x, scale, shift, *, p, return_mask=False):
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


def reference_bn_act_conv(x, w, scale, shift, res, keep, *, stride, pad, p, rdt):
    """High-precision reference (explicit math) with a given keep mask."""
    a = x.to(rdt)
    if scale is not None:
        a = torch.relu(a * scale.to(rdt)[None, :, None, None] + shift.to(rdt)[None, :, None, None])
    if p > 0:
        a = a * keep.to(rdt) / (1.0 - p)
    y = F.conv2d(a, w.to(rdt), None, stride, pad)
    if res is not None:
        y = y + res.to(rdt)
    return y


def reference_bn_act_dropout(x, scale, shift, keep, *, p, rdt):
    a = torch.relu(x.to(rdt) * scale.to(rdt)[None, :, None, None] + shift.to(rdt)[None, :, None, None])
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


# ----------------------------------------------------------------------------- implementations


NO_TRITON = {"flag": False}


def _triton_on_device_or_skip(device: torch.device) -> None:
    if NO_TRITON["flag"]:
        raise Skip("Triton entries disabled (--no-triton)")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise Skip("Triton kernel on CPU needs TRITON_INTERPRET=1 set before triton is imported")


def _fused_conv_fn():
    try:
        from wrn_fast.ops.conv import bn_act_conv
    except Exception as e:  # noqa: BLE001
        raise Skip(f"wrn_fast.ops.conv.bn_act_conv not importable: {type(e).__name__}: {e}")
    return bn_act_conv


def _fused_bn_act_fn(which: str):
    try:
        if which == "triton":
            from wrn_fast.ops.bn_act import bn_act_dropout
        else:
            from wrn_fast.ops.ext import bn_act_dropout
    except Exception as e:  # noqa: BLE001
        raise Skip(f"wrn_fast.ops.{'bn_act' if which == 'triton' else 'ext'}.bn_act_dropout not importable: "
                   f"{type(e).__name__}: {e}")
    return bn_act_dropout


def _compiled(fn, mode: Optional[str], device: torch.device):
    try:
        import torch._dynamo as dynamo

        dynamo.reset()
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 1024))
        return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False, fullgraph=True)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch.compile unavailable: {type(e).__name__}: {e}")


@dataclass
class Case:
    """One (op, shape, dtype, pass) with its input sets and the reference."""
    op: str
    spec: ConvSpec  # for bn_act_dropout: N, Cin(=C), H, W are the tensor
    dtype: str
    pass_: str
    device: torch.device
    p: float
    source: str
    sets: List[Dict[str, Optional[torch.Tensor]]] = field(default_factory=list)
    seed_val: int = 0
    flops: float = 0.0
    bytes: float = 0.0


def _make_case(op: str, spec: ConvSpec, dtype: str, pass_: str, device, p_drop: float, source: str,
               memory_format) -> Case:
    dt = common.DTYPES[dtype]
    prologue, drop, has_res, stats = ROLE_CONFIG[spec.role] if op == "bn_act_conv" else (True, True, False, False)
    p = p_drop if drop else 0.0
    case = Case(op, spec, dtype, pass_, device, p, source)
    es = torch.empty((), dtype=dt).element_size()
    x_b = spec.N * spec.Cin * spec.H * spec.W * es
    if op == "bn_act_conv":
        y_b = spec.N * spec.Cout * spec.Ho * spec.Wo * es
        w_b = spec.Cout * spec.Cin * spec.k * spec.k * es
        fl = 2.0 * spec.N * spec.Ho * spec.Wo * spec.Cout * spec.Cin * spec.k * spec.k
        fwd_b = x_b + w_b + y_b + (y_b if has_res else 0)
        # backward (fused design): dgrad reads gy, w, x (act' recompute), writes gx;
        # wgrad reads gy, x (prologue recompute), writes gw.
        x_needs_grad = spec.role != "stem"
        bwd_b = 2 * y_b + w_b + w_b + x_b + ((2 * x_b) if x_needs_grad else 0)
        case.flops = fl if pass_ == "fwd" else fl * (3 if x_needs_grad else 2)
        case.bytes = fwd_b if pass_ == "fwd" else fwd_b + bwd_b
        set_bytes = x_b + (y_b * (3 if has_res else 2)) + w_b
    else:
        case.flops = 0.0
        case.bytes = 2 * x_b if pass_ == "fwd" else 2 * x_b + 3 * x_b
        set_bytes = 2 * x_b * (2 if pass_ != "fwd" else 1)
    nbuf = common.n_buffers_for(set_bytes, device)
    g = torch.Generator(device="cpu").manual_seed(1234)
    need_grad = pass_ != "fwd"
    case.seed_val = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g).item())
    for _ in range(nbuf):
        s: Dict[str, Optional[torch.Tensor]] = {}
        x = torch.randn(spec.N, spec.Cin, spec.H, spec.W, generator=g).to(device=device, dtype=dt)
        x = x.contiguous(memory_format=memory_format)
        s["x"] = x.requires_grad_(need_grad and (op != "bn_act_conv" or spec.role != "stem"))
        if prologue:
            s["scale"] = (1.0 + 0.2 * torch.randn(spec.Cin, generator=g)).to(device).requires_grad_(need_grad)
            s["shift"] = (0.2 * torch.randn(spec.Cin, generator=g)).to(device).requires_grad_(need_grad)
        else:
            s["scale"] = s["shift"] = None
        if op == "bn_act_conv":
            fan_out = spec.Cout * spec.k * spec.k
            w = torch.randn(spec.Cout, spec.Cin, spec.k, spec.k, generator=g) * math.sqrt(2.0 / fan_out)
            s["w"] = w.to(device=device, dtype=dt).contiguous(memory_format=memory_format).requires_grad_(need_grad)
            if has_res:
                r = torch.randn(spec.N, spec.Cout, spec.Ho, spec.Wo, generator=g).to(device=device, dtype=dt)
                s["res"] = r.contiguous(memory_format=memory_format).requires_grad_(need_grad)
            else:
                s["res"] = None
            oshape = (spec.N, spec.Cout, spec.Ho, spec.Wo)
        else:
            oshape = tuple(x.shape)
        if need_grad:
            s["gy"] = torch.randn(*oshape, generator=g).to(device=device, dtype=dt).contiguous(
                memory_format=memory_format)
        s["seed"] = torch.tensor([case.seed_val], dtype=torch.int64, device=device)
        case.sets.append(s)
    return case


def _grad_inputs(s) -> List[Tuple[str, torch.Tensor]]:
    return [(k, s[k]) for k in ("x", "w", "scale", "shift", "res") if s.get(k) is not None and s[k].requires_grad]


def _reference(case: Case, keep: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """High-precision outputs (and grads) for input set 0 with the given keep mask."""
    s = case.sets[0]
    spec = case.spec
    rdt = torch.float64 if case.device.type == "cpu" else torch.float32
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        leaves = {k: (v.detach().to(rdt).requires_grad_(v.requires_grad) if v is not None and v.is_floating_point()
                      else v) for k, v in s.items()}
        if case.op == "bn_act_conv":
            y = reference_bn_act_conv(leaves["x"], leaves["w"], leaves["scale"], leaves["shift"], leaves["res"], keep,
                                      stride=spec.stride, pad=spec.pad, p=case.p, rdt=rdt)
        else:
            y = reference_bn_act_dropout(leaves["x"], leaves["scale"], leaves["shift"], keep, p=case.p, rdt=rdt)
        out = {"y": y.detach()}
        if case.op == "bn_act_conv" and ROLE_CONFIG[spec.role][3]:
            var, mean = torch.var_mean(y.detach(), dim=(0, 2, 3), correction=0)
            out["mean"], out["var"] = mean, var
        if case.pass_ != "fwd":
            names = [k for k, _ in _grad_inputs(s)]
            grads = torch.autograd.grad(y, [leaves[k] for k in names], s["gy"].to(rdt))
            for k, gr in zip(names, grads):
                out["grad_" + k] = gr
        return out
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _errors(case: Case, outs: Dict[str, Optional[torch.Tensor]], ref: Dict[str, torch.Tensor]) -> Dict[str, float]:
    errs = {}
    for k, r in ref.items():
        if k == "mean":
            # normalised by the channel std: the mean can be ~0
            o = outs.get("mean")
            if o is None:
                errs[k] = math.inf
                continue
            std = ref["var"].to(torch.float64).clamp_min(1e-30).sqrt()
            d = (o.to(torch.float64).to(r.device) - r.to(torch.float64)) / std
            errs[k] = float(d.abs().max().item())
        else:
            errs[k] = common.rel_err(outs.get(k), r)
    return errs


def _keep_rate_ok(keep: Optional[torch.Tensor], p: float, a_nonzero: Optional[torch.Tensor] = None) -> Optional[str]:
    """None if the mask's keep rate is within 6 sigma of 1 - p, else the reason."""
    if keep is None or p <= 0:
        return None
    k = keep if a_nonzero is None else keep[a_nonzero]
    n = k.numel()
    if n == 0:
        return None
    rate = k.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    if abs(rate - (1 - p)) > 6 * sigma + 1e-6:
        return f"dropout keep rate {rate:.4f}, expected {1 - p:.4f} +- {6 * sigma:.4f}"
    return None


class Impl:
    """An implementation: ``build(case)`` returns ``(run(set, return_mask) -> outs dict, mask_kind)``."""

    def __init__(self, name: str, build: Callable):
        self.name = name
        self.build = build


def _skip_compile_in_quick_cpu(case: Case) -> None:
    if case.device.type == "cpu" and case.quick_compile is False:  # type: ignore[attr-defined]
        raise Skip("torch.compile skipped in --quick on CPU (compile time exceeds the quick budget; "
                   "pass --compile)")


def _conv_composition(fn):
    def build(case: Case):
        spec = case.spec
        stats = ROLE_CONFIG[spec.role][3]

        def run(s, return_mask=False):
            y, mean, var, keep, nz = fn(s["x"], s["w"], s["scale"], s["shift"], s["res"], stride=spec.stride,
                                    pad=spec.pad, p=case.p, stats=stats, return_mask=return_mask)
            return {"y": y, "mean": mean, "var": var, "keep": keep, "nz": nz}

        return run, "own"

    return build


def _build_eager_conv(case):
    return _conv_composition(eager_bn_act_conv)(case)


def _build_compile_conv(mode):
    def build(case):
        _skip_compile_in_quick_cpu(case)
        c = _compiled(eager_bn_act_conv, mode, case.device)
        return _conv_composition(c)(case)

    return build


def _build_fused_conv(case: Case):
    bn_act_conv = _fused_conv_fn()
    _triton_on_device_or_skip(case.device)
    spec = case.spec
    prologue, drop, has_res, stats = ROLE_CONFIG[spec.role]
    # fp32 on GPU: the compositions run cuDNN with TF32 (PyTorch's conv default), so the fused op may too
    tf32 = {"allow_tf32": True} if (case.device.type == "cuda" and case.dtype == "fp32") else {}

    def run(s, return_mask=False):
        y, mean_p, m2_p, count_p = bn_act_conv(
            s["x"], s["w"], s["scale"], s["shift"], None, s["res"], s["seed"] if case.p > 0 else None,
            stride=spec.stride, padding=(spec.pad,) * 4, act="relu" if prologue else "identity",
            dropout_p=case.p, compute_stats=stats, **tf32)
        out = {"y": y}
        if stats and return_mask:
            mean, var, n = combine_partials(mean_p, m2_p, count_p, spec.Cout)
            out["mean"], out["var"] = mean, var
            out["count"] = n
        return out

    return run, "philox"


def _build_ext_then_conv(case: Case):
    """The unfused fallback path of wrn_fast (C++/CUDA bn_act_dropout op + PyTorch conv + add)."""
    bad = _fused_bn_act_fn("ext")
    spec = case.spec
    prologue, drop, has_res, stats = ROLE_CONFIG[spec.role]

    def run(s, return_mask=False):
        a = s["x"]
        if prologue:
            a = bad(a, s["scale"], s["shift"], act="relu", p=case.p, seed=s["seed"] if case.p > 0 else None)
        y = F.conv2d(a, s["w"], None, spec.stride, spec.pad)
        if s["res"] is not None:
            y = y + s["res"]
        out = {"y": y}
        if stats:
            var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
            out["mean"], out["var"] = mean, var
        return out

    return run, "philox"


def _bad_composition(fn):
    def build(case: Case):
        def run(s, return_mask=False):
            y, keep, nz = fn(s["x"], s["scale"], s["shift"], p=case.p, return_mask=return_mask)
            return {"y": y, "keep": keep, "nz": nz}

        return run, "own"

    return build


def _build_eager_bad(case):
    return _bad_composition(eager_bn_act_dropout)(case)


def _build_compile_bad(mode):
    def build(case):
        _skip_compile_in_quick_cpu(case)
        return _bad_composition(_compiled(eager_bn_act_dropout, mode, case.device))(case)

    return build


def _build_fused_bad(which):
    def build(case: Case):
        fn = _fused_bn_act_fn(which)
        if which == "triton":
            _triton_on_device_or_skip(case.device)

        seed_of = (lambda s: s["seed"] if case.p > 0 else None)
        if which == "triton":  # wrn_fast.ops.bn_act.bn_act_dropout(x, scale, shift, seed, *, act, dropout_p)
            def run(s, return_mask=False):
                return {"y": fn(s["x"], s["scale"], s["shift"], seed_of(s), act="relu", dropout_p=case.p)}
        else:  # wrn_fast.ops.ext.bn_act_dropout(x, scale, shift, act, negative_slope, p, seed)
            def run(s, return_mask=False):
                return {"y": fn(s["x"], s["scale"], s["shift"], act="relu", p=case.p, seed=seed_of(s))}

        return run, "philox"

    return build


TRITON_IMPLS = ("wrn_fast", "wrn_fast-triton")


def implementations(op: str, compile_modes: Sequence[str]) -> List[Impl]:
    """The implementations timed for ``op``, eager first (the speedup baseline)."""
    if op == "bn_act_conv":
        impls = [Impl("eager", _build_eager_conv)]
        impls += [Impl(f"compile-{m}", _build_compile_conv(m)) for m in compile_modes]
        impls += [Impl("wrn_fast", _build_fused_conv), Impl("wrn_fast-ext+conv2d", _build_ext_then_conv)]
    else:
        impls = [Impl("eager", _build_eager_bad)]
        impls += [Impl(f"compile-{m}", _build_compile_bad(m)) for m in compile_modes]
        impls += [Impl("wrn_fast-triton", _build_fused_bad("triton")), Impl("wrn_fast-ext", _build_fused_bad("ext"))]
    return impls


# ----------------------------------------------------------------------------- running


def _step(case: Case, run: Callable, s) -> object:
    out = run(s)
    if case.pass_ == "fwd":
        return out["y"]
    ins = [v for _, v in _grad_inputs(s)]
    return torch.autograd.grad(out["y"], ins, s["gy"], allow_unused=True)


def _validate(case: Case, run: Callable, mask_kind: str, ref_cache: Dict[str, object]) -> Tuple[Dict[str, float], Optional[str]]:
    s = case.sets[0]
    out = run(s, return_mask=True)
    keep = None
    why = None
    if case.p > 0:
        if mask_kind == "philox":
            if "philox" not in ref_cache:
                shape = tuple(s["x"].shape)
                ref_cache["philox"] = philox_keep(case.seed_val, shape, case.p, case.device)
            keep = ref_cache["philox"]
        else:
            keep = out.get("keep")
            if keep is None:
                return {}, "composition returned no dropout mask"
            why = _keep_rate_ok(keep, case.p, out.get("nz"))
    key = "ref_philox" if (case.p > 0 and mask_kind == "philox") else None
    if key is not None and key in ref_cache:
        ref = ref_cache[key]
    else:
        ref = _reference(case, keep)
        if key is not None:
            ref_cache[key] = ref
    outs = {"y": out["y"], "mean": out.get("mean"), "var": out.get("var")}
    if case.pass_ != "fwd":
        names = [k for k, _ in _grad_inputs(s)]
        grads = torch.autograd.grad(out["y"], [s[k] for k in names], s["gy"], allow_unused=True)
        for k, gr in zip(names, grads):
            outs["grad_" + k] = gr
    if "count" in out:
        exp = case.spec.N * case.spec.Ho * case.spec.Wo
        if not bool((out["count"] == exp).all()):
            why = f"statistics count {out['count'].flatten()[:4].tolist()} != N*Ho*Wo = {exp}"
    return _errors(case, outs, ref), why


def run_case(case: Case, impls: Sequence[Impl], rec, args, budget: common.Budget) -> None:
    ref_cache: Dict[str, object] = {}
    tkey = common.tol_key(case.dtype, case.device)
    tol = common.TOLERANCES[tkey]
    eager_ms = None
    base = {
        "section": "kernel", "op": case.op, "source": case.source, "shape": case.spec.as_dict(),
        "shape_label": case.spec.label if case.op == "bn_act_conv" else
        f"N{case.spec.N} C{case.spec.Cin} {case.spec.H}x{case.spec.W}",
        "dtype": common.dtype_label(case.dtype, case.device), "pass": case.pass_, "dropout_p": case.p,
        "flops": case.flops or None, "bytes": case.bytes, "tol": tol, "n_buffers": len(case.sets),
    }
    for impl in impls:
        r = dict(base, impl=impl.name, status=None, reason=None, median_ms=None, p10_ms=None, p90_ms=None,
                 tflops=None, gbs=None, pct_peak=None, speedup_vs_eager=None, errors=None, max_rel_err=None)
        if args.impls and not any(f in impl.name for f in args.impls):
            continue
        if budget.expired():
            rec.add(dict(r, status=STATUS_SKIPPED, reason="time budget exhausted (--budget-min)"))
            continue
        try:
            run, mask_kind = impl.build(case)
            errs, why = _validate(case, run, mask_kind, ref_cache)
            r["errors"] = errs
            r["max_rel_err"] = max(errs.values()) if errs else None
            if why is not None or not errs or any(not (e <= tol) for e in errs.values()):
                bad = why or ", ".join(f"{k}={v:.3g}" for k, v in errs.items() if not (v <= tol))
                rec.add(dict(r, status=STATUS_INVALID, reason=f"validation failed (tol {tol:g}): {bad}"))
                continue
            interp = case.device.type == "cpu" and mask_kind == "philox" and impl.name in TRITON_IMPLS
            if interp:
                r["note"] = "Triton interpreter on CPU: validated, timed once; not a performance figure"
            t = common.time_fn(lambda i: _step(case, run, case.sets[i]), len(case.sets), case.device,
                               warmup=0 if interp else args.warmup, reps=1 if interp else args.reps,
                               min_warmup_s=args.min_warmup_s, max_s=args.max_time_per_entry)
            r.update(t)
            sec = t["median_ms"] * 1e-3
            if case.flops:
                r["tflops"] = case.flops / sec / 1e12
            r["gbs"] = case.bytes / sec / 1e9
            peaks = rec.peaks or {}
            if case.op == "bn_act_conv":
                pk = (peaks.get("matmul_tflops") or {}).get(r["dtype"])
                if pk:
                    r["pct_peak"] = 100.0 * r["tflops"] / pk
                    r["peak_ref"] = f"matmul {r['dtype']} {pk:.1f} TFLOP/s"
            else:
                pk = peaks.get("copy_gbs")
                if pk:
                    r["pct_peak"] = 100.0 * r["gbs"] / pk
                    r["peak_ref"] = f"copy {pk:.1f} GB/s"
            if impl.name == "eager":
                eager_ms = t["median_ms"]
            if eager_ms:
                r["speedup_vs_eager"] = eager_ms / t["median_ms"]
            r["status"] = STATUS_OK
            rec.add(r)
        except Skip as e:
            rec.add(dict(r, status=STATUS_SKIPPED, reason=str(e)))
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:400]
            rec.add(dict(r, status=STATUS_ERROR, reason=msg))
            if case.device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            if case.device.type == "cuda":
                torch.cuda.empty_cache()


def plan(args, device: torch.device) -> List[Tuple[str, ConvSpec, str, str, str]]:
    """(op, spec, dtype, pass, source) in priority order: first dtype, first model, first batch first."""
    table = QUICK_KERNEL_MODELS if args.quick else KERNEL_MODELS
    names = args.models or list(table)
    items = []
    for dtype in args.dtypes:
        for name in names:
            if name not in table:
                continue
            batches = table[name][3]
            if args.batches and table[name][0] == "cifar":  # WRN-50-2 keeps its ImageNet batch
                batches = list(args.batches)
            for b in batches:
                specs = model_convs(name, b, table)
                if args.quick:  # one convolution per role keeps the smoke run at seconds
                    specs = [next(s for s in specs if s.role == r) for r in dict.fromkeys(s.role for s in specs)]
                for op in args.ops:
                    if op == "bn_act_conv":
                        use = specs
                    else:  # the activation tensors that feed a BN-act(-dropout): conv inputs past the stem
                        use = _distinct([ConvSpec(s.N, s.Cin, s.Cin, 1, 1, s.H, s.W, "conv2") for s in specs
                                         if s.role != "stem"])
                        if args.quick:
                            use = use[:1]
                    for pass_ in args.passes:
                        for s in use:
                            items.append((op, s, dtype, pass_, f"{name} b{b}"))
    return items


def run_kernels(args, device: torch.device, rec, budget: common.Budget) -> None:
    NO_TRITON["flag"] = bool(getattr(args, "no_triton", False))
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    done = set()
    for op, spec, dtype, pass_, source in plan(args, device):
        key = (op, spec, dtype, pass_)
        if key in done:  # the same shape from another model: measured once
            continue
        done.add(key)
        modes = [m for m in args.compile_modes
                 if m != "max-autotune" or not args.max_autotune_sources or source in args.max_autotune_sources]
        impls = implementations(op, modes)
        if budget.expired():
            for impl in impls:
                rec.add({"section": "kernel", "op": op, "source": source, "shape": spec.as_dict(),
                         "shape_label": spec.label, "dtype": common.dtype_label(dtype, device), "pass": pass_,
                         "impl": impl.name, "status": STATUS_SKIPPED, "reason": "time budget exhausted (--budget-min)"})
            continue
        try:
            case = _make_case(op, spec, dtype, pass_, device, args.dropout, source, memory_format)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory for the input sets
            for impl in impls:
                rec.add({"section": "kernel", "op": op, "source": source, "shape": spec.as_dict(),
                         "shape_label": spec.label, "dtype": common.dtype_label(dtype, device), "pass": pass_,
                         "impl": impl.name, "status": STATUS_ERROR,
                         "reason": f"inputs: {type(e).__name__}: {e}".splitlines()[0][:300]})
            continue
        case.quick_compile = bool(args.compile) or not args.quick  # type: ignore[attr-defined]
        run_case(case, impls, rec, args, budget)
        del case
        gc.collect()
