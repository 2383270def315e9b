"""A rank's share of each training batch, a pure function of (seed, epoch, batch).

Every rank draws the same permutation of the training set (seeded from (seed, epoch)) and the same
crops and flips (seeded from (seed, epoch, batch)) for the GLOBAL batch, and keeps its contiguous
1/N slice: N ranks see exactly the images one process would, and a run resumed mid-epoch sees the
batches a run that never stopped would have seen.
"""
from typing import Tuple

import torch

from ..data import DatasetInfo, Split, apply_augmentation, draw_augmentation, normalize_batch
from .rng import generator


class TrainBatches:
    """The training split on ``device`` and its batches for rank ``rank`` of ``world``.

    A batch is ``(x, y)``: x ``[batch_size / world, C, H, W]`` augmented, normalised images
    (channels_last when asked), y ``[batch_size / world]`` int64 labels.
    """

    def __init__(self, split: Split, info: DatasetInfo, seed: int, batch_size: int, rank: int, world: int,
                 device: torch.device, channels_last: bool):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.size = len(split)
        self.info, self.seed, self.batch_size, self.device = info, seed, batch_size, device
        self.channels_last = channels_last
        local_batch = batch_size // world
        self.shard = slice(rank * local_batch, (rank + 1) * local_batch)
        self.mean = torch.tensor(info.mean, device=device)
        self.std = torch.tensor(info.std, device=device)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the training images (the same on every rank)."""
        return torch.randperm(self.size, generator=generator(self.seed, epoch)).to(self.device)

    def batch(self, perm: torch.Tensor, epoch: int, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Batch ``b`` of the epoch's permutation ``perm``: this rank's images and labels."""
        info = self.info
        idx = perm[b * self.batch_size:(b + 1) * self.batch_size][self.shard]
        x = self.images[idx]
        if info.crop_padding or info.flip:
            # drawn for the whole global batch so the augmentation is independent of world size
            dy, dx, flips = draw_augmentation(self.batch_size, generator(self.seed, epoch, b + 1),
                                              info.crop_padding, info.flip)
            x = apply_augmentation(x, dy[self.shard], dx[self.shard], flips[self.shard], info.crop_padding)
        return normalize_batch(x, self.mean, self.std, self.channels_last), self.labels[idx]
