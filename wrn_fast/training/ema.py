"""Exponential moving average of a model's weights, with the usual warm-up."""
import copy

import torch
import torch.nn as nn


def ema_decay(decay: float, updates: int, warmup: bool = True) -> float:
    """The decay used for update number ``updates`` (0-based).

    With warm-up: ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's
    ExponentialMovingAverage num_updates rule, used by the FixMatch code
    bases), so the average follows the weights closely at first instead of
    staying near the random initial weights for ~1/(1 - decay) steps.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates)) if warmup else decay


class ModelEMA:
    """ema = d_t * ema + (1 - d_t) * w after each optimizer step, d_t from :func:`ema_decay`.

    Floating-point buffers (BN running stats) are copied, not averaged, as in
    the FixMatch / timm implementations. The update count is the run's step
    counter (passed in), so a resumed run continues the same decay sequence.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Fold in ``model``'s weights; ``updates``: how many updates came before this one."""
        d = ema_decay(self.decay, updates, self.warmup)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
