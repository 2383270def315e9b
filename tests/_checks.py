"""Shared comparison for the extension-op tests."""
import torch


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64 on the CPU; a NaN in ``out`` fails (poisoned or unwritten)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    assert not torch.isnan(out).any(), "NaN in output"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()
