"""Drop-in for TorchSSL ``models/nets/wrn.py``.

    from models.nets.wrn import build_WideResNet   ->  from wrn_fast.compat.torchssl import build_WideResNet

Same ``WideResNet(first_stride, num_classes, depth=28, widen_factor=2, drop_rate=0.0, is_remix=False)``,
``build_WideResNet(first_stride=1, depth=28, widen_factor=2, bn_momentum=0.01, leaky_slope=0.0,
dropRate=0.0, use_embed=False, is_remix=False).build(num_classes)`` (like TorchSSL's, the builder does
not pass bn_momentum / leaky_slope / use_embed on: the network fixes 0.001 and 0.1), state_dict keys
(``rot_classifier`` with is_remix), initialisation and ``forward(x, ood_test=False)``: LeakyReLU(0.1),
BatchNorm momentum 0.001 eps 1e-3, every conv with a bias, activate_before_residual=(True, False, False).
"""
from __future__ import annotations

import torch.nn as nn

from ._base import CompatWideResNet, init_like_ssl

__all__ = ["WideResNet", "build_WideResNet"]


class WideResNet(CompatWideResNet):
    """TorchSSL's WRN: ``[N, 3, H, W] -> logits [N, num_classes]`` (see forward), fused forward."""

    def __init__(self, first_stride, num_classes, depth=28, widen_factor=2, drop_rate=0.0, is_remix=False):
        super().__init__(depth=depth, widen_factor=widen_factor, dropout_rate=drop_rate, num_classes=num_classes,
                         first_stride=first_stride, activation="leaky_relu", negative_slope=0.1,
                         bn_momentum=0.001, bn_eps=1e-3, conv_bias=True,
                         activate_before_residual=(True, False, False))
        self.channels = self.widths[3]
        self.is_remix = is_remix
        if is_remix:  # ReMixMatch's rotation head
            self.rot_classifier = nn.Linear(self.channels, 4)
            init_like_ssl(self.rot_classifier)

    def reset_parameters(self) -> None:
        init_like_ssl(self)

    def forward(self, x, ood_test=False):
        """logits; ``(logits, features [N, 64k])`` with ood_test; ``(logits, rotation logits [N, 4])``
        with is_remix."""
        if not (ood_test or self.is_remix):
            return super().forward(x)
        output, features = self._logits_and_features(x)
        if ood_test:
            return output, features
        return output, self.rot_classifier(features)


class build_WideResNet:  # noqa: N801 - TorchSSL's name
    def __init__(self, first_stride=1, depth=28, widen_factor=2, bn_momentum=0.01, leaky_slope=0.0, dropRate=0.0,
                 use_embed=False, is_remix=False):
        self.first_stride = first_stride
        self.depth = depth
        self.widen_factor = widen_factor
        self.bn_momentum = bn_momentum
        self.dropRate = dropRate
        self.leaky_slope = leaky_slope
        self.use_embed = use_embed
        self.is_remix = is_remix

    def build(self, num_classes):
        return WideResNet(first_stride=self.first_stride, depth=self.depth, num_classes=num_classes,
                          widen_factor=self.widen_factor, drop_rate=self.dropRate, is_remix=self.is_remix)
