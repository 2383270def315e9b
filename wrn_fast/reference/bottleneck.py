"""ImageNet-style WRN-50-2 / WRN-101-2: torchvision's post-activation bottleneck ResNet, wide."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .initialization import init_like_torchvision_
from .options import _check_bn, _check_positive_int


class Bottleneck(nn.Module):
    """torchvision's post-activation bottleneck (stride on the 3x3 conv, "ResNet v1.5").

    ``[N, inplanes, H, W] -> [N, planes * 4, H / stride, W / stride]``:
    relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + downsample(x))

    Attributes: conv1 bn1 conv2 bn2 conv3 bn3 relu downsample (Sequential(conv 1x1, BN) or None),
    stride, inplanes, planes, width (the 3x3 conv's channels).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 width_per_group: int = 64, bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5):
        super().__init__()
        width = int(planes * (width_per_group / 64.0))
        self.inplanes, self.planes, self.width, self.stride = inplanes, planes, width, stride
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class WideResNetBottleneck(nn.Module):
    """ImageNet WRN (e.g. WRN-50-2) with torchvision's module names, so its state_dicts load strict.

    ``[N, in_channels, H, W] -> [N, num_classes]``; stem conv 7x7 s2 + max-pool 3x3 s2, four stages
    of ``layers[i]`` Bottlenecks (planes 64, 128, 256, 512; stride 1, 2, 2, 2), global average pool, fc.
    ``width_per_group=128`` doubles the bottleneck width (64 would be the plain ResNet).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        width_per_group: int = 128,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        bn_momentum: Optional[float] = 0.1,
        bn_eps: float = 1e-5,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        layers = tuple(layers)
        if len(layers) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in layers):
            raise ValueError(f"layers: expected 4 ints >= 1 (blocks per stage), got {layers!r}")
        _check_positive_int("width_per_group", width_per_group)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        _check_bn(bn_momentum, bn_eps)
        self.layers = layers
        self.width_per_group = width_per_group
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.bn_momentum, self.bn_eps = bn_momentum, bn_eps

        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2)), start=1):
            stage_blocks = []
            for i in range(blocks):
                s = stride if i == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes * Bottleneck.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=s, bias=False),
                        nn.BatchNorm2d(planes * Bottleneck.expansion, eps=bn_eps, momentum=bn_momentum),
                    )
                stage_blocks.append(Bottleneck(inplanes, planes, s, downsample, width_per_group, bn_momentum, bn_eps))
                inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

        init_like_torchvision_(self.modules())
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, H, W] -> [N, num_classes]``."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
