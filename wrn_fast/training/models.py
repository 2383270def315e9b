"""Model names (``wrn-DEPTH-WIDTH``, ``wide_resnet50_2``) to models; checkpoints' architectures and state_dicts."""
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..data import InputError
from ..model import model_architecture


def build_model(model_name: str, num_classes: int, in_channels: int, dropout: float = 0.0,
                **extra_kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    """``wrn_fast.create_model`` with a clear error for unknown names; returns (model, constructor kwargs)."""
    import wrn_fast

    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_channels=in_channels, **extra_kwargs)
    if "depth" in arch_kwargs_from_name(model_name):
        kwargs["dropout_rate"] = dropout
    elif dropout:
        raise InputError(f"--dropout: {model_name} has no dropout (only 'wrn-DEPTH-WIDTH' models do), "
                         f"got --dropout {dropout}")
    try:
        model = wrn_fast.create_model(model_name, **kwargs)
    except (ValueError, TypeError) as e:
        raise InputError(f"--model {model_name!r}: {e}") from e
    return model, kwargs


def arch_kwargs_from_name(model_name: str) -> Dict[str, Any]:
    """What a model name fixes (``wrn_fast.model.model_architecture``); {} for unknown names."""
    try:
        return model_architecture(model_name)
    except ValueError:
        return {}


def check_architecture(source: str, model_kwargs: Dict[str, Any], model_name: Optional[str],
                       num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                       dataset: Optional[str] = None) -> None:
    """Clear errors when a checkpoint's architecture differs from --model or the dataset."""
    if model_name is not None:
        want = arch_kwargs_from_name(model_name)
        if "depth" in want and "depth" in model_kwargs:
            have = (model_kwargs.get("depth"), model_kwargs.get("widen_factor"))
            if have != (want["depth"], want["widen_factor"]):
                raise InputError(f"{source}: checkpoint has depth {have[0]}, width {have[1]} but --model {model_name}")
        elif "depth" in want and "layers" in model_kwargs:
            raise InputError(f"{source}: checkpoint is an ImageNet bottleneck WRN (layers {model_kwargs['layers']}) "
                             f"but --model {model_name}")
        elif "layers" in want and "layers" in model_kwargs:
            if tuple(model_kwargs["layers"]) != tuple(want["layers"]):
                raise InputError(f"{source}: checkpoint is a bottleneck WRN with layers {tuple(model_kwargs['layers'])} "
                                 f"but --model {model_name} has {tuple(want['layers'])}")
        elif "depth" in model_kwargs:
            raise InputError(f"{source}: checkpoint has depth {model_kwargs['depth']}, width "
                             f"{model_kwargs.get('widen_factor')} (a CIFAR-style WRN) but --model {model_name}")
    if num_classes is not None and model_kwargs.get("num_classes", num_classes) != num_classes:
        raise InputError(f"{source}: checkpoint has {model_kwargs['num_classes']} classes but --dataset {dataset} "
                         f"has {num_classes}")
    if in_channels is not None and model_kwargs.get("in_channels", in_channels) != in_channels:
        raise InputError(f"{source}: checkpoint expects {model_kwargs['in_channels']} input channels but "
                         f"--dataset {dataset} has {in_channels}")


def load_weights(model: nn.Module, state_dict: Dict[str, Any], source: str, what: str = "model weights") -> None:
    """``model.load_state_dict(state_dict)`` with a one-line error naming the missing / unexpected keys."""
    if not isinstance(state_dict, dict):
        raise InputError(f"{source}: the checkpoint's {what} are a {type(state_dict).__name__}, expected a state_dict")
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
        raise InputError(f"{source}: the checkpoint's {what} do not fit the model ({'; '.join(parts)})")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise InputError(f"{source}: the checkpoint's {what} do not fit the model "
                         f"({' '.join(line.strip() for line in first[:3])})") from e


def unwrapped_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state_dict as a checkpoint stores it: plain keys (no 'module.' / '_orig_mod.'), CPU tensors,
    loadable without DDP, torch.compile or a GPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
