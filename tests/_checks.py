"""Shared test helpers: the relative error of the op tests, markers for optional packages."""
import importlib.util

import pytest
import torch

# The digits dataset (the CLI's default) comes from scikit-learn, an optional dependency.
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the digits dataset needs scikit-learn")


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64 on the CPU; a NaN in ``out`` fails (poisoned or unwritten)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    assert not torch.isnan(out).any(), "NaN in output"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()
