"""The per-layer rows of the GPU table (bench.gpu_table).

Each distinct convolution of WRN-28-10 at batch 128 (``LAYER_MODEL``), fused ``fwd`` / ``dgrad`` /
``wgrad`` with the fusion of its place in the block (BN-ReLU prologue, dropout, residual,
statistics; no dgrad for the stem) on the route the model runs it (``route`` in each row,
kernels.bn_act_conv.conv_route: on a pass route the forward is the elementwise pass + the
prologue-free GEMM, and so is its roofline prediction), against cuDNN's plain convolution of
the same shape (F.conv2d / aten.convolution_backward). Both are validated against a float32 (TF32 off; float64
on CPU) reference with the op contract's dropout mask, then timed A/B interleaved; the fused rows
carry the roofline prediction of bench/roofline.py where its JSON is there.
"""
from __future__ import annotations

import gc
import glob
import json
import math
import os
import time
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import common
from .common import STATUS_ERROR, STATUS_INVALID, STATUS_OK, STATUS_SKIPPED, Skip
from .philox import keep_mask_nchw
from .references import reference_bn_act_conv
from .shapes import ROLE_CONFIG, wrn_cifar_convs, wrn_cifar_named_convs

LAYER_MODEL = ("wrn-28-10", 28, 10, 128, 32)  # name, depth, k, batch, resolution
TINY_LAYER_MODEL = ("wrn-10-1", 10, 1, 2, 8)  # --tiny: the same code paths at toy sizes
PASSES = ("fwd", "dgrad", "wgrad")


def load_roofline(results_dir: str, model: str = LAYER_MODEL[0], device_kind: str = "h200"
                  ) -> Tuple[Dict[tuple, float], Optional[str]]:
    """Predicted ms of each fused conv kernel of ``model``, keyed by (pass, ConvSpec), from the
    newest roofline_*.json of bench/roofline.py (its ``models[model][device]["kernels"]``: impl
    "fused", what "bn_act_conv fwd|dgrad|wgrad ...", layer named as bench.static names it,
    time_s); ({}, None) when there is none or it has no such model."""
    paths = sorted(glob.glob(os.path.join(results_dir, "roofline_*.json")), key=os.path.getmtime)
    if not paths:
        return {}, None
    try:
        with open(paths[-1]) as f:
            per_dev = json.load(f)["models"][model]
        kernels = (per_dev.get(device_kind) or next(iter(per_dev.values())))["kernels"]
    except (OSError, ValueError, KeyError, StopIteration, AttributeError, TypeError):
        return {}, None
    name, depth, k, batch, res = LAYER_MODEL
    specs = dict(wrn_cifar_named_convs(depth, k, batch, res))
    per_layer: Dict[str, Dict[str, float]] = {}  # layer -> pass -> ms (a layer's kernels summed)
    for kern in kernels:
        q = _roofline_pass(str(kern.get("what", "")))
        if kern.get("impl") != "fused" or q is None or kern.get("time_s") is None:
            continue
        times = per_layer.setdefault(kern.get("layer"), {})
        times[q] = times.get(q, 0.0) + 1e3 * float(kern["time_s"])
    out: Dict[tuple, float] = {}
    for layer, times in per_layer.items():  # the first layer of each shape (they are equal)
        spec = specs.get(layer)
        if spec is not None:
            for q, ms in times.items():
                out.setdefault((q, spec), ms)
    return out, os.path.relpath(paths[-1], common.REPO) if out else None


def _roofline_pass(what: str) -> Optional[str]:
    """The table pass a roofline kernel belongs to: the conv kernels ("bn_act_conv fwd|dgrad|wgrad
    ..."), and on a pass route ("<route>: ...", bench.roofline_model) the elementwise pass the
    forward runs ("bn_act_dropout fwd ...") or the backward runs again for wgrad ("... again for
    wgrad"); None for anything else (the dropout bits, timed outside the rows)."""
    words = what.split()
    if words[:1] == ["bn_act_conv"] and len(words) > 1 and words[1] in PASSES:
        return words[1]
    route, _, rest = what.partition(": ")
    if route in ("two-pass", "pass-fwd", "pass-fwd-wgrad") and rest.startswith("bn_act_dropout fwd"):
        return "wgrad" if "again for wgrad" in rest else "fwd"
    return None


# ----------------------------------------------------------------------------- per-layer rows


def _kernels_module():
    try:
        from wrn_fast.kernels import bn_act_conv as K
    except Exception as e:  # noqa: BLE001
        raise Skip(f"wrn_fast.kernels.bn_act_conv not importable: {type(e).__name__}: {e}")
    return K


def _layer_sets(K, spec, dt, device, memory_format, p: float, n_sets: int):
    """``n_sets`` random input sets of ``spec`` (x, w, gy, residual, scale, shift, seed); with
    dropout, also the keep mask as bits where the kernels take it so (else Philox in their loops):
    as the model runs it, evaluated once per step, outside the timed calls."""
    g = torch.Generator(device="cpu").manual_seed(2024)
    sets = []
    for _ in range(n_sets):
        s = {"x": torch.randn(spec.N, spec.Cin, spec.H, spec.W, generator=g),
             "w": torch.randn(spec.Cout, spec.Cin, spec.k, spec.k, generator=g)
             * math.sqrt(2.0 / (spec.Cout * spec.k ** 2)),
             "gy": torch.randn(spec.N, spec.Cout, spec.Ho, spec.Wo, generator=g),
             "res": torch.randn(spec.N, spec.Cout, spec.Ho, spec.Wo, generator=g),
             "scale": 1.0 + 0.2 * torch.randn(spec.Cin, generator=g),
             "shift": 0.2 * torch.randn(spec.Cin, generator=g)}
        for k in ("x", "w", "gy", "res"):
            s[k] = s[k].to(device=device, dtype=dt).contiguous(memory_format=memory_format)
        s["scale"], s["shift"] = s["scale"].to(device), s["shift"].to(device)
        s["seed"] = torch.tensor([int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))], dtype=torch.int64,
                                 device=device)
        if p > 0 and hasattr(K, "dropout_bits"):
            s["keep_bits"] = K.dropout_bits(s["seed"], tuple(s["x"].shape), p)
        sets.append(s)
    return sets


def layer_route(K, spec, dt, p: float) -> str:
    """The route the model runs this conv on (kernels.bn_act_conv.conv_route; 'fused' for a conv
    without the BN-act prologue, or kernels that predate routes)."""
    prologue = ROLE_CONFIG[spec.role][0]
    decide = getattr(K, "conv_route", None)
    if not prologue or decide is None:
        return "fused"
    return decide(dt, spec.Cin, spec.Cout, spec.k * spec.k, spec.stride, dropout=p > 0)


def _layer_fns(K, spec, p: float, route: str = "fused"):
    """{pass: (fused(s), cudnn(s))}: the fused kernels of the conv's role on its ``route`` (as
    the model runs it: on a pass route the forward is the elementwise bn_act_dropout pass + the
    prologue-free GEMM, wgrad reads the activation: the forward's kept one (two_pass) or one the
    pass writes again (pass_fwd_wgrad, timed with it)), and cuDNN's plain convolution of the
    same shape."""

    prologue, _, has_res, stats = ROLE_CONFIG[spec.role]
    pad, stride = spec.pad, spec.stride
    kw = dict(stride=stride, padding=(pad,) * 4, act="relu" if prologue else "identity", dropout_p=p)
    plain = dict(stride=stride, padding=(pad,) * 4, act="identity")
    split = prologue and route != "fused"

    def aff(s):
        return (s["scale"], s["shift"]) if prologue else (None, None)

    def mask(s):  # as the model runs it: the keep bitmask evaluated once per step (not timed here)
        if p == 0:
            return {"seed": None}
        return {"keep_bits": s["keep_bits"]} if "keep_bits" in s else {"seed": s["seed"]}

    def activation(s):  # the pass: a = dropout(relu(x*scale + shift)), its mask from the seed
        from wrn_fast.kernels import bn_act_dropout as KB
        return KB.bn_act_dropout_fwd(s["x"], s["scale"], s["shift"], act="relu", dropout_p=p,
                                     seed=s["seed"] if p > 0 else None)

    def fused_fwd(s):
        res = s["res"] if has_res else None
        if split:
            return K.bn_act_conv_fwd(activation(s), s["w"], None, None, residual=res, compute_stats=stats,
                                     **plain)[0]
        return K.bn_act_conv_fwd(s["x"], s["w"], *aff(s), residual=res, compute_stats=stats, **mask(s), **kw)[0]

    def fused_dgrad(s):
        return K.bn_act_conv_dgrad(s["gy"], s["w"], s["x"], *aff(s), **mask(s), **kw)[0]

    def fused_wgrad(s):
        if split and route in ("two_pass", "pass_fwd_wgrad"):
            if route == "two_pass" and "a" not in s:
                s["a"] = activation(s)  # kept from the forward: not part of wgrad's time
            a = s["a"] if route == "two_pass" else activation(s)
            return K.bn_act_conv_wgrad(s["gy"], a, None, None, weight_shape=tuple(s["w"].shape), **plain)
        return K.bn_act_conv_wgrad(s["gy"], s["x"], *aff(s), weight_shape=tuple(s["w"].shape), **mask(s), **kw)

    def cudnn_bwd(s, mask):
        return torch.ops.aten.convolution_backward(s["gy"], s["x"], s["w"], None, [stride] * 2, [pad] * 2, [1, 1],
                                                   False, [0, 0], 1, mask)

    fns = {"fwd": (fused_fwd, lambda s: F.conv2d(s["x"], s["w"], None, stride, pad)),
           "dgrad": (fused_dgrad, lambda s: cudnn_bwd(s, [True, False, False])[0]),
           "wgrad": (fused_wgrad, lambda s: cudnn_bwd(s, [False, True, False])[1])}
    if spec.role == "stem":  # the network input needs no gradient: no dgrad for the stem
        del fns["dgrad"]
    return fns


def _layer_refs(spec, s, p: float, device) -> Dict[str, Dict[str, torch.Tensor]]:
    """High-precision outputs of set ``s``: the fused function (with the contract's dropout mask) and
    the plain convolution, forward, grad x and grad w."""

    prologue, _, has_res, _ = ROLE_CONFIG[spec.role]
    rdt = torch.float64 if device.type == "cpu" else torch.float32
    keep = keep_mask_nchw(int(s["seed"].item()), tuple(s["x"].shape), p, device) if p > 0 else None
    with common.tf32_off():
        out = {}
        for impl in ("wrn_fast", "cudnn"):
            x = s["x"].detach().to(rdt).requires_grad_(True)
            w = s["w"].detach().to(rdt).requires_grad_(True)
            if impl == "wrn_fast":
                y = reference_bn_act_conv(x, w, s["scale"] if prologue else None, s["shift"] if prologue else None,
                                          s["res"] if has_res else None, keep, stride=spec.stride, pad=spec.pad,
                                          p=p, rdt=rdt)
            else:
                y = F.conv2d(x, w, None, spec.stride, spec.pad)
            gx, gw = torch.autograd.grad(y, [x, w], s["gy"].to(rdt))
            out[impl] = {"fwd": y.detach(), "dgrad": gx, "wgrad": gw}
        return out


def layer_rows(t, spec, source: str) -> None:
    """The fwd / dgrad / wgrad rows of one convolution shape (fused and cuDNN, interleaved), added to
    the table ``t``: a gpu_table.Table (its device, dtype, budget, rounds, peaks and roofline), not
    imported here: gpu_table imports this module."""

    dev, dt_name = t.device, t.dtype
    dt = common.DTYPES[dt_name]
    tol = common.TOLERANCES[common.tol_key(dt_name, dev)]
    p = t.args.dropout if ROLE_CONFIG[spec.role][1] else 0.0
    passes = [q for q in PASSES if not (q == "dgrad" and spec.role == "stem")]
    flops_fwd = 2.0 * spec.N * spec.Ho * spec.Wo * spec.Cout * spec.Cin * spec.k * spec.k
    base = {"section": "layer", "source": source, "shape": spec.as_dict(), "shape_label": spec.label,
            "dtype": common.dtype_label(dt_name, dev), "dropout_p": p, "flops": flops_fwd, "tol": tol}

    def record_all(status: str, reason: str) -> None:  # every row of a shape that is not measured
        for q in passes:
            for impl in ("wrn_fast", "cudnn"):
                t.add(dict(base, **{"pass": q, "impl": impl, "status": status, "reason": reason}))

    if t.budget.expired():
        record_all(STATUS_SKIPPED, "deadline (--deadline-s)")
        return
    try:
        K = _kernels_module()
        es = torch.empty((), dtype=dt).element_size()
        set_bytes = es * (spec.N * spec.Cin * spec.H * spec.W + 2 * spec.N * spec.Cout * spec.Ho * spec.Wo)
        n_sets = 1 if t.args.tiny else common.n_buffers_for(set_bytes, dev, max_sets=4)
        sets = _layer_sets(K, spec, dt, dev, t.memory_format, p, n_sets)
        if "keep_bits" in sets[0]:
            base["dropout_mask"] = "keep_bits, evaluated once per set outside the timed calls"
        base["route"] = layer_route(K, spec, dt, p)
        fns = _layer_fns(K, spec, p, base["route"])
        refs = _layer_refs(spec, sets[0], p, dev)
    except Skip as e:
        record_all(STATUS_SKIPPED, str(e))
        return
    except Exception as e:  # noqa: BLE001
        record_all(STATUS_ERROR, f"inputs/reference: {type(e).__name__}: {e}".splitlines()[0][:300])
        return
    interp = dev.type == "cpu"
    for q in passes:
        fused, plain = fns[q]
        rows = {}
        live = {}
        for impl, fn in (("wrn_fast", fused), ("cudnn", plain)):
            r = dict(base, **{"pass": q, "impl": impl, "status": None, "reason": None, "median_ms": None})
            r["flops"] = flops_fwd
            try:
                err = common.rel_err(fn(sets[0]), refs[impl][q])
                r["max_rel_err"] = err
                if not err <= tol:
                    r.update(status=STATUS_INVALID, reason=f"validation failed: rel err {err:.3g} > tol {tol:g}")
                else:
                    live[impl] = fn
            except Exception as e:  # noqa: BLE001
                r.update(status=STATUS_ERROR, reason=f"{type(e).__name__}: {e}".splitlines()[0][:300])
            rows[impl] = r
        timed = {}
        if live:
            try:
                with torch.no_grad():
                    timed = common.time_interleaved(
                        {n: (lambda i, fn=fn: fn(sets[i])) for n, fn in live.items()}, len(sets), dev,
                        warmup=0 if interp else 3, rounds=1 if interp else t.rounds, per_round=1 if interp else 3,
                        max_s=None if interp else 5.0)
            except Exception as e:  # noqa: BLE001
                for n in live:
                    rows[n].update(status=STATUS_ERROR, reason=f"timing: {type(e).__name__}: {e}".splitlines()[0][:300])
                timed = {}
        for impl in ("wrn_fast", "cudnn"):
            r = rows[impl]
            if impl in timed:
                tm = timed[impl]
                r.update(tm)
                r["rounds"] = r.pop("reps")
                r["status"] = STATUS_OK
                r["tflops"] = flops_fwd / (tm["median_ms"] * 1e-3) / 1e12
                pk = t.peak_tflops()
                r["pct_peak"] = 100.0 * r["tflops"] / pk if pk else None
                if interp:
                    r["note"] = "CPU: Triton interpreter / CPU conv, not a performance figure"
            r["roofline_ms"] = t.roofline.get((q, spec)) if impl == "wrn_fast" else None
            r["roofline_source"] = t.roofline_source
            if r["status"] == STATUS_OK and r["roofline_ms"]:
                r["ratio_vs_roofline"] = r["median_ms"] / r["roofline_ms"]
        if "wrn_fast" in timed and "cudnn" in timed:
            rows["wrn_fast"]["ratio_vs_cudnn"] = timed["wrn_fast"]["median_ms"] / timed["cudnn"]["median_ms"]
        for impl in ("wrn_fast", "cudnn"):
            t.add(rows[impl])
    del sets, refs
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()



def warm_layers(tiny: bool, dropout: float, device: torch.device, dt: torch.dtype, memory_format) -> None:
    """Each fused kernel of every layer once, untimed and unrecorded (compiles into Triton's disk
    cache; the timed run then loads them)."""
    K = _kernels_module()
    name, depth, k, batch, res = TINY_LAYER_MODEL if tiny else LAYER_MODEL
    for spec in wrn_cifar_convs(depth, k, batch, res):
        p = dropout if ROLE_CONFIG[spec.role][1] else 0.0
        s = _layer_sets(K, spec, dt, device, memory_format, p, 1)[0]
        t0 = time.monotonic()
        for fused, _ in _layer_fns(K, spec, p, layer_route(K, spec, dt, p)).values():
            fused(s)
        common.sync(device)
        print(f"[warm] layer {spec.label}: {time.monotonic() - t0:.1f} s", flush=True)
