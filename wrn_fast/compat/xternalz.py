"""Drop-in for xternalz/WideResNet-pytorch ``wideresnet.py``.

    from wideresnet import WideResNet              ->  from wrn_fast.compat.xternalz import WideResNet

Same constructor (``WideResNet(depth, num_classes, widen_factor=1, dropRate=0.0)``), state_dict keys,
initialisation and ``forward(x) -> logits``; ReLU, BatchNorm defaults, pre-activated blocks. Their
forward pools with ``avg_pool2d(out, 8)`` (32x32 inputs); this one pools globally (the same there).
"""
from __future__ import annotations

from ._base import CompatWideResNet

__all__ = ["WideResNet"]


class WideResNet(CompatWideResNet):
    """xternalz's WRN-depth-widen_factor: ``[N, 3, 32, 32] -> [N, num_classes]``, fused forward."""

    def __init__(self, depth, num_classes, widen_factor=1, dropRate=0.0):
        super().__init__(depth=depth, widen_factor=widen_factor, dropout_rate=dropRate, num_classes=num_classes)
        self.nChannels = self.widths[3]
