"""Recording: one dict per figure, streamed as JSONL while the run goes, then the run's JSON,
its markdown tables, and the rows appended to the results table ``<out>/results.jsonl``."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Dict, List, Optional

import torch

from .environment import REPO, slug

DEFAULT_OUT = os.path.join(REPO, "bench", "results")

_TABLE_RUN_FIELDS = ("run_id", "timestamp", "device_name", "device_type", "torch", "torch_cuda", "cudnn",
                     "triton", "driver", "python", "git_commit", "git_dirty", "command", "quick")

CPU_DISCLAIMER = ("CPU run: these numbers exercise the harness and the C++ CPU ops against eager PyTorch on "
                  "this CPU. They are NOT the product's GPU performance claims.")


# Test hook: after this many records a run sleeps, so a test can stop it with SIGTERM.
STALL_ENV = "WRN_FAST_BENCH_STALL_AFTER"


class Recorder:
    def __init__(self, out_dir: str, env: Dict[str, object], quick: bool, verbose: bool = True):
        self.out_dir = out_dir
        self.env = env
        self.quick = quick
        self.verbose = verbose
        self.records: List[Dict[str, object]] = []
        self.peaks: Dict[str, object] = {}
        self.notes: List[str] = []
        date = str(env["timestamp"])[:10]
        stem = f"{date}_{slug(str(env['device_name']))}_{env.get('git_short_commit') or 'nogit'}"
        if quick:
            stem += "_quick"
        os.makedirs(out_dir, exist_ok=True)
        cand, k = stem, 1
        while os.path.exists(os.path.join(out_dir, cand + ".json")):
            k += 1
            cand = f"{stem}-{k}"
        self.stem = cand
        self.run_id = cand
        self.terminated: Optional[str] = None
        # Every record is appended here the moment it exists (flushed and fsynced), so a run killed
        # at any point leaves all the rows it measured, whatever happens to the final JSON.
        self.rows_path = os.path.join(out_dir, self.stem + ".rows.jsonl")
        self._rows = open(self.rows_path, "a")
        self.after_add: Optional[Callable[[Dict[str, object]], None]] = None
        stall_after = int(os.environ.get(STALL_ENV, "0") or 0)
        if stall_after:  # test hook: lets a test kill a run mid-way (tests/test_gpu_session.py)
            def stall(rec):
                if len(self.records) >= stall_after:
                    print(f"[bench] {STALL_ENV}={stall_after}: stalling (test hook)", flush=True)
                    time.sleep(3600)
            self.after_add = stall

    def _row_base(self) -> Dict[str, object]:
        return {k: (self.run_id if k == "run_id" else self.quick if k == "quick" else self.env.get(k))
                for k in _TABLE_RUN_FIELDS}

    def add(self, rec: Dict[str, object]) -> Dict[str, object]:
        self.records.append(rec)
        if not self._rows.closed:
            self._rows.write(json.dumps({**self._row_base(), **rec}, default=_json_default) + "\n")
            self._rows.flush()
            os.fsync(self._rows.fileno())
        if self.verbose:
            what = rec.get("op") or rec.get("model") or rec.get("what") or ""
            shape = rec.get("shape_label", "")
            tail = (f"{rec['median_ms']:.3f} ms" if rec.get("median_ms") is not None else rec.get("reason", ""))
            kind = rec.get("pass", rec.get("mode", ""))
            print(f"[bench] {rec.get('section')} {what} {shape} {rec.get('dtype', '')} {kind} "
                  f"{rec.get('impl')}: {rec.get('status')} {tail}", flush=True)
        if self.after_add is not None:
            self.after_add(rec)
        return rec

    @property
    def json_path(self) -> str:
        return os.path.join(self.out_dir, self.stem + ".json")

    def run_dict(self) -> Dict[str, object]:
        d = {
            "schema": "wrn_fast-bench/1",
            "run_id": self.run_id,
            "quick": self.quick,
            "disclaimer": CPU_DISCLAIMER if self.env.get("device_type") == "cpu" else
            "GPU run: figures measured by this run on the device named here.",
            "environment": self.env,
            "peaks": self.peaks,
            "notes": self.notes,
            "terminated": self.terminated,
            "records": self.records,
        }
        return d

    def write(self) -> Dict[str, str]:
        """The run's JSON and markdown, and its rows appended to the results table ``results.jsonl``."""
        if not self._rows.closed:
            self._rows.close()
        run = self.run_dict()
        with open(self.json_path, "w") as f:
            json.dump(run, f, indent=1, default=_json_default)
        md_path = os.path.join(self.out_dir, self.stem + ".md")
        with open(md_path, "w") as f:
            f.write(markdown(run))
        table = os.path.join(self.out_dir, "results.jsonl")
        with open(table, "a") as f:
            base = self._row_base()
            for rec in self.records:
                f.write(json.dumps({**base, **rec}, default=_json_default) + "\n")
        return {"json": self.json_path, "markdown": md_path, "table": table, "rows": self.rows_path}


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return str(o)
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    return str(o)


def _fmt(v, nd=3):
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.{nd}f}"
    return str(v)


def markdown(run: Dict[str, object]) -> str:
    env = run["environment"]
    peaks = run.get("peaks") or {}
    lines = [f"# wrn_fast benchmark run {run['run_id']}", ""]
    lines.append(f"> {run['disclaimer']}")
    lines.append("")
    if run.get("terminated"):
        lines += [f"**Partial run: terminated ({run['terminated']}); the rows below are those measured before.**", ""]
    lines.append(f"- device: **{env.get('device_name')}** ({env.get('device_type')}), GPU memory: "
                 f"{_fmt(env.get('gpu_memory_bytes'))}, driver: {env.get('driver')}")
    lines.append(f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), "
                 f"triton {env.get('triton')}, python {env.get('python')}, CPU: {env.get('cpu_model')}")
    lines.append(f"- commit {env.get('git_commit')} (dirty: {env.get('git_dirty')}), {env.get('timestamp')}")
    lines.append(f"- command: `{env.get('command')}`")
    mm = peaks.get("matmul_tflops") or {}
    lines.append("- measured peaks (this run): " + ", ".join(f"matmul {k} {_fmt(v, 1)} TFLOP/s" for k, v in mm.items())
                 + f", copy {_fmt(peaks.get('copy_gbs'), 1)} GB/s")
    for n in run.get("notes") or []:
        lines.append(f"- note: {n}")
    lines.append("")
    recs = run["records"]
    lines += _table("Kernels", _KERNEL_COLUMNS, _kernel_cells, [r for r in recs if r.get("section") == "kernel"])
    lines += _table("Models", _MODEL_COLUMNS, _model_cells, [r for r in recs if r.get("section") == "model"])
    lines += _table("Largest training batch that fits", _MAX_BATCH_COLUMNS, _max_batch_cells,
                    [r for r in recs if r.get("section") == "max_batch"])
    return "\n".join(lines)


def _table(title: str, columns: List[str], cells: Callable[[Dict[str, object]], List[str]],
           recs: List[Dict[str, object]]) -> List[str]:
    """A markdown section: title, header, one row per record (no lines when there is no record)."""
    if not recs:
        return []
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in recs]
    return lines + [""]


def _note(r: Dict[str, object]) -> str:
    return str(r.get("reason") or "").replace("|", "/")[:120]


_KERNEL_COLUMNS = ["op", "model/batch", "shape", "dtype", "pass", "impl", "status", "median ms", "p10", "p90",
                   "TFLOP/s", "GB/s", "% peak", "speedup vs eager", "max rel err", "note"]
_MODEL_COLUMNS = ["model", "batch", "dtype", "mode", "impl", "status", "median ms/step", "p10", "p90", "images/s",
                  "speedup vs reference-eager", "peak mem GiB", "logits rel err", "note"]
_MAX_BATCH_COLUMNS = ["model", "dtype", "impl", "status", "max batch", "note"]


def _kernel_cells(r: Dict[str, object]) -> List[str]:
    return [str(r.get("op")), str(r.get("source", "")), str(r.get("shape_label")), str(r.get("dtype")),
            str(r.get("pass")), str(r.get("impl")), str(r.get("status")), _fmt(r.get("median_ms")),
            _fmt(r.get("p10_ms")), _fmt(r.get("p90_ms")), _fmt(r.get("tflops"), 2), _fmt(r.get("gbs"), 1),
            _fmt(r.get("pct_peak"), 1), _fmt(r.get("speedup_vs_eager"), 2), _fmt(r.get("max_rel_err")), _note(r)]


def _model_cells(r: Dict[str, object]) -> List[str]:
    mem = r.get("peak_mem_bytes")
    return [str(r.get("model")), str(r.get("batch")), str(r.get("dtype")), str(r.get("mode")),
            str(r.get("impl")), str(r.get("status")), _fmt(r.get("median_ms")), _fmt(r.get("p10_ms")),
            _fmt(r.get("p90_ms")), _fmt(r.get("images_per_s"), 1), _fmt(r.get("speedup_vs_eager"), 2),
            _fmt(mem / 2 ** 30 if mem else None, 2), _fmt(r.get("max_rel_err")), _note(r)]


def _max_batch_cells(r: Dict[str, object]) -> List[str]:
    return [str(r.get("model")), str(r.get("dtype")), str(r.get("impl")), str(r.get("status")),
            _fmt(r.get("max_batch")), str(r.get("reason") or "")[:120]]
