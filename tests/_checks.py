"""Shared test scaffold: the relative error of the op tests, output poisoning, skip markers.

One place for what every op test needs:
  * ``rel_err(out, ref)``: the relative L2 error all tolerances in tests/ are stated in;
  * ``poison(t)`` / ``poison_outputs``: outputs start as NaN, so an element no kernel wrote fails;
  * ``needs_ext``, ``needs_sklearn``: skip markers for the optional C++ extension and scikit-learn.
The op references (float64 compositions, the dropout mask) live in bench/references.py and
bench/philox.py, shared with the benchmarks' validation.
"""
import importlib.util

import pytest
import torch

from wrn_fast import _ext

# The digits dataset (the CLI's default) comes from scikit-learn, an optional dependency.
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the digits dataset needs scikit-learn")

# The C++/CUDA ops (wrn_fast._C) are optional: without the build, their tests skip with the import error.
needs_ext = pytest.mark.skipif(not _ext.ext_available(), reason=f"wrn_fast._C unavailable: {_ext._C_ERROR}")

# Every torch.empty in the test (the ops' own outputs included) starts as NaN:
# tests/conftest.py's poison_uninitialized_outputs fixture.
poison_outputs = pytest.mark.usefixtures("poison_uninitialized_outputs")


def poison(t):
    """Fill ``t`` with NaN in place and return it: for outputs a test allocates itself (out=...)."""
    return t.fill_(float("nan"))


def rel_err(out, ref, floor=1e-300):
    """||out - ref|| / max(||ref||, floor) in float64 on the CPU.

    A NaN or inf in ``out`` fails (poisoned or unwritten, or overflowed); ``floor`` keeps a
    near-zero reference (e.g. a gradient that vanishes) from turning rounding into a large error.
    """
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "NaN or inf in output"
    return ((out - ref).norm() / ref.norm().clamp_min(floor)).item()
