"""SGD and its learning-rate schedule (stepped per iteration, so a mid-epoch resume continues it exactly)."""
import math
from typing import Callable, Tuple

import torch
import torch.nn as nn

from .config import TrainConfig


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The LambdaLR factor of optimizer step ``step`` (cosine per step to 0, or x gamma at milestones)."""
    total = config.epochs * steps_per_epoch
    milestones = list(config.milestones)

    def factor(step: int) -> float:
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        epoch = step // steps_per_epoch
        return config.gamma ** sum(1 for m in milestones if epoch >= m)

    return factor


def make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int
                   ) -> Tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """The run's SGD optimizer over ``model``'s parameters and its per-step schedule."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))


def describe_schedule(config: TrainConfig) -> str:
    """'cosine', 'x0.2 at epochs 60,120,160' or 'constant lr'."""
    if config.schedule == "cosine":
        return "cosine"
    if config.milestones:
        return f"x{config.gamma} at epochs {','.join(map(str, config.milestones))}"
    return "constant lr"
