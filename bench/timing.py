"""Timing: per-call medians with inputs rotating out of cache, A/B interleaving, the run's deadline.

``time_fn(fn, n_buffers, ...)`` calls ``fn(i)`` with ``i`` rotating over ``n_buffers`` input sets
(so caches do not flatter), after warm-up, and returns median / p10 / p90 milliseconds;
``time_interleaved`` does the same for several functions in alternating order. On CUDA every call
is bracketed by CUDA events; on CPU by ``time.perf_counter``.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


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


class Budget:
    """Wall-clock deadline; entries past it are recorded as SKIPPED, never silently dropped."""

    def __init__(self, seconds: Optional[float]):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def left(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.monotonic()

