"""Per-tile partial statistics as a Triton conv epilogue emits them, for the op tests."""
import torch


def tile_partials(x, boundaries):
    """Per-tile (mean, M2, count) of x's channel-last rows, split at `boundaries` (float64 math)."""
    rows = x.movedim(1, -1).reshape(-1, x.shape[1]).double()
    means, m2s, counts = [], [], []
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        tile = rows[lo:hi]
        if hi > lo:
            m = tile.mean(0)
            means.append(m)
            m2s.append(((tile - m) ** 2).sum(0))
        else:  # an empty tile: garbage values that must be ignored
            means.append(torch.full((x.shape[1],), 1e30, dtype=torch.float64))
            m2s.append(torch.full((x.shape[1],), -5.0, dtype=torch.float64))
        counts.append(float(hi - lo))
    return torch.stack(means), torch.stack(m2s), torch.tensor(counts, dtype=torch.float64)
