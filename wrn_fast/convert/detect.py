"""Reading a checkpoint: the tensors inside its wrappers, and which format they are in (from the keys,
and where the keys are shared, from what training leaves in the BatchNorm parameters)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Optional, Tuple

import torch

from .formats import _DEAD_BN1, _FAMILY_NAMES, _LAYOUTS, _OPTIONS_KEYS_CANNOT_CARRY, FORMATS, _announce, \
    _public_format, log

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

