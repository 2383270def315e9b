"""The names every benchmark module uses, behind one import (``from . import common``).

Defined here: the dtypes and their validation bounds, the row statuses, ``Skip`` / ``Terminated``,
``rel_err`` and the measured peaks. By concern, and re-exported here:

  bench.timing       time_fn, time_interleaved, summarize, n_buffers_for, sync, Budget
  bench.environment  capture_env, git_info, device_name, cpu_model, slug, REPO
  bench.recording    Recorder (rows streamed as JSONL, the run's JSON / markdown, results.jsonl),
                     markdown, CPU_DISCLAIMER, DEFAULT_OUT

Validation
  ``rel_err(out, ref)`` = ||out - ref||_2 / ||ref||_2 in float64. ``TOLERANCES``
  holds the per-dtype bound an implementation must meet against the
  high-precision reference before it is timed; one that misses is recorded as
  INVALID and never timed.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional

import torch

from .environment import REPO, capture_env, cpu_model, device_name, git_info, slug  # noqa: F401
from .recording import CPU_DISCLAIMER, DEFAULT_OUT, STALL_ENV, Recorder, markdown  # noqa: F401
from .timing import Budget, n_buffers_for, summarize, sync, time_fn, time_interleaved  # noqa: F401

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



@contextlib.contextmanager
def tf32_off():
    """TF32 off in cuBLAS and cuDNN inside the block (restored after): the float32 references that
    GPU runs validate against."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def set_timing_backends(device: torch.device) -> None:
    """On CUDA, what every timed run uses: TF32 on in cuBLAS and cuDNN (PyTorch's conv default; the
    fp32 rows are labelled fp32(tf32)) and cudnn.benchmark (each shape's fastest algorithm)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

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
