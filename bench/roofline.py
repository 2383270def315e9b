"""Roofline of a WRN training step (or inference pass): eager PyTorch vs wrn_fast's fused path.

    python -m bench.roofline [--models wrn-28-10,...] [--dtype bf16] [--static bench/results/static_*.json]
                             [--device h200|h100] [--tflops 790] [--tbps 4.3]

Per layer and per step: FLOPs, the minimum bytes each kernel moves (each input read once,
each output written once, except where an algorithm needs two passes; see ASSUMPTIONS), the
lower-bound time of every kernel = max(FLOPs / compute peak, bytes / bandwidth), and the
activation memory kept for backward. wrn_fast's fused convolutions get
max(FLOPs / (peak x issue ceiling), bytes / bandwidth), the issue ceiling being bench.static's
for the DEFAULT config of that exact kernel variant. Everything here is predicted; nothing is
measured. Layer shapes and which BN / act / dropout / residual / statistics each conv fuses
come from bench.static.model_layers (the real architectures, as wrn_fast.model runs them).
"""
import argparse
import dataclasses
import datetime
import json
import os
import sys

from bench import sass, static
# the model (re-exported: tests and callers read these from bench.roofline)
from bench.roofline_model import (  # noqa: F401
    ACT_BYTES, ASSUMPTIONS, DEVICES, STATS_M, TC_RATE, Kernel, _bn_backward_fused, _conv_kernels, _kernels_root,
    _static_commit, _uses_bits, build, latest_static, load_ceilings, summarise, tile_fill)


def _ms(t):
    return f"{t * 1e3:.3f}"


def report(models, dtype, devices, static_path, peak_override, bw_override):
    src_root = _kernels_root(_static_commit(static_path))
    mask_bits = _uses_bits(src_root)
    bn_fused = _bn_backward_fused(sass.ROOT)  # the engine of this checkout (no kernel code involved)
    results = {"meta": {}, "models": {}}
    L = ["# Roofline (predicted, no GPU): eager PyTorch vs wrn_fast fused path", "",
         "**Predicted, not measured.** Lower bounds from FLOPs and minimum bytes; wrn_fast's convolutions scaled by "
         "the SASS issue ceiling of their DEFAULT config (bench.static).", ""]
    meta = {"label": "predicted, no GPU", "dtype": dtype, "static report": os.path.relpath(static_path, sass.ROOT)
            if static_path else "none (every ceiling assumed 1)", "dropout mask in the fused path":
            "1-bit keep_bits" if mask_bits else "Philox in the loops (0 bytes)",
            "BN statistics backward": "in the consuming conv's node, one grad_x pass (this checkout's engine)"
            if bn_fused else "separate node + autograd sum (5 passes)",
            "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "kernels commit": _static_commit(static_path),
            "commit": static._git("rev-parse", "--short", "HEAD"),
            "command": "python -m bench.roofline " + " ".join(sys.argv[1:])}
    results["meta"] = dict(meta, assumptions=ASSUMPTIONS)
    L += [f"- {k}: {v}" for k, v in meta.items()]
    L += ["", "## Assumptions", ""] + [f"{i}. {a}" for i, a in enumerate(ASSUMPTIONS, 1)]
    L += ["", "## Summary", "",
          "| model | device | eager step (ms) | wrn_fast step (ms) | predicted speedup | "
          "speedup at the SASS ceilings alone (masked tile lanes as work) | "
          "wrn_fast if every ceiling were 1 (ms, speedup) | speedup if cuDNN reached only 70% of peak | "
          "eager saved activations (GiB) | wrn_fast (GiB) | memory ratio | kernels eager / fused |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    details = []
    for model in models:
        ceilings, missing = load_ceilings(static_path, dtype, model)
        for dev in devices:
            d = DEVICES[dev]
            peak = (peak_override or d["tflops"]) * 1e12 * TC_RATE[dtype]
            bw = (bw_override or d["tbps"]) * 1e12
            ks, saved, params = build(model, dtype, ceilings, d["sms"], mask_bits, src_root, bn_fused)
            summ = summarise(ks, saved, peak, bw)
            results["models"].setdefault(model, {})[dev] = {
                "peak_flops": peak, "bandwidth": bw, "summary": summ, "params": params,
                "missing_ceilings": sorted({v.label() for v in missing}),
                # every kernel for the first device only (the JSON stays small)
                "kernels": [dict(dataclasses.asdict(k), time_s=k.time(peak, bw)[0], compute_s=k.time(peak, bw)[1],
                                 memory_s=k.time(peak, bw)[2]) for k in ks] if dev == devices[0] else None}
            e, f = summ["eager"], summ["fused"]
            L.append(f"| {model} (N={static.MODELS[model][2]}, {'train' if static.MODELS[model][4] else 'infer'}) | "
                     f"{dev} | {_ms(e['time_s'])} | {_ms(f['time_s'])} | **{summ['speedup']:.2f}x** | "
                     f"{summ['speedup_nominal']:.2f}x | "
                     f"{_ms(summ['fused_if_ceiling_1_s'])} ({summ['speedup_if_ceiling_1']:.2f}x) | "
                     f"{summ['speedup_if_cudnn70']:.2f}x | {e['saved_bytes'] / 2**30:.2f} | "
                     f"{f['saved_bytes'] / 2**30:.2f} | **{summ['memory_ratio']:.2f}** | "
                     f"{e['kernels']} / {f['kernels']} |" if summ["memory_ratio"] is not None else
                     f"| {model} | {dev} | {_ms(e['time_s'])} | {_ms(f['time_s'])} | **{summ['speedup']:.2f}x** | "
                     f"{summ['speedup_nominal']:.2f}x | "
                     f"{_ms(summ['fused_if_ceiling_1_s'])} ({summ['speedup_if_ceiling_1']:.2f}x) | "
                     f"{summ['speedup_if_cudnn70']:.2f}x | - | - | - | {e['kernels']} / {f['kernels']} |")
            if dev == devices[0]:
                details.append(_layer_table(model, dev, ks, peak, bw, summ, missing))
    L += ["", "Speedup = eager step time / wrn_fast step time, both lower bounds as defined above. Memory ratio = "
          "wrn_fast / eager activation bytes kept for backward. The SASS-ceiling-alone column is the model of the "
          "reports before tile_fill (a masked tile lane counted as useful work). The two sensitivity columns: "
          "wrn_fast with every "
          "fused conv at issue ceiling 1 (the best its memory traffic allows), and eager with cuDNN at 70% of the "
          "tensor-core peak instead of 100%."]
    for dtl in details:
        L += [""] + dtl
    return L, results


def _layer_table(model, dev, ks, peak, bw, summ, missing):
    L = [f"## {model} on {dev}: per layer", "",
         f"Totals: eager {_ms(summ['eager']['time_s'])} ms (convs {_ms(summ['eager']['conv_time_s'])}, other "
         f"{_ms(summ['eager']['other_time_s'])}), {summ['eager']['bytes'] / 1e9:.2f} GB moved; wrn_fast "
         f"{_ms(summ['fused']['time_s'])} ms (convs {_ms(summ['fused']['conv_time_s'])}, other "
         f"{_ms(summ['fused']['other_time_s'])}), {summ['fused']['bytes'] / 1e9:.2f} GB moved; "
         f"{summ['eager']['flops'] / 1e12:.2f} TFLOP per step.", ""]
    if missing:
        L += [f"Not in the static report (ceiling 1 assumed): {', '.join(sorted({v.label() for v in missing}))}", ""]
    L += ["| layer | route | GFLOP (fwd) | eager fwd ms | eager bwd ms | fused fwd ms | fused bwd ms | "
          "fused conv useful ceilings fwd / dgrad / wgrad (SASS ceiling x tile_fill) |",
          "|---|---|---|---|---|---|---|---|"]
    order = []
    for k in ks:
        if k.layer not in order:
            order.append(k.layer)
    for layer in order:
        mine = [k for k in ks if k.layer == layer]

        def t(impl, phase):
            return sum(k.time(peak, bw)[0] for k in mine if k.impl in (impl, "both") and k.phase == phase)
        gf = sum(k.flops for k in mine if k.impl == "eager" and k.phase == "fwd") / 1e9
        ceils = " / ".join(f"{k.ceiling:.2f}" for k in mine if k.impl == "fused" and k.tc_flops)
        routes = [r for r in ("two-pass", "pass-fwd-wgrad", "pass-fwd")
                  if any(k.what.startswith(r + ":") for k in mine)]
        route = routes[0] if routes else "fused" if any(k.impl == "fused" and k.tc_flops for k in mine) else "-"
        L.append(f"| {layer} | {route} | {gf:.1f} | {_ms(t('eager', 'fwd'))} | {_ms(t('eager', 'bwd') + t('eager', 'step'))} | "
                 f"{_ms(t('fused', 'fwd'))} | {_ms(t('fused', 'bwd') + t('fused', 'step'))} | {ceils or '-'} |")
    return L + [""] + _ceiling_costs(model, ks, peak, bw)


def _ceiling_costs(model, ks, peak, bw, top=8):
    """Which fused conv variants' issue ceilings cost step time: per variant (summed over
    the layers that run it), the time above what its memory traffic or the tensor-core peak
    allows (time at its useful ceiling - time at ceiling 1). A variant whose memory time
    binds loses nothing to its ceiling, however low."""
    lost, runs = {}, {}
    for k in ks:
        if k.impl != "fused" or not k.tc_flops:
            continue
        t, _, t_mem = k.time(peak, bw)
        at_1 = max(t_mem, k.tc_flops / peak)
        lost[k.variant] = lost.get(k.variant, 0.0) + (t - at_1)
        runs.setdefault(k.variant, []).append(k.ceiling)
    total = sum(lost.values())
    rows = sorted(((v, d) for v, d in lost.items() if d > 0), key=lambda r: -r[1])
    L = [f"Where the fused convs' issue ceilings cost time ({model}): {_ms(total)} ms of the step in all "
         f"(time at the useful ceiling - time at ceiling 1, memory-bound kernels lose nothing); the "
         f"{min(top, len(rows))} largest of {len(rows)} variants that lose any:", "",
         "| variant | layers | useful ceiling | ms lost per step |", "|---|---|---|---|"]
    for v, d in rows[:top]:
        L.append(f"| {v} | {len(runs[v])} | {min(runs[v]):.2f} | {_ms(d)} |")
    return L


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="wrn-28-10,wrn-28-10-infer,wrn-28-2,wrn-70-16,wrn-50-2")
    ap.add_argument("--dtype", default="bf16", choices=tuple(ACT_BYTES))
    ap.add_argument("--devices", default="h200,h100")
    ap.add_argument("--static", help="bench.static JSON (default: the newest bench/results/static_*.json)")
    ap.add_argument("--tflops", type=float, help="override the bf16 dense tensor-core peak (TFLOP/s)")
    ap.add_argument("--tbps", type=float, help="override the bandwidth (TB/s)")
    ap.add_argument("--out", help="output path without extension (default bench/results/roofline_<date>_<commit>)")
    args = ap.parse_args(argv)
    static_path = args.static or latest_static()
    models = args.models.split(",")
    devices = args.devices.split(",")
    L, results = report(models, args.dtype, devices, static_path, args.tflops, args.tbps)
    base = args.out or os.path.join(static.RESULTS, f"roofline_{datetime.date.today():%Y%m%d}_"
                                                    f"{results['meta']['kernels commit']}_{args.dtype}")
    with open(base + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    for line in L:
        if line.startswith("| wrn") or line.startswith("| model"):
            print(line)
    print(f"wrote {base}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
