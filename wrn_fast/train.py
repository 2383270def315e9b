"""Training and evaluation loops, checkpoints, and data-parallel training.

Determinism and exact resume
  Every source of randomness is a pure function of (seed, epoch, batch) or
  (seed, step, rank), never of how long the process has been running:
    - the epoch's permutation:       torch.Generator seeded from (seed, epoch)
    - a batch's crops and flips:     torch.Generator seeded from (seed, epoch, batch)
    - dropout (torch's global RNG):  reseeded from (seed, step, rank) before each step
  so a run resumed from any checkpoint -- end of epoch, mid-epoch after
  Ctrl-C or --max-steps -- replays the same data order, augmentation and dropout
  masks as a run that never stopped. The optimizer, scheduler (stepped per
  iteration), GradScaler, EMA, the epoch's running sums and the RNG states are
  all in the checkpoint.

Data parallel (torchrun)
  ``torchrun --nproc-per-node N -m wrn_fast train ...`` initialises
  torch.distributed from the environment (env://; NCCL on CUDA, gloo on CPU).
  Every rank draws the same permutation and the same augmentation for the
  GLOBAL batch and keeps its contiguous 1/N slice, so N ranks with DDP compute
  the gradient of the same global batch as one process would (exactly so for
  BatchNorm only with --sync-bn). Rank 0 logs and writes checkpoints; the
  others wait at a barrier.

Checkpoints are written atomically (temporary file in the same directory,
fsync, os.replace): a crash mid-write leaves the previous checkpoint intact.
"""
import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import InputError, Split, apply_augmentation, draw_augmentation, load_dataset, normalize_batch

__all__ = [
    "TrainConfig",
    "recipe",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write",
    "build_model",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "wrn_fast.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"

# The WRN paper's recipes (Zagoruyko & Komodakis 2016, section 4), and a small
# one for the bundled digits that trains in about a minute on 2 CPU cores.
_RECIPES: Dict[str, Dict[str, Any]] = {
    "cifar10": dict(model="wrn-28-10", epochs=200, lr=0.1, batch_size=128, weight_decay=5e-4, momentum=0.9,
                    nesterov=True, schedule="step", milestones=[60, 120, 160], gamma=0.2, dropout=0.3),
    "svhn": dict(model="wrn-16-8", epochs=160, lr=0.01, batch_size=128, weight_decay=5e-4, momentum=0.9,
                 nesterov=True, schedule="step", milestones=[80, 120], gamma=0.1, dropout=0.4),
    "digits": dict(model="wrn-16-2", epochs=25, lr=0.1, batch_size=64, weight_decay=5e-4, momentum=0.9,
                   nesterov=True, schedule="cosine", milestones=[], gamma=0.1, dropout=0.0),
}
_RECIPES["cifar100"] = dict(_RECIPES["cifar10"])
_RECIPES["imagefolder"] = dict(_RECIPES["cifar10"], model="wrn-16-8")


def recipe(dataset: str) -> Dict[str, Any]:
    """The default hyper-parameters for a dataset (a copy)."""
    if dataset not in _RECIPES:
        raise InputError(f"--dataset: unknown dataset {dataset!r}; expected one of {', '.join(_RECIPES)}")
    return copy.deepcopy(_RECIPES[dataset])


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint."""

    model: str = "wrn-16-2"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    epochs: int = 25
    lr: float = 0.1
    batch_size: int = 64  # global batch (all ranks together)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"  # 'step' (milestones, gamma) or 'cosine' (per step, to 0)
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1
    dropout: float = 0.0
    label_smoothing: float = 0.0
    ema: Optional[float] = None  # EMA decay of the weights, e.g. 0.999; None: no EMA
    amp: str = "auto"  # 'bf16', 'fp16', 'none', 'auto' (bf16 on CUDA, none on CPU)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    device: Optional[str] = None  # default: cuda (this rank's) when available, else cpu
    out: Optional[str] = None
    workers: int = 2
    max_steps: Optional[int] = None  # stop after this many optimizer steps in total (quick runs)
    eval_batch_size: int = 512
    progress: bool = True

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "TrainConfig":
        """The dataset's recipe with ``overrides`` (None values are ignored)."""
        values = recipe(dataset)
        values["dataset"] = dataset
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        def positive(name, value, kind=int):
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive {kind.__name__}, got {value!r}")

        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        positive("eval_batch_size", self.eval_batch_size)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"--lr: expected a positive number, got {self.lr!r}")
        if self.weight_decay < 0:
            raise InputError(f"--wd: expected >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"--momentum: expected a value in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise InputError("--nesterov: Nesterov momentum needs --momentum > 0 (got 0); add --no-nesterov")
        if self.schedule not in ("step", "cosine"):
            raise InputError(f"--schedule: expected 'step' or 'cosine', got {self.schedule!r}")
        if any(not isinstance(m, int) or m <= 0 for m in self.milestones) or list(self.milestones) != sorted(
                set(self.milestones)):
            raise InputError(f"--milestones: expected increasing positive epochs, got {self.milestones}")
        if not 0 < self.gamma <= 1:
            raise InputError(f"--gamma: expected a factor in (0, 1], got {self.gamma}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"--dropout: expected a rate in [0, 1), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"--label-smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise InputError(f"--ema: expected a decay in (0, 1) such as 0.999, got {self.ema}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise InputError(f"--amp: expected bf16, fp16, none or auto, got {self.amp!r}")
        if self.max_steps is not None:
            positive("max_steps", self.max_steps)
        if self.workers < 0:
            raise InputError(f"--workers: expected >= 0, got {self.workers}")


# --------------------------------------------------------------------------- small utilities
def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def atomic_write(path: str, write) -> None:
    """Write a file so that it is either the old version or the complete new one.

    ``write(f)`` fills a temporary file in the same directory (same file
    system, so os.replace is atomic); it is flushed and fsynced before it
    replaces ``path``. On any error the temporary file is removed and ``path``
    is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state as plain types so checkpoints load with weights_only=True
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *(np_state[2:])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(obj):
    # random.setstate needs tuples; a round trip through some loaders yields lists.
    return tuple(_as_tuples(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# --------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
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

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor


def _init_distributed(device_arg: Optional[str]) -> Tuple[_Dist, torch.device]:
    """The process group from torchrun's environment (or one the caller set up), and this rank's device."""
    import torch.distributed as dist

    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = _Dist()
    if dist.is_available() and dist.is_initialized():
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", ctx.rank))
    elif world_env > 1:
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
        ctx.rank, ctx.world, ctx.initialized_here = dist.get_rank(), dist.get_world_size(), True
    if device_arg is None:
        device = torch.device(f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(device_arg)
        except RuntimeError as e:
            raise InputError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got {device_arg!r}") from e
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"--device: {device_arg!r} requested but torch sees no CUDA device")
            if device.index is None:
                device = torch.device(f"cuda:{ctx.local_rank if ctx.active else torch.cuda.current_device()}")
    return ctx, device


# --------------------------------------------------------------------------- model
_WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def build_model(model_name: str, num_classes: int, in_channels: int, dropout: float = 0.0,
                **extra_kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    """``wrn_fast.create_model`` with a clear error for unknown names; returns (model, constructor kwargs)."""
    import wrn_fast

    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_channels=in_channels, **extra_kwargs)
    if _WRN_NAME.fullmatch(model_name.lower().replace("_", "-")):
        kwargs["dropout_rate"] = dropout
    elif dropout:
        raise InputError(f"--dropout: {model_name} has no dropout (only 'wrn-DEPTH-WIDTH' models do), "
                         f"got --dropout {dropout}")
    try:
        model = wrn_fast.create_model(model_name, **kwargs)
    except (ValueError, TypeError) as e:
        raise InputError(f"--model {model_name!r}: {e}") from e
    return model, kwargs


def _arch_kwargs_from_name(model_name: str) -> Dict[str, Any]:
    m = _WRN_NAME.fullmatch(model_name.lower().replace("_", "-"))
    return dict(depth=int(m.group(1)), widen_factor=int(m.group(2))) if m else {}


def check_architecture(source: str, model_kwargs: Dict[str, Any], model_name: Optional[str],
                       num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                       dataset: Optional[str] = None) -> None:
    """Clear errors when a checkpoint's architecture differs from --model or the dataset."""
    if model_name is not None:
        want = _arch_kwargs_from_name(model_name)
        if want and "depth" in model_kwargs:
            have = (model_kwargs.get("depth"), model_kwargs.get("widen_factor"))
            if have != (want["depth"], want["widen_factor"]):
                raise InputError(f"{source}: checkpoint has depth {have[0]}, width {have[1]} but --model {model_name}")
        elif want and "layers" in model_kwargs:
            raise InputError(f"{source}: checkpoint is an ImageNet bottleneck WRN (layers {model_kwargs['layers']}) "
                             f"but --model {model_name}")
        elif not want and "depth" in model_kwargs:
            raise InputError(f"{source}: checkpoint has depth {model_kwargs['depth']}, width "
                             f"{model_kwargs.get('widen_factor')} (a CIFAR-style WRN) but --model {model_name}")
    if num_classes is not None and model_kwargs.get("num_classes", num_classes) != num_classes:
        raise InputError(f"{source}: checkpoint has {model_kwargs['num_classes']} classes but --dataset {dataset} "
                         f"has {num_classes}")
    if in_channels is not None and model_kwargs.get("in_channels", in_channels) != in_channels:
        raise InputError(f"{source}: checkpoint expects {model_kwargs['in_channels']} input channels but "
                         f"--dataset {dataset} has {in_channels}")


def _apply_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm statistics across ranks.

    Hook: a model with a ``sync_bn`` attribute (wrn_fast.WideResNet: one fused
    statistics exchange per BN) is switched to it -- a bool is set to True, a
    method is called (and may return the model to use). Otherwise, and when
    the model's forward would run the reference ops (which ignore the flag),
    torch.nn.SyncBatchNorm is used; that one needs CUDA tensors.
    """
    from .backend import resolve

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


class ModelEMA:
    """Exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * w per step.

    Floating-point buffers (BN running stats) are copied, not averaged, as in
    the FixMatch / timm implementations.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)


def _lr_factor(config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    milestones = list(config.milestones)

    def factor(step: int) -> float:
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        epoch = step // steps_per_epoch
        return config.gamma ** sum(1 for m in milestones if epoch >= m)

    return factor


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """torch.save ``state`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """A file written by torch.save: our training checkpoint or a raw state_dict (weights only)."""
    if not os.path.isfile(path):
        where = os.path.dirname(os.path.abspath(path))
        raise InputError(f"--checkpoint/--resume: no file {path!r} (directory {where!r} "
                         f"{'holds: ' + ', '.join(sorted(os.listdir(where))[:12]) if os.path.isdir(where) else 'does not exist'})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: could not be loaded as a PyTorch checkpoint ({type(e).__name__}: {e})") from e


def _is_train_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 512,
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
             dist_ctx: Optional[_Dist] = None) -> Tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``split`` (already on the model's device).

    With several ranks each evaluates every world-th image and the sums are
    all-reduced, so the result covers the whole split exactly once.
    """
    dist_ctx = dist_ctx or _Dist()
    was_training = model.training
    model.eval()
    # Eval uses running statistics: no cross-rank exchange wanted (and ranks may run different batch counts).
    sync_flag = getattr(model, "sync_bn", None)
    if isinstance(sync_flag, bool):
        model.sync_bn = False
    device = split.images.device
    indices = torch.arange(dist_ctx.rank, len(split), dist_ctx.world, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            x = normalize_batch(split.images[idx], mean, std, channels_last)
            y = split.labels[idx]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
    finally:
        model.train(was_training)
        if isinstance(sync_flag, bool):
            model.sync_bn = sync_flag
    dist_ctx.all_reduce_(sums)
    loss_sum, correct, count = sums.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def _model_from_checkpoint(obj: Dict[str, Any], source: str, model_name: Optional[str], num_classes: int,
                           in_channels: int, dataset: str, format: str, use_ema: bool) -> Tuple[nn.Module, str]:
    """The model stored in a training checkpoint or a raw state_dict in a converter format."""
    import wrn_fast

    if _is_train_checkpoint(obj):
        kwargs = dict(obj["model_kwargs"])
        check_architecture(source, {**_arch_kwargs_from_name(obj["model_name"]), **kwargs}, model_name,
                           num_classes, in_channels, dataset)
        model = wrn_fast.create_model(obj["model_name"], **kwargs)
        weights = obj["ema"] if use_ema else obj["model"]
        if use_ema and weights is None:
            raise InputError(f"{source}: --ema-weights given but the checkpoint has no EMA (train with --ema DECAY)")
        model.load_state_dict(weights)
        return model, obj["model_name"]
    try:
        state_dict, kwargs = wrn_fast.convert_state_dict(obj, format)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{source}: not a wrn_fast training checkpoint and not a state_dict in a known format "
                         f"({e})") from e
    check_architecture(source, kwargs, model_name, num_classes, in_channels, dataset)
    if use_ema:
        raise InputError(f"{source}: --ema-weights needs a wrn_fast training checkpoint; this is a plain state_dict")
    model = wrn_fast.load_pretrained(obj, format=format)
    name = (f"wrn-{kwargs['depth']}-{kwargs['widen_factor']}" if "depth" in kwargs else type(model).__name__)
    return model, name


def evaluate_checkpoint(path: str, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                        model_name: Optional[str] = None, device: Optional[str] = None, format: str = "auto",
                        batch_size: int = 512, image_size: Optional[int] = None, amp: str = "auto",
                        use_ema: bool = False, workers: int = 2) -> Dict[str, Any]:
    """Test loss and accuracy of a checkpoint (ours or a converter-format state_dict)."""
    obj = load_checkpoint(path)
    if _is_train_checkpoint(obj):
        cfg = obj["config"]
        if dataset is None:
            dataset = cfg["dataset"]
            data_dir = data_dir if data_dir is not None else cfg.get("data_dir")
            image_size = image_size if image_size is not None else cfg.get("image_size")
    elif dataset is None:
        raise InputError(f"--dataset: {path} is a plain state_dict, which does not say what it was trained on; "
                         "pass --dataset (and --data-dir)")
    _, test, info = load_dataset(dataset, data_dir, image_size, workers)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, name = _model_from_checkpoint(obj, path, model_name, info.num_classes, info.in_channels, dataset,
                                         format, use_ema)
    model.to(dev)
    test = Split(test.images.to(dev), test.labels.to(dev))
    mean = torch.tensor(info.mean, device=dev)
    std = torch.tensor(info.std, device=dev)
    amp_dtype = _amp_dtype(amp, dev)
    t0 = time.perf_counter()
    loss, acc = evaluate(model, test, mean, std, batch_size, amp_dtype)
    result = dict(checkpoint=path, model=name, dataset=dataset, images=len(test), test_loss=loss, test_acc=acc,
                  weights="ema" if use_ema else "model", seconds=time.perf_counter() - t0)
    if _is_train_checkpoint(obj):
        result.update(epoch=obj["epoch"], step=obj["step"])
    return result


# --------------------------------------------------------------------------- training
class _StopRequest:
    """Ctrl-C during training: finish the current step, save a checkpoint, exit.

    A second Ctrl-C raises KeyboardInterrupt at once (the last checkpoint on
    disk stays intact). Only installable from the main thread.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nwrn-fast: Ctrl-C -- finishing this step and saving a checkpoint (Ctrl-C again to abort without "
              "saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _print(ctx: _Dist, *args, **kwargs) -> None:
    if ctx.is_main:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional: plain lines without a progress bar
            print(*args, **kwargs)
            return
        tqdm.write(" ".join(str(a) for a in args), **kwargs)


class _NoBar:
    """Stands in for tqdm's bar when tqdm is not installed (progress lines only)."""

    disable = True

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _progress_bar_class():
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar
    return tqdm


def _write_log(path: str, history: List[Dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def _append_log(path: str, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def plot_history(history: List[Dict[str, Any]], path: str, title: str = "") -> bool:
    """Loss and accuracy curves (train / test, EMA when present) per epoch, as a PNG.

    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("wrn_fast: matplotlib is not installed: no curves PNG (the JSONL log has every figure)",
              file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], label="test")
    if history and "ema_test_acc" in history[0]:
        ax_loss.plot(epochs, [r["ema_test_loss"] for r in history], label="test (EMA)")
        ax_acc.plot(epochs, [100 * r["ema_test_acc"] for r in history], label="test (EMA)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True


# What a resumed run may change: how long and where it runs, not what it computes.
_RUN_CONTROL = ("epochs", "max_steps", "device", "out", "workers", "progress", "eval_batch_size", "data_dir", "compile")


def _resolve_resume(config: TrainConfig, resume: str, explicit: Dict[str, Any]) -> Tuple[TrainConfig, Dict]:
    """The checkpoint's config with run-control overrides; conflicting hyper-parameters are errors."""
    ckpt = load_checkpoint(resume)
    if not _is_train_checkpoint(ckpt):
        raise InputError(f"--resume {resume}: not a wrn_fast training checkpoint (a raw state_dict has no optimizer "
                         "state; use it with `eval`)")
    saved = dict(ckpt["config"])
    if "model" in explicit and explicit["model"] != saved["model"]:
        check_architecture(f"--resume {resume}", {**_arch_kwargs_from_name(saved["model"]),
                                                  **ckpt["model_kwargs"]}, explicit["model"])
        raise InputError(f"--resume {resume}: checkpoint is {saved['model']} but --model {explicit['model']}")
    run_control = _RUN_CONTROL
    conflicts = [f"--{k.replace('_', '-')} {explicit[k]!r} (checkpoint: {saved.get(k)!r})" for k in explicit
                 if k not in run_control and k != "model" and explicit[k] != saved.get(k)]
    if conflicts:
        raise InputError(f"--resume {resume}: continues the checkpoint's run, whose settings differ from "
                         f"{'; '.join(conflicts)}. Drop these options, or start a new run without --resume")
    saved.update({k: v for k, v in explicit.items() if k in run_control})
    saved["max_steps"] = explicit.get("max_steps")  # a stop for one invocation, not part of the run
    if saved.get("out") is None:
        saved["out"] = os.path.dirname(os.path.abspath(resume))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in fields}), ckpt


def _default_out(config: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.dataset}-{config.model}-{stamp}")


def train(config: TrainConfig, resume: Optional[str] = None, explicit: Optional[Dict[str, Any]] = None
          ) -> Dict[str, Any]:
    """Train (or continue) a run; returns the final metrics and the output paths.

    ``explicit``: the options the user gave on the command line (used with
    ``resume`` to tell deliberate overrides from defaults).
    """
    ckpt = None
    if resume is not None:
        if explicit is None:  # Python API: the run-control fields of `config` apply, the rest comes from the checkpoint
            explicit = {k: getattr(config, k) for k in _RUN_CONTROL if getattr(config, k) is not None}
        config, ckpt = _resolve_resume(config, resume, explicit)
    config.validate()
    ctx, device = _init_distributed(config.device)
    try:
        return _train(config, ckpt, ctx, device)
    finally:
        if ctx.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, ckpt: Optional[Dict[str, Any]], ctx: _Dist, device: torch.device):
    if config.batch_size % ctx.world:
        raise InputError(f"--batch-size: the global batch {config.batch_size} must be divisible by the world size "
                         f"{ctx.world} (each rank takes an equal share)")
    local_batch = config.batch_size // ctx.world

    # Output directory: never overwrite an earlier run's checkpoint by accident.
    if config.out is None:
        config.out = _default_out(config)
    ckpt_path = os.path.join(config.out, CHECKPOINT_NAME)
    log_path = os.path.join(config.out, LOG_NAME)
    plot_path = os.path.join(config.out, PLOT_NAME)
    if ckpt is None and os.path.exists(ckpt_path):
        raise InputError(f"--out {config.out}: already holds {CHECKPOINT_NAME} from an earlier run; continue it with "
                         f"--resume {ckpt_path}, or choose another --out")

    train_split, test_split, info = load_dataset(config.dataset, config.data_dir, config.image_size, config.workers)
    if len(train_split) < config.batch_size:
        raise InputError(f"--batch-size: {config.batch_size} is larger than the training set "
                         f"({len(train_split)} images); training drops incomplete batches")
    steps_per_epoch = len(train_split) // config.batch_size  # incomplete last batch dropped (BN needs >1 value)

    torch.manual_seed(derive_seed(config.seed, 0x1A17))  # weight initialisation (same on every rank)
    model, model_kwargs = build_model(config.model, info.num_classes, info.in_channels, config.dropout)
    if ckpt is not None:
        check_architecture("--resume", {**_arch_kwargs_from_name(ckpt["model_name"]), **ckpt["model_kwargs"]},
                           config.model, info.num_classes, info.in_channels, config.dataset)
        model.load_state_dict(ckpt["model"])
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and ctx.active:
        model = _apply_sync_bn(model, device)
    ema = ModelEMA(model, config.ema) if config.ema is not None else None

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, steps_per_epoch))
    amp_dtype = _amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    train_model = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)

    epoch, batch_in_epoch, step = 0, 0, 0
    history: List[Dict[str, Any]] = []
    accum = dict(loss_sum=0.0, correct=0.0, count=0.0, seconds=0.0)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        epoch, batch_in_epoch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        history = [r for r in ckpt["history"] if not r.get("partial")]
        accum = dict(ckpt["epoch_accum"])
        _set_rng_state(ckpt["rng"])

    if ctx.is_main:
        os.makedirs(config.out, exist_ok=True)
        _write_log(log_path, history)  # on resume: exactly the checkpoint's epochs
    ctx.barrier()

    images = train_split.images.to(device)
    labels = train_split.labels.to(device)
    test_split = Split(test_split.images.to(device), test_split.labels.to(device))
    mean = torch.tensor(info.mean, device=device)
    std = torch.tensor(info.std, device=device)

    from .backend import resolve

    n_params = sum(p.numel() for p in model.parameters())
    _print(ctx, f"wrn-fast train: {config.model} ({n_params / 1e6:.2f}M params) on {config.dataset} "
                f"({len(train_split)} train / {len(test_split)} test images, {info.in_channels}x{info.image_size}x"
                f"{info.image_size}, {info.num_classes} classes)")
    if config.schedule == "cosine":
        sched = "cosine"
    elif config.milestones:
        sched = f"x{config.gamma} at epochs {','.join(map(str, config.milestones))}"
    else:
        sched = "constant lr"
    _print(ctx, f"  {config.epochs} epochs x {steps_per_epoch} steps, batch {config.batch_size}"
                f"{f' ({ctx.world} ranks x {local_batch})' if ctx.active else ''}, SGD lr {config.lr} "
                f"{'nesterov ' if config.nesterov else ''}momentum {config.momentum} wd {config.weight_decay}, "
                f"{sched}, dropout {config.dropout}"
                f"{f', EMA {config.ema}' if config.ema else ''}")
    _print(ctx, f"  device {device}, backend {resolve(device)}, amp {str(amp_dtype).replace('torch.', '') if amp_dtype else 'none'}"
                f", seed {config.seed}, output {config.out}")
    if ckpt is not None:
        _print(ctx, f"  resuming from epoch {epoch} batch {batch_in_epoch} (step {step})")

    stop = _StopRequest()
    status = "finished"
    started = time.perf_counter()
    # True while the training state is being changed (inside a step, or moving to the
    # next epoch): a KeyboardInterrupt then must not save a half-updated state.
    mutating = False
    log_every = 10
    sums = torch.tensor([accum["loss_sum"], accum["correct"], accum["count"]], dtype=torch.float64,
                        device=device)  # this rank's epoch loss sum, correct, count; all-reduced at epoch end
    epoch_t0 = time.perf_counter() - accum["seconds"]

    def checkpoint_state() -> Dict[str, Any]:
        loss_sum, correct, count = sums.tolist()
        return dict(
            format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, model_name=config.model, model_kwargs=model_kwargs,
            model=_unwrapped_state_dict(model), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
            ema=ema.state_dict() if ema is not None else None,
            epoch=epoch, batch_in_epoch=batch_in_epoch, step=step,
            epoch_accum=dict(loss_sum=loss_sum, correct=correct, count=count,
                             seconds=time.perf_counter() - epoch_t0),
            history=list(history), rng=_rng_state(), config=dataclasses.asdict(config),
            dataset_info=dataclasses.asdict(info), world_size=ctx.world,
        )

    def save() -> None:
        ctx.barrier()  # every rank finished the step being saved
        if ctx.is_main:
            save_checkpoint(ckpt_path, checkpoint_state())
        ctx.barrier()  # nobody runs ahead (or exits) while rank 0 writes

    def should_stop() -> bool:
        if not ctx.active:
            return stop.requested
        # All ranks must stop at the same step or the collectives hang: agree every log_every steps.
        return step % log_every == 0 and _any_rank(ctx, stop, device)

    tqdm = _progress_bar_class()

    with stop:
        try:
            while epoch < config.epochs:
                perm = torch.randperm(len(train_split), generator=_generator(config.seed, epoch)).to(device)
                bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                           leave=False, dynamic_ncols=True, unit="step",
                           disable=True if not (ctx.is_main and config.progress) else None)
                bar_t0, bar_images = time.perf_counter(), 0
                train_model.train()
                while batch_in_epoch < steps_per_epoch:
                    if (config.max_steps is not None and step >= config.max_steps) or should_stop():
                        break
                    b = batch_in_epoch
                    global_idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
                    shard = slice(ctx.rank * local_batch, (ctx.rank + 1) * local_batch)
                    idx = global_idx[shard]
                    x = images[idx]
                    if info.crop_padding or info.flip:
                        # drawn for the whole global batch so the augmentation is independent of world size
                        dy, dx, flips = draw_augmentation(config.batch_size, _generator(config.seed, epoch, b + 1),
                                                          info.crop_padding, info.flip)
                        x = apply_augmentation(x, dy[shard], dx[shard], flips[shard], info.crop_padding)
                    x = normalize_batch(x, mean, std, config.channels_last)
                    y = labels[idx]
                    torch.manual_seed(derive_seed(config.seed, step, ctx.rank, 0xD0))  # dropout masks
                    mutating = True
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = train_model(x)
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    if ema is not None:
                        ema.update(model)
                    with torch.no_grad():
                        sums[0] += loss.detach().double() * y.numel()
                        sums[1] += (logits.detach().argmax(1) == y).sum()
                        sums[2] += y.numel()
                    batch_in_epoch += 1
                    step += 1
                    mutating = False
                    bar_images += config.batch_size
                    bar.update(1)
                    if step % log_every == 0 and not bar.disable:
                        s = sums.tolist()  # one host sync every log_every steps
                        now = time.perf_counter()
                        bar.set_postfix(loss=f"{s[0] / max(s[2], 1):.4f}", acc=f"{100 * s[1] / max(s[2], 1):.2f}%",
                                        img_s=f"{bar_images / max(now - bar_t0, 1e-9):.0f}", refresh=False)
                        bar_t0, bar_images = now, 0
                bar.close()
                if batch_in_epoch < steps_per_epoch:  # stopped mid-epoch: max_steps or Ctrl-C
                    status = "interrupted" if stop.requested else "max_steps"
                    break
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # the epoch's time includes its queued kernels
                record = _epoch_record(epoch, step, scheduler, sums, time.perf_counter() - epoch_t0, ctx, device,
                                       model, ema, test_split, mean, std, config, amp_dtype, steps_per_epoch, started)
                mutating = True
                history.append(record)
                epoch, batch_in_epoch = epoch + 1, 0
                sums.zero_()
                epoch_t0 = time.perf_counter()
                mutating = False
                if ctx.is_main:
                    _append_log(log_path, record)
                    _print(ctx, _format_record(record, config.epochs))
                save()
        except KeyboardInterrupt:
            if mutating:
                _print(ctx, f"\nwrn-fast: interrupted while the training state was being updated; not saving it. "
                            f"The last checkpoint ({ckpt_path}) is intact.")
                raise
            status = "interrupted"

    result: Dict[str, Any] = dict(status=status, epoch=epoch, step=step, checkpoint=ckpt_path, log=log_path,
                                  plot=plot_path, out=config.out, rank=ctx.rank, world_size=ctx.world)
    if status != "finished":
        # Mid-epoch: save where we are (resume continues from this batch), and measure the model as it is.
        save()
        loss, acc = evaluate(model, test_split, mean, std, config.eval_batch_size, amp_dtype,
                             config.channels_last, ctx)
        result.update(test_loss=loss, test_acc=acc)
        if status == "interrupted":
            _print(ctx, f"wrn-fast: stopped by Ctrl-C at epoch {epoch + 1}, batch {batch_in_epoch} (step {step}); "
                        f"checkpoint saved. Continue with: python -m wrn_fast train --resume {ckpt_path}")
        else:
            _print(ctx, f"wrn-fast: reached --max-steps {config.max_steps} at epoch {epoch + 1}, batch "
                        f"{batch_in_epoch} (test accuracy {100 * acc:.2f}%, loss {loss:.4f}); continue with "
                        f"--resume {ckpt_path}")
    else:
        if not history:
            loss, acc = evaluate(model, test_split, mean, std, config.eval_batch_size, amp_dtype,
                                 config.channels_last, ctx)
        else:
            loss, acc = history[-1]["test_loss"], history[-1]["test_acc"]
        result.update(test_loss=loss, test_acc=acc)
        if history and "ema_test_acc" in history[-1]:
            result.update(ema_test_loss=history[-1]["ema_test_loss"], ema_test_acc=history[-1]["ema_test_acc"])
    if ctx.is_main and history and not plot_history(history, plot_path, title=f"{config.model} on {config.dataset}"):
        result["plot"] = None
    result["seconds"] = time.perf_counter() - started
    result["history"] = history
    return result


def _any_rank(ctx: _Dist, stop: _StopRequest, device: torch.device) -> bool:
    """Whether any rank saw Ctrl-C: all ranks must stop at the same step or the collectives hang."""
    if not ctx.active:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    ctx.all_reduce_(flag)
    stop.requested = bool(flag.item() > 0)
    return stop.requested


def _unwrapped_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    # Plain keys (no 'module.' / '_orig_mod.'), CPU tensors: loadable without DDP, compile or a GPU.
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _epoch_record(epoch, step, scheduler, sums, seconds, ctx, device, model, ema, test_split, mean, std, config,
                  amp_dtype, steps_per_epoch, started) -> Dict[str, Any]:
    totals = ctx.all_reduce_(sums.clone())
    loss_sum, correct, count = totals.tolist()
    test_loss, test_acc = evaluate(model, test_split, mean, std, config.eval_batch_size, amp_dtype,
                                   config.channels_last, ctx)
    record = dict(epoch=epoch + 1, step=step, lr=scheduler.get_last_lr()[0], train_loss=loss_sum / count,
                  train_acc=correct / count, test_loss=test_loss, test_acc=test_acc)
    if ema is not None:
        record["ema_test_loss"], record["ema_test_acc"] = evaluate(
            ema.module, test_split, mean, std, config.eval_batch_size, amp_dtype, config.channels_last, ctx)
    record.update(images_per_s=steps_per_epoch * config.batch_size / max(seconds, 1e-9), epoch_time_s=seconds,
                  time_s=time.perf_counter() - started)
    return record


def _format_record(r: Dict[str, Any], epochs: int) -> str:
    width = len(str(epochs))
    text = (f"epoch {r['epoch']:>{width}}/{epochs}  lr {r['lr']:.4f}  train loss {r['train_loss']:.4f} "
            f"acc {100 * r['train_acc']:6.2f}%  test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:6.2f}%")
    if "ema_test_acc" in r:
        text += f" (EMA {100 * r['ema_test_acc']:6.2f}%)"
    return text + f"  {r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f}s"
