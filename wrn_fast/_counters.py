"""Launch counters: proof that a fused kernel actually ran (tests read these).

Launchers call ``bump(name)`` each time they launch a kernel from Python.
(Replays of a CUDA graph or a compiled graph do not pass through Python and are
not counted; use torch.profiler for those.)
"""
from collections import Counter

_counts = Counter()


def bump(name: str, n: int = 1) -> None:
    _counts[name] += n


def counters() -> dict:
    return dict(_counts)


def reset_counters() -> None:
    _counts.clear()
