"""Loading of the compiled extension ``wrn_fast._C`` and ``build_info()``.

Importing wrn_fast never fails because the extension is missing or broken: the
failure is recorded, reported once (a warning), and the model falls back to the
reference ops (see ``wrn_fast.backend``).
"""
import importlib
import os
import warnings

import torch

_C = None
_C_ERROR = None
try:  # noqa: SIM105
    _C = importlib.import_module("wrn_fast._C")
except Exception as e:  # pragma: no cover - exercised when the build is missing
    _C_ERROR = f"{type(e).__name__}: {e}"

_warned = False


_EXT_OK = None


def ext_available() -> bool:
    """True when ``wrn_fast._C`` imported and registered its ops.

    Computed once and cached: the model's forward asks on every call, and
    torch.compile must see a constant, not a scan of the dispatcher's tables.
    """
    global _EXT_OK
    if _EXT_OK is None:
        _EXT_OK = _C is not None and _has_any_op()
    return _EXT_OK


def _has_any_op() -> bool:
    try:
        return len(_registered_ops()) > 0
    except Exception:
        return False


def _registered_ops():
    """Names of the ops in the wrn_fast namespace (C++ schemas and Python custom ops)."""
    names = set()
    for qualified in torch._C._dispatch_get_all_op_names():
        namespace, _, name = qualified.partition("::")
        if namespace == "wrn_fast" and name:
            names.add(name.split(".", 1)[0])  # drop an overload name
    return sorted(names)


def warn_ext_missing_once(what: str = "") -> None:
    global _warned
    if not _warned and _C is None:
        _warned = True
        warnings.warn(
            "wrn_fast: the compiled extension wrn_fast._C is unavailable "
            f"({_C_ERROR}); {what or 'C++/CUDA ops'} fall back to the reference PyTorch ops. "
            "Reinstall with `pip install --no-build-isolation .` to build it.",
            RuntimeWarning,
            stacklevel=3,
        )


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
    if _C is not None:
        try:  # fake kernels and autograd are registered by the Python op wiring
            importlib.import_module("wrn_fast.ops.ext")
        except Exception:  # pragma: no cover - reported through the missing keys
            pass
        for name in _registered_ops():
            ops[name] = _dispatch_keys(name)
    cuda_built = bool(_C is not None and getattr(_C, "with_cuda", lambda: False)())
    gpu = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_status(),
        "extension_loaded": _C is not None,
        "extension_error": _C_ERROR,
        "extension_cuda_kernels": cuda_built,
        "ops": ops,
        "gpu_available": gpu,
        "gpu_name": torch.cuda.get_device_name(0) if gpu else None,
    }
