"""Shared test scaffold: the relative error of the op tests, output poisoning, skip markers.

One place for what every op test needs:
  * ``rel_err(out, ref)``: the relative L2 error all tolerances in tests/ are stated in;
  * ``poison(t)`` / ``poison_outputs``: outputs start as NaN, so an element no kernel wrote fails;
  * ``needs_ext``, ``needs_sklearn``: skip markers for the optional C++ extension and scikit-learn;
  * ``randomize_batch_norm_(model)``, ``assert_state_dicts_close(ours, ref, tol)``: for the model tests.
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


def randomize_batch_norm_(model, running_stats=False, conv_bias=False):
    """Random BatchNorm affine (weight U(0.5, 1.5), bias U(-0.3, 0.3)) in place, so that weight = 1 /
    bias = 0 cannot hide a wrong formula; ``running_stats``: also running mean U(-0.2, 0.2) and var
    U(0.5, 2); ``conv_bias``: convolution biases U(-0.1, 0.1). Returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                if running_stats:
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
            if conv_bias and isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    return model


def assert_state_dicts_close(ours, ref, tol, floor=1e-300):
    """Every floating-point tensor of ``ref`` within ``tol`` relative error (rel_err) of ``ours``'s,
    every other one (num_batches_tracked) equal."""
    for name in ref:
        if ref[name].is_floating_point():
            assert rel_err(ours[name], ref[name], floor) < tol, name
        else:
            assert torch.equal(ours[name], ref[name]), name
