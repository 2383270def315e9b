"""The roofline model behind bench/roofline.py: peaks, assumptions, the kernels of a step (eager
and fused) with their FLOPs, minimum bytes and issue ceilings, and the step summary.

Predicted only; bench/roofline.py writes the report and is the CLI.
"""
import dataclasses
import glob
import json
import os

from bench import sass, static
from bench.static import row_fill, tile_fill  # noqa: F401 (tile_fill re-exported: the roofline's useful ceilings)


DEVICES = {  # dense bf16/fp16 tensor-core FLOP/s, copy bandwidth B/s, SMs
    "h200": {"tflops": 790.0, "tbps": 4.3, "sms": 132,
             "note": "H200: ~790 TFLOP/s bf16 matmul and ~4.3 TB/s copy as measured on such machines"},
    "h100": {"tflops": 790.0, "tbps": 3.35, "sms": 132,
             "note": "H100 SXM: the same compute as the H200 (790 TFLOP/s bf16 assumed), ~3.35 TB/s"},
}
ACT_BYTES = {"bf16": 2, "fp16": 2, "fp32-tf32": 4}
TC_RATE = {"bf16": 1.0, "fp16": 1.0, "fp32-tf32": 0.5}  # of the bf16 peak (dense TF32 = half)
STATS_M = 64  # rows per epilogue statistics record (kernels/bn_act_conv.py STATS_M)

ASSUMPTIONS = [
    "Lower bounds: a kernel takes max(FLOPs / compute peak, bytes / bandwidth); no launch overhead, no "
    "wave quantisation, no occupancy or latency effects, no L2 reuse between kernels.",
    "Bytes: every input tensor read once and every output written once per kernel (tiles re-read from L2 are "
    "free), activations in the compute dtype, weights cast to it, statistics / partials in fp32.",
    "Eager PyTorch (autocast, channels_last, cuDNN): per BN-act(-dropout)-conv chain it runs BatchNorm "
    "(training: a statistics pass and a normalise pass, so x is read twice), ReLU (read, write), dropout "
    "(read, write the output and a 1-byte bool mask), the conv (read input + weight, write output), the "
    "residual add (read 2, write 1). Backward: conv dgrad (read grad + weight, write), wgrad (read grad + input, "
    "write fp32 weight grad), dropout backward (read grad + mask, write), ReLU backward (read grad + output, "
    "write), BN backward (two passes: reductions of grad and grad*x, then the apply: reads grad and x twice, "
    "writes once). Gradients reaching one tensor from two consumers are summed by autograd (read 2, write 1).",
    "Eager inference: BN with running statistics is one pass (read, write); ReLU (read, write); conv; add.",
    "cuDNN is assumed to reach the tensor-core peak on every conv (an optimistic bound for eager), i.e. its issue "
    "ceiling is 1; wrn_fast's convs are limited by their SASS issue ceiling (bench.static, DEFAULT config) "
    "times the share of the tile's tensor-core FMAs that fall inside the GEMM (tile_fill: the tensor cores run "
    "masked lanes too, e.g. a 32-wide tile over Cin = 16 or a 64-deep K step over 16 channels per tap counts "
    "1/2 or 1/4); the per-layer tables show that useful ceiling.",
    "wrn_fast (triton backend): the conv kernel applies BN-act(-dropout) in its prologue and writes y, the "
    "residual sum and the statistics partials (fp32 mean, M2 per 64 output rows and channel) in its epilogue; "
    "BN finalize reads the partials. Dropout: a 1-bit keep mask (kernels' keep_bits) written once per step by a "
    "mask kernel and read by forward, dgrad and wgrad (if kernels/bn_act_conv.py has no keep_bits: Philox "
    "regenerated in the loops, 0 bytes). dgrad reads grad_y, weight, x (its epilogue recomputes act' and the "
    "mask) and writes grad_x with per-tile channel sums; wgrad reads grad_y and x (recomputing the prologue) and "
    "writes split-K fp32 partials that are summed (split as the launcher picks it for 132 SMs). A training BN "
    "feeding a conv: the conv and the BN statistics' backward are one autograd node (wrn_fast::bn_batch_act_conv, "
    "when this checkout's wrn_fast/ops/conv.py has it): after dgrad, one bn_backward_apply pass grad_x = "
    "dgrad's grad_x + b*x + c (read 2, write 1: 3 passes); each further conv consumer of the same BN (the "
    "projection shortcut) runs its own such pass. Without it (older engines), and for a BN feeding no conv "
    "(bn_act_dropout, e.g. the last BN): the statistics term b*x + c (bn_finalize_partials' backward: read x, "
    "write) and autograd's sum with the direct grad_x (read 2, write 1): 5 passes.",
    "Common to both and counted in both: the autocast weight cast (read fp32, write the compute dtype) and the "
    "SGD step (momentum, weight decay: read param, grad, buffer; write param, buffer; fp32). Not counted: the "
    "stem's input, the classifier (pool + fc + loss), max-pool of WRN-50-2 (all small or equal in both).",
    "WRN-50-2: the bottleneck's bn3 / downsample BN + residual add + ReLU run as PyTorch elementwise ops in "
    "both; wrn_fast gets their statistics from the conv epilogue (one pass: scale-shift) where eager's BN needs "
    "two.",
    "Pass routes (as kernels.bn_act_conv.conv_route at the static report's kernels commit routes each BN-act(-"
    "dropout) -> conv; wrn_fast::bn_act_conv_two_pass): bn_act_dropout_fwd reads x and writes the activation a "
    "(its dropout mask from Philox, no bits), the forward GEMM reads a without prologue (its issue ceiling is that "
    "of the prologue-free variant); dgrad stays fused on x (the 1-bit mask is written in backward, then read). "
    "'two-pass' (narrow layers: fp16/bf16, 3x3 stride 1, Cout <= 128 or Cin <= 16): a is kept for backward in "
    "addition to x (counted in wrn_fast's activation memory) and wgrad reads it without prologue. 'pass-fwd' "
    "(the prologue costs the forward GEMM more than the pass costs): a is freed after the forward GEMM (no "
    "activation memory), wgrad is fused on x (reads the bits). 'pass-fwd-wgrad' (as pass-fwd, and the wgrad's "
    "prologue too costs more than a pass): backward runs bn_act_dropout_fwd again (read x, write a) and wgrad "
    "reads that a without prologue.",
    "Activation memory kept for backward: the distinct tensors autograd saves. Eager: each BN's input, the ReLU "
    "output, the dropout mask (1 B/element) and the dropout output (= the conv input); wrn_fast: each fused "
    "conv's input x (the previous output, already counted once), the 1-bit dropout mask, statistics partials. "
    "Weights, gradients and optimizer state excluded (equal in both).",
]


@dataclasses.dataclass
class Kernel:
    impl: str        # "eager" | "fused" | "both"
    phase: str       # "fwd" | "bwd" | "step"
    layer: str
    what: str
    flops: float = 0.0
    bytes: float = 0.0
    tc_flops: float = 0.0        # FLOPs on the tensor cores (the convs)
    ceiling: float = 1.0         # useful issue ceiling of a fused conv (1 for the others)
    nominal: float = 1.0         # its SASS issue ceiling alone (masked tile lanes counted as work)
    variant: str = ""

    def time(self, peak_flops, bw):
        t_mem = self.bytes / bw
        t_cmp = self.tc_flops / (peak_flops * self.ceiling) if self.tc_flops else 0.0
        return max(t_mem, t_cmp), t_cmp, t_mem


def _split_k(cout, cin, k, m_rows, sms):
    """The wgrad launcher's split-K (kernels/bn_act_conv.py): enough programs for 4 per SM."""
    tiles = -(-cout // 64) * -(-cin // 64) * k * k
    split = max(1, min(-(-4 * sms // tiles), -(-m_rows // 512)))
    chunk = -(-(-(-m_rows // split)) // 256) * 256
    return -(-m_rows // chunk)


def _kernels_root(commit):
    """Where the kernels at ``commit`` (the static report's) are: a source tree of that commit,
    or this checkout (dirty or unknown commit, no git)."""
    if commit and "dirty" not in commit and commit != "unknown":
        try:
            return sass.source_tree(commit)
        except Exception:  # noqa: BLE001 - no git here: the working tree
            pass
    return sass.ROOT


def _uses_bits(root):
    """Whether the kernels under ``root`` take a dropout bitmask (any kernels/*.py: the conv
    launchers live in several files since the split of bn_act_conv.py)."""
    d = os.path.join(root, "kernels")
    return any("keep_bits" in open(os.path.join(d, f)).read() for f in os.listdir(d) if f.endswith(".py"))


def _bn_backward_fused(root):
    """Whether the engine under ``root`` runs a training BN's statistics backward inside the
    consuming conv's autograd node (one grad_x pass, wrn_fast::bn_batch_act_conv)."""
    with open(os.path.join(root, "wrn_fast", "ops", "conv.py")) as f:
        return "bn_batch_act_conv" in f.read()


def build(model, dtype, ceilings, sms, mask_bits, src_root=None, bn_fused=True):
    """All kernels of one step of ``model`` for both implementations, and the saved bytes;
    convs routed (one kernel or a pass route) as the kernels under ``src_root`` decide."""
    layers = static.model_layers(model, dtype, src_root)
    train = static.MODELS[model][4]
    s = ACT_BYTES[dtype]
    ks = []
    saved = {"eager": {}, "fused": {}}
    params = 0
    bn_seen = {}
    # consumers per BN (a prologue shared by conv1 and the projection shortcut is computed once in eager)
    for L in layers:
        if isinstance(L, static.ConvLayer):
            ks += _conv_kernels(L, dtype, s, ceilings, sms, mask_bits, saved, bn_seen, train, bn_fused)
            params += L.cout * L.cin * L.k * L.k
        else:
            ks += _eltwise_kernels(L, s, saved, train)
    if train:
        ks.append(Kernel("both", "fwd", "weights", "autocast weight cast (fp32 -> compute dtype)",
                         bytes=params * (4 + s)))
        ks.append(Kernel("both", "step", "weights", "SGD step (momentum, weight decay)", bytes=params * 4 * 5))
    else:
        ks.append(Kernel("both", "fwd", "weights", "weight cast (fp32 -> compute dtype)", bytes=params * (4 + s)))
    return ks, {impl: sum(d.values()) for impl, d in saved.items()}, params


def _conv_kernels(L, dtype, s, ceilings, sms, mask_bits, saved, bn_seen, train, bn_fused=True):
    ks = []
    ho = L.hw_out
    e_in = L.n * L.cin * L.hw * L.hw
    e_out = L.n * L.cout * ho * ho
    m_rows = L.n * ho * ho
    w = L.cout * L.cin * L.k * L.k
    flops = 2.0 * m_rows * L.cout * L.cin * L.k * L.k
    drop = L.dropout if train else 0.0
    name = L.name
    # ---------------- eager: the BN-act(-dropout) producing this conv's input, once per BN
    if L.prologue_bn:
        first = L.prologue_bn not in bn_seen
        bn_seen.setdefault(L.prologue_bn, 0)
        bn_seen[L.prologue_bn] += 1
        if first:
            if train:
                ks.append(Kernel("eager", "fwd", name, "BN forward (stats pass + normalise pass)", bytes=3 * e_in * s))
                ks.append(Kernel("eager", "fwd", name, "ReLU", bytes=2 * e_in * s))
                ks.append(Kernel("eager", "bwd", name, "ReLU backward", bytes=3 * e_in * s))
                ks.append(Kernel("eager", "bwd", name, "BN backward (reduce pass + apply pass)", bytes=5 * e_in * s))
                saved["eager"][L.prologue_bn + ".x"] = e_in * s      # BN input (also the previous conv's output)
                saved["eager"][L.prologue_bn + ".relu"] = e_in * s   # ReLU output (= conv input without dropout)
                saved["fused"][L.prologue_bn + ".x"] = e_in * s      # the fused conv's x (same tensor)
            else:
                ks.append(Kernel("eager", "fwd", name, "BN (running stats, one pass)", bytes=2 * e_in * s))
                ks.append(Kernel("eager", "fwd", name, "ReLU", bytes=2 * e_in * s))
            if drop:
                ks.append(Kernel("eager", "fwd", name, "dropout (output + bool mask)", bytes=e_in * (2 * s + 1)))
                ks.append(Kernel("eager", "bwd", name, "dropout backward", bytes=e_in * (2 * s + 1)))
                saved["eager"][L.prologue_bn + ".mask"] = e_in
                saved["eager"][L.prologue_bn + ".dropout_out"] = e_in * s
                if mask_bits and not L.fwd_pass:
                    ks.append(Kernel("fused", "fwd", name, "dropout keep bits (1 bit / element)", bytes=e_in / 8))
                    saved["fused"][L.prologue_bn + ".bits"] = e_in / 8
            if train:
                ks += _fused_bn_backward(name, e_in, s, bn_fused)
        elif train:
            # a second consumer of the same activation: gradients summed (both implementations)
            ks.append(Kernel("both", "bwd", name, "grad accumulation (2 consumers)", bytes=3 * e_in * s))
            if bn_fused:  # its own statistics term, in its own grad_x pass
                ks += _fused_bn_backward(name, e_in, s, True)
    # ---------------- eager conv + residual
    ks.append(Kernel("eager", "fwd", name, "cuDNN conv fwd", flops, (e_in + e_out) * s + w * s, tc_flops=flops))
    if L.residual:
        ks.append(Kernel("eager", "fwd", name, "residual add", bytes=3 * e_out * s))
        if train:  # the block input receives the residual gradient and its BN path's: summed
            ks.append(Kernel("both", "bwd", name, "grad accumulation (residual)", bytes=3 * e_out * s))
    if train:
        if L.needs_dgrad:
            ks.append(Kernel("eager", "bwd", name, "cuDNN dgrad", flops, (e_in + e_out) * s + w * s, tc_flops=flops))
        ks.append(Kernel("eager", "bwd", name, "cuDNN wgrad", flops, (e_in + e_out) * s + w * 4, tc_flops=flops))
    # ---------------- fused
    bits = e_in / 8 if (drop and mask_bits) else 0.0
    a_b = 0.0  # the pass routes' activation a, read by the forward GEMM (and wgrad) instead of x
    if L.fwd_pass:
        route = f"{L.route_label}: "
        ks.append(Kernel("fused", "fwd", name, route + "bn_act_dropout fwd (read x, write a; Philox mask)",
                         bytes=2 * e_in * s, variant=L.pass_variant(dtype).label()))
        if train:
            if L.keeps_a:
                saved["fused"][name + ".a"] = e_in * s
            if bits:  # no keep_bits from the forward: backward makes them (dgrad's launcher, or once for
                # dgrad and pass_fwd's fused wgrad)
                ks.append(Kernel("fused", "bwd", name, route + "dropout keep bits in backward (1 bit / element)",
                                 bytes=bits))
            if L.route == "pass_fwd_wgrad":
                ks.append(Kernel("fused", "bwd", name, route + "bn_act_dropout fwd again for wgrad (read x, write a)",
                                 bytes=2 * e_in * s, variant=L.pass_variant(dtype).label()))
        a_b = e_in * s
    stats_b = (-(-m_rows // STATS_M)) * (L.cout * 8 + 4) if (L.stats and train) else 0.0
    res_b = e_out * s if L.residual else 0.0

    def ceil(kind):
        v = L.variant(kind, dtype)
        return ceilings(v)

    c_f, n_f, lab = ceil("fwd")
    fwd_in = a_b if L.fwd_pass else e_in * s + bits  # a (no prologue) or x + the mask bits
    ks.append(Kernel("fused", "fwd", name, "bn_act_conv fwd" + (" (on a, no prologue)" if L.fwd_pass else ""),
                     flops, fwd_in + e_out * s + w * s + res_b + stats_b, tc_flops=flops, ceiling=c_f, nominal=n_f,
                     variant=lab))
    if L.stats and train:
        ks.append(Kernel("fused", "fwd", name, "BN finalize (merge partials)", bytes=stats_b))
    if train:
        if L.needs_dgrad:
            c_d, n_d, lab = ceil("dgrad")
            x_b = e_in * s if L.prologue_bn else 0.0
            ks.append(Kernel("fused", "bwd", name, "bn_act_conv dgrad", flops,
                             (e_in + e_out) * s + w * s + x_b + bits, tc_flops=flops, ceiling=c_d, nominal=n_d,
                             variant=lab))
        c_w, n_w, lab = ceil("wgrad")
        split = _split_k(L.cout, L.cin, L.k, m_rows, sms)
        part = split * w * 4
        w_in = a_b if L.wgrad_on_a else e_in * s + bits
        ks.append(Kernel("fused", "bwd", name, f"bn_act_conv wgrad (split-K {split})"
                         + (" (on a, no prologue)" if L.wgrad_on_a else ""), flops,
                         w_in + e_out * s + part, tc_flops=flops, ceiling=c_w, nominal=n_w, variant=lab))
        if split > 1:
            ks.append(Kernel("fused", "bwd", name, "wgrad split-K sum", bytes=part + w * 4))
    return ks


def _fused_bn_backward(name, e, s, in_conv_node=False):
    """wrn_fast's BN backward after the channel sums of grad_scale / grad_shift (dgrad's
    epilogue, or bn_act_dropout's backward). ``in_conv_node`` (bn_batch_act_conv): one pass
    grad_x = dgrad's grad_x + b[c]*x + c[c] (read 2, write 1). Else the statistics term
    (bn_finalize_partials' C++ backward, bn_backward_apply without the direct gradient: read
    x, write), then autograd sums it with the direct grad_x (read 2, write 1)."""
    if in_conv_node:
        return [Kernel("fused", "bwd", name, "BN backward: dgrad's grad_x + b*x + c (one bn_backward_apply)",
                       bytes=3 * e * s)]
    return [Kernel("fused", "bwd", name, "BN backward stats term (bn_backward_apply)", bytes=2 * e * s),
            Kernel("fused", "bwd", name, "grad sum (dgrad's grad_x + stats term)", bytes=3 * e * s)]


def _eltwise_kernels(L, s, saved, train):
    e = L.n * L.c * L.hw * L.hw
    ks = []
    if L.kernel == "bnad":
        if train:
            ks += [Kernel("eager", "fwd", L.name, "BN forward (2 passes)", bytes=3 * e * s),
                   Kernel("eager", "fwd", L.name, "ReLU", bytes=2 * e * s),
                   Kernel("eager", "bwd", L.name, "ReLU backward", bytes=3 * e * s),
                   Kernel("eager", "bwd", L.name, "BN backward (2 passes)", bytes=5 * e * s),
                   Kernel("fused", "fwd", L.name, "bn_act_dropout fwd", bytes=2 * e * s),
                   Kernel("fused", "bwd", L.name, "bn_act_dropout bwd", bytes=3 * e * s),
                   *_fused_bn_backward(L.name, e, s)]
            saved["eager"][L.name + ".x"] = e * s
            saved["eager"][L.name + ".relu"] = e * s
            saved["fused"][L.name + ".x"] = e * s
        else:
            ks += [Kernel("eager", "fwd", L.name, "BN (running stats)", bytes=2 * e * s),
                   Kernel("eager", "fwd", L.name, "ReLU", bytes=2 * e * s),
                   Kernel("fused", "fwd", L.name, "bn_act_dropout fwd", bytes=2 * e * s)]
    else:  # bn3 (+ downsample BN) + add + ReLU in PyTorch, both implementations
        if train:
            ks += [Kernel("eager", "fwd", L.name, "BN forward (2 passes)", bytes=3 * e * s),
                   Kernel("eager", "bwd", L.name, "BN backward (2 passes)", bytes=5 * e * s),
                   Kernel("fused", "fwd", L.name, "scale-shift (stats from the epilogue)", bytes=2 * e * s),
                   Kernel("fused", "bwd", L.name, "scale-shift backward + stats backward", bytes=3 * e * s)]
            saved["eager"][L.name + ".x"] = e * s
            saved["fused"][L.name + ".x"] = e * s
            saved["eager"][L.name + ".relu"] = e * s
            saved["fused"][L.name + ".relu"] = e * s
        else:
            ks += [Kernel("eager", "fwd", L.name, "BN (running stats)", bytes=2 * e * s),
                   Kernel("fused", "fwd", L.name, "scale-shift", bytes=2 * e * s)]
        ks += [Kernel("both", "fwd", L.name, "residual add + ReLU", bytes=2 * 3 * e * s)]
        if train:
            ks += [Kernel("both", "bwd", L.name, "ReLU backward + grad accumulation", bytes=2 * 3 * e * s)]
    return ks


# --------------------------------------------------------------------------- issue ceilings

def load_ceilings(path, dtype, model):
    """Variant -> (useful issue ceiling of its DEFAULT config: the SASS issue ceiling x
    tile_fill, label) from bench.static's JSON."""
    table = {}
    if path:
        with open(path) as f:
            data = json.load(f)
        for r in data["rows"]:
            loop = (r.get("default") or {}).get("main_loop")
            if loop and r["dtype"] == dtype:
                v = sass.Variant(**r["variant"])
                cfg = r.get("default_config") or r["default"].get("config")
                useful = loop["issue_ceiling"] * (row_fill(r, cfg) if cfg else 1.0)
                table.setdefault(v, (useful, loop["issue_ceiling"], r["model"]))
                if r["model"] == model:
                    table[v] = (useful, loop["issue_ceiling"], r["model"])
    missing = []

    def ceiling(v):
        if v in table:
            return table[v][0], table[v][1], v.label()
        missing.append(v)
        return 1.0, 1.0, v.label() + " (NOT ANALYSED: ceiling 1 assumed)"
    return ceiling, missing


def _static_commit(path):
    """The kernels commit the static report describes (it names the file too)."""
    if not path:
        return static._git("rev-parse", "--short", "HEAD")
    with open(path) as f:
        return json.load(f)["meta"].get("kernels commit", "unknown")


def latest_static():
    files = sorted(glob.glob(os.path.join(static.RESULTS, "static_*.json")), key=os.path.getmtime)
    return files[-1] if files else None


# --------------------------------------------------------------------------- report

def summarise(ks, saved, peak, bw):
    out = {}
    for impl in ("eager", "fused"):
        mine = [k for k in ks if k.impl in (impl, "both")]
        t = [k.time(peak, bw)[0] for k in mine]
        out[impl] = {"kernels": len(mine), "flops": sum(k.flops for k in mine), "bytes": sum(k.bytes for k in mine),
                     "time_s": sum(t),
                     "conv_time_s": sum(k.time(peak, bw)[0] for k in mine if k.tc_flops),
                     "other_time_s": sum(k.time(peak, bw)[0] for k in mine if not k.tc_flops),
                     "saved_bytes": saved[impl]}
    out["speedup"] = out["eager"]["time_s"] / out["fused"]["time_s"]
    out["memory_ratio"] = out["fused"]["saved_bytes"] / out["eager"]["saved_bytes"] if out["eager"]["saved_bytes"] \
        else None
    out["fused_if_ceiling_1_s"] = sum(max(k.bytes / bw, k.tc_flops / peak if k.tc_flops else 0.0)
                                      for k in ks if k.impl in ("fused", "both"))
    # sensitivity: cuDNN at 70% of the tensor-core peak (eager convs slower than their bound)
    out["eager_cudnn70_s"] = sum(max(k.bytes / bw, k.tc_flops / (0.7 * peak) if k.tc_flops else 0.0)
                                 for k in ks if k.impl in ("eager", "both"))
    out["speedup_if_cudnn70"] = out["eager_cudnn70_s"] / out["fused"]["time_s"]
    out["speedup_if_ceiling_1"] = out["eager"]["time_s"] / out["fused_if_ceiling_1_s"]
    # the former model: the SASS issue ceiling alone, masked tile lanes counted as useful work
    out["fused_nominal_s"] = sum(max(k.bytes / bw, k.tc_flops / (peak * k.nominal) if k.tc_flops else 0.0)
                                 for k in ks if k.impl in ("fused", "both"))
    out["speedup_nominal"] = out["eager"]["time_s"] / out["fused_nominal_s"]
    return out
