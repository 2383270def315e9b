"""The formats: what each source's checkpoints hold, and what its code fixes that they do not store."""
from __future__ import annotations

import logging
import warnings

log = logging.getLogger("wrn_fast.convert")

FORMATS = ("auto", "xternalz", "fixmatch", "torchssl", "usb", "dm", "authors", "native", "torchvision")
_FORMAT_ALIASES = {"robustbench": "xternalz", "trades": "xternalz", "kekmodel": "fixmatch", "semilearn": "usb",
                   "wrn_fast": "native"}

# RobustBench's defaults for DMWideResNet (robustbench/model_zoo/architectures/dm_wide_resnet.py).
DATASET_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# The WRN families sharing xternalz's module names. 'usb-2022' is the older USB layout; both USB
# layouts are format 'usb'. Per family: (stem conv bias, block conv biases, head name), whether the
# first blocks of groups 2 and 3 discard bn1's output, and the options its source fixes in code.
_LAYOUTS = {
    "xternalz": (False, False, "fc"),
    "fixmatch": (False, False, "fc"),
    "torchssl": (True, True, "fc"),
    "usb-2022": (True, True, "fc"),
    "usb": (True, False, "classifier"),
}
_DEAD_BN1 = {"xternalz": False, "fixmatch": True, "torchssl": True, "usb-2022": False, "usb": True}
_FAMILY_OPTIONS = {
    "xternalz": dict(),
    "fixmatch": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-5,
                     activate_before_residual=(True, False, False)),
    "torchssl": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-3,
                     activate_before_residual=(True, False, False)),
    "usb-2022": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-3,
                     activate_before_residual=None),
    "usb": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-5, final_bn_eps=1e-3,
                activate_before_residual=(True, False, False)),
}
_FAMILY_NAMES = {
    "xternalz": "xternalz / RobustBench WideResNet / TRADES (format='xternalz')",
    "fixmatch": "kekmodel FixMatch (format='fixmatch')",
    "torchssl": "TorchSSL (format='torchssl')",
    "usb-2022": "USB 2022 layout (format='usb')",
    "usb": "USB / semilearn 0.3 layout (format='usb')",
}

# What a state_dict cannot carry and an upstream SSL family fixes in code: passing any of them to
# format='native' says the caller knows what the network computes.
_OPTIONS_KEYS_CANNOT_CARRY = ("activation", "negative_slope", "bn_eps", "final_bn_eps", "bn_momentum",
                              "activate_before_residual")

# Formats whose source code fixes everything a state_dict does not store: what the family does not
# set (xternalz: everything) is the reference constructor's default.
_UPSTREAM_FORMATS = ("xternalz", "fixmatch", "torchssl", "usb", "authors")
_UNSTORED_OPTIONS = ("activation", "padding", "bn_eps", "bn_momentum", "activate_before_residual", "shortcut")


def _public_format(family: str) -> str:
    return "usb" if family == "usb-2022" else family


def _announce(message: str) -> None:
    log.info(message)
    warnings.warn(message, stacklevel=4)
