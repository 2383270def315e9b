"""Data-parallel context (torchrun's env:// variables), device choice, and sync-BN setup."""
import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn

from ..data import InputError


@dataclass
class Dist:
    """This process's place in a data-parallel run (world 1: a plain single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def parse_device(device_arg: Optional[str], flag: str = "--device") -> Optional[torch.device]:
    """``device_arg`` as a torch.device, or a clear error; None stays None (the caller's default)."""
    if device_arg is None:
        return None
    try:
        device = torch.device(device_arg)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InputError(f"{flag}: expected 'cpu', 'cuda' or 'cuda:N', got {device_arg!r}") from e
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"{flag}: expected 'cpu', 'cuda' or 'cuda:N', got {device_arg!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag}: {device_arg!r} requested but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{flag}: {device_arg!r} requested but torch sees {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    return device


def init_distributed(device_arg: Optional[str]) -> Tuple[Dist, torch.device]:
    """The process group from torchrun's environment (or one the caller set up), and this rank's device."""
    import torch.distributed as dist

    device = parse_device(device_arg)  # before joining a process group: a bad flag fails fast on every rank
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = Dist()
    if dist.is_available() and dist.is_initialized():
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", ctx.rank))
    elif world_env > 1:
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        if use_cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
        ctx.rank, ctx.world, ctx.initialized_here = dist.get_rank(), dist.get_world_size(), True
    if device is None:
        device = torch.device(f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu")
    elif device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{ctx.local_rank if ctx.active else torch.cuda.current_device()}")
    return ctx, device


def apply_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm statistics across ranks.

    Hook: a model with a ``sync_bn`` attribute (wrn_fast.WideResNet: one fused
    statistics exchange per BN) is switched to it -- a bool is set to True, a
    method is called (and may return the model to use). Otherwise, and when
    the model's forward would run the reference ops (which ignore the flag),
    torch.nn.SyncBatchNorm is used; that one needs CUDA tensors.
    """
    from ..backend import resolve

    hook = getattr(model, "sync_bn", None)
    fused_forward = resolve(device) != "reference"
    if hook is not None and fused_forward:
        if callable(hook):
            result = hook()
            return result if isinstance(result, nn.Module) else model
        model.sync_bn = True
        return model
    if device.type != "cuda":
        raise InputError(
            "--sync-bn: on CPU this needs the wrn_fast model's fused BatchNorm (the compiled extension, "
            "backend != 'reference'); torch.nn.SyncBatchNorm only runs on GPUs. "
            f"Backend for {device} here: {resolve(device)!r}"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
