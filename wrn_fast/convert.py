"""Checkpoints from the WRN ecosystem -> wrn_fast models.

Formats (``format=``); each names the source code whose architecture the checkpoint needs, since a
state_dict stores weights, not the options a source fixes in its code (activation, BN eps, ...):

    'xternalz'     xternalz/WideResNet-pytorch, RobustBench ``WideResNet``, TRADES: ReLU, BN defaults,
                   every block pre-activated, no conv biases (TRADES' unused ``sub_block1.*`` is dropped
                   with a warning; RobustBench's bias_last=False head loads as fc_bias=False).
                   Aliases: 'robustbench', 'trades'.
    'fixmatch'     kekmodel/FixMatch-pytorch: LeakyReLU(0.1), BN momentum 0.001 eps 1e-5, no conv
                   biases, activate_before_residual=(True, False, False). Alias: 'kekmodel'.
    'torchssl'     TorchSSL: LeakyReLU(0.1), BN momentum 0.001 eps 1e-3, every conv with a bias,
                   activate_before_residual=(True, False, False). STL-10 models: pass first_stride=2.
    'usb'          microsoft/Semi-supervised-learning (semilearn), both layouts, told apart by the keys:
                   2022: as 'torchssl' but every block pre-activated (its blocks ignore
                         activate_before_residual); head ``fc``.
                   0.3.x: stem conv with a bias, block convs without; blocks' BN eps 1e-5, the final
                         BN's 1e-3 (final_bn_eps); activate_before_residual=(True, False, False);
                         head ``classifier``. Alias: 'semilearn'.
    'dm'           RobustBench ``DMWideResNet`` (DeepMind): ``init_conv``, ``layer.i.block.j.{batchnorm_0,
                   conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``, ``logits``; padding='tf_same'.
                   Neither its activation nor (RobustBench registers mean/std as non-persistent buffers)
                   its input normalisation is in the checkpoint: pass activation='silu' (Swish) or
                   'relu', and dataset='cifar10' / 'cifar100' (RobustBench's defaults, announced by a
                   warning) or input_mean=/input_std= (None for none). Older checkpoints that do hold
                   ``mean``/``std`` use those.
    'authors'      szagoruyko/wide-residual-networks functional PyTorch code: a flat dict
                   ``conv0``, ``group0.block0.{conv0,conv1,bn0.*,bn1.*,convdim}``, ``bn.*``, ``fc.*``.
    'native'       a wrn_fast state_dict (reference names): the keys give depth, width, block type and
                   biases; everything else is the constructor's default unless passed. Alias: 'wrn_fast'.
    'torchvision'  torchvision ``wide_resnet50_2`` / ``wide_resnet101_2`` (-> WideResNetBottleneck).
    'auto'         from the keys, and where keys are shared, from what training leaves in them: the
                   blocks that read their raw input (activate_before_residual=False) never use bn1's
                   output, so its affine parameters get no gradient and keep their initial values (bias
                   exactly 0, one weight value for every channel) while every other BatchNorm's move.
                   That tells kekmodel from xternalz and TorchSSL from USB-2022. When it cannot tell
                   (an untrained checkpoint), 'auto' raises and asks for the format.

With an explicit format, keys that contradict it (conv biases, head name, the bn1 evidence) raise.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .checkpoint import load_checkpoint

__all__ = ["FORMATS", "DATASET_NORMALIZATION", "convert_state_dict", "load_pretrained", "detect_format"]

log = logging.getLogger(__name__)

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

# Checkpoint wrappers seen in the wild, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "params", "net")
# Wrapper prefixes: DataParallel / DDP, torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(checkpoint: Mapping[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """The tensor dict inside a checkpoint: the dict itself, or ``ckpt['state_dict'|'model'|...]``.

    szagoruyko's older checkpoints keep BN statistics apart in ``ckpt['stats']``: merged in.
    DataParallel/DDP ('module.', also nested) and torch.compile ('_orig_mod.') prefixes are stripped;
    a semilearn algorithm wrapper's 'backbone.' is kept and its extra heads dropped with a warning."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"state_dict: expected a mapping of names to tensors, got {type(checkpoint).__name__}")
    obj = checkpoint
    if not _is_tensor_dict(obj):
        for key in _WRAPPER_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                obj = dict(checkpoint[key])
                if isinstance(checkpoint.get("stats"), Mapping):
                    obj.update(checkpoint["stats"])
                break
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ValueError(
            f"state_dict: found no tensors; top-level keys are {sorted(checkpoint)[:8]} "
            f"(a wrapped checkpoint should keep its weights under one of {_WRAPPER_KEYS})"
        )
    stripped = True
    while stripped:  # 'module.module.' (DataParallel inside DDP), '_orig_mod.module.', ...
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = OrderedDict((k[len(prefix):], v) for k, v in tensors.items())
                stripped = True
    if "backbone.conv1.weight" in tensors:
        heads = sorted({k.split(".")[0] for k in tensors if not k.startswith("backbone.")})
        if heads:
            _announce(f"load_pretrained: keeping the 'backbone.' network, ignoring the wrapper's {heads}")
        tensors = OrderedDict((k[len("backbone."):], v) for k, v in tensors.items() if k.startswith("backbone."))
    return tensors


def _announce(message: str) -> None:
    log.info(message)
    warnings.warn(message, stacklevel=4)


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The format of a state_dict or a checkpoint wrapping one; raises ValueError when it cannot tell."""
    state_dict = _unwrap(state_dict)
    keys = set(state_dict)
    if "layer1.0.conv1.weight" in keys and "layer1.0.conv3.weight" in keys:
        return "torchvision"
    if "init_conv.weight" in keys or any(k.startswith("layer.0.block.0.") for k in keys):
        return "dm"
    if "conv0" in keys or "conv0.weight" in keys or any(k.startswith("group0.block0.") for k in keys):
        return "authors"
    if "conv1.weight" in keys and any(k.startswith("block1.layer.0.") for k in keys):
        return _public_format(_detect_family(state_dict))
    raise ValueError(
        "state_dict: unknown layout, expected keys of one of the formats "
        f"{FORMATS[1:]}; some of its keys: {sorted(keys)[:6]}"
    )


def _public_format(family: str) -> str:
    return "usb" if family == "usb-2022" else family


# ----------------------------------------------------------------------------- telling families apart


def _layout(sd) -> Tuple[bool, bool, str]:
    head = "classifier" if "classifier.weight" in sd else "fc"
    return ("conv1.bias" in sd, "block1.layer.0.conv1.bias" in sd, head)


def _describe_layout(layout) -> str:
    stem, blocks, head = layout
    return (f"stem conv {'with' if stem else 'without'} bias, block convs {'with' if blocks else 'without'} "
            f"biases, head '{head}'")


def _untouched_affine(sd, bn: str) -> Optional[bool]:
    """True when a BN's affine parameters are still as initialised (bias 0, one weight value), as
    a parameter that never received a gradient (and has no weight decay) stays; None if absent."""
    weight, bias = sd.get(bn + ".weight"), sd.get(bn + ".bias")
    if weight is None or bias is None or weight.numel() == 0:
        return None
    return bool((bias == 0).all()) and bool((weight == weight.flatten()[0]).all())


def _bn1_evidence(sd) -> Optional[bool]:
    """Do the first blocks of groups 2 and 3 discard bn1's output? True (dead: untouched while the
    other BNs trained), False (live), None (cannot tell: nothing trained, or mixed)."""
    watched = [f"block{g}.layer.0.bn1" for g in (2, 3)]
    states = [_untouched_affine(sd, bn) for bn in watched]
    if None in states:
        return None
    others = {k[: -len(".running_mean")] for k in sd if k.endswith(".running_mean")} - set(watched)
    if not any(_untouched_affine(sd, bn) is False for bn in others):
        return None  # an untrained checkpoint: every BN still at its initial values
    if all(states):
        return True
    if not any(states):
        return False
    return None


def _detect_family(sd) -> str:
    layout = _layout(sd)
    if "sub_block1.conv1.weight" in sd or any(k.startswith("sub_block1.") for k in sd):
        return _check_family(sd, "xternalz")  # only TRADES builds a sub_block1
    candidates = [f for f, lay in _LAYOUTS.items() if lay == layout]
    if not candidates:
        raise ValueError(
            f"state_dict: its keys ({_describe_layout(layout)}) match none of the WRN families "
            f"{[_FAMILY_NAMES[f] for f in _LAYOUTS]}; for a wrn_fast state_dict pass format='native' "
            "with the options it was built with (activation=..., bn_eps=..., ...)"
        )
    if len(candidates) == 1:
        return _check_family(sd, candidates[0])
    dead = _bn1_evidence(sd)
    if dead is None:
        names = " or ".join(_FAMILY_NAMES[f] for f in candidates)
        raise ValueError(
            f"format='auto': this checkpoint's keys ({_describe_layout(layout)}) fit {names}, which "
            "differ in what the keys do not store (activation, BatchNorm eps/momentum, which blocks "
            "pre-activate), and its BatchNorm parameters do not tell either (an untrained checkpoint?). "
            "Pass the format explicitly."
        )
    family = next(f for f in candidates if _DEAD_BN1[f] == dead)
    log.info("convert: detected %s (%s; bn1 of the first blocks of groups 2 and 3 %s)", _FAMILY_NAMES[family],
             _describe_layout(layout), "never trained" if dead else "trained")
    return family


# What a state_dict cannot carry and an upstream SSL family fixes in code: passing any of them to
# format='native' says the caller knows what the network computes.
_OPTIONS_KEYS_CANNOT_CARRY = ("activation", "negative_slope", "bn_eps", "final_bn_eps", "bn_momentum",
                              "activate_before_residual")


def _warn_if_foreign(sd, overrides) -> None:
    """format='native' builds the constructor's defaults (ReLU, eps 1e-5, every block pre-activated):
    warn when the keys or the bn1 evidence say the state_dict is an upstream SSL family's and no
    option that would set those up was passed (it would load, and compute something else)."""
    if any(name in overrides for name in _OPTIONS_KEYS_CANNOT_CARRY):
        return
    layout, dead = _layout(sd), _bn1_evidence(sd)
    fits = [f for f, lay in _LAYOUTS.items() if lay == layout and (dead is None or _DEAD_BN1[f] == dead)]
    # The default model's own layout (xternalz's) is only suspicious with dead-bn1 evidence.
    if not fits or fits == ["xternalz"] or (layout == _LAYOUTS["xternalz"] and not dead):
        return
    _announce(
        f"load_pretrained: format='native' builds ReLU / BatchNorm eps 1e-5 / pre-activated blocks, but this "
        f"state_dict ({_describe_layout(layout)}"
        + (", bn1 of block2.layer.0 / block3.layer.0 never trained" if dead else "")
        + f") looks like {' or '.join(_FAMILY_NAMES[f] for f in fits if f != 'xternalz')}: use that format, "
        "or pass the options it was built with (activation=..., bn_eps=..., activate_before_residual=...)"
    )


def _check_family(sd, fmt: str) -> str:
    """The family variant of an explicit format whose layout the keys show, or ValueError."""
    layout = _layout(sd)
    variants = [f for f in _LAYOUTS if _public_format(f) == fmt]
    matching = [f for f in variants if _LAYOUTS[f] == layout]
    if not matching:
        expected = " or ".join(_describe_layout(_LAYOUTS[f]) for f in variants)
        fits = [_FAMILY_NAMES[f] for f, lay in _LAYOUTS.items() if lay == layout]
        raise ValueError(
            f"format={fmt!r}: expected {expected}, but the checkpoint has {_describe_layout(layout)}"
            + (f"; that is the layout of {' or '.join(fits)}" if fits else "")
        )
    family = matching[0]
    if family == "fixmatch" and any(k.startswith("sub_block1.") for k in sd):
        raise ValueError("format='fixmatch': the checkpoint has TRADES' sub_block1; use format='trades'")
    dead = _bn1_evidence(sd)
    if dead is not None and dead != _DEAD_BN1[family]:
        others = [_FAMILY_NAMES[f] for f, lay in _LAYOUTS.items() if lay == layout and _DEAD_BN1[f] == dead]
        what = ("never trained (its output unused: activate_before_residual=False)" if dead
                else "trained (its output used: every block pre-activated)")
        raise ValueError(
            f"format={fmt!r}: bn1 of block2.layer.0 / block3.layer.0 was {what}, which {_FAMILY_NAMES[family]} "
            f"does not build" + (f"; the checkpoint fits {' or '.join(others)}" if others else "")
        )
    return family


# ----------------------------------------------------------------------------- renaming


def _rename(state_dict, rules, fmt) -> "OrderedDict[str, torch.Tensor]":
    """Rename every key with the first matching (regex, replacement); an unmatched key is an error."""
    out = OrderedDict()
    unexpected = []
    for key, value in state_dict.items():
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict: keys not in the {fmt!r} format: {unexpected[:6]}")
    return out


def _group_plus_one(match: re.Match) -> str:
    return f"block{int(match.group(1)) + 1}"


_AUTHORS_RULES = [
    (r"conv0(?:\.weight)?", "conv1.weight"),
    (r"bn\.(weight|bias|running_mean|running_var|num_batches_tracked)", r"bn1.\1"),
    (r"fc\.(weight|bias)", r"fc.\1"),
    (r"group(\d+)\.block(\d+)\.conv0(?:\.weight)?", r"group\1.layer.\2.conv1.weight"),
    (r"group(\d+)\.block(\d+)\.conv1(?:\.weight)?", r"group\1.layer.\2.conv2.weight"),
    (r"group(\d+)\.block(\d+)\.convdim(?:\.weight)?", r"group\1.layer.\2.convShortcut.weight"),
    (r"group(\d+)\.block(\d+)\.bn0\.(\w+)", r"group\1.layer.\2.bn1.\3"),
    (r"group(\d+)\.block(\d+)\.bn1\.(\w+)", r"group\1.layer.\2.bn2.\3"),
]

# DeepMind's module names -> the reference's: top level, and inside layer.G.block.I (G from 0).
_DM_TOP = {"init_conv": "conv1", "batchnorm": "bn1", "logits": "fc"}
_DM_BLOCK = {"batchnorm_0": "bn1", "conv_0": "conv1", "batchnorm_1": "bn2", "conv_1": "conv2", "shortcut": "convShortcut"}


def dm_key_to_reference(key: str) -> Optional[str]:
    """'layer.0.block.1.conv_0.weight' -> 'block1.layer.1.conv1.weight'; None for a non-DM key."""
    match = re.fullmatch(r"layer\.(\d+)\.block\.(\d+)\.(\w+)\.(\w+)", key)
    if match and match.group(3) in _DM_BLOCK:
        group, index, module, tensor = match.groups()
        return f"block{int(group) + 1}.layer.{index}.{_DM_BLOCK[module]}.{tensor}"
    match = re.fullmatch(r"(\w+)\.(\w+)", key)
    if match and match.group(1) in _DM_TOP:
        return f"{_DM_TOP[match.group(1)]}.{match.group(2)}"
    return None


def reference_key_to_dm(key: str) -> Optional[str]:
    """The inverse of dm_key_to_reference."""
    block_names = {v: k for k, v in _DM_BLOCK.items()}
    match = re.fullmatch(r"block(\d+)\.layer\.(\d+)\.(\w+)\.(\w+)", key)
    if match and match.group(3) in block_names:
        group, index, module, tensor = match.groups()
        return f"layer.{int(group) - 1}.block.{index}.{block_names[module]}.{tensor}"
    top_names = {v: k for k, v in _DM_TOP.items()}
    match = re.fullmatch(r"(\w+)\.(\w+)", key)
    if match and match.group(1) in top_names:
        return f"{top_names[match.group(1)]}.{match.group(2)}"
    return None


def _groups_to_blocks(state_dict):
    """'group{g}.' (0-based) -> 'block{g+1}.' (xternalz's 1-based group modules)."""
    return OrderedDict((re.sub(r"^group(\d+)", _group_plus_one, k), v) for k, v in state_dict.items())


def _drop(state_dict, prefix: str, why: str):
    dropped = [k for k in state_dict if k.startswith(prefix)]
    if dropped:
        _announce(f"load_pretrained: ignoring {len(dropped)} '{prefix}*' tensors ({why})")
    return OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(prefix))


def _fill_bn_counters(state_dict):
    """num_batches_tracked for BNs that lack it (authors' dicts)."""
    for key in [k for k in state_dict if k.endswith(".running_mean")]:
        state_dict.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return state_dict


# ----------------------------------------------------------------------------- configuration


def _infer_wide_resnet_config(state_dict) -> Dict[str, Any]:
    """depth, widen_factor, num_classes, block, in_channels, conv_bias (and stem_bias / fc_bias where
    they differ from the defaults) of reference-named weights."""
    for key in ("conv1.weight", "fc.weight", "block1.layer.0.conv1.weight", "bn1.weight"):
        if key not in state_dict:
            raise ValueError(f"state_dict: not a WideResNet, missing {key!r}")
    stem = state_dict["conv1.weight"]
    if stem.dim() != 4 or stem.shape[0] != 16:
        raise ValueError(f"state_dict: conv1.weight expected shape [16, C, 3, 3] (the WRN stem), got {list(stem.shape)}")
    blocks_per_group = []
    for g in (1, 2, 3):
        indices = {int(m.group(1)) for k in state_dict for m in [re.match(rf"block{g}\.layer\.(\d+)\.", k)] if m}
        if not indices or indices != set(range(len(indices))):
            raise ValueError(f"state_dict: group block{g} expected blocks 0..n-1, found {sorted(indices)}")
        blocks_per_group.append(len(indices))
    if len(set(blocks_per_group)) != 1:
        raise ValueError(f"state_dict: expected the same number of blocks in every group, got {blocks_per_group}")
    kernel_sizes = []
    while f"block1.layer.0.conv{len(kernel_sizes) + 1}.weight" in state_dict:
        kernel_sizes.append(int(state_dict[f"block1.layer.0.conv{len(kernel_sizes) + 1}.weight"].shape[-1]))
    width = int(state_dict["block1.layer.0.conv1.weight"].shape[0])
    if width % 16:
        raise ValueError(f"state_dict: first group width {width} is not 16 * k for an integer widen factor k")
    n = blocks_per_group[0]
    config = dict(
        depth=6 * n + 4,  # the paper's naming: n blocks per group whatever the block type
        widen_factor=width // 16,
        num_classes=int(state_dict["fc.weight"].shape[0]),
        in_channels=int(stem.shape[1]),
        conv_bias="block1.layer.0.conv1.bias" in state_dict,
        block=tuple(kernel_sizes),
    )
    if ("conv1.bias" in state_dict) != config["conv_bias"]:
        config["stem_bias"] = "conv1.bias" in state_dict
    if "fc.bias" not in state_dict:
        config["fc_bias"] = False
    return config


def _infer_bottleneck_config(state_dict) -> Dict[str, Any]:
    layers = []
    for stage in (1, 2, 3, 4):
        indices = {int(m.group(1)) for k in state_dict for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m}
        if not indices:
            raise ValueError(f"state_dict: torchvision format expected blocks under 'layer{stage}.', found none")
        layers.append(len(indices))
    conv2 = state_dict["layer1.0.conv2.weight"]
    if conv2.shape[1] != conv2.shape[0]:
        raise ValueError(f"state_dict: grouped bottleneck convolutions (ResNeXt) are not supported: "
                         f"layer1.0.conv2.weight has shape {list(conv2.shape)}")
    return dict(
        layers=tuple(layers),
        # planes = 64 in stage 1, so its width equals width_per_group.
        width_per_group=int(state_dict["layer1.0.conv1.weight"].shape[0]),
        num_classes=int(state_dict["fc.weight"].shape[0]),
        in_channels=int(state_dict["conv1.weight"].shape[1]),
    )


def _dm_normalization(sd, dataset: Optional[str], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """input_mean / input_std of a DM checkpoint: given, stored, or the dataset's RobustBench defaults."""
    stored = {name: sd.pop(name).flatten().tolist() for name in ("mean", "std") if name in sd}
    given = {k: overrides[k] for k in ("input_mean", "input_std") if k in overrides}
    if len(given) == 1:
        raise ValueError(f"input_mean / input_std: pass both or neither, got only {next(iter(given))}")
    if given:
        log.info("convert: DM normalisation as given: mean=%s std=%s", given["input_mean"], given["input_std"])
        return given
    if stored:
        if len(stored) != 2:
            raise ValueError(f"state_dict: a DM checkpoint with {sorted(stored)} but not both of mean/std")
        log.info("convert: DM normalisation from the checkpoint: mean=%s std=%s", stored["mean"], stored["std"])
        return dict(input_mean=stored["mean"], input_std=stored["std"])
    if dataset is not None:
        key = str(dataset).lower().replace("-", "")
        if key not in DATASET_NORMALIZATION:
            raise ValueError(f"dataset: expected one of {sorted(DATASET_NORMALIZATION)} (RobustBench's DM "
                             f"defaults), got {dataset!r}; pass input_mean=/input_std= for another")
        mean, std = DATASET_NORMALIZATION[key]
        _announce(f"load_pretrained: DM checkpoints do not store their normalisation; using RobustBench's "
                  f"{key} defaults mean={mean} std={std}")
        return dict(input_mean=list(mean), input_std=list(std))
    raise ValueError(
        "dataset: a DM (RobustBench DMWideResNet) checkpoint does not store its input normalisation "
        "(mean/std are non-persistent buffers); pass dataset='cifar10' or 'cifar100' for RobustBench's "
        "defaults, or input_mean=[...], input_std=[...] (both None for a model trained without one)"
    )


def convert_state_dict(state_dict: Mapping[str, Any], format: str = "auto", *, dataset: Optional[str] = None,
                       **overrides) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, Any]]:
    """Rename a checkpoint's tensors to the reference names and infer the model configuration.

    Args:
        state_dict: a state_dict, or a checkpoint dict wrapping one (``{'state_dict': ...}``,
            ``{'model': ...}``, ``{'params': ...}``); 'module.' prefixes (repeated too) are stripped.
        format: one of FORMATS (see the module doc) or an alias. 'auto' raises where the keys
            cannot tell the families apart; an explicit format raises where they contradict it.
        dataset: 'dm' only: 'cifar10' / 'cifar100' selects RobustBench's default normalisation.
        **overrides: replace inferred constructor arguments (activation='relu' for a DM checkpoint
            trained with ReLU, first_stride=2 for TorchSSL / USB STL-10 models, ...).

    Returns:
        ``(converted_state_dict, model_kwargs)``: the state_dict loads strict into
        ``WideResNet(**model_kwargs)`` (or ``WideResNetBottleneck(**model_kwargs)`` for
        'torchvision'); model_kwargs holds depth, widen_factor, num_classes, ... and the options
        the format implies (activation, padding, input_mean/input_std, BN momentum/eps, ...).
    """
    fmt = _FORMAT_ALIASES.get(format, format)
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS} or an alias {tuple(_FORMAT_ALIASES)}, got {format!r}")
    sd = _unwrap(state_dict)
    family = None
    if fmt == "auto":
        fmt = detect_format(sd)
    if dataset is not None and fmt != "dm":
        raise ValueError(f"dataset: only DM checkpoints take a dataset (for their normalisation), format is {fmt!r}")
    if fmt in ("xternalz", "fixmatch", "torchssl", "usb"):
        family = _check_family(sd, fmt)

    if fmt == "torchvision":
        if "layer1.0.conv3.weight" not in sd:
            raise ValueError(f"state_dict: not a torchvision bottleneck ResNet; some of its keys: {sorted(sd)[:6]}")
        return sd, {**_infer_bottleneck_config(sd), **overrides}

    kwargs: Dict[str, Any] = {}
    if fmt == "authors":
        sd = _groups_to_blocks(_rename(sd, _AUTHORS_RULES, fmt))
    elif fmt == "dm":
        if "activation" not in overrides:
            raise ValueError(
                "activation: a DM (RobustBench DMWideResNet) checkpoint does not record its activation "
                "(the class default is nn.ReLU, RobustBench's DeepMind entries pass Swish); "
                "pass activation='silu' (Swish) or activation='relu'"
            )
        kwargs.update(_dm_normalization(sd, dataset, overrides), padding="tf_same")
        unexpected = [k for k in sd if dm_key_to_reference(k) is None]
        if unexpected:
            raise ValueError(f"state_dict: keys not in the 'dm' format: {unexpected[:6]}")
        sd = OrderedDict((dm_key_to_reference(k), v) for k, v in sd.items())
    elif fmt == "native":
        _warn_if_foreign(sd, overrides)
        sd = OrderedDict((re.sub(r"^classifier\.", "fc.", k), v) for k, v in sd.items())
    else:
        if family == "xternalz":
            sd = _drop(sd, "sub_block1.", "TRADES builds an unused sub_block1")
        else:
            sd = _drop(sd, "rot_classifier.", "ReMixMatch's rotation head")
            sd = OrderedDict((re.sub(r"^classifier\.", "fc.", k), v) for k, v in sd.items())
        kwargs.update(_FAMILY_OPTIONS[family])

    config = _infer_wide_resnet_config(sd)
    sd = _fill_bn_counters(sd)
    return sd, {**config, **kwargs, **overrides}


# ----------------------------------------------------------------------------- loading


def _model_classes():
    """The fast model classes when importable, else the reference ones (same constructor/state_dict)."""
    try:
        from wrn_fast import WideResNet, WideResNetBottleneck
    except (ImportError, AttributeError):
        from .reference import WideResNet, WideResNetBottleneck
    return WideResNet, WideResNetBottleneck


def load_pretrained(path_or_state_dict, format: str = "auto", model: Optional[torch.nn.Module] = None,
                    strict: bool = True, *, dataset: Optional[str] = None, **model_kwargs) -> torch.nn.Module:
    """Load an ecosystem checkpoint into a wrn_fast model.

    Args:
        path_or_state_dict: a file (``torch.load(weights_only=True, map_location='cpu')``; a
            checkpoint written by wrn_fast is verified against its payload checksum, any other file
            must hold only finite tensors: see :func:`wrn_fast.checkpoint.load_checkpoint`) or an already loaded state_dict / checkpoint dict. For a checkpoint with an EMA copy
            (TorchSSL's / USB's ``ema_model``), pass ``ckpt['ema_model']`` to get it.
        format: see :func:`convert_state_dict`.
        model: load into this model instead of building one; model_kwargs must then be empty (the
            options a checkpoint cannot carry are then the model's; differences from the format's
            are warned about).
        strict: passed to ``load_state_dict``.
        dataset: DM checkpoints: 'cifar10' / 'cifar100' for RobustBench's default normalisation.
        **model_kwargs: override the inferred constructor arguments (e.g. activation='relu').

    Returns:
        the model (``wrn_fast.WideResNet`` or ``wrn_fast.WideResNetBottleneck`` when built here).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        checkpoint = load_checkpoint(os.fspath(path_or_state_dict), flag="path_or_state_dict")
    else:
        checkpoint = path_or_state_dict
    if model is None:
        state_dict, inferred = convert_state_dict(checkpoint, format, dataset=dataset, **model_kwargs)
        wide_resnet_cls, bottleneck_cls = _model_classes()
        cls = bottleneck_cls if "layers" in inferred else wide_resnet_cls
        model = cls(**inferred)
    else:
        if model_kwargs:
            raise ValueError(f"model_kwargs: expected none when a model is given, got {sorted(model_kwargs)}")
        fmt = _FORMAT_ALIASES.get(format, format)
        sd = _unwrap(checkpoint)
        if (detect_format(sd) if fmt == "auto" else fmt) == "dm":
            # What a DM checkpoint cannot carry (activation, normalisation) is the given model's.
            given = {"activation": getattr(model, "activation", None)}
            if "mean" not in sd:
                for name in ("input_mean", "input_std"):
                    value = getattr(model, name, None)
                    given[name] = None if value is None else value.flatten().tolist()
            state_dict, inferred = convert_state_dict(sd, "dm", dataset=dataset, **given)
            _warn_on_config_mismatch(model, dict(padding="tf_same"))
            if inferred.get("input_mean") is not None and getattr(model, "input_mean", None) is None:
                warnings.warn("load_pretrained: the checkpoint normalises its input in-model (mean/std), "
                              "the given model does not", stacklevel=2)
        else:
            state_dict, inferred = convert_state_dict(sd, format, dataset=dataset)
            if (detect_format(sd) if fmt == "auto" else fmt) in _UPSTREAM_FORMATS:
                inferred = _with_unstored_defaults(inferred)
            _warn_on_config_mismatch(model, inferred)
    model.load_state_dict(state_dict, strict=strict)
    return model


# Formats whose source code fixes everything a state_dict does not store: what the family does not
# set (xternalz: everything) is the reference constructor's default.
_UPSTREAM_FORMATS = ("xternalz", "fixmatch", "torchssl", "usb", "authors")
_UNSTORED_OPTIONS = ("activation", "padding", "bn_eps", "bn_momentum", "activate_before_residual", "shortcut")


def _with_unstored_defaults(inferred: Dict[str, Any]) -> Dict[str, Any]:
    """``inferred`` plus the defaults of the options a checkpoint of an upstream family cannot store
    (regression: an xternalz checkpoint loaded into a given LeakyReLU FixMatch model without a warning)."""
    from .reference import WideResNet

    with torch.device("meta"):
        default = WideResNet(10, 1)
    full = {**{name: getattr(default, name) for name in _UNSTORED_OPTIONS}, **inferred}
    full.setdefault("final_bn_eps", full["bn_eps"])
    return full


def _warn_on_config_mismatch(model: torch.nn.Module, inferred: Dict[str, Any]) -> None:
    """Options a state_dict cannot carry (activation, padding, ...) differing from the format's."""
    for name in ("activation", "padding", "bn_eps", "final_bn_eps", "bn_momentum", "activate_before_residual",
                 "shortcut"):
        if name in inferred and hasattr(model, name) and getattr(model, name) != inferred[name]:
            warnings.warn(
                f"load_pretrained: the checkpoint's format implies {name}={inferred[name]!r}, "
                f"the given model has {getattr(model, name)!r}", stacklevel=3
            )
