"""Predicted (static, no GPU) report of every fused kernel the WRN models launch on an H100.

    python -m bench.static [--models wrn-28-10,...] [--dtypes bf16,fp16,fp32-tf32]
                           [--configs all|default] [--rev REV] [--processes 2]

For every distinct convolution of WRN-28-10 (train b128, inference b1024), WRN-28-2 (train
b960), WRN-70-16 (train b128) at 32x32 and WRN-50-2 (train b64) at 224x224, as the fast
model runs it (bn_act_conv forward with its BN-act(-dropout) prologue and residual /
statistics epilogue, dgrad, wgrad; the standalone bn_act_dropout kernels), in bf16, fp16
and fp32 (TF32): every tile config the launcher's autotuner would consider after its
pruning, and the DEFAULT one (what the launcher compiles with WRN_FAST_AUTOTUNE=0), each
compiled for sm_90a and read by bench.sass (registers, spills, shared memory, occupancy,
wgmma / mma.sync / FFMA, TMA / cp.async, main-loop SASS mix, issue ceiling).

Layer shapes come from the real architectures (wrn_fast.reference builds them, on the
meta device); which conv gets which prologue / epilogue mirrors wrn_fast.model
(_basic_block, _bottleneck). Writes bench/results/static_<date>_<commit>.md and .json.
"""
import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Optional

from bench import sass

RESULTS = os.path.join(sass.ROOT, "bench", "results")
DROPOUT = 0.3  # bench/run.py's --model-dropout default (the GPU table's models)

# name -> (builder in wrn_fast.reference, kwargs, batch, input size, training step?)
MODELS = {
    "wrn-28-10": ("wrn_28_10", {"dropout_rate": DROPOUT}, 128, 32, True),
    "wrn-28-10-infer": ("wrn_28_10", {"dropout_rate": DROPOUT}, 1024, 32, False),
    "wrn-28-2": ("wrn_28_2", {"dropout_rate": DROPOUT}, 960, 32, True),
    "wrn-70-16": ("wrn_70_16", {"dropout_rate": DROPOUT}, 128, 32, True),
    "wrn-50-2": ("wide_resnet50_2", {}, 64, 224, True),
}
# issue 13's target: bf16 / fp16 default configs at these models' shapes
TARGET_MODELS = ("wrn-28-10", "wrn-28-10-infer", "wrn-28-2", "wrn-70-16")
TARGET_DTYPES = ("bf16", "fp16")


@dataclasses.dataclass
class ConvLayer:
    """One convolution as wrn_fast runs it: y = conv(dropout(act(bn(x)))) (+ residual),
    x [n, cin, hw, hw]; ``prologue_bn`` names the BN folded into the prologue (None: the
    conv reads x itself); ``stats``: the epilogue emits the statistics of y for the next BN.
    ``route``: how the launcher runs it (kernels.bn_act_conv.conv_route): 'fused' (the
    prologue in the forward and wgrad), else the elementwise bn_act_dropout_fwd writes
    a = dropout(act(bn(x))) and the forward GEMM reads a without prologue: 'two_pass' keeps
    a for a prologue-free wgrad, 'pass_fwd' frees it (wgrad fused on x), 'pass_fwd_wgrad'
    frees it and writes it again in backward for a prologue-free wgrad; dgrad is fused on x
    in every route."""
    name: str
    n: int
    cin: int
    cout: int
    hw: int
    k: int
    stride: int
    prologue_bn: Optional[str]
    act: str
    dropout: float
    residual: bool
    stats: bool
    needs_dgrad: bool
    train: bool
    route: str = "fused"  # as kernels.bn_act_conv.conv_route decides (see route_layers)

    @property
    def hw_out(self):
        return (self.hw + 2 * (self.k // 2) - self.k) // self.stride + 1

    def kinds(self):
        if not self.train:
            return ("fwd",)
        return ("fwd", "dgrad", "wgrad") if self.needs_dgrad else ("fwd", "wgrad")

    @property
    def route_label(self):
        return self.route.replace("_", "-")

    @property
    def fwd_pass(self):
        """The forward runs the elementwise pass, then the GEMM on a without prologue."""
        return self.route != "fused"

    @property
    def keeps_a(self):
        """a is kept for backward (counted as activation memory)."""
        return self.route == "two_pass"

    @property
    def wgrad_on_a(self):
        """wgrad reads a (kept, or written again in backward) without prologue."""
        return self.route in ("two_pass", "pass_fwd_wgrad")

    def variant(self, kind, dtype):
        prologue = self.prologue_bn and not ((kind == "fwd" and self.fwd_pass) or (kind == "wgrad" and self.wgrad_on_a))
        act = self.act if prologue else "identity"
        fwd = kind == "fwd"
        return sass.Variant(kind=kind, dtype=dtype, n=self.n, cin=self.cin, cout=self.cout, hw=self.hw,
                            stride=self.stride, ksize=self.k, act=act,
                            dropout=self.dropout if (self.train and prologue) else 0.0,
                            residual=self.residual and fwd, stats=self.stats and fwd and self.train)

    def pass_variant(self, dtype):
        """The pass routes' elementwise kernel (bn_act_dropout_fwd over x), or None."""
        if not self.fwd_pass:
            return None
        return sass.Variant(kind="bnad_fwd", dtype=dtype, n=self.n, cin=self.cin, cout=self.cin, hw=self.hw,
                            act=self.act, dropout=self.dropout if self.train else 0.0)


@dataclasses.dataclass
class EltwiseLayer:
    """An elementwise BN step outside any conv, x [n, c, hw, hw]: ``kernel`` "bnad" =
    wrn_fast's bn_act_dropout kernels (statistics from the producer's epilogue), "torch" =
    PyTorch elementwise ops in both implementations (WRN-50-2's bn3 / downsample BN +
    residual add + ReLU, stem max-pool)."""
    name: str
    n: int
    c: int
    hw: int
    act: str
    kernel: str
    residual_add: bool = False
    train: bool = True

    def variant(self, kind, dtype):
        return sass.Variant(kind=kind, dtype=dtype, n=self.n, cin=self.c, cout=self.c, hw=self.hw, act=self.act)


_ROUTES = {}  # (src_root, shape) -> conv_route's answer (one subprocess per batch of new shapes)


def route_layers(layers, dtype, src_root=None):
    """Set ``route`` on the ConvLayers with a BN-act prologue as the launcher (the kernels
    at ``src_root``, default this checkout) would run them on the GPU
    (``kernels.bn_act_conv.conv_route``, asked by bench.sass.conv_routes)."""
    convs = [L for L in layers if isinstance(L, ConvLayer) and L.prologue_bn]
    key = os.path.realpath(src_root or sass.ROOT)
    shapes = [(dtype, L.cin, L.cout, L.k * L.k, L.stride, bool(L.dropout and L.train)) for L in convs]
    new = sorted({s for s in shapes if (key, s) not in _ROUTES})
    for s, r in zip(new, sass.conv_routes(new, src_root=src_root)):
        _ROUTES[(key, s)] = r
    for L, s in zip(convs, shapes):
        L.route = _ROUTES[(key, s)]
    return layers


def model_layers(model, dtype=None, src_root=None):
    """[ConvLayer | EltwiseLayer] of one MODELS entry, in forward order; with ``dtype``,
    routed (``route_layers``) as the kernels at ``src_root`` would run them."""
    import torch

    from wrn_fast import reference
    builder, kwargs, n, size, train = MODELS[model]
    with torch.device("meta"):
        net = getattr(reference, builder)(**kwargs)
    drop = net.dropout_rate if (train and hasattr(net, "dropout_rate")) else 0.0
    layers = []

    def conv(name, c, hw, prologue_bn, act="relu", dropout=0.0, residual=False, stats=True, needs_dgrad=True):
        stride = c.stride[0]
        if c.padding[0] != c.kernel_size[0] // 2:
            raise ValueError(f"{name}: padding {c.padding} is not k // 2 (bench.sass.Variant assumes it)")
        layer = ConvLayer(name, n, c.in_channels, c.out_channels, hw, c.kernel_size[0], stride, prologue_bn, act,
                          dropout, residual, stats and train, needs_dgrad, train)
        layers.append(layer)
        return layer.hw_out

    if isinstance(net, reference.WideResNet):
        if net.activation != "relu" or net.padding != "symmetric":
            raise ValueError("only relu + symmetric padding WRNs are modelled")
        hw = conv("stem", net.conv1, size, None, needs_dgrad=False)
        for g, group in enumerate((net.block1, net.block2, net.block3), start=1):
            for b, blk in enumerate(group.layer):
                name = f"g{g}.b{b}"
                bn1 = None if blk.raw_input else f"{name}.bn1"
                if not blk.equal_in_out:  # wrn_fast: projection of act(bn1(x)), no statistics
                    conv(f"{name}.shortcut", blk.convShortcut, hw, bn1, stats=False)
                h = conv(f"{name}.conv1", blk.conv1, hw, bn1, residual=len(blk.kernel_sizes) == 1)
                for i in range(2, len(blk.kernel_sizes) + 1):
                    h = conv(f"{name}.conv{i}", getattr(blk, f"conv{i}"), h, f"{name}.bn{i}", dropout=drop,
                             residual=i == len(blk.kernel_sizes))
                hw = h
        layers.append(EltwiseLayer("final.bn_act", n, net.widths[3], hw, "relu", "bnad", train=train))
    else:  # WideResNetBottleneck
        hw = conv("stem", net.conv1, size, None, needs_dgrad=False)
        layers.append(EltwiseLayer("stem.bn_act", n, 64, hw, "relu", "bnad", train=train))
        hw = (hw + 2 - 3) // 2 + 1  # max-pool 3x3 s2 p1
        for s, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), start=1):
            for b, blk in enumerate(stage):
                name = f"s{s}.b{b}"
                h = conv(f"{name}.conv1", blk.conv1, hw, None)
                h = conv(f"{name}.conv2", blk.conv2, h, f"{name}.bn1")
                h = conv(f"{name}.conv3", blk.conv3, h, f"{name}.bn2")
                if blk.downsample is not None:
                    conv(f"{name}.downsample", blk.downsample[0], hw, None)
                layers.append(EltwiseLayer(f"{name}.bn3+add+relu", n, blk.conv3.out_channels, h, "relu", "torch",
                                           residual_add=True, train=train))
                hw = h
    return route_layers(layers, dtype, src_root) if dtype else layers


def distinct_variants(model, dtype, src_root=None):
    """{Variant: [layer names]} of one model and dtype, forward order (a layer on a pass
    route has its route in its names, e.g. "[pass-fwd]"; its elementwise pass is a bnad_fwd
    variant)."""
    out = {}
    for layer in model_layers(model, dtype, src_root):
        if isinstance(layer, ConvLayer) and layer.fwd_pass:
            name = f"{layer.name}[{layer.route_label}]"
            out.setdefault(layer.pass_variant(dtype), []).append(name)
            for kind in layer.kinds():
                v = layer.variant(kind, dtype)
                out.setdefault(v, []).append(name)
                if v.dropout:  # dgrad (and pass_fwd's wgrad), fused on x
                    out.setdefault(dataclasses.replace(v, dropout=0.0), []).append(name + "[p=0]")
            continue
        if isinstance(layer, ConvLayer):
            kinds = layer.kinds()
        elif layer.kernel == "bnad":
            kinds = ("bnad_fwd", "bnad_bwd") if layer.train else ("bnad_fwd",)
        else:
            continue
        for kind in kinds:
            out.setdefault(layer.variant(kind, dtype), []).append(layer.name)
            if isinstance(layer, ConvLayer) and layer.dropout and layer.train:
                # the same conv in a model trained without dropout (the target covers both)
                out.setdefault(dataclasses.replace(layer.variant(kind, dtype), dropout=0.0), []).append(
                    layer.name + "[p=0]")
    return out


def _route_of(layer_names):
    """The route label of a variant's layers ("mixed" when they differ)."""
    routes = {next((r for r in PASS_ROUTE_LABELS if f"[{r}]" in name), "fused") for name in layer_names}
    return routes.pop() if len(routes) == 1 else "mixed"


PASS_ROUTE_LABELS = ("two-pass", "pass-fwd-wgrad", "pass-fwd")


def _short_label(row):
    """A report row's variant label without its kind, with its route when not fused."""
    route = row.get("route", "fused")
    return row["label"].split(" ", 1)[1] + ("" if route == "fused" else f" [{route}]")


def _compile_key(v):
    """The variant whose SASS stands for v at a forced config: batch sizes enter the
    kernels only as runtime integers, specialised by Triton on divisibility by 16, so every
    multiple-of-16 batch compiles to the same code as N=128 (the per-batch DEFAULT config
    and the autotuner's list are still taken at the real N)."""
    return dataclasses.replace(v, n=128) if v.n % 16 == 0 else v


def _git(*args):
    return subprocess.run(["git", *args], cwd=sass.ROOT, capture_output=True, text=True).stdout.strip()


def run(models, dtypes, all_config_models, processes, rev=None, log=print):
    src_root = sass.source_tree(rev) if rev else None
    per_model = {(m, d): distinct_variants(m, d, src_root) for m in models for d in dtypes}
    variants = sorted({v for vs in per_model.values() for v in vs}, key=lambda v: v.label())
    t0 = time.time()

    def progress(i, total, res):
        if i % 25 == 0 or i == total:
            log(f"  {i}/{total} ({time.time() - t0:.0f} s)")

    log(f"{len(variants)} distinct variants: listing configs and compiling the DEFAULT config of each")
    conv_variants = [v for v in variants if v.kind in sass.CONV_KINDS]
    listed = sass.analyze_many([(v, "list") for v in conv_variants], processes=processes, src_root=src_root,
                               progress=progress)
    defaults = sass.analyze_many([(v, None) for v in variants], processes=processes, src_root=src_root,
                                 progress=progress)
    lists = {v: [tuple(c) for c in (r.get("configs") or [])] for v, r in zip(conv_variants, listed)}
    default_of = dict(zip(variants, defaults))
    config_results = {}
    sweep = {v for (m, d), vs in per_model.items() if m in all_config_models for v in vs if v in lists}
    if sweep:
        jobs = sorted({(_compile_key(v), c) for v in sweep for c in lists[v]}, key=lambda j: (j[0].label(), j[1]))
        log(f"compiling {len(jobs)} (shape, config) pairs")
        res = sass.analyze_many(jobs, processes=processes, src_root=src_root, progress=progress)
        config_results = dict(zip(jobs, res))
    rows = []
    phased = dgrad_phased(src_root)
    for (model, dtype), vs in per_model.items():
        for v, layer_names in vs.items():
            d = default_of[v]
            dcfg = tuple(d["config"]) if d.get("config") else None
            entry = {"model": model, "dtype": dtype, "variant": dataclasses.asdict(v), "label": v.label(),
                     "route": _route_of(layer_names),
                     "layers": layer_names, "default_config": list(dcfg) if dcfg else None,
                     "default": _slim(d), "configs": []}
            if v.kind == "dgrad":
                entry["dgrad_phased"] = phased
            if v.kind in sass.CONV_KINDS:
                entry["considered_configs"] = [list(c) for c in lists.get(v, [])]
                entry["default_in_considered"] = dcfg in lists.get(v, [])
                for c in lists.get(v, []):
                    r = config_results.get((_compile_key(v), c))
                    if r is not None:
                        entry["configs"].append(dict(_slim(r), config=list(c), is_default=c == dcfg))
                entry["checks"] = sass.verdict(d) if "error" not in d else {"compiled": False}
            rows.append(entry)
    return rows, time.time() - t0


def _slim(r):
    """The parts of a bench.sass result the report keeps."""
    if "error" in r:
        return {"error": r["error"][:500]}
    keep = ("name", "registers", "spill_bytes", "spill_store_bytes", "spill_load_bytes", "stack_bytes", "shared",
            "ctas_per_sm", "warps_per_sm", "occupancy", "limited_by", "uses_wgmma", "uses_mma_sync", "uses_tma",
            "uses_cp_async", "config", "kernels", "sass_instructions", "wgmma_serialized", "ptxas_perf_warnings")
    out = {k: r.get(k) for k in keep}
    loop = r.get("main_loop")
    if loop:
        out["main_loop"] = {k: loop[k] for k in ("engine", "mma_instructions", "mma_shape",
                                                 "instr_per_thread_per_iter", "mix", "top_opcodes", "fma_per_iter",
                                                 "tile_fma_per_iter", "tc_clocks_per_iter", "warp_instr_per_iter",
                                                 "issue_ceiling", "has_ldgsts", "has_utmaldg", "has_ldg",
                                                 "local_mem_in_loop")}
    else:
        out["main_loop"] = None
    return out


# --------------------------------------------------------------------------- report

def dgrad_phased(src_root=None):
    """Whether the dgrad kernel under ``src_root`` (default: this checkout) runs a strided
    dgrad phase by phase (kernels/conv_dgrad.py launches a grid axis per phase), each K loop
    holding only the taps that reach its pixels; before, every tap ran over every pixel and
    the tensor cores did 1/stride^2 useful work (bench.static.tile_fill)."""
    path = os.path.join(src_root or sass.ROOT, "kernels", "conv_dgrad.py")
    try:
        with open(path) as f:
            return "tl.program_id(2)" in f.read()
    except OSError:
        return False


def tile_fill(v, config, phased=True):
    """Share of a tile's tensor-core FMAs inside the GEMM of variant ``v`` under ``config``
    (BLOCK_M, BLOCK_N, BLOCK_K, ...): fwd M = N*Ho*Wo, N = Cout, K = Cin per tap (the flat
    kh*kw*Cin below 16 channels, the stem); dgrad M = N*H*W, N = Cin, K = Cout per tap;
    wgrad M = Cout, N = Cin (kh*kw*Cin below 16 channels; its K, the pixels, comes in whole
    chunks); the tap-stacked wgrad (a 6th config entry, TAPS: M = TAPS x BLOCK_C rows of
    (tap, c)) fills its groups of taps (9 taps in 2s: 90%), Cin over BLOCK_C and Cout over N;
    the tap-grid wgrad (6th entry "SW<n>": M = SW x BLOCK_C rows of (kw, c), N = kh x
    BLOCK_CO columns of (kh, co)) fills its groups of w-shifts (3 in 2s or 4s: 75%), Cin over
    BLOCK_C and Cout over BLOCK_CO. A strided dgrad not run by phases (``phased`` False,
    see ``dgrad_phased``) gathers every tap for every input pixel, of which a tap reaches
    1 in stride^2: that share of its rows is useful."""
    bm, bn, bk = config[:3]

    def fill(size, block):
        return size / (-(-size // block) * block)
    pad = v.ksize // 2
    ho = (v.hw + 2 * pad - v.ksize) // v.stride + 1
    if v.kind == "fwd":
        k = fill(v.ksize * v.ksize * v.cin, bk) if v.cin < 16 else fill(v.cin, bk)
        return fill(v.n * ho * ho, bm) * fill(v.cout, bn) * k
    if v.kind == "dgrad":
        taps = 1.0 if phased else 1.0 / (v.stride * v.stride)
        return fill(v.n * v.hw * v.hw, bm) * fill(v.cin, bn) * fill(v.cout, bk) * taps
    if len(config) > 5 and str(config[5]).startswith("SW"):  # the tap-grid wgrad
        sw = int(str(config[5])[2:])
        return fill(v.ksize, sw) * fill(v.cin, bm // sw) * fill(v.cout, bn // v.ksize)
    if len(config) > 5:  # the tap-stacked wgrad
        taps = config[5]
        return fill(v.ksize * v.ksize, taps) * fill(v.cin, bm // taps) * fill(v.cout, bn)
    if v.cin < 16:  # the stem's wgrad: N = (tap, c) flattened
        return fill(v.cout, bm) * fill(v.ksize * v.ksize * v.cin, bn)
    return fill(v.cout, bm) * fill(v.cin, bn)


def _useful(r, dcfg):
    """SASS issue ceiling x tile_fill of a row's DEFAULT config (None without a loop or config)."""
    loop = r["default"].get("main_loop") if "default" in r else None
    if not loop or not dcfg:
        return None
    return loop["issue_ceiling"] * row_fill(r, dcfg)


def row_fill(r, config):
    """tile_fill of a report row's variant under ``config``, with the row's kernels' strided
    dgrad (``dgrad_phased``: reports written before the phases lack it, and were not)."""
    return tile_fill(sass.Variant(**r["variant"]), config, r.get("dgrad_phased", False))


_SHORT = {"int": "int", "fp32": "fp32", "uniform": "uni", "convert": "cvt", "move_pred": "mov", "shared_mem": "smem",
          "global_mem": "gmem", "sync": "sync", "mma": "mma", "mufu": "mufu", "control": "ctl", "fp16x2": "f16x2",
          "local_mem": "LOCAL", "tma": "tma", "other": "other", "fp64": "fp64"}


def _mix(loop, top=5):
    items = list(loop["mix"].items())[:top]
    return " ".join(f"{_SHORT.get(k, k)} {n}" for k, n in items)


def _cfg(c):
    return "x".join(map(str, c[:3])) + f"/{c[3]}/{c[4]}" if c else "-"


def _row_cells(r, elementwise=False):
    if "error" in r:
        return ["ERROR: " + r["error"][:80].replace("|", "/")] + [""] * 10
    loop = r.get("main_loop")
    loads = "TMA" if r["uses_tma"] else ("cp.async" if r["uses_cp_async"] else "LDG")
    cells = [str(r["registers"]), str(r["spill_bytes"]), f"{r['shared'] / 1024:.0f}",
             f"{r['ctas_per_sm']} ({r['occupancy']:.0%})"]
    if elementwise:  # bn_act_dropout: no dot, no ceiling; memory-bound (bench.roofline)
        body = f"{loop['instr_per_thread_per_iter']} SASS instr in its loop" if loop else \
            f"{r['sass_instructions']} SASS instr, no loop"
        cells += ["-", loads, "-", "-", "-", "-", body + ", memory-bound"]
    elif loop:
        engine = loop["engine"] + (" (serialized)" if r.get("wgmma_serialized") else "")
        cells += [engine, loads, str(loop["instr_per_thread_per_iter"]), str(loop["warp_instr_per_iter"]),
                  f"{loop['tc_clocks_per_iter']:.0f}", f"**{loop['issue_ceiling']:.2f}**", _mix(loop)]
    else:
        cells += ["-", loads, "-", "-", "-", "-", f"{r['sass_instructions']} SASS instr, no loop"]
    return cells


def write_report(rows, meta, out_base):
    with open(out_base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    L = [f"# Static (predicted, no GPU) report of the fused kernels on an H100 (sm_90a)", "",
         "**Predicted/static, no GPU.** Every number below was read from sm_90a code compiled on a machine",
         "without a GPU (bench/sass.py); none was measured on a GPU.", ""]
    L += [f"- {k}: {v}" for k, v in meta.items() if k != "definitions"]
    L += ["", "## Definitions", ""] + [f"- {d}" for d in meta["definitions"]]
    L += ["", "## Summary: issue 13's target per (kernel, dtype, model), DEFAULT configs", "",
          "Target: wgmma in the main loop, no spills, within shared memory, issue ceiling >= "
          f"{sass.TARGET_CEILING} (applies to bf16/fp16 at {', '.join(TARGET_MODELS)}; "
          "other rows for information).", "",
          "| kernel | dtype | model | variants | met | min ceiling (variant) | min useful ceiling (variant) | "
          "failing checks |",
          "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in rows:
        if r["variant"]["kind"] in sass.CONV_KINDS:
            groups.setdefault((r["variant"]["kind"], r["dtype"], r["model"]), []).append(r)
    for (kind, dtype, model), rs in sorted(groups.items()):
        fails, worst, worst_u = {}, None, None
        for r in rs:
            u = _useful(r, r.get("default_config"))
            if u is not None and (worst_u is None or u < worst_u[0]):
                worst_u = (u, _short_label(r))
            for check, ok in r["checks"].items():
                if not ok:
                    fails[check] = fails.get(check, 0) + 1
            loop = r["default"].get("main_loop") or {}
            c = loop.get("issue_ceiling", 0.0)
            if worst is None or c < worst[0]:
                worst = (c, _short_label(r))
        applies = dtype in TARGET_DTYPES and model in TARGET_MODELS
        met = "yes" if not fails else "**no**"
        L.append(f"| {kind} | {dtype} | {model} | {len(rs)} | {met if applies else met + ' (n/a)'} | "
                 f"{worst[0]:.2f} ({worst[1]}) | "
                 + (f"{worst_u[0]:.2f} ({worst_u[1]})" if worst_u else "-")
                 + f" | {', '.join(f'{k} x{n}' for k, n in fails.items()) or '-'} |")
    head = ("| model | variant | route | layers | default config | regs | spill B | smem KiB | CTAs/SM (occ) | engine | loads "
            "| instr/thr/iter | warp-instr/iter | TC clk/iter | ceiling | tile fill | useful ceiling "
            "| loop mix (top 5 classes) |")
    for kind in sass.KINDS:
        krows = [r for r in rows if r["variant"]["kind"] == kind]
        if not krows:
            continue
        L += ["", f"## {kind}: DEFAULT config per distinct variant", "", head, "|" + "---|" * 18]
        for r in krows:
            names = r["layers"]
            lay = names[0] + (f" (+{len(names) - 1})" if len(names) > 1 else "")
            cells = _row_cells(r["default"], kind not in sass.CONV_KINDS)
            u = _useful(r, r["default_config"]) if kind in sass.CONV_KINDS else None
            fill = (f"{row_fill(r, r['default_config']):.0%}"
                    if u is not None else "-")
            cells = cells[:-1] + [fill, f"**{u:.2f}**" if u is not None else "-", cells[-1]]
            L.append("| " + " | ".join([r["model"], r["label"].split(" ", 1)[1], r.get("route", "fused"), lay,
                                        _cfg(r["default_config"])] + cells) + " |")
        if kind in sass.CONV_KINDS and any(r["configs"] for r in krows):
            L += ["", f"### {kind}: every config the launcher considers (after pruning); * = DEFAULT", "",
                  "| variant (batch as compiled: N=128 for multiples of 16) | config | regs | spill B | smem KiB | "
                  "CTAs/SM (occ) | engine | loads | instr/thr/iter | warp-instr/iter | TC clk/iter | ceiling | "
                  "loop mix |", "|" + "---|" * 13]
            seen = set()
            for r in krows:
                key = (sass.Variant(**r["variant"]).label().split(" ", 1)[1].replace(f"N{r['variant']['n']} ", ""))
                if key in seen:
                    continue
                seen.add(key)
                for c in r["configs"]:
                    L.append("| " + " | ".join([key, _cfg(c["config"]) + (" *" if c["is_default"] else "")]
                                               + _row_cells(c)) + " |")
    with open(out_base + ".md", "w") as f:
        f.write("\n".join(L) + "\n")


DEFINITIONS = [
    "Compiled for sm_90a (capability 90) with the stand-in driver of tests/_triton_aot.py, through the public "
    "launchers on CPU tensors (channels_last), one tile config forced on the autotuner; DEFAULT = what the "
    "launcher compiles with WRN_FAST_AUTOTUNE=0 (no autotuning).",
    "regs / spill B: ptxas -v on Triton's PTX (spill B = the larger of its spill-store and spill-load bytes); "
    "smem: the kernel's dynamic "
    "shared memory; CTAs/SM (occ): resident CTAs per SM on an H100 from registers (64K, 256-register warp "
    "allocation unit), shared memory (228 KiB per SM, 1 KiB reserved per CTA, 227 KiB per CTA) and warps (64).",
    "engine: wgmma (HGMMA), mma.sync (HMMA) or FFMA in the main loop = the longest backward branch of the SASS "
    "whose body holds the dot; '(serialized)': ptxas reported C7515, wgmma.mma_async instructions serialized "
    "(non-wgmma instructions define accumulator registers inside the pipeline stage: consecutive wgmmas do not "
    "overlap); loads: TMA (UTMALDG), cp.async (LDGSTS) or LDG anywhere in the kernel.",
    "instr/thr/iter: SASS instructions in the main-loop body, counted statically (each once; predicated-off and "
    "branched-over code included); warp-instr/iter = instr/thr/iter x warps.",
    "TC clk/iter = FMAs per iteration (from the loop's HGMMA/HMMA shapes; the tile for the FFMA loop) / FMA per "
    "clock per SM: bf16/fp16 2048, TF32 1024 (dense tensor cores), fp32 'ieee' 128 (FFMA pipes; a 16x lower peak).",
    "ceiling = min(1, 4 x TC clk / warp-instr): an SM issues at most 4 warp-instructions per clock, so this is the "
    "fraction of the tensor-core peak that instruction issue alone allows (memory, latency and occupancy "
    "not counted: an upper bound).",
    "tile fill: the share of the DEFAULT tile's tensor-core FMAs that fall inside the GEMM (masked lanes of a "
    "tile wider than Cout or Cin, K steps deeper than the channels per tap, groups of stacked taps; "
    "bench.static.tile_fill); useful ceiling = ceiling x tile fill (what bench.roofline uses).",
    "loop mix classes: int (IMAD/IADD3/LOP3/SHF/ISETP/SEL...), fp32 (FFMA/FMUL/FADD/FSETP/FSEL...), uni (uniform "
    "datapath), cvt (F2F/F2FP/I2F...), mov (MOV/CS2R/PLOP3...), smem (LDS/STS/LDSM), gmem (LDG/STG/LDGSTS...), "
    "mma (HGMMA/HMMA), sync (BAR/WARPGROUP/SYNCS...), mufu, LOCAL (spill LDL/STL), ctl (BRA...).",
    "Batch sizes enter the kernels only as runtime integers (all here are multiples of 16, which Triton "
    "specialises alike), so forced-config compiles use N=128 for every model; the DEFAULT config and the "
    "autotuner's config list are taken at each model's own batch.",
    "route (kernels.bn_act_conv.conv_route at the kernels' commit; layer names carry it, e.g. '[pass-fwd]'): "
    "'fused' = one kernel with the BN-act(-dropout) prologue; otherwise bn_act_dropout_fwd writes the "
    "activation a (bnad_fwd row, with the layer's dropout) and the forward GEMM reads it without prologue (act "
    "identity, no dropout: its variant label shows 'identity'): 'two-pass' (narrow layers) keeps a for a "
    "prologue-free wgrad, 'pass-fwd' frees it (wgrad fused on x), 'pass-fwd-wgrad' frees it and writes it again "
    "in backward for a prologue-free wgrad; dgrad stays fused on x in every route; 'mixed': one variant shared "
    "by layers of several routes.",
    f"Models: WRN dropout {DROPOUT} (bench/run.py's --model-dropout default) before every conv2; WRN-50-2 has no "
    "dropout; inference = eval mode (no dropout, no statistics, no backward).",
]


def render(path):
    """Rewrite ``path``'s markdown (and JSON, its definitions refreshed) from its rows, with
    this version's tables; the compiled results are the report's own."""
    with open(path) as f:
        data = json.load(f)
    meta = dict(data["meta"], definitions=DEFINITIONS)
    meta["rendered"] = (f"tables re-rendered from the JSON at {_git('rev-parse', '--short', 'HEAD')} "
                        f"(python -m bench.static --render); the compiles are those of the command above")
    write_report(data["rows"], meta, path[:-len(".json")] if path.endswith(".json") else path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dtypes", default="bf16,fp16,fp32-tf32")
    ap.add_argument("--all-configs", default="wrn-28-10",
                    help="models whose variants get every considered config compiled (comma list, 'all' or 'none'); "
                         "the others get their DEFAULT config only")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rev", help="analyse kernels/ as committed at this revision (default: the working tree, "
                                  "which must then be clean in kernels/ for the report to name a commit)")
    ap.add_argument("--out", help="output path without extension (default bench/results/static_<date>_<commit>)")
    ap.add_argument("--render", metavar="JSON", help="rewrite the markdown of an existing report from its JSON "
                                                     "(this version's tables and definitions; nothing compiled)")
    args = ap.parse_args(argv)
    if args.render:
        render(args.render)
        return
    models = args.models.split(",")
    dtypes = args.dtypes.split(",")
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; known: {', '.join(MODELS)}")
    commit = _git("rev-parse", "--short", args.rev or "HEAD")
    dirty = "" if args.rev or not _git("status", "--porcelain", "--", "kernels", "wrn_fast/ops") else "+dirty"
    sweep = {"all": models, "none": []}.get(args.all_configs, args.all_configs.split(","))
    rows, secs = run(models, dtypes, sweep, args.processes, args.rev)
    import triton
    meta = {
        "label": "predicted/static, no GPU",
        "kernels commit": commit + dirty,
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": "python -m bench.static " + " ".join(argv if argv is not None else sys.argv[1:]),
        "triton": triton.__version__, "target": "sm_90a (H100/H200)",
        "models": ", ".join(f"{m} (N={MODELS[m][2]}, {MODELS[m][3]}x{MODELS[m][3]}, "
                            f"{'train' if MODELS[m][4] else 'inference'})" for m in models),
        "dtypes": ", ".join(dtypes),
        "configs": f"every considered config for {', '.join(sweep) or 'no model'}; DEFAULT only for the others",
        "wall time": f"{secs:.0f} s",
        "definitions": DEFINITIONS,
    }
    base = args.out or os.path.join(RESULTS, f"static_{datetime.date.today():%Y%m%d}_{commit}{dirty}")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    write_report(rows, meta, base)
    print(f"wrote {base}.md and .json ({len(rows)} rows, {secs:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
