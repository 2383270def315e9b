"""Which implementation runs an op: Triton, the C++ CPU ops, or the reference.

Backends
  'auto'      (default) CUDA tensors -> Triton kernels + CUDA ops;
              CPU tensors -> C++ CPU ops + PyTorch's CPU convolution.
  'triton'    Triton kernels for every tensor; on CPU tensors this needs
              TRITON_INTERPRET=1 set before triton is imported (how CI tests them).
  'cpu'       C++ ops + PyTorch convolution, on any device (debugging; on CUDA
              tensors bn_act_dropout's kernel is the Triton one, so triton is needed).
  'reference' the pure-PyTorch reference ops.

Select with ``wrn_fast.set_backend(name)`` (the process-wide default), the
``wrn_fast.use_backend(name)`` context manager (this thread only: another
thread keeps its own choice, and nested or overlapping contexts in different
threads restore their own thread's previous choice), or the environment variable
WRN_FAST_BACKEND (the initial default).
"""
import contextlib
import os
import threading
import warnings

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")
_backend = os.environ.get("WRN_FAST_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"WRN_FAST_BACKEND must be one of {BACKENDS}, got {_backend!r}")
_said = set()
_thread = threading.local()  # .override: this thread's use_backend() choice, or absent


def _check_name(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def set_backend(name: str) -> None:
    """Select the process-wide default backend for wrn_fast models and ops (see module doc).

    A thread inside ``use_backend`` keeps that context's backend until it exits.
    """
    global _backend
    _check_name(name)
    _backend = name


def get_backend() -> str:
    """This thread's backend: its innermost ``use_backend`` context, else the process default."""
    return getattr(_thread, "override", None) or _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Select a backend for this thread only: ``with use_backend('reference'): ...``."""
    _check_name(name)
    old = getattr(_thread, "override", None)
    _thread.override = name
    try:
        yield
    finally:
        _thread.override = old


def say_once(key: str, message: str) -> None:
    """Warn once per key: fallbacks are never silent, but never noisy."""
    if key not in _said:
        _said.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def triton_usable(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve(device: torch.device) -> str:
    """The concrete backend ('triton', 'cpu' or 'reference') for tensors on ``device``."""
    from ._ext import ext_available

    name = get_backend()
    if name == "reference" or device.type == "meta":
        # meta tensors (sizing, torch.device("meta") initialisation): the reference
        # forward gives the same shapes and runs no kernel
        return "reference"
    if name == "triton":
        if not triton_usable(device):
            raise RuntimeError(
                "backend 'triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton "
                "is imported (or a CUDA device); got device " + str(device)
            )
        if not ext_available():
            say_once("triton-noext", "wrn_fast: extension _C unavailable; backend 'triton' needs its "
                     "stats ops, using 'reference' instead")
            return "reference"
        return "triton"
    if name == "cpu":
        if not ext_available():
            say_once("cpu-noext", "wrn_fast: extension _C unavailable; using the reference ops")
            return "reference"
        if device.type == "cuda" and not triton_usable(device):
            say_once("cpu-notriton", "wrn_fast: triton is not importable; on CUDA tensors the 'cpu' backend "
                     "needs it (bn_act_dropout's CUDA kernel is Triton), using the reference ops")
            return "reference"
        return "cpu"
    # auto
    if not ext_available():
        say_once("auto-noext", "wrn_fast: extension _C unavailable; using the reference ops")
        return "reference"
    if device.type == "cuda":
        if triton_usable(device):
            return "triton"
        say_once("auto-notriton", "wrn_fast: triton is not importable; CUDA tensors use the reference ops "
                 "(the fused CUDA kernels, bn_act_dropout's included, are Triton)")
        return "reference"
    return "cpu"
