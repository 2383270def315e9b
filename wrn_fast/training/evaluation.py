"""Test-set loss and accuracy of a model or a checkpoint file."""
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import InputError, Split, load_dataset, normalize_batch
from ..checkpoint import check_train_checkpoint, is_train_checkpoint, load_checkpoint
from ..convert import DATASET_NORMALIZATION, detect_format
from .config import AMP_MODES
from .distributed import Dist, parse_device
from .models import arch_kwargs_from_name, check_architecture, load_weights


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of an --amp mode on ``device`` (None: no autocast)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 512,
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
             dist_ctx: Optional[Dist] = None) -> Tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``split`` (already on the model's device).

    With several ranks each evaluates every world-th image and the sums are
    all-reduced, so the result covers the whole split exactly once.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise InputError(f"--batch-size: expected a positive int, got {batch_size!r}")
    dist_ctx = dist_ctx or Dist()
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
                           in_channels: int, dataset: str, format: str, use_ema: bool,
                           activation: Optional[str] = None) -> Tuple[nn.Module, str]:
    """The model stored in a training checkpoint or a raw state_dict in a converter format.

    ``activation`` overrides the converter's (a DM checkpoint does not record it). A DM
    checkpoint on CIFAR gets RobustBench's normalisation for ``dataset`` (announced by the
    converter)."""
    import wrn_fast

    if is_train_checkpoint(obj):
        kwargs = dict(obj["model_kwargs"])
        check_architecture(source, {**arch_kwargs_from_name(obj["model_name"]), **kwargs}, model_name,
                           num_classes, in_channels, dataset)
        try:
            model = wrn_fast.create_model(obj["model_name"], **kwargs)
        except (ValueError, TypeError) as e:
            raise InputError(f"{source}: the checkpoint's model {obj['model_name']!r} with {kwargs} cannot be "
                             f"built ({e})") from e
        weights = obj.get("ema") if use_ema else obj["model"]
        if use_ema and weights is None:
            raise InputError(f"{source}: --ema-weights given but the checkpoint has no EMA (train with --ema DECAY)")
        load_weights(model, weights, source, "EMA weights" if use_ema else "model weights")
        return model, obj["model_name"]
    overrides: Dict[str, Any] = {} if activation is None else {"activation": activation}
    try:
        if dataset in DATASET_NORMALIZATION and (format == "auto" and detect_format(obj) == "dm" or format == "dm"):
            overrides["dataset"] = dataset
        state_dict, kwargs = wrn_fast.convert_state_dict(obj, format, **overrides)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{source}: not a wrn_fast training checkpoint and not a state_dict in a known format "
                         f"({type(e).__name__}: {e})") from e
    check_architecture(source, kwargs, model_name, num_classes, in_channels, dataset)
    if use_ema:
        raise InputError(f"{source}: --ema-weights needs a wrn_fast training checkpoint; this is a plain state_dict")
    model = wrn_fast.load_pretrained(obj, format=format, **overrides)
    name = (f"wrn-{kwargs['depth']}-{kwargs['widen_factor']}" if "depth" in kwargs else type(model).__name__)
    return model, name


def evaluate_checkpoint(path: str, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                        model_name: Optional[str] = None, device: Optional[str] = None, format: str = "auto",
                        batch_size: int = 512, image_size: Optional[int] = None, amp: str = "auto",
                        use_ema: bool = False, workers: int = 2, activation: Optional[str] = None) -> Dict[str, Any]:
    """Test loss and accuracy of a checkpoint (ours or a converter-format state_dict).

    A model that normalises its input itself (``input_mean``/``input_std``, e.g. RobustBench's
    DMWideResNet) is fed images in [0, 1]; any other model gets the dataset's normalisation.
    """
    # The arguments first: a usage error costs no checkpoint or dataset load.
    for name, value, flag in (("batch_size", batch_size, "--batch-size"), ("image_size", image_size, "--image-size")):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise InputError(f"{flag}: expected a positive int, got {value!r}")
    if not isinstance(workers, int) or workers < 0:
        raise InputError(f"--workers: expected an int >= 0, got {workers!r}")
    if amp not in AMP_MODES:
        raise InputError(f"--amp: expected bf16, fp16, none or auto, got {amp!r}")
    dev = parse_device(device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")

    obj = load_checkpoint(path)
    if is_train_checkpoint(obj):
        check_train_checkpoint(obj, path, for_resume=False)
        cfg = obj["config"]
        if dataset is None:
            dataset = cfg.get("dataset")
            data_dir = data_dir if data_dir is not None else cfg.get("data_dir")
            image_size = image_size if image_size is not None else cfg.get("image_size")
    elif dataset is None:
        raise InputError(f"--dataset: {path} is a plain state_dict, which does not say what it was trained on; "
                         "pass --dataset (and --data-dir)")
    _, test, info = load_dataset(dataset, data_dir, image_size, workers)
    model, name = _model_from_checkpoint(obj, path, model_name, info.num_classes, info.in_channels, dataset,
                                         format, use_ema, activation)
    model.to(dev)
    test = Split(test.images.to(dev), test.labels.to(dev))
    if getattr(model, "input_mean", None) is not None:  # the model normalises: feed x / 255 unchanged
        mean, std = torch.zeros(info.in_channels, device=dev), torch.ones(info.in_channels, device=dev)
    else:
        mean, std = torch.tensor(info.mean, device=dev), torch.tensor(info.std, device=dev)
    t0 = time.perf_counter()
    loss, acc = evaluate(model, test, mean, std, batch_size, amp_dtype(amp, dev))
    result = dict(checkpoint=path, model=name, dataset=dataset, images=len(test), test_loss=loss, test_acc=acc,
                  weights="ema" if use_ema else "model", seconds=time.perf_counter() - t0)
    if is_train_checkpoint(obj):
        result.update(epoch=obj.get("epoch"), step=obj.get("step"))
    return result
