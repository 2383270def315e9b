"""The GPU table of issue 14 (Part 2, step 3), one row at a time, each written as it is measured.

    python3 -m bench.gpu_table [--device cuda] [--out DIR] [--deadline-s S] [--only layers,models,compile]
    python3 -m bench.gpu_table --tiny --device cpu     # the same rows at toy sizes (CI dry run)

bf16 autocast + channels_last on GPU. Rows, in the order they are measured (the most valuable
first, so a run cut short by its deadline or by ``timeout`` still holds them):

  peak     measured dense bf16 (and fp32) matmul TFLOP/s and copy GB/s (the MFU / %-peak base)
  layer    every distinct WRN-28-10 b128 convolution, fused fwd / dgrad / wgrad (the fusion of its
           place in the block: BN-ReLU prologue, dropout, residual, statistics) against cuDNN's plain
           convolution of the same shape (F.conv2d / aten.convolution_backward), A/B interleaved;
           and against the roofline prediction of bench/roofline.py where its JSON
           (bench/results/roofline_*.json) is there, else that column is empty
  model    interleaved medians of reference-eager (cuDNN), wrn_fast and wrn_fast-cudagraph:
           WRN-28-10 train b128, WRN-28-10 inference b1024, WRN-28-2 train b960 (FixMatch's
           64 + 7x64 x 2), WRN-70-16 train b128 with peak memory
  mfu      WRN-28-10 train step: model FLOPs / step time / the measured bf16 matmul peak
  model    reference-compile-max-autotune (torch.compile(mode="max-autotune") of the reference)
           interleaved with eager again, same four rows: last, because its compiles take minutes

Every row is validated before it is timed (fused kernels against a float32 reference with the
op contract's dropout mask; models by their logits). Rows the deadline leaves out, or that a
SIGTERM cuts off, are recorded SKIPPED with the reason. Output: <out>/<run>.rows.jsonl (streamed),
<out>/<run>.json and .md (at the end, also after SIGTERM). The layer rows are bench.gpu_layers'.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch

from . import common
from .common import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from .gpu_layers import LAYER_MODEL, TINY_LAYER_MODEL, layer_rows, load_roofline, warm_layers
from .shapes import wrn_cifar_convs

# (model, depth, k, batch, mode): the model rows of the table, in priority order.
MODEL_ROWS = [("wrn-28-10", 28, 10, 128, "train"), ("wrn-28-10", 28, 10, 1024, "infer"),
              ("wrn-28-2", 28, 2, 960, "train"), ("wrn-70-16", 70, 16, 128, "train")]
# --tiny: the same code paths at toy sizes (CPU dry run under TRITON_INTERPRET=1)
TINY_MODEL_ROWS = [("wrn-10-1", 10, 1, 4, "train"), ("wrn-10-1", 10, 1, 8, "infer")]
TINY_RESOLUTION = 8


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.gpu_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--out", default=common.DEFAULT_OUT)
    p.add_argument("--tiny", action="store_true", help="toy sizes, 1-2 repetitions (dry run of every row kind)")
    p.add_argument("--only", default="layers,models,compile",
                   help="comma list of layers, models, compile (peaks always; mfu with the WRN-28-10 train row)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="seconds from start; rows not started by then are recorded SKIPPED")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend of the compile rows (default inductor; --tiny: eager, which "
                        "traces the same code path in seconds)")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per layer / model row")
    p.add_argument("--rows", default=None,
                   help="comma list of model-row indices to run (0 WRN-28-10 train, 1 WRN-28-10 infer, "
                        "2 WRN-28-2 train, 3 WRN-70-16 train; default all)")
    p.add_argument("--warm", action="store_true",
                   help="only run each Triton path of the chosen sections once (no rows): fills Triton's disk "
                        "cache, so the timed run compiles nothing; bench/gpu_session.sh runs one per section "
                        "or model row in parallel processes")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    a.rows = None if a.rows is None else [int(v) for v in a.rows.split(",") if v.strip()]
    for s in a.only:
        if s not in ("layers", "models", "compile"):
            raise SystemExit(f"--only: expected a comma list of layers, models, compile; got {s!r}")
    return a



# ----------------------------------------------------------------------------- model and MFU rows


def _model_args(t: "Table", impls: List[str], mode: str, compile_mode: Optional[str]) -> SimpleNamespace:
    tiny = t.args.tiny
    return SimpleNamespace(
        model_dtype=t.dtype, quick=False, compile=True, impls=impls, model_modes=[mode],
        model_dropout=t.args.dropout, model_warmup=1 if tiny else 3, model_rounds=2 if tiny else t.rounds // 2,
        model_steps=1 if tiny else 4, resolution=TINY_RESOLUTION if tiny else 32,
        compile_mode=compile_mode, compile_backend=t.compile_backend)


def model_step_flops(depth: int, k: int, batch: int, res: int, num_classes: int = 10) -> float:
    """FLOPs of one training step of CIFAR WRN-depth-k: every convolution forward, dgrad (not the
    stem's: the input needs no gradient) and wgrad, 2 FLOPs per multiply-add, plus the classifier.
    BN, activations and the optimizer are left out (they are memory-bound and small in FLOPs)."""

    total = 0.0
    for s in wrn_cifar_convs(depth, k, batch, res, distinct=False):
        f = 2.0 * s.N * s.Ho * s.Wo * s.Cout * s.Cin * s.k * s.k
        total += f * (2 if s.role == "stem" else 3)
    return total + 3 * 2.0 * batch * 64 * k * num_classes


def mfu_rows(t: "Table", name: str, depth: int, k: int, batch: int) -> None:
    res = TINY_RESOLUTION if t.args.tiny else 32
    flops = model_step_flops(depth, k, batch, res)
    pk = t.peak_tflops()
    rows = [r for r in t.rec.records if r.get("section") == "model" and r.get("model") == name
            and r.get("batch") == batch and r.get("mode") == "train"]
    for r in rows:
        m = {"section": "mfu", "model": name, "batch": batch, "mode": "train", "impl": r["impl"],
             "dtype": r.get("dtype"), "step_flops": flops, "peak_tflops": pk, "peak_ref": t.peak_label}
        if r.get("status") != STATUS_OK:
            t.add(dict(m, status=STATUS_SKIPPED, reason=f"no step time ({r.get('status')}: {r.get('reason')})"))
            continue
        achieved = flops / (r["median_ms"] * 1e-3) / 1e12
        t.add(dict(m, status=STATUS_OK, median_ms=r["median_ms"], achieved_tflops=achieved,
                   mfu=achieved / pk if pk else None,
                   note="CPU: not a performance figure" if t.device.type == "cpu" else None))


# ----------------------------------------------------------------------------- the run


class Table:
    """One run of the table: the rows in priority order, each added to ``rec`` as it is measured."""

    def __init__(self, args, device: torch.device, rec: common.Recorder):
        self.args, self.device, self.rec = args, device, rec
        self.dtype = "bf16" if device.type == "cuda" else "fp32"
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.budget = common.Budget(args.deadline_s)
        self.rounds = args.rounds or (2 if args.tiny else 20)
        self.compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
        self.roofline, self.roofline_source = load_roofline(common.DEFAULT_OUT)
        self.peak_label = None

    def add(self, row: Dict[str, object]) -> None:
        self.rec.add(row)

    def peak_tflops(self) -> Optional[float]:
        mm = (self.rec.peaks or {}).get("matmul_tflops") or {}
        label = common.dtype_label(self.dtype, self.device)
        self.peak_label = f"measured matmul {label}" if mm.get(label) else None
        return mm.get(label)

    def peaks(self) -> None:
        self.rec.peaks = common.measure_peaks(self.device, [self.dtype], self.args.tiny)
        for label, v in (self.rec.peaks.get("matmul_tflops") or {}).items():
            self.add({"section": "peak", "what": f"matmul {label}", "n": self.rec.peaks.get("matmul_n"),
                      "tflops": v, "status": STATUS_OK})
        self.add({"section": "peak", "what": "copy fp32", "bytes": self.rec.peaks.get("copy_bytes"),
                  "gbs": self.rec.peaks.get("copy_gbs"), "status": STATUS_OK if self.rec.peaks.get("copy_gbs")
                  else STATUS_ERROR, "reason": "; ".join(self.rec.peaks.get("notes") or []) or None})

    def layers(self) -> None:
        name, depth, k, batch, res = TINY_LAYER_MODEL if self.args.tiny else LAYER_MODEL
        specs = wrn_cifar_convs(depth, k, batch, res)
        if self.args.tiny:  # two shapes keep the interpreter run at seconds: conv2 has every fusion
            # (prologue, dropout, residual, statistics), the shortcut a stride and a 1x1 kernel
            specs = [next(s for s in specs if s.role == r) for r in ("conv2", "shortcut")]
        for spec in specs:
            layer_rows(self, spec, f"{name} b{batch}")

    def model_rows(self):
        rows = TINY_MODEL_ROWS if self.args.tiny else MODEL_ROWS
        return [r for i, r in enumerate(rows) if self.args.rows is None or i in self.args.rows]

    def models(self, compile_rows: bool) -> None:
        from . import models

        rows = TINY_MODEL_ROWS if self.args.tiny else MODEL_ROWS
        for name, depth, k, batch, mode in self.model_rows():
            margs = _model_args(self, ["reference-compile"] if compile_rows else ["wrn_fast"], mode,
                                "max-autotune" if compile_rows else None)
            models.bench_model(name, depth, k, batch, margs, self.device, self.rec, self.budget)
            if not compile_rows and mode == "train" and (name, batch) == (rows[0][0], rows[0][3]):
                mfu_rows(self, name, depth, k, batch)

    def run(self) -> None:
        common.set_timing_backends(self.device)
        self.peaks()
        if "layers" in self.args.only:
            self.layers()
        if "models" in self.args.only:
            self.models(compile_rows=False)
        if "compile" in self.args.only:
            self.models(compile_rows=True)


def warm(a, device: torch.device) -> None:
    """Each Triton path of the chosen sections once, untimed and unrecorded (compiles into the disk
    cache; the timed run then loads them)."""
    dt = common.DTYPES["bf16" if device.type == "cuda" else "fp32"]
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if "layers" in a.only:
        warm_layers(a.tiny, a.dropout, device, dt, fmt)
    if "models" in a.only:
        import wrn_fast

        rows = TINY_MODEL_ROWS if a.tiny else MODEL_ROWS
        for i, (name, depth, k, batch, mode) in enumerate(rows):
            if a.rows is not None and i not in a.rows:
                continue
            t0 = time.monotonic()
            res = TINY_RESOLUTION if a.tiny else 32
            model = wrn_fast.WideResNet(depth, k, a.dropout, 10).to(device=device, memory_format=fmt)
            model.train(mode == "train")
            x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
            ctx = torch.autocast("cuda", dtype=dt) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
            with ctx, torch.set_grad_enabled(mode == "train"):
                out = model(x)
            if mode == "train":
                out.float().sum().backward()
            common.sync(device)
            print(f"[warm] {name} b{batch} {mode}: {time.monotonic() - t0:.1f} s", flush=True)
            del model, x, out
            gc.collect()


def main(argv: Optional[List[str]] = None) -> Dict[str, str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    if a.warm:
        warm(a, device)
        return {}
    env = common.capture_env(device, argv)
    env["command"] = env["command"].replace("-m bench.run", "-m bench.gpu_table")
    env["wrn_fast_autotune"] = os.environ.get("WRN_FAST_AUTOTUNE")
    rec = common.Recorder(a.out, env, a.tiny, verbose=not a.quiet)
    rec.notes.append(f"gpu_table: dtype {'bf16 autocast, channels_last' if device.type == 'cuda' else 'fp32'}, "
                     f"sections {a.only}, deadline {a.deadline_s} s, WRN_FAST_AUTOTUNE={env['wrn_fast_autotune']}")
    if device.type == "cpu":
        rec.notes.append(common.CPU_DISCLAIMER)
    if a.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # toy sizes: a second thread buys nothing; OpenMP spin-waits on shared cores
    table = Table(a, device, rec)
    if table.roofline_source is None:
        rec.notes.append("roofline: no bench/results/roofline_*.json (bench/roofline.py): roofline_ms left empty")
    t0 = time.monotonic()
    try:
        table.run()
    except common.Terminated as e:
        rec.terminated = str(e)
        print(f"[gpu_table] terminated ({e}): writing the {len(rec.records)} rows measured", file=sys.stderr)
    finally:
        env["elapsed_s"] = round(time.monotonic() - t0, 2)
        paths = rec.write()
    print(f"[gpu_table] wrote {paths['json']} ({len(rec.records)} rows, {env['elapsed_s']} s)")
    if rec.terminated:
        raise SystemExit(143)
    return paths


if __name__ == "__main__":
    common.raise_on_sigterm()
    main()
