"""Checkpoints from the WRN ecosystem -> wrn_fast models.

Formats (``format=``):

    'xternalz'     xternalz/WideResNet-pytorch, RobustBench ``WideResNet``, TRADES (native names;
                   TRADES' unused ``sub_block1.*`` is dropped with a warning). Aliases: 'robustbench', 'trades'.
    'authors'      szagoruyko/wide-residual-networks functional PyTorch code: a flat dict
                   ``conv0``, ``group0.block0.{conv0,conv1,bn0.*,bn1.*,convdim}``, ``bn.*``, ``fc.*``.
    'dm'           RobustBench ``DMWideResNet`` (DeepMind): ``init_conv``, ``layer.i.block.j.{batchnorm_0,
                   conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``, ``logits``, ``mean``/``std``.
                   Implies padding='tf_same', input_mean/input_std from the checkpoint, and
                   activation='silu' (Swish, what RobustBench's DM checkpoints use; pass
                   activation='relu' for the ReLU ones). BatchNorm: PyTorch defaults (0.1, 1e-5).
    'torchssl'     TorchSSL WRN: LeakyReLU(0.1), BN momentum 0.001 eps 0.001, conv biases,
                   activate_before_residual=(True, False, False).
    'usb'          USB (microsoft/Semi-supervised-learning): as 'torchssl' but every block is
                   pre-activated (its blocks ignore activate_before_residual).
    'fixmatch'     kekmodel/FixMatch-pytorch: LeakyReLU(0.1), BN momentum 0.001 eps 1e-5, no conv
                   biases, activate_before_residual=(True, False, False). Alias: 'kekmodel'.
    'torchvision'  torchvision ``wide_resnet50_2`` / ``wide_resnet101_2`` (-> WideResNetBottleneck).
    'auto'         detected from the key names. The three SSL formats share key names; 'auto' picks
                   'torchssl' when the convs have biases (USB checkpoints need format='usb') and
                   cannot tell a kekmodel checkpoint from an xternalz one (pass format='fixmatch').
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

__all__ = ["FORMATS", "convert_state_dict", "load_pretrained", "detect_format"]

log = logging.getLogger(__name__)

FORMATS = ("auto", "xternalz", "authors", "dm", "torchssl", "usb", "fixmatch", "torchvision")
_FORMAT_ALIASES = {"robustbench": "xternalz", "trades": "xternalz", "kekmodel": "fixmatch"}

# Options each SSL codebase fixes in its source rather than in its checkpoint.
_SSL_OPTIONS = {
    "torchssl": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-3,
                     activate_before_residual=(True, False, False)),
    "usb": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-3,
                activate_before_residual=None),
    "fixmatch": dict(activation="leaky_relu", negative_slope=0.1, bn_momentum=0.001, bn_eps=1e-5,
                     activate_before_residual=(True, False, False)),
}

# Checkpoint wrappers seen in the wild, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "params", "net")


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(checkpoint: Mapping[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """The tensor dict inside a checkpoint: the dict itself, or ``ckpt['state_dict'|'model'|...]``.

    szagoruyko's older checkpoints keep BN statistics apart in ``ckpt['stats']``: merged in."""
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
    # DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') prefixes.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = OrderedDict((k[len(prefix):], v) for k, v in tensors.items())
    return tensors


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The format of an (unwrapped, unprefixed) state_dict, from its key names."""
    keys = set(state_dict)
    if "layer1.0.conv1.weight" in keys and "layer1.0.conv3.weight" in keys:
        return "torchvision"
    if "init_conv.weight" in keys or any(k.startswith("layer.0.block.0.") for k in keys):
        return "dm"
    if "conv0" in keys or "conv0.weight" in keys or any(k.startswith("group0.block0.") for k in keys):
        return "authors"
    if "conv1.weight" in keys and any(k.startswith("block1.layer.0.") for k in keys):
        if "conv1.bias" in keys or "classifier.weight" in keys:
            return "torchssl"
        return "xternalz"
    raise ValueError(
        "state_dict: unknown layout, expected keys of one of the formats "
        f"{FORMATS[1:]}; some of its keys: {sorted(keys)[:6]}"
    )


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

_DM_RULES = [
    (r"init_conv\.(weight|bias)", r"conv1.\1"),
    (r"batchnorm\.(\w+)", r"bn1.\1"),
    (r"logits\.(weight|bias)", r"fc.\1"),
    (r"layer\.(\d+)\.block\.(\d+)\.batchnorm_0\.(\w+)", r"group\1.layer.\2.bn1.\3"),
    (r"layer\.(\d+)\.block\.(\d+)\.conv_0\.(weight|bias)", r"group\1.layer.\2.conv1.\3"),
    (r"layer\.(\d+)\.block\.(\d+)\.batchnorm_1\.(\w+)", r"group\1.layer.\2.bn2.\3"),
    (r"layer\.(\d+)\.block\.(\d+)\.conv_1\.(weight|bias)", r"group\1.layer.\2.conv2.\3"),
    (r"layer\.(\d+)\.block\.(\d+)\.shortcut\.(weight|bias)", r"group\1.layer.\2.convShortcut.\3"),
]


def _groups_to_blocks(state_dict):
    """'group{g}.' (0-based) -> 'block{g+1}.' (xternalz's 1-based group modules)."""
    return OrderedDict((re.sub(r"^group(\d+)", _group_plus_one, k), v) for k, v in state_dict.items())


def _drop(state_dict, prefix: str, why: str):
    dropped = [k for k in state_dict if k.startswith(prefix)]
    if dropped:
        message = f"load_pretrained: ignoring {len(dropped)} '{prefix}*' tensors ({why})"
        log.info(message)
        warnings.warn(message, stacklevel=3)
    return OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(prefix))


def _fill_bn_counters_and_fc_bias(state_dict, num_classes: int):
    """num_batches_tracked for BNs that lack it (authors' dicts); a zero fc bias when the head had none."""
    for key in [k for k in state_dict if k.endswith(".running_mean")]:
        state_dict.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    if "fc.bias" not in state_dict:
        w = state_dict["fc.weight"]
        state_dict["fc.bias"] = torch.zeros(num_classes, dtype=w.dtype)
    return state_dict


# ----------------------------------------------------------------------------- configuration


def _infer_wide_resnet_config(state_dict) -> Dict[str, Any]:
    """depth, widen_factor, num_classes, block, in_channels, conv_bias of reference-named weights."""
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
    return dict(
        depth=3 * n * len(kernel_sizes) + 4,
        widen_factor=width // 16,
        num_classes=int(state_dict["fc.weight"].shape[0]),
        in_channels=int(stem.shape[1]),
        conv_bias="conv1.bias" in state_dict,
        block=tuple(kernel_sizes),
    )


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


def convert_state_dict(state_dict: Mapping[str, Any], format: str = "auto",
                       **overrides) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, Any]]:
    """Rename a checkpoint's tensors to the reference names and infer the model configuration.

    Args:
        state_dict: a state_dict, or a checkpoint dict wrapping one (``{'state_dict': ...}``,
            ``{'model': ...}``, ``{'params': ...}``); 'module.' prefixes are stripped.
        format: one of FORMATS (see the module doc) or an alias.
        **overrides: replace inferred constructor arguments (e.g. activation='relu' for a DM
            checkpoint trained with ReLU).

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
    if fmt == "auto":
        fmt = detect_format(sd)
        if fmt == "torchssl":
            warnings.warn(
                "convert_state_dict: conv biases found, assuming a TorchSSL checkpoint "
                "(activate_before_residual); pass format='usb' for a USB one", stacklevel=2
            )

    if fmt == "torchvision":
        if "layer1.0.conv3.weight" not in sd:
            raise ValueError(f"state_dict: not a torchvision bottleneck ResNet; some of its keys: {sorted(sd)[:6]}")
        return sd, {**_infer_bottleneck_config(sd), **overrides}

    kwargs: Dict[str, Any] = {}
    if fmt == "xternalz":
        sd = _drop(sd, "sub_block1.", "TRADES builds an unused sub_block1")
    elif fmt == "authors":
        sd = _groups_to_blocks(_rename(sd, _AUTHORS_RULES, fmt))
    elif fmt == "dm":
        if "mean" in sd:
            kwargs["input_mean"] = sd.pop("mean").flatten().tolist()
        if "std" in sd:
            kwargs["input_std"] = sd.pop("std").flatten().tolist()
        sd = _groups_to_blocks(_rename(sd, _DM_RULES, fmt))
        kwargs.update(activation="silu", padding="tf_same")
    else:  # torchssl, usb, fixmatch
        sd = _drop(sd, "rot_classifier.", "ReMixMatch's rotation head")
        sd = OrderedDict((re.sub(r"^classifier\.", "fc.", k), v) for k, v in sd.items())
        kwargs.update(_SSL_OPTIONS[fmt])

    config = _infer_wide_resnet_config(sd)
    sd = _fill_bn_counters_and_fc_bias(sd, config["num_classes"])
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
                    strict: bool = True, **model_kwargs) -> torch.nn.Module:
    """Load an ecosystem checkpoint into a wrn_fast model.

    Args:
        path_or_state_dict: a file (loaded with ``torch.load(weights_only=True, map_location='cpu')``)
            or an already loaded state_dict / checkpoint dict. For a checkpoint with an EMA copy
            (TorchSSL's ``ema_model``), pass ``ckpt['ema_model']`` to get it.
        format: see :func:`convert_state_dict`.
        model: load into this model instead of building one; model_kwargs must then be empty.
        strict: passed to ``load_state_dict``.
        **model_kwargs: override the inferred constructor arguments (e.g. activation='relu').

    Returns:
        the model (``wrn_fast.WideResNet`` or ``wrn_fast.WideResNetBottleneck`` when built here).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        checkpoint = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        checkpoint = path_or_state_dict
    state_dict, inferred = convert_state_dict(checkpoint, format)
    if model is None:
        wide_resnet_cls, bottleneck_cls = _model_classes()
        cls = bottleneck_cls if "layers" in inferred else wide_resnet_cls
        model = cls(**{**inferred, **model_kwargs})
    else:
        if model_kwargs:
            raise ValueError(f"model_kwargs: expected none when a model is given, got {sorted(model_kwargs)}")
        _warn_on_config_mismatch(model, inferred)
    model.load_state_dict(state_dict, strict=strict)
    return model


def _warn_on_config_mismatch(model: torch.nn.Module, inferred: Dict[str, Any]) -> None:
    """Options a state_dict cannot carry (activation, padding, ...) differing from the format's."""
    for name in ("activation", "padding", "bn_eps", "activate_before_residual", "shortcut"):
        if name in inferred and hasattr(model, name) and getattr(model, name) != inferred[name]:
            warnings.warn(
                f"load_pretrained: the checkpoint's format implies {name}={inferred[name]!r}, "
                f"the given model has {getattr(model, name)!r}", stacklevel=3
            )
    if "input_mean" in inferred and getattr(model, "input_mean", None) is None:
        warnings.warn("load_pretrained: the checkpoint normalises its input in-model (input_mean/input_std), "
                      "the given model does not", stacklevel=3)
