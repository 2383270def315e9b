"""Sync-BN's statistics exchange as an op: ``wrn_fast::all_gather_stats``.

    g_mean, g_var = all_gather_stats(mean, var, count)

merges every rank's per-channel (count, mean, biased var) into the statistics of the
global batch (Chan's merge), with one ``all_gather`` in forward and one
``all_reduce`` in backward (every rank's loss depends on every rank's statistics).
Its gradient flows to the local mean / var, whose own backward (channel_stats or the
Triton partials, csrc/bn_composite.h) carries it on to x.

Only the default (WORLD) process group is supported; every rank must pass the same
``count`` (equal per-rank batches, as DistributedSampler gives).
"""
from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_stats", "world_size"]


def world_size() -> int:
    """Ranks of the default process group; 1 when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


@torch.library.custom_op("wrn_fast::all_gather_stats", mutates_args=())
def _all_gather_stats(mean: Tensor, var: Tensor, count: int) -> Tuple[Tensor, Tensor, Tensor]:
    world = dist.get_world_size()
    local = torch.stack([torch.full_like(mean, float(count)), mean, var]).contiguous()
    gathered = local.new_empty((world * 3, local.shape[1]))
    # all_gather_single (torch >= 2.14) is the new name of all_gather_into_tensor
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(gathered, local)
    gathered = gathered.view(world, 3, -1)
    n, m, v = gathered[:, 0], gathered[:, 1], gathered[:, 2]
    total = n.sum(0)
    g_mean = (n * m).sum(0) / total
    g_var = (n * (v + (m - g_mean) ** 2)).sum(0) / total
    return g_mean, g_var, total


@_all_gather_stats.register_fake
def _(mean, var, count):
    return torch.empty_like(mean), torch.empty_like(var), torch.empty_like(mean)


def _setup(ctx, inputs, output):
    mean, var, count = inputs
    ctx.count = count
    ctx.save_for_backward(mean, output[0], output[2])


def _backward(ctx, grad_mean, grad_var, _grad_total):
    mean, g_mean, total = ctx.saved_tensors
    grads = torch.stack([grad_mean.to(g_mean.dtype), grad_var.to(g_mean.dtype)]).contiguous()
    dist.all_reduce(grads)  # every rank's loss depends on every rank's statistics
    gm, gv = grads[0], grads[1]
    w = ctx.count / total  # this rank's share of the global count
    # g_mean = sum_r w_r m_r;  g_var = sum_r w_r (v_r + (m_r - g_mean)^2)
    return w * gm + w * 2.0 * (mean - g_mean) * gv, w * gv, None


_all_gather_stats.register_autograd(_backward, setup_context=_setup)


def all_gather_stats(mean: Tensor, var: Tensor, count: int) -> Tuple[Tensor, Tensor, int]:
    """(mean, var, count) of the global batch from this rank's [C] mean / biased var over
    ``count`` values per channel; the local ones unchanged on a single process."""
    world = world_size()
    if world == 1:
        return mean, var, count
    g_mean, g_var, _ = _all_gather_stats(mean, var, int(count))
    return g_mean, g_var, count * world
