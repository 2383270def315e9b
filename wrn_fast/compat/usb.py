"""Drop-in for USB (microsoft/Semi-supervised-learning) ``semilearn/nets/wrn/wrn.py``.

    from semilearn.nets.wrn import wrn_28_2        ->  from wrn_fast.compat.usb import wrn_28_2

Same ``WideResNet(first_stride, num_classes, depth=28, widen_factor=2, drop_rate=0.0, **kwargs)``,
``wrn_28_2`` / ``wrn_28_8(pretrained=False, pretrained_path=None, **kwargs)``, state_dict keys,
initialisation and ``forward(x, only_fc=False, only_feat=False)`` (``{'logits', 'feat'}``), ``extract``,
``group_matcher``, ``no_weight_decay``. Two layouts (``layout=`` keyword, ignored upstream like any
extra keyword):

* ``'0.3'`` (default, semilearn 0.3.x): stem conv with a bias, block convs without; blocks' BatchNorm
  eps 1e-5, the final one's 1e-3; momentum 0.001; activate_before_residual=(True, False, False);
  head ``classifier``.
* ``'2022'``: every conv with a bias, every BatchNorm eps 1e-3, every block pre-activated, head ``fc``.

LeakyReLU(0.1) in both.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

from ._base import CompatWideResNet, init_like_ssl

__all__ = ["WideResNet", "wrn_28_2", "wrn_28_8", "LAYOUTS"]

log = logging.getLogger(__name__)

LAYOUTS = {
    "0.3": dict(conv_bias=False, stem_bias=True, bn_eps=1e-5, final_bn_eps=1e-3,
                activate_before_residual=(True, False, False)),
    "2022": dict(conv_bias=True, bn_eps=1e-3, activate_before_residual=None),
}


class WideResNet(CompatWideResNet):
    """USB's WRN: ``[N, 3, H, W] -> {'logits': [N, num_classes], 'feat': [N, 64k]}``, fused forward."""

    _module_aliases = {"classifier": "fc"}

    def __init__(self, first_stride, num_classes, depth=28, widen_factor=2, drop_rate=0.0, **kwargs):
        # ``layout`` travels in **kwargs so that the signature stays USB's (which has no 6th parameter).
        layout = kwargs.pop("layout", "0.3")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {tuple(LAYOUTS)} (semilearn 0.3.x or the 2022 code), "
                             f"got {layout!r}")
        object.__setattr__(self, "layout", layout)  # read by the key renaming, before nn.Module.__init__
        super().__init__(depth=depth, widen_factor=widen_factor, dropout_rate=drop_rate, num_classes=num_classes,
                         first_stride=first_stride, activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001,
                         **LAYOUTS[layout])
        self.channels = self.num_features = self.widths[3]
        self.register_load_state_dict_pre_hook(_check_layout)

    @property
    def _renames_keys(self) -> bool:
        return self.layout == "0.3"

    def _upstream_key(self, key: str) -> str:
        return "classifier." + key[len("fc."):] if key.startswith("fc.") else key

    def _reference_key(self, key: str) -> str:
        return "fc." + key[len("classifier."):] if key.startswith("classifier.") else key

    def reset_parameters(self) -> None:
        init_like_ssl(self)

    def forward(self, x, only_fc=False, only_feat=False, **kwargs):
        """only_fc: x are features [N, 64k] -> logits; only_feat: pooled features; else a dict."""
        if only_fc:
            return self.fc(x)
        logits, features = self._logits_and_features(x)
        if only_feat:
            return features
        return {"logits": logits, "feat": features}

    def extract(self, x):
        """The feature map before pooling, act(bn1(...)) [N, 64k, H', W'] (reference ops)."""
        return self._feature_map(x)

    def group_matcher(self, coarse=False, prefix=""):
        return dict(stem=rf"^{prefix}conv1",
                    blocks=rf"^{prefix}block(\d+)" if coarse else rf"^{prefix}block(\d+)\.layer.(\d+)")

    def no_weight_decay(self):
        return [n for n, _ in self.named_parameters() if "bn" in n or "bias" in n]


def _check_layout(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                  error_msgs) -> None:
    """A checkpoint of the other USB layout (its block convs have biases in the 2022 code only) gets
    a warning naming the fix: strict loading then fails on the keys anyway; semilearn's
    load_checkpoint loads non-strict and would otherwise keep half of it silently. (A warning, not an
    error message: nn.Module passes strict=True to every hook whatever the caller asked.)"""
    if prefix + "block1.layer.0.conv1.weight" not in state_dict:
        return
    found = "2022" if prefix + "block1.layer.0.conv1.bias" in state_dict else "0.3"
    if found == module.layout:
        return
    message = (f"usb.WideResNet: the state_dict has the USB {found!r} layout (block convs "
               f"{'with' if found == '2022' else 'without'} biases), this model the {module.layout!r} one: "
               f"build it with layout={found!r} (a keyword the upstream constructor ignores)")
    warnings.warn(message, stacklevel=3)


def _load_checkpoint(model: WideResNet, checkpoint_path: str) -> WideResNet:
    """semilearn's load_checkpoint: ckpt['model'] without 'module.' and head weights, loaded non-strict."""
    if checkpoint_path and os.path.isfile(checkpoint_path):
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    else:
        checkpoint = torch.hub.load_state_dict_from_url(checkpoint_path, map_location="cpu")
    state_dict = {}
    for key, value in checkpoint["model"].items():
        if key.startswith("module"):
            key = ".".join(key.split(".")[1:])
        if key.startswith(("fc", "classifier", "mlp", "head")):
            continue
        state_dict[key] = value
    log.info("wrn_fast.compat.usb: %s", model.load_state_dict(state_dict, strict=False))
    return model


def wrn_28_2(pretrained=False, pretrained_path=None, **kwargs):
    model = WideResNet(first_stride=1, depth=28, widen_factor=2, **kwargs)
    return _load_checkpoint(model, pretrained_path) if pretrained else model


def wrn_28_8(pretrained=False, pretrained_path=None, **kwargs):
    model = WideResNet(first_stride=1, depth=28, widen_factor=8, **kwargs)
    return _load_checkpoint(model, pretrained_path) if pretrained else model
