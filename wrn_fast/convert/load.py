"""The entry points: convert_state_dict (rename + configuration) and load_pretrained (into a model)."""
from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..checkpoint import load_checkpoint
from .config import _dm_normalization, _infer_bottleneck_config, _infer_wide_resnet_config
from .detect import _check_family, _unwrap, _warn_if_foreign, detect_format
from .formats import _FAMILY_OPTIONS, _FORMAT_ALIASES, _UNSTORED_OPTIONS, _UPSTREAM_FORMATS, FORMATS
from .rename import _AUTHORS_RULES, _drop, _fill_bn_counters, _groups_to_blocks, _rename, dm_key_to_reference


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
        from ..reference import WideResNet, WideResNetBottleneck
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




def _with_unstored_defaults(inferred: Dict[str, Any]) -> Dict[str, Any]:
    """``inferred`` plus the defaults of the options a checkpoint of an upstream family cannot store
    (regression: an xternalz checkpoint loaded into a given LeakyReLU FixMatch model without a warning)."""
    from ..reference import WideResNet

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
