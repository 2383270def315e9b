"""The model configuration a checkpoint implies: what its tensor shapes say, and DM's normalisation."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

from .formats import DATASET_NORMALIZATION, _announce, log

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

