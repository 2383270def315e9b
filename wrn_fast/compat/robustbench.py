"""Drop-ins for RobustBench ``robustbench/model_zoo/architectures/wide_resnet.py`` and
``dm_wide_resnet.py``.

    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
        ->  from wrn_fast.compat.robustbench import WideResNet
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet, Swish
        ->  from wrn_fast.compat.robustbench import DMWideResNet, Swish

Same constructors, defaults and state_dict keys:

* ``WideResNet(depth=28, num_classes=10, widen_factor=10, sub_block1=False, dropRate=0.0,
  bias_last=True)``: TRADES' unused ``sub_block1`` exists (and is saved) when asked for;
  ``bias_last=False`` gives a classifier without bias.
* ``DMWideResNet(num_classes=10, depth=28, width=10, activation_fn=nn.ReLU, mean=CIFAR10_MEAN,
  std=CIFAR10_STD, padding=0, num_input_channels=3)``: DeepMind's names (``init_conv``,
  ``layer.i.block.j.batchnorm_0`` ...), TF-'SAME' stride-2 padding, ``(x - mean) / std`` in the
  model with mean/std non-persistent (not in the state_dict, as in RobustBench), ``padding`` zero
  pixels around the input first. ``activation_fn``: ``nn.ReLU``, ``Swish`` (RobustBench's or this
  module's), ``nn.SiLU`` or ``nn.LeakyReLU``. The input padding is ``input_padding`` here
  (``padding`` names the convolution padding scheme of the reference model).
"""
from __future__ import annotations

from typing import Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..convert import DATASET_NORMALIZATION, dm_key_to_reference, reference_key_to_dm
from ..reference import NetworkBlock, init_like_xternalz_
from ._base import CompatWideResNet, module_before

__all__ = ["WideResNet", "DMWideResNet", "Swish", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR10_MEAN, CIFAR10_STD = DATASET_NORMALIZATION["cifar10"]
CIFAR100_MEAN, CIFAR100_STD = DATASET_NORMALIZATION["cifar100"]


class WideResNet(CompatWideResNet):
    """RobustBench's (TRADES-derived) WRN: ``[N, 3, 32, 32] -> [N, num_classes]``, fused forward."""

    def __init__(self, depth=28, num_classes=10, widen_factor=10, sub_block1=False, dropRate=0.0, bias_last=True):
        super().__init__(depth=depth, widen_factor=widen_factor, dropout_rate=dropRate, num_classes=num_classes,
                         fc_bias=bool(bias_last))
        self.nChannels = self.widths[3]
        if sub_block1:
            add_sub_block1(self)


def add_sub_block1(model: CompatWideResNet) -> None:
    """TRADES' ``sub_block1``: a copy of group 1's shape that forward never runs, kept so that
    state_dicts match theirs (its parameters get no gradient, as in TRADES)."""
    first = model.block1.layer[0]
    model.sub_block1 = NetworkBlock(model.num_blocks_per_group, model.widths[0], model.widths[1], 1,
                                    kernel_sizes=first.kernel_sizes, dropout_rate=first.dropout_rate,
                                    activation=first.activation, bn_momentum=first.bn1.momentum,
                                    bn_eps=first.bn1.eps)
    init_like_xternalz_(model.sub_block1.modules())
    module_before(model, "sub_block1", "block2")


class Swish(nn.SiLU):
    """RobustBench's Swish, ``x * sigmoid(x)`` (= nn.SiLU); pass the class as activation_fn."""


def _activation_of(activation_fn) -> Tuple[str, float]:
    """(activation, negative_slope) of what RobustBench calls ``activation_fn()`` on: a module class,
    an instance, or a factory such as ``functools.partial(nn.LeakyReLU, 0.2)``."""
    if isinstance(activation_fn, nn.Module) or (callable(activation_fn) and not isinstance(activation_fn, type)):
        instance = activation_fn if isinstance(activation_fn, nn.Module) else activation_fn()
        cls = type(instance)
    else:
        instance, cls = None, activation_fn
    if isinstance(cls, type) and issubclass(cls, nn.ReLU):
        return "relu", 0.1
    if isinstance(cls, type) and issubclass(cls, nn.LeakyReLU):
        instance = instance if instance is not None else cls()
        return "leaky_relu", float(instance.negative_slope)
    if isinstance(cls, type) and (issubclass(cls, nn.SiLU) or cls.__name__ in ("Swish", "_Swish")):
        return "silu", 0.1
    raise ValueError(f"activation_fn: expected nn.ReLU, Swish (or nn.SiLU) or nn.LeakyReLU (a class, an instance or "
                     f"a factory of one), got {activation_fn!r}")


class DMWideResNet(CompatWideResNet):
    """DeepMind's WRN as RobustBench builds it: ``[N, C, H, W] -> [N, num_classes]``, fused forward
    (H, W divisible by 4 after the input padding; RobustBench's own forward assumes 32x32)."""

    _renames_keys = True
    # RobustBench's top-level module names (the blocks keep the reference's: model.block1.layer[0] ...).
    _module_aliases = {"init_conv": "conv1", "batchnorm": "bn1", "logits": "fc"}

    def __init__(self, num_classes: int = 10, depth: int = 28, width: int = 10,
                 activation_fn: Type[nn.Module] = nn.ReLU,
                 mean: Union[Tuple[float, ...], float] = CIFAR10_MEAN,
                 std: Union[Tuple[float, ...], float] = CIFAR10_STD,
                 padding: int = 0, num_input_channels: int = 3):
        activation, slope = _activation_of(activation_fn)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding: expected an int >= 0 (zero pixels around the input), got {padding!r}")
        super().__init__(depth=depth, widen_factor=width, num_classes=num_classes, in_channels=num_input_channels,
                         activation=activation, negative_slope=slope, padding="tf_same",
                         input_mean=mean, input_std=std)
        # PyTorch's default initialisation everywhere (DMWideResNet has no init of its own).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()
        self.input_padding = padding
        self.num_channels = self.widths[3]

    @property
    def mean(self) -> torch.Tensor:
        """[C, 1, 1], as RobustBench's buffer (a view of ``input_mean``)."""
        return self.input_mean.view(-1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return self.input_std.view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_padding > 0:
            x = F.pad(x, (self.input_padding,) * 4)
        return super().forward(x)

    def _upstream_key(self, key: str) -> str:
        return reference_key_to_dm(key) or key

    def _reference_key(self, key: str) -> str:
        return dm_key_to_reference(key) or key

    def _load_upstream_extra(self, key, value, error_msgs) -> bool:
        if key not in ("mean", "std"):
            return False
        # Older RobustBench versions saved mean/std (then persistent buffers): load them.
        target = self.input_mean if key == "mean" else self.input_std
        if target.numel() != value.numel():
            error_msgs.append(f"{key}: expected {target.numel()} values (one per input channel), got {value.numel()}")
        else:
            with torch.no_grad():
                target.copy_(value.reshape(target.shape))
        return True
