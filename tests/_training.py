"""Shared by the training tests: the tiny run they all use and how two runs' results are compared.

WRN-10-1 on the bundled digits at 8x8: 11 steps per epoch at batch 128, a few
seconds per 2-epoch run on 2 CPU cores.
"""
import json

import torch

from wrn_fast.training import TrainConfig

STEPS_PER_EPOCH = 11

# Values that legitimately differ between two runs of the same training (wall-clock).
TIMING_KEYS = ("images_per_s", "epoch_time_s", "time_s")


def tiny_config(out, **overrides) -> TrainConfig:
    values = dict(model="wrn-10-1", dataset="digits", image_size=8, epochs=2, batch_size=128, lr=0.05,
                  schedule="cosine", dropout=0.3, ema=0.9, seed=1, device="cpu", progress=False,
                  out=None if out is None else str(out))
    values.update(overrides)
    return TrainConfig(**values)


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def assert_same_state(a, b):
    """Bit-identical training state: weights, EMA, momentum buffers, position and schedule."""
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    mom_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(mom_a) == len(mom_b) and all(torch.equal(x, y) for x, y in zip(mom_a, mom_b))
    assert (a["epoch"], a["step"], a["scheduler"]["last_epoch"]) == (b["epoch"], b["step"], b["scheduler"]["last_epoch"])
