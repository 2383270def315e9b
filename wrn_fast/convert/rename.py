"""Renaming the keys of the formats whose module names differ from the reference's ('authors', 'dm')."""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Optional

import torch

from .formats import _announce

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

