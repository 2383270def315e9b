"""Weight initialisations of the source codebases: a network built here starts as theirs does."""
from __future__ import annotations

import torch.nn as nn


def init_conv_and_bn_(module: nn.Module, nonlinearity: str = "relu") -> None:
    """What every source shares: a convolution's weight Kaiming-normal fan_out, a BatchNorm's weight
    1 and bias 0 (``nonlinearity`` picks the gain: 'relu', or 'leaky_relu' with a = 0, the same
    sqrt(2)). Other modules are left alone."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity=nonlinearity)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_like_xternalz_(modules) -> None:
    """xternalz / RobustBench / TRADES init: convs Kaiming-normal fan_out (ReLU gain: their
    N(0, sqrt(2 / (k*k*out)))), conv and Linear biases 0, BN 1 / 0; the Linear weight keeps
    PyTorch's default."""
    for m in modules:
        init_conv_and_bn_(m)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


def init_like_torchvision_(modules) -> None:
    """torchvision's ResNet init: convs Kaiming-normal fan_out, BN 1 / 0; the Linear keeps PyTorch's default."""
    for m in modules:
        init_conv_and_bn_(m)
