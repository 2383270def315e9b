"""wrn_fast: Wide Residual Networks on fused Triton / C++ / CUDA kernels.

    from wrn_fast import WideResNet            # drop-in, same constructor and state_dict
    model = WideResNet(depth=28, widen_factor=10, dropout_rate=0.3, num_classes=10)

``wrn_fast.reference`` is the pure-PyTorch specification; ``wrn_fast.kernels``
holds the Triton kernels, ``wrn_fast.ops`` the op wiring (autograd, fake
kernels), ``wrn_fast._C`` the compiled extension.
"""
from ._counters import counters, reset_counters
from .info import build_info
from .backend import get_backend, set_backend, use_backend

__version__ = "0.1.0"

_LAZY = {
    # the fast model and its factories
    "WideResNet": "model",
    "WideResNetBottleneck": "model",
    "wrn_28_10": "model",
    "wrn_16_8": "model",
    "wrn_40_4": "model",
    "wrn_28_2": "model",
    "wrn_34_10": "model",
    "wrn_70_16": "model",
    "wide_resnet50_2": "model",
    "wide_resnet101_2": "model",
    "create_model": "model",
    "explain": "model",
    # checkpoints from the ecosystem
    "load_pretrained": "convert",
    "convert_state_dict": "convert",
}


def __getattr__(name):
    # Lazy so that `import wrn_fast` is cheap and never fails on an optional part.
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wrn_fast' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["build_info", "set_backend", "get_backend", "use_backend", "counters", "reset_counters", *_LAZY]
