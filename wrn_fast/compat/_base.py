"""What every drop-in class shares: upstream state_dict names, upstream initialisation, features.

A drop-in class subclasses the fast ``wrn_fast.WideResNet`` (so it runs the fused forward and
accepts every reference option internally) and presents the upstream module's constructor,
state_dict keys and forward signature. Module names inside stay the reference's (``fc``, ``block1``,
...): ``state_dict()`` / ``load_state_dict()`` translate keys at the boundary, so checkpoints move
both ways, while ``named_parameters()`` shows the reference names.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn

from ..model import WideResNet as FastWideResNet
from ..reference import apply_activation
from ..reference.initialization import init_conv_and_bn_


class CompatWideResNet(FastWideResNet):
    """Base of the drop-in classes. A subclass calls ``super().__init__(**reference_kwargs)`` and,
    when its upstream names differ from the reference's, sets ``_renames_keys = True`` and defines
    ``_upstream_key`` / ``_reference_key`` (one key, without prefix)."""

    _check_positional_widen_factor = False  # the upstream signatures differ from the seed's
    _renames_keys = False
    # Upstream module name -> the reference's (``classifier`` -> ``fc``): reading and assigning
    # ``model.classifier`` reach ``model.fc``, so replacing an upstream head replaces the one forward uses.
    _module_aliases: Dict[str, str] = {}

    def __init__(self, **reference_kwargs):
        super().__init__(**reference_kwargs)
        if self._renames_keys:
            self.register_state_dict_post_hook(_state_dict_to_upstream)
            self.register_load_state_dict_pre_hook(_state_dict_from_upstream)

    def __getattr__(self, name: str):
        return super().__getattr__(type(self)._module_aliases.get(name, name))

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(type(self)._module_aliases.get(name, name), value)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(type(self)._module_aliases.get(name, name))

    def _upstream_key(self, key: str) -> str:
        return key

    def _reference_key(self, key: str) -> str:
        return key

    def _load_upstream_extra(self, key: str, value: torch.Tensor, error_msgs) -> bool:
        """Consume an upstream key with no reference counterpart (True when consumed)."""
        return False

    # -- shared pieces of the upstream forwards
    def _logits_and_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The fast forward's logits and the pooled features [N, 64k] the classifier saw."""
        seen = []
        handle = self.fc.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            logits = FastWideResNet.forward(self, x)
        finally:
            handle.remove()
        return logits, seen[0]

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """act(bn1(block3(...))) before the pooling, [N, 64k, H', W'], by the reference ops."""
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        return apply_activation(self.bn1(out), self.activation, self.negative_slope)


def _state_dict_to_upstream(module, state_dict, prefix, local_metadata) -> None:
    # Pop and re-insert every key of this module, renamed: the order of the keys is kept.
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + module._upstream_key(key[len(prefix):])] = state_dict.pop(key)


def _state_dict_from_upstream(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        if not module._load_upstream_extra(key[len(prefix):], value, error_msgs):
            state_dict[prefix + module._reference_key(key[len(prefix):])] = value


def init_like_ssl(model: nn.Module) -> None:
    """TorchSSL / USB / kekmodel initialisation: convs Kaiming-normal fan_out (their
    nonlinearity='leaky_relu' with a=0 has ReLU's gain), conv biases PyTorch's default, BN 1 / 0,
    Linear Xavier-normal with a zero bias."""
    for m in model.modules():
        init_conv_and_bn_(m, nonlinearity="leaky_relu")
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


def module_before(model: nn.Module, name: str, before: str) -> None:
    """Move submodule ``name`` in front of ``before`` (state_dict order follows module order)."""
    names = list(model._modules)
    tail = names[names.index(before):]
    for other in tail:
        if other != name:
            model._modules[other] = model._modules.pop(other)
