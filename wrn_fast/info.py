"""What was built, what loaded and what can run here: ``build_info()`` (``python -m wrn_fast info``).

Above ``wrn_fast.ops`` in the layering: it imports the op wiring to list every op's
dispatch keys (CPU, CUDA, Meta, Autograd, ...).
"""
import os

import torch

from . import _ext


def _dispatch_keys(op_name: str):
    keys = []
    qual = f"wrn_fast::{op_name}"
    for key in ("CPU", "CUDA", "Meta", "Autograd", "AutogradCPU", "AutogradCUDA", "CompositeImplicitAutograd"):
        try:
            if torch._C._dispatch_has_kernel_for_dispatch_key(qual, key):
                keys.append(key)
        except Exception:
            pass
    return keys


def _triton_status():
    try:
        import triton  # noqa: F401

        version = triton.__version__
    except Exception as e:
        return {"version": None, "usable": False, "why": f"{type(e).__name__}: {e}"}
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    usable = torch.cuda.is_available() or interp
    why = None if usable else "no CUDA device and TRITON_INTERPRET is not 1"
    return {"version": version, "usable": usable, "interpreter": interp, "why": why}


def build_info() -> dict:
    """What was built, what loaded and what can run here.

    Returns a dict: torch/triton/CUDA versions, whether ``_C`` loaded (and why
    not), which dispatch keys each registered op has, whether a GPU is usable.
    """
    ops = {}
    if _ext._C is not None:
        from .ops import ext  # noqa: F401 -- the Python op wiring registers fake kernels and autograd
        for name in _ext._registered_ops():
            ops[name] = _dispatch_keys(name)
    cuda_built = bool(_ext._C is not None and getattr(_ext._C, "with_cuda", lambda: False)())
    gpu = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_status(),
        "extension_loaded": _ext._C is not None,
        "extension_error": _ext._C_ERROR,
        "extension_cuda_kernels": cuda_built,
        "ops": ops,
        "gpu_available": gpu,
        "gpu_name": torch.cuda.get_device_name(0) if gpu else None,
    }
