"""Shared benchmark machinery: timing, validation, environment capture, peaks, recording.

Timing
  ``time_fn(fn, n_buffers, ...)`` calls ``fn(i)`` with ``i`` rotating over
  ``n_buffers`` input sets (so caches do not flatter), after warm-up, and returns
  median / p10 / p90 milliseconds. On CUDA every call is bracketed by CUDA events;
  on CPU by ``time.perf_counter``.

Validation
  ``rel_err(out, ref)`` = ||out - ref||_2 / ||ref||_2 in float64. ``TOLERANCES``
  holds the per-dtype bound an implementation must meet against the
  high-precision reference before it is timed; one that misses is recorded as
  INVALID and never timed.

Recording
  ``Recorder`` collects one dict per figure and writes the run JSON, a markdown
  table, and appends rows to the results table ``<out>/results.jsonl``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Relative L2 error bounds against a reference computed in float64 (CPU) or in
# float32 with TF32 off (GPU) from the same (already rounded) inputs.
#   bf16: 8 mantissa bits; intermediates (activations, output) rounded -> ~4e-3 typical.
#   fp16 and fp32 with TF32 (10 mantissa bits in the products): ~1e-3 typical.
#   fp32 on CPU (no TF32): accumulation-order differences only.
# A wrong kernel (bad index, border, mask, missing term) misses these by orders of magnitude.
TOLERANCES = {"bf16": 3e-2, "fp16": 1e-2, "fp32-tf32": 1e-2, "fp32": 1e-4}

STATUS_OK = "OK"
STATUS_INVALID = "INVALID"
STATUS_SKIPPED = "SKIPPED"
STATUS_ERROR = "ERROR"


class Skip(Exception):
    """An entry that cannot run here; the message is the recorded reason."""


class Terminated(BaseException):
    """Raised by the SIGTERM handler (``timeout`` sends SIGTERM): not an ``Exception``, so the
    per-entry ``except Exception`` handlers let it through to the ``finally`` that writes the run."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into ``Terminated`` in the main thread (the rows already written stay; the
    run's JSON and markdown are written by the caller's ``finally``)."""
    import signal

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
        raise Terminated(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)


def tol_key(dtype_name: str, device: torch.device) -> str:
    if dtype_name == "fp32" and device.type == "cuda":
        return "fp32-tf32"
    return dtype_name


def dtype_label(dtype_name: str, device: torch.device) -> str:
    return "fp32(tf32)" if dtype_name == "fp32" and device.type == "cuda" else dtype_name


def rel_err(out: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> float:
    """||out - ref|| / ||ref|| in float64 (inf when shapes differ or values are not finite)."""
    if out is None and ref is None:
        return 0.0
    if out is None or ref is None:
        return math.inf
    if tuple(out.shape) != tuple(ref.shape):
        return math.inf
    o = out.detach().to(torch.float64)
    r = ref.detach().to(device=o.device, dtype=torch.float64)
    if not bool(torch.isfinite(o).all()):
        return math.inf
    den = torch.linalg.vector_norm(r).item()
    num = torch.linalg.vector_norm(o - r).item()
    if den == 0.0:
        return num
    return num / den


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[int], object], n_buffers: int, device: torch.device, *, warmup: int = 3,
            reps: int = 20, min_warmup_s: float = 0.0, max_s: Optional[float] = None) -> Dict[str, float]:
    """Median / p10 / p90 of per-call wall time (ms) of ``fn(i % n_buffers)``.

    Warm-up runs at least ``warmup`` calls (and at least ``min_warmup_s`` seconds).
    ``max_s`` caps the timed phase (at least 3 timed calls are always taken).
    """
    n_buffers = max(1, int(n_buffers))
    t0 = time.perf_counter()
    i = 0
    while i < warmup or (time.perf_counter() - t0) < min_warmup_s:
        fn(i % n_buffers)
        i += 1
        if i > 10 * max(warmup, 1) + 100:
            break
    sync(device)
    times: List[float] = []
    start_phase = time.perf_counter()
    if device.type == "cuda":
        events = []
        for r in range(reps):
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn((i + r) % n_buffers)
            e.record()
            events.append((s, e))
            if max_s is not None and r >= 2 and (time.perf_counter() - start_phase) > max_s:
                break
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for r in range(reps):
            s = time.perf_counter()
            fn((i + r) % n_buffers)
            times.append((time.perf_counter() - s) * 1e3)
            if max_s is not None and r >= 2 and (time.perf_counter() - start_phase) > max_s:
                break
    return summarize(times)


def time_interleaved(fns: Dict[str, Callable[[int], object]], n_buffers: int, device: torch.device, *,
                     warmup: int = 3, rounds: int = 20, per_round: int = 1,
                     max_s: Optional[float] = None) -> Dict[str, Dict[str, float]]:
    """Median / p10 / p90 ms per call of each ``fns[name](i)``, A/B interleaved: every round times
    ``per_round`` consecutive calls of each function in turn (order reversed every other round),
    so drift (clocks, temperature, other tenants) hits all of them alike. Inputs rotate over
    ``n_buffers`` sets. ``max_s`` caps the timed phase (at least 3 rounds are always taken)."""
    n_buffers = max(1, int(n_buffers))
    names = list(fns)
    for name in names:
        for i in range(warmup):
            fns[name](i % n_buffers)
    sync(device)
    per: Dict[str, List[float]] = {n: [] for n in names}
    t0 = time.perf_counter()
    k = 0
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for j in range(per_round):
                    fn((k + j) % n_buffers)
                e.record()
                e.synchronize()
                ms = s.elapsed_time(e)
            else:
                s0 = time.perf_counter()
                for j in range(per_round):
                    fn((k + j) % n_buffers)
                ms = (time.perf_counter() - s0) * 1e3
            per[name].append(ms / per_round)
        k += per_round
        if max_s is not None and r >= 2 and time.perf_counter() - t0 > max_s:
            break
    return {n: summarize(v) for n, v in per.items()}


def summarize(times_ms: List[float]) -> Dict[str, float]:
    ts = sorted(times_ms)

    def q(p):
        if len(ts) == 1:
            return ts[0]
        k = p * (len(ts) - 1)
        lo, hi = int(math.floor(k)), int(math.ceil(k))
        return ts[lo] + (ts[hi] - ts[lo]) * (k - lo)

    return {"median_ms": statistics.median(ts), "p10_ms": q(0.1), "p90_ms": q(0.9), "reps": len(ts)}


def n_buffers_for(bytes_per_set: int, device: torch.device, max_sets: int = 8) -> int:
    """Enough input sets that consecutive calls never find their inputs in L2 / LLC."""
    cache = 64 << 20  # above H100 (50 MiB) / H200 L2 and typical server LLC slices
    if device.type == "cuda":
        try:
            cache = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", cache)) or cache
        except Exception:
            pass
    need = int(math.ceil(2 * cache / max(1, bytes_per_set))) + 1
    return max(2, min(max_sets, need))


# ----------------------------------------------------------------------------- environment


def _run(cmd: List[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
        if out.returncode == 0:
            return out.stdout.strip()
    except Exception:
        pass
    return None


def git_info() -> Dict[str, object]:
    """Commit, dirty flag and branch: from git here, from bench/.session_commit on a machine without .git."""
    from . import session

    info = session.commit_info(REPO)
    return {k: info.get(k) for k in ("commit", "short_commit", "dirty", "branch", "source", "tree_matches")}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "device"


def capture_env(device: torch.device, argv: List[str]) -> Dict[str, object]:
    """Everything needed to trace a number back to a machine, a build and a command."""
    env: Dict[str, object] = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench.run", *argv]),
        "argv": list(argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_type": device.type,
        "device_name": device_name(device),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "num_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        env["triton"] = None
        env["triton_error"] = f"{type(e).__name__}: {e}"
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except Exception:
        env["numpy"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = int(props.total_memory)
        env["gpu_sm_count"] = int(props.multi_processor_count)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_l2_bytes"] = int(getattr(props, "L2_cache_size", 0) or 0)
        smi = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                    "--format=csv,noheader", f"--id={device.index or 0}"])
        if smi:
            parts = [p.strip() for p in smi.split(",")]
            env["driver"] = parts[0]
            env["gpu_max_sm_clock"] = parts[1] if len(parts) > 1 else None
            env["gpu_power_limit"] = parts[2] if len(parts) > 2 else None
        else:
            env["driver"] = None
    else:
        env["gpu_memory_bytes"] = None
        env["driver"] = None
    env.update({"git_" + k: v for k, v in git_info().items()})
    try:
        import wrn_fast

        info = wrn_fast.build_info()
        env["wrn_fast_version"] = getattr(wrn_fast, "__version__", None)
        env["wrn_fast_extension_loaded"] = info.get("extension_loaded")
        env["wrn_fast_extension_cuda"] = info.get("extension_cuda_kernels")
        env["wrn_fast_extension_error"] = info.get("extension_error")
        env["wrn_fast_backend"] = wrn_fast.get_backend()
    except Exception as e:  # noqa: BLE001
        env["wrn_fast_error"] = f"{type(e).__name__}: {e}"
    return env


# ----------------------------------------------------------------------------- peaks


def measure_peaks(device: torch.device, dtypes: List[str], quick: bool) -> Dict[str, object]:
    """Dense matmul TFLOP/s per dtype and copy bandwidth, measured now on this device."""
    peaks: Dict[str, object] = {"matmul_tflops": {}, "copy_gbs": None, "notes": []}
    if device.type == "cuda":
        n = 2048 if quick else 8192
        copy_elems = (64 << 20) // 4 if quick else (1 << 30) // 4
        reps = 5 if quick else 30
    else:
        n = 256 if quick else 2048
        copy_elems = (32 << 20) // 4 if quick else (256 << 20) // 4
        reps = 3 if quick else 10
    for name in sorted(set(dtypes) | {"fp32"}):
        dt = DTYPES[name]
        if device.type == "cpu" and name != "fp32" and quick:
            continue
        try:
            a = [torch.randn(n, n, device=device, dtype=dt) for _ in range(2)]
            b = [torch.randn(n, n, device=device, dtype=dt) for _ in range(2)]
            t = time_fn(lambda i: a[i] @ b[i], 2, device, warmup=2, reps=reps)
            label = dtype_label(name, device)
            peaks["matmul_tflops"][label] = 2 * n ** 3 / (t["median_ms"] * 1e-3) / 1e12
            del a, b
        except Exception as e:  # noqa: BLE001
            peaks["notes"].append(f"matmul {name}: {type(e).__name__}: {e}")
    peaks["matmul_n"] = n
    try:
        src = [torch.empty(copy_elems, device=device, dtype=torch.float32).fill_(1.0) for _ in range(2)]
        dst = [torch.empty_like(s) for s in src]
        t = time_fn(lambda i: dst[i].copy_(src[i]), 2, device, warmup=2, reps=reps)
        peaks["copy_gbs"] = 2 * copy_elems * 4 / (t["median_ms"] * 1e-3) / 1e9
        peaks["copy_bytes"] = copy_elems * 4
        del src, dst
    except Exception as e:  # noqa: BLE001
        peaks["notes"].append(f"copy: {type(e).__name__}: {e}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peaks


# ----------------------------------------------------------------------------- budget


class Budget:
    """Wall-clock deadline; entries past it are recorded as SKIPPED, never silently dropped."""

    def __init__(self, seconds: Optional[float]):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def left(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.monotonic()


# ----------------------------------------------------------------------------- recording

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
            print(f"[bench] {rec.get('section')} {what} {shape} {rec.get('dtype', '')} {rec.get('pass', rec.get('mode', ''))} "
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
    kern = [r for r in recs if r.get("section") == "kernel"]
    if kern:
        lines += ["## Kernels", "",
                  "| op | model/batch | shape | dtype | pass | impl | status | median ms | p10 | p90 | TFLOP/s | GB/s "
                  "| % peak | speedup vs eager | max rel err | note |",
                  "|" + "---|" * 16]
        for r in kern:
            lines.append("| " + " | ".join([
                str(r.get("op")), str(r.get("source", "")), str(r.get("shape_label")), str(r.get("dtype")),
                str(r.get("pass")), str(r.get("impl")), str(r.get("status")), _fmt(r.get("median_ms")),
                _fmt(r.get("p10_ms")), _fmt(r.get("p90_ms")), _fmt(r.get("tflops"), 2), _fmt(r.get("gbs"), 1),
                _fmt(r.get("pct_peak"), 1), _fmt(r.get("speedup_vs_eager"), 2), _fmt(r.get("max_rel_err")),
                str(r.get("reason") or "").replace("|", "/")[:120]]) + " |")
        lines.append("")
    mods = [r for r in recs if r.get("section") == "model"]
    if mods:
        lines += ["## Models", "",
                  "| model | batch | dtype | mode | impl | status | median ms/step | p10 | p90 | images/s "
                  "| speedup vs reference-eager | peak mem GiB | logits rel err | note |",
                  "|" + "---|" * 14]
        for r in mods:
            mem = r.get("peak_mem_bytes")
            lines.append("| " + " | ".join([
                str(r.get("model")), str(r.get("batch")), str(r.get("dtype")), str(r.get("mode")),
                str(r.get("impl")), str(r.get("status")), _fmt(r.get("median_ms")), _fmt(r.get("p10_ms")),
                _fmt(r.get("p90_ms")), _fmt(r.get("images_per_s"), 1), _fmt(r.get("speedup_vs_eager"), 2),
                _fmt(mem / 2 ** 30 if mem else None, 2), _fmt(r.get("max_rel_err")),
                str(r.get("reason") or "").replace("|", "/")[:120]]) + " |")
        lines.append("")
    mb = [r for r in recs if r.get("section") == "max_batch"]
    if mb:
        lines += ["## Largest training batch that fits", "", "| model | dtype | impl | status | max batch | note |",
                  "|---|---|---|---|---|---|"]
        for r in mb:
            lines.append(f"| {r.get('model')} | {r.get('dtype')} | {r.get('impl')} | {r.get('status')} | "
                         f"{_fmt(r.get('max_batch'))} | {str(r.get('reason') or '')[:120]} |")
        lines.append("")
    return "\n".join(lines)
