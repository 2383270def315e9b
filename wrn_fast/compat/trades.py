"""Drop-in for yaodongyu/TRADES ``models/wideresnet.py``.

    from models.wideresnet import WideResNet       ->  from wrn_fast.compat.trades import WideResNet

Same constructor (``WideResNet(depth=34, num_classes=10, widen_factor=10, dropRate=0.0)``: WRN-34-10 by
default), state_dict keys (the unused ``sub_block1`` included), initialisation and ``forward(x)``.
"""
from __future__ import annotations

from ._base import CompatWideResNet
from .robustbench import add_sub_block1

__all__ = ["WideResNet"]


class WideResNet(CompatWideResNet):
    """TRADES' WRN: ``[N, 3, 32, 32] -> [N, num_classes]``, fused forward; ``sub_block1`` never runs."""

    def __init__(self, depth=34, num_classes=10, widen_factor=10, dropRate=0.0):
        super().__init__(depth=depth, widen_factor=widen_factor, dropout_rate=dropRate, num_classes=num_classes)
        self.nChannels = self.widths[3]
        add_sub_block1(self)
