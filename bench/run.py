"""One entry point for every wrn_fast benchmark.

    python -m bench.run [--quick] [--device cpu|cuda] [--only kernels|models|cpu_job] [--dtype bf16,fp16,fp32] ...

``--only cpu_job`` runs bench/cpu_job.py instead (the default training job and small shapes on
the CPU, 1 thread: reference vs torch.compile vs wrn_fast; ``--quick``: the job row, 3 rounds).

Writes <out>/<date>_<device>_<commit>.json (+ .md, + PNGs) and appends one row per figure to
<out>/results.jsonl; every row is also appended to <out>/<run>.rows.jsonl the moment it is
measured. SIGTERM (``timeout``) ends the run early but still writes the JSON and markdown of
the rows measured so far (exit status 143). See bench/README.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from . import common


def _csv(s: str) -> List[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def _ints(s: str) -> List[int]:
    return [int(t) for t in _csv(s)]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and models (WRN-10-2, batch 8, 16x16), 1-3 repetitions: seconds in total")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--only", choices=("kernels", "models", "cpu_job"), default=None)
    p.add_argument("--dtype", type=_csv, default=None,
                   help="kernel dtypes, comma list of bf16,fp16,fp32 (default GPU: bf16,fp16,fp32; CPU: fp32)")
    p.add_argument("--model-dtype", default=None, choices=tuple(common.DTYPES),
                   help="autocast dtype of the model benchmarks (default GPU: bf16; CPU: fp32)")
    p.add_argument("--models", type=_csv, default=None,
                   help="filter: model names (kernels: wrn-28-10,wrn-28-2,wrn-16-8,wrn-70-16,wrn-50-2; "
                        "models: wrn-28-10,wrn-28-2,wrn-16-8,wrn-34-10,wrn-70-16)")
    p.add_argument("--batches", type=_ints, default=None, help="filter / override batch sizes, e.g. 128,512")
    p.add_argument("--ops", type=_csv, default=["bn_act_conv", "bn_act_dropout"])
    p.add_argument("--passes", type=_csv, default=["fwd+bwd", "fwd"])
    p.add_argument("--impls", type=_csv, default=None,
                   help="filter: run only implementations whose name contains one of these (eager always runs)")
    p.add_argument("--compile-modes", type=_csv, default=None,
                   help="torch.compile modes for the kernel compositions (default GPU: default,max-autotune; "
                        "CPU: default; --quick: none unless --compile)")
    p.add_argument("--max-autotune-sources", type=_csv, default=None,
                   help="'model bBATCH' groups that get the (slow to compile) max-autotune entries "
                        "(default: 'wrn-28-10 b128'; 'all' for every shape)")
    p.add_argument("--compile", action="store_true", help="include torch.compile entries in --quick runs")
    p.add_argument("--no-triton", action="store_true",
                   help="record the Triton kernel entries as SKIPPED (e.g. CPU CI where TRITON_INTERPRET=1 "
                        "would make them take minutes)")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout p of the conv2 / bn_act_dropout entries")
    p.add_argument("--model-dropout", type=float, default=0.3, help="dropout_rate of the benchmarked models")
    p.add_argument("--model-modes", type=_csv, default=["train", "infer"])
    p.add_argument("--reps", type=int, default=None, help="timed calls per kernel entry")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--max-time-per-entry", type=float, default=None, help="seconds cap on one entry's timed phase")
    p.add_argument("--model-rounds", type=int, default=None)
    p.add_argument("--model-steps", type=int, default=None)
    p.add_argument("--model-warmup", type=int, default=None)
    p.add_argument("--max-batch", dest="max_batch", action="store_true", default=None,
                   help="search the largest training batch that fits (GPU; default on for non-quick GPU runs)")
    p.add_argument("--no-max-batch", dest="max_batch", action="store_false")
    p.add_argument("--max-batch-cap", type=int, default=16384)
    p.add_argument("--budget-min", type=float, default=None,
                   help="wall-clock budget in minutes; entries past it are recorded as SKIPPED "
                        "(kernels get --kernel-share of it, models the rest)")
    p.add_argument("--kernel-share", type=float, default=0.55)
    p.add_argument("--out", default=common.DEFAULT_OUT, help="results directory (default bench/results)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    return a


def _finalize(a: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    gpu = device.type == "cuda"
    a.dtypes = a.dtype or (["bf16", "fp16", "fp32"] if gpu else ["fp32"])
    for d in a.dtypes:
        if d not in common.DTYPES:
            raise SystemExit(f"--dtype: expected a comma list of {tuple(common.DTYPES)}, got {d!r}")
    a.model_dtype = a.model_dtype or ("bf16" if gpu else "fp32")
    if a.compile_modes is None:
        if a.quick and not a.compile:
            a.compile_modes = []
        elif a.quick:
            a.compile_modes = ["default"]
        else:
            a.compile_modes = ["default", "max-autotune"] if gpu else ["default"]
    if a.max_autotune_sources is None:
        a.max_autotune_sources = [] if a.quick else ["wrn-28-10 b128"]
    if a.max_autotune_sources == ["all"]:
        a.max_autotune_sources = []
    q = a.quick
    a.reps = a.reps or (3 if q else (50 if gpu else 10))
    a.warmup = a.warmup if a.warmup is not None else (1 if q else (5 if gpu else 2))
    a.min_warmup_s = 0.0 if q or not gpu else 0.05
    a.max_time_per_entry = a.max_time_per_entry or (2.0 if q else 10.0)
    a.model_rounds = a.model_rounds or (2 if q else 6)
    a.model_steps = a.model_steps or (1 if q else (10 if gpu else 2))
    a.model_warmup = a.model_warmup or (1 if q else (5 if gpu else 1))
    if a.max_batch is None:
        a.max_batch = gpu and not q
    return a


def main(argv: Optional[List[str]] = None) -> dict:
    """Run the benchmarks; returns the paths written (json, markdown, table, pngs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.only == "cpu_job":
        if a.device == "cuda":
            raise SystemExit("--only cpu_job: a CPU benchmark (drop --device cuda)")
        from . import cpu_job

        quick = ["--rows", "job", "--rounds", "3", "--max-s", "10"] if a.quick else []
        return cpu_job.main(["--threads", "1", "--out", a.out] + quick)
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    a = _finalize(a, device)
    threads = torch.get_num_threads()
    if a.quick and device.type == "cpu":
        torch.set_num_threads(1)  # seconds-scale smoke runs: no OpenMP spin contention on shared CI cores
    try:
        return _main(a, argv, device)
    except common.Terminated as e:
        print(f"[bench] terminated ({e}): partial results written", file=sys.stderr)
        raise SystemExit(143)
    finally:
        torch.set_num_threads(threads)


def _main(a: argparse.Namespace, argv: List[str], device: torch.device) -> dict:
    env = common.capture_env(device, argv)
    rec = common.Recorder(a.out, env, a.quick, verbose=not a.quiet)
    rec.notes.append(f"kernel dtypes {a.dtypes}, passes {a.passes}, compile modes {a.compile_modes or 'none'}, "
                     f"model dtype {a.model_dtype}, dropout {a.dropout}")
    if device.type == "cpu":
        rec.notes.append(common.CPU_DISCLAIMER)
    t0 = time.monotonic()
    total = None if a.budget_min is None else a.budget_min * 60.0
    sections = [a.only] if a.only else ["kernels", "models"]
    try:
        rec.peaks = common.measure_peaks(device, a.dtypes, a.quick)
        if "kernels" in sections:
            from . import kernels

            share = a.kernel_share if len(sections) == 2 else 1.0
            kb = common.Budget(None if total is None else total * share - (time.monotonic() - t0))
            kernels.run_kernels(a, device, rec, kb)
        if "models" in sections:
            from . import models

            mb = common.Budget(None if total is None else total - (time.monotonic() - t0))
            models.run_models(a, device, rec, mb)
    except common.Terminated as e:
        rec.terminated = str(e)
        raise
    finally:
        env["elapsed_s"] = round(time.monotonic() - t0, 2)
        paths = rec.write()
    paths["pngs"] = []
    if not a.no_plots:
        try:
            from . import plot

            paths["pngs"] = plot.plot_run(paths["json"])
        except Exception as e:  # noqa: BLE001
            print(f"[bench] plotting failed: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"[bench] wrote {paths['json']} ({len(rec.records)} records, {env['elapsed_s']} s)")
    return paths


if __name__ == "__main__":
    common.raise_on_sigterm()  # `timeout` sends SIGTERM: write what was measured, then exit 143
    main()
