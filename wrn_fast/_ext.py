"""Loading of the compiled extension ``wrn_fast._C`` (what was built and loaded: ``wrn_fast.info``).

Importing wrn_fast never fails because the extension is missing or broken: the
failure is recorded, reported once (a warning), and the model falls back to the
reference ops (see ``wrn_fast.backend``).
"""
import importlib
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
