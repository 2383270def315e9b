"""The named networks (WRN-28-10, ..., WRN-50-2): one table, read by the reference's constructors
here and by the fast model's (``wrn_fast.model``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch.nn as nn

# name -> (constructor arguments, what the network is). Parameter counts with 10 classes (CIFAR)
# or 1000 (ImageNet).
NAMED_ARCHITECTURES: Dict[str, Tuple[Dict[str, Any], str]] = {
    "wrn_28_10": (dict(depth=28, widen_factor=10), "WRN-28-10 (36.5M parameters with 10 classes)"),
    "wrn_16_8": (dict(depth=16, widen_factor=8), "WRN-16-8 (11.0M parameters)"),
    "wrn_40_4": (dict(depth=40, widen_factor=4), "WRN-40-4 (8.9M parameters)"),
    "wrn_28_2": (dict(depth=28, widen_factor=2), "WRN-28-2 (1.5M parameters; the semi-supervised learning baseline)"),
    "wrn_34_10": (dict(depth=34, widen_factor=10), "WRN-34-10 (46.2M parameters; the adversarial-training baseline)"),
    "wrn_70_16": (dict(depth=70, widen_factor=16), "WRN-70-16 (266.8M parameters; RobustBench's largest WRNs)"),
    "wide_resnet50_2": (dict(layers=(3, 4, 6, 3), width_per_group=128),
                        "WRN-50-2 for ImageNet (68.9M parameters), torchvision-compatible state_dict"),
    "wide_resnet101_2": (dict(layers=(3, 4, 23, 3), width_per_group=128),
                         "WRN-101-2 for ImageNet (126.9M parameters), torchvision-compatible state_dict"),
}


def named_constructors(wide_resnet: type, bottleneck: type) -> Dict[str, Callable[..., nn.Module]]:
    """One constructor per name of :data:`NAMED_ARCHITECTURES`: ``wrn_28_10(**kwargs)`` builds
    ``wide_resnet(depth=28, widen_factor=10, **kwargs)`` (keywords override the table),
    ``wide_resnet50_2(**kwargs)`` a ``bottleneck``."""
    constructors = {}
    for name, (arguments, description) in NAMED_ARCHITECTURES.items():
        cls = bottleneck if "layers" in arguments else wide_resnet
        constructors[name] = _constructor(name, cls, arguments, description)
    return constructors


def _constructor(name: str, cls: type, arguments: Dict[str, Any], description: str) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        return cls(**{**arguments, **kwargs})

    build.__name__ = build.__qualname__ = name
    given = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
    build.__doc__ = f"{description}: ``{cls.__name__}({given}, **kwargs)`` ({cls.__module__})."
    return build
