"""Drop-in for kekmodel/FixMatch-pytorch ``models/wideresnet.py``.

    import models.wideresnet as models             ->  import wrn_fast.compat.fixmatch as models

Same ``WideResNet(num_classes, depth=28, widen_factor=2, drop_rate=0.0)``, ``build_wideresnet(depth,
widen_factor, dropout, num_classes, verbose)``, state_dict keys, initialisation and ``forward(x)``:
LeakyReLU(0.1), BatchNorm momentum 0.001, activate_before_residual=(True, False, False).
"""
from __future__ import annotations

from ._base import CompatWideResNet, init_like_ssl

__all__ = ["WideResNet", "build_wideresnet"]


class WideResNet(CompatWideResNet):
    """kekmodel's WRN-28-2 family: ``[N, 3, H, W] -> [N, num_classes]``, fused forward."""

    def __init__(self, num_classes, depth=28, widen_factor=2, drop_rate=0.0):
        super().__init__(depth=depth, widen_factor=widen_factor, dropout_rate=drop_rate, num_classes=num_classes,
                         activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-5,
                         activate_before_residual=(True, False, False))
        self.channels = self.widths[3]

    def reset_parameters(self) -> None:
        init_like_ssl(self)


def build_wideresnet(depth, widen_factor, dropout, num_classes, verbose):
    if verbose:
        print(f"| WideResNet {depth}x{widen_factor}")
    return WideResNet(depth=depth, widen_factor=widen_factor, drop_rate=dropout, num_classes=num_classes)
