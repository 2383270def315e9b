"""CPU benchmark of the default training job and a small-shape set (issue 18).

    python -m bench.cpu_job [--rounds 30] [--rows job,small] [--out bench/results]

The default job (``python -m wrn_fast train``) is digits: WRN-16-2, one input channel,
16x16 images, batch 64, dropout 0, with batches as ``wrn_fast.data`` makes them
(``permute(0, 3, 1, 2).contiguous()`` of [N, H, W, 1]: NHWC strides, which oneDNN keeps
for every activation). Each row times, A/B interleaved in one process (bench.common
``time_interleaved``), one training step (forward, cross-entropy, backward, SGD step)
and one eval forward under no_grad of:

  reference          wrn_fast.reference.WideResNet, eager
  reference-compile  the same under torch.compile (inductor, default mode)
  wrn_fast           wrn_fast.WideResNet on its default CPU backend

All three start from the same weights; the logits of each are checked against the
reference before timing (relative L2 error, fp32 <= 1e-4). Results: a JSON and a
markdown table under ``--out`` with the device, versions, commit and command.

Besides each implementation's wall-clock quantiles, every row reports two paired
measures against the reference, which are far less sensitive to other tenants of a
shared machine than a ratio of medians: the quantiles (p10 / median / p90) of the
per-round ratio reference time / implementation time (both timed in the same round,
back to back), and the median of the same per-round ratio in process CPU time
(``time.process_time``: the work done, excluding time spent waiting for a core).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from . import common

# name: (model kwargs, batch, in_channels, image size, nhwc-strided input like wrn_fast.data)
ROWS = {
    "job": [("digits job: WRN-16-2, 1ch 16x16, b64, dropout 0",
             dict(depth=16, widen_factor=2, num_classes=10, in_channels=1), 64, 1, 16, True)],
    "small": [
        ("WRN-16-2, 3ch 16x16, b64", dict(depth=16, widen_factor=2, num_classes=10), 64, 3, 16, False),
        ("WRN-16-2, 3ch 32x32, b32", dict(depth=16, widen_factor=2, num_classes=10), 32, 3, 32, False),
        ("WRN-10-4, 3ch 8x8, b128", dict(depth=10, widen_factor=4, num_classes=10), 128, 3, 8, False),
        ("WRN-16-2, 1ch 16x16, b16", dict(depth=16, widen_factor=2, num_classes=10, in_channels=1), 16, 1, 16, True),
    ],
}


def _input(batch, channels, size, nhwc, seed):
    g = torch.Generator().manual_seed(seed)
    if nhwc:  # exactly what wrn_fast.data does with [N, H, W, C] images
        return torch.rand(batch, size, size, channels, generator=g).permute(0, 3, 1, 2).contiguous()
    return torch.rand(batch, channels, size, size, generator=g)


def _bench_row(label, cfg, batch, channels, size, nhwc, rounds, max_s):
    import wrn_fast
    from wrn_fast import reference

    torch.manual_seed(0)
    ref = reference.WideResNet(**cfg)
    fast = wrn_fast.WideResNet(**cfg)
    fast.load_state_dict(ref.state_dict())
    compiled_src = copy.deepcopy(ref)
    compiled = torch.compile(compiled_src)
    models = {"reference": ref, "reference-compile": compiled, "wrn_fast": fast}
    params = {"reference": ref, "reference-compile": compiled_src, "wrn_fast": fast}
    xs = [_input(batch, channels, size, nhwc, s) for s in range(4)]
    ys = [torch.randint(0, cfg["num_classes"], (batch,), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    opts = {k: torch.optim.SGD(params[k].parameters(), lr=0.01, momentum=0.9) for k in models}

    # correctness before timing (eval: deterministic)
    for m in params.values():
        m.eval()
    with torch.no_grad():
        want = ref(xs[0])
        errors = {k: common.rel_err(models[k](xs[0]), want) for k in models}
    bad = {k: e for k, e in errors.items() if not e <= common.TOLERANCES["fp32"]}
    if bad:
        raise RuntimeError(f"{label}: logits differ from the reference: {bad}")

    def train_step(name):
        model, opt = models[name], opts[name]

        def step(i):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[i]), ys[i]).backward()
            opt.step()
        return step

    def eval_step(name):
        model = models[name]

        def step(i):
            with torch.no_grad():
                model(xs[i])
        return step

    warmup = 3
    out = []
    for mode, make in (("train", train_step), ("infer", eval_step)):
        for m in params.values():
            m.train(mode == "train")
        samples = {k: [] for k in models}  # (wall ms, cpu ms) of every call, warmup included
        times = common.time_interleaved({k: _recorded(make(k), samples[k]) for k in models}, len(xs),
                                        torch.device("cpu"), warmup=warmup, rounds=rounds, max_s=max_s)
        base = times["reference"]["median_ms"]
        ref_samples = samples["reference"][warmup:]
        for name, t in times.items():
            mine = samples[name][warmup:]
            wall_ratio = [r[0] / s[0] for r, s in zip(ref_samples, mine)]
            cpu_ratio = [r[1] / s[1] for r, s in zip(ref_samples, mine)]
            out.append(dict(row=label, mode=mode, impl=name, batch=batch, **t,
                            speedup_vs_reference=base / t["median_ms"],
                            paired_speedup=_quantiles(wall_ratio),
                            cpu_median_ms=_quantiles([s[1] for s in mine])["median"],
                            paired_cpu_speedup=_quantiles(cpu_ratio),
                            logits_rel_err=errors[name]))
    return out


def _quantiles(values):
    q = common.summarize(values)
    return {"p10": q["p10_ms"], "median": q["median_ms"], "p90": q["p90_ms"]}


def _recorded(step, samples):
    """``step`` that also appends its own (wall ms, process CPU ms) to ``samples``: the
    interleaved timer calls every implementation once a round, so the i-th samples of
    two implementations are from the same round."""
    def timed(i):
        w0, c0 = time.perf_counter(), time.process_time()
        step(i)
        samples.append(((time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3))
    return timed


def _markdown(env, rows):
    lines = [f"# CPU job benchmark {env.get('stamp', '')}", "",
             f"- device: **{env.get('device_name')}**, threads: {torch.get_num_threads()}",
             f"- torch {torch.__version__}, python {sys.version.split()[0]}",
             f"- commit {env.get('git', {}).get('commit')} (dirty: {env.get('git', {}).get('dirty')})",
             f"- command: `{env.get('command')}`", "",
             "Speed ratios (higher is faster): 'vs reference' and 'vs reference-compile' are ratios of wall "
             "medians; 'paired' is the p10 / median / p90 of the per-round ratio reference / impl (same round, "
             "back to back); 'CPU paired' the median of that ratio in process CPU time.", "",
             "| row | mode | impl | median ms | p10 | p90 | reps | vs reference | paired p10 / med / p90 "
             "| CPU ms | CPU paired | vs reference-compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    comp = {(r["row"], r["mode"]): r["median_ms"] for r in rows if r["impl"] == "reference-compile"}
    for r in rows:
        vs_c = comp[(r["row"], r["mode"])] / r["median_ms"]
        pw, pc = r["paired_speedup"], r["paired_cpu_speedup"]
        lines.append(f"| {r['row']} | {r['mode']} | {r['impl']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['reps']} | {r['speedup_vs_reference']:.3f} | "
                     f"{pw['p10']:.3f} / {pw['median']:.3f} / {pw['p90']:.3f} | {r['cpu_median_ms']:.2f} | "
                     f"{pc['median']:.3f} | {vs_c:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="job,small", help="comma list of: " + ", ".join(ROWS))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--max-s", type=float, default=60.0, help="cap of each timed phase (seconds)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=common.DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = {"device_name": common.device_name(device), "git": common.git_info(),
           "command": " ".join([sys.executable, "-m", "bench.cpu_job"] + list(argv if argv is not None else sys.argv[1:])),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "stamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rows = []
    for group in args.rows.split(","):
        for spec in ROWS[group]:
            rows.extend(_bench_row(*spec, rounds=args.rounds, max_s=args.max_s))
            print(_markdown(env, rows).splitlines()[-1], flush=True)
    md = _markdown(env, rows)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    name = f"cpu_job_{time.strftime('%Y-%m-%d')}_{common.slug(env['device_name'])}_{env['git'].get('short_commit')}"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(md)
    print("wrote", os.path.join(args.out, name + ".md"))
    return {"json": os.path.join(args.out, name + ".json"), "md": os.path.join(args.out, name + ".md")}


if __name__ == "__main__":
    main()
