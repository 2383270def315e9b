"""The fast WideResNet: the reference's modules and state_dict, fused ops in forward.

``WideResNet`` subclasses ``reference.WideResNet`` and adds no parameter or
buffer, so the two load each other's state_dicts strictly. Only ``forward``
differs: it walks the same submodules but runs each BatchNorm as

    producer epilogue -> (mean, var)           batch statistics of what it wrote
    bn_finalize       -> (scale, shift)        per channel, fp32
    consumer prologue -> act(x*scale + shift)  (+ dropout) inside the next conv

The models hold no dispatch: ``forward`` walks the layers and calls an engine
(``wrn_fast.engines``: CpuEngine, TritonEngine) chosen by ``wrn_fast.backend``;
the 'reference' backend, meta tensors and empty batches run the reference forward.

Running statistics are updated exactly as nn.BatchNorm2d does, but only after
the whole forward succeeded: a step that fails leaves every buffer untouched.
"""
import re
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reference
from ._ext import ext_available
from .backend import resolve
from .engines import Feature, engine_class, stats_dtype

ext_available()  # prime the cached answer outside any torch.compile trace

__all__ = ["WideResNet", "WideResNetBottleneck", "create_model", "explain", *reference.NAMED_ARCHITECTURES]


# --------------------------------------------------------------------------- checks
def _check_input(model: nn.Module, x: torch.Tensor, in_channels: int, spatial_divisor: int) -> None:
    """Clear errors before any kernel launches (and before any buffer is touched)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"input: expected a 4-D tensor [N, {in_channels}, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"input: expected {in_channels} channels (shape [N, {in_channels}, H, W]), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"input: expected a floating-point tensor, got dtype {x.dtype}")
    param = next(model.parameters())
    if x.device != param.device:
        raise ValueError(f"input: expected a tensor on {param.device} (the model's device), got one on {x.device}")
    if x.device.type == "cuda" and x.dtype == torch.float64:
        raise TypeError("input: float64 is not supported by the fused CUDA path; use float32/bf16/fp16 "
                        "or wrn_fast.set_backend('reference')")
    if not _autocast_enabled(x.device) and x.dtype != param.dtype:
        raise TypeError(f"input: dtype {x.dtype} does not match the model's parameters ({param.dtype}); "
                        "cast the input or use torch.autocast")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"input: expected a non-empty image (H, W >= 1), got shape {tuple(x.shape)}")
    if getattr(model, "padding", None) == "tf_same" and (x.shape[2] % 4 or x.shape[3] % 4):
        # the reference's check and message (reference.WideResNet.forward)
        raise ValueError(f"x: padding='tf_same' expects H and W divisible by 4, got {list(x.shape[-2:])}")
    if model.training and x.shape[0] > 0:
        h = -(-x.shape[2] // spatial_divisor)
        w = -(-x.shape[3] // spatial_divisor)
        if x.shape[0] * h * w <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{tuple(x.shape)} (the last BatchNorm sees [{x.shape[0]}, C, {h}, {w}])"
            )


def _wants_sync_bn(model: nn.Module) -> bool:
    """sync_bn=True, or nn.SyncBatchNorm modules (convert_sync_batchnorm): global statistics."""
    return bool(getattr(model, "sync_bn", False)) or any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def _engine(model: nn.Module, x, spatial_divisor: int):
    """The engine for this forward, or None where the reference forward runs (backend
    'reference', meta tensors, an empty batch: the reference's [0, num_classes])."""
    backend = resolve(x.device) if isinstance(x, torch.Tensor) else "reference"
    if backend == "reference":
        return None
    _check_input(model, x, model.conv1.in_channels, spatial_divisor)
    if x.shape[0] == 0:
        return None
    return engine_class(backend)(model, _compute_dtype(x), bool(getattr(model, "sync_bn", False)))


def _autocast_enabled(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def _compute_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    if _autocast_enabled(x.device):
        return torch.get_autocast_dtype(x.device.type)
    return None


def _check_sync_bn(sync_bn) -> bool:
    if not isinstance(sync_bn, bool):
        raise ValueError(f"sync_bn: expected True or False, got {sync_bn!r}")
    return sync_bn


# --------------------------------------------------------------------------- models
class _FusedForward:
    """What both fast models add to their reference class: the ``sync_bn`` option, read once, and a
    forward that runs ``_fused_forward`` on the engine of the input's backend (or the reference's
    forward where none runs) and commits the running statistics only after it succeeded."""

    _spatial_divisor: int  # the network's total downsampling (the last BatchNorm sees H / this)

    def __init__(self, *args, sync_bn: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync_bn = _check_sync_bn(sync_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eng = _engine(self, x, self._spatial_divisor)
        if eng is None:
            return super().forward(x)
        logits = self._fused_forward(eng, eng.prepare(x))
        eng.commit()
        return logits


class WideResNet(_FusedForward, reference.WideResNet):
    """Drop-in fast WRN: same constructor and state_dict as ``wrn_fast.reference.WideResNet``.

    Extra keyword: ``sync_bn=False`` -- when True and torch.distributed is
    initialised, BatchNorm statistics are those of the global batch (one
    all_gather per BN in forward, one all_reduce in backward), like
    nn.SyncBatchNorm.

    Input: float tensor [N, in_channels, H, W] (NCHW or channels_last) on the
    model's device; autocast bf16/fp16 supported (statistics stay fp32).
    Output: logits [N, num_classes].
    """

    _spatial_divisor = 4

    def _fused_forward(self, eng, x: torch.Tensor) -> torch.Tensor:
        # Stem. In-model normalisation (x - mean) / std is an affine with no activation.
        src = x
        if getattr(self, "input_mean", None) is not None:
            sd = stats_dtype(x.dtype)  # the affine's dtype: fp64 for fp64 data, else fp32
            inv_std = 1.0 / self.input_std.reshape(-1).to(sd)
            src = eng.affine(x, inv_std, -self.input_mean.reshape(-1).to(sd) * inv_std)
        out = eng.conv(src, self.conv1, _same_padding(self.conv1), stats=True)
        for group in (self.block1, self.block2, self.block3):
            for block in group.layer:
                out = _basic_block(eng, block, out)
        a = eng.tensor(eng.bn_act(out, self.bn1, self.activation, self.negative_slope))
        return self.fc(torch.flatten(a.mean(dim=(2, 3)), 1))


def _same_padding(conv: nn.Conv2d) -> Tuple[int, int, int, int]:
    ph, pw = conv.padding
    return (ph, ph, pw, pw)


def _basic_block(eng, block: nn.Module, x: Feature) -> Feature:
    """One pre-activation block B(k1, ..., kl) as a chain of fused convolutions."""
    act, slope = block.activation, block.negative_slope
    convs = [getattr(block, f"conv{i + 1}") for i in range(len(block.kernel_sizes))]
    bns = [getattr(block, f"bn{i + 1}") for i in range(len(block.kernel_sizes))]
    pads = block.conv_paddings
    if block.raw_input:
        eng.track_only(bns[0], x)  # raw_input blocks still compute bn1 (its running stats update)
        src = x
    else:
        src = eng.bn_act(x, bns[0], act, slope)
    if block.equal_in_out:
        shortcut = x.tensor
    elif block.shortcut == "preact" and not block.raw_input:
        shortcut = eng.conv(src, block.convShortcut, (0, 0, 0, 0)).tensor
    else:
        shortcut = eng.conv(x, block.convShortcut, (0, 0, 0, 0)).tensor
    last = len(convs) - 1
    for i in range(last):  # conv_i -> bn_{i+1}: the BN reads only this conv's output
        src = eng.conv_bn_act(src, convs[i], pads[i], bns[i + 1], act, slope, block.dropout_rate)
    return eng.conv(src, convs[last], pads[last], residual=shortcut, stats=True)


class WideResNetBottleneck(_FusedForward, reference.WideResNetBottleneck):
    """Fast ImageNet WRN-50-2 / WRN-101-2 (post-activation bottleneck), torchvision names.

    Convolutions run fused with the BN-ReLU of the previous conv in their
    prologue and statistics in their epilogue; the block's last BN + residual
    add + ReLU, the stem's BN-ReLU-maxpool and the downsample BN are
    elementwise PyTorch ops (not fused yet; ``explain`` says so).

    Extra keyword: ``sync_bn=False``, as for ``WideResNet``.
    """

    _spatial_divisor = 32

    def _fused_forward(self, eng, x: torch.Tensor) -> torch.Tensor:
        h = eng.conv(x, self.conv1, _same_padding(self.conv1), stats=True)
        out = self.maxpool(eng.tensor(eng.bn_act(h, self.bn1, "relu")))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                out = _bottleneck(eng, block, out)
        return self.fc(torch.flatten(out.mean(dim=(2, 3)), 1))


def _bottleneck(eng, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h1 = eng.conv(x, block.conv1, _same_padding(block.conv1), stats=True)
    h2 = eng.conv(eng.bn_act(h1, block.bn1, "relu"), block.conv2, _same_padding(block.conv2), stats=True)
    h3 = eng.conv(eng.bn_act(h2, block.bn2, "relu"), block.conv3, _same_padding(block.conv3), stats=True)
    out = eng.tensor(eng.bn_act(h3, block.bn3))  # BN, no activation (the add comes first)
    if block.downsample is not None:
        hd = eng.conv(x, block.downsample[0], _same_padding(block.downsample[0]), stats=True)
        identity = eng.tensor(eng.bn_act(hd, block.downsample[1]))
    else:
        identity = x
    return F.relu(out + identity).to(h3.tensor.dtype)


# --------------------------------------------------------------------------- explain
def explain(model: nn.Module, device=None) -> str:
    """Which layers run fused on which backend, and which fall back (and why).

    ``device`` defaults to the model's device. Returns a multi-line report.
    """
    if device is None:
        device = next(model.parameters()).device
    backend = resolve(torch.device(device))
    lines = [f"wrn_fast.explain: {type(model).__name__} on {device}: backend '{backend}'"]
    if not isinstance(model, (WideResNet, WideResNetBottleneck)):
        lines.append("  not a wrn_fast model: runs its own forward (nothing fused)")
        return "\n".join(lines)
    if backend == "reference":
        lines.append("  every layer: reference PyTorch ops (backend 'reference' or extension unavailable)")
        return "\n".join(lines)
    desc = engine_class(backend).describe(_wants_sync_bn(model))
    conv_impl, tail_impl = desc.conv, desc.bn_act
    if isinstance(model, WideResNet):
        lines.append(f"  conv1 (stem): {conv_impl}")
        for gname in ("block1", "block2", "block3"):
            for i, block in enumerate(getattr(model, gname).layer):
                ks = ",".join(str(k) for k in block.kernel_sizes)
                sc = ("identity" if block.equal_in_out else
                      f"convShortcut ({'preact' if block.shortcut == 'preact' and not block.raw_input else 'raw'})")
                lines.append(f"  {gname}.layer.{i} B({ks}) stride {block.stride}, shortcut {sc}: {conv_impl}")
        lines.append(f"  bn1 + {model.activation} (head): {tail_impl}; avgpool + fc: torch")
        lines.append(f"  eval, each block's conv_i -> bn_(i+1): {desc.conv_bn_act_eval}")
    else:
        lines.append(f"  conv1 (stem 7x7): {conv_impl}; bn1-relu: {tail_impl}; maxpool: torch")
        lines.append(f"  bottleneck conv1/conv2/conv3, downsample conv: {conv_impl}")
        lines.append(f"  bottleneck bn3, downsample bn: {tail_impl}; residual add + relu: torch elementwise (not fused)")
        lines.append("  avgpool + fc: torch")
    return "\n".join(lines)


# --------------------------------------------------------------------------- factories
# wrn_28_10, wrn_16_8, wrn_40_4, wrn_28_2, wrn_34_10, wrn_70_16, wide_resnet50_2, wide_resnet101_2: the
# reference's table of named networks, building the fast classes.
globals().update(reference.named_constructors(WideResNet, WideResNetBottleneck))


_BOTTLENECK_LAYERS = {"wide-resnet50-2": (3, 4, 6, 3), "wrn-50-2": (3, 4, 6, 3),  # ImageNet bottleneck WRNs,
                      "wide-resnet101-2": (3, 4, 23, 3), "wrn-101-2": (3, 4, 23, 3)}  # not 6n+4 CIFAR ones


def model_architecture(name: str) -> dict:
    """The constructor arguments a model name fixes: ``{'depth', 'widen_factor'}`` for
    'wrn-DEPTH-WIDTH' (CIFAR-style :class:`WideResNet`), ``{'layers'}`` for 'wide_resnet50_2' /
    'wide_resnet101_2' (also 'wrn-50-2' / 'wrn-101-2': :class:`WideResNetBottleneck`). The one
    parser of model names (create_model, the trainer's checkpoint checks)."""
    key = str(name).lower().replace("_", "-")
    if key in _BOTTLENECK_LAYERS:
        return {"layers": _BOTTLENECK_LAYERS[key]}
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", key)
    if m:
        return {"depth": int(m.group(1)), "widen_factor": int(m.group(2))}
    raise ValueError(
        f"model: unknown name {name!r}; expected 'wrn-DEPTH-WIDTH' (e.g. 'wrn-28-10'), "
        "'wide_resnet50_2' or 'wide_resnet101_2'"
    )


def create_model(name: str, **kwargs) -> nn.Module:
    """A fast model by name: 'wrn-28-10', 'wrn-16-8', any 'wrn-DEPTH-WIDTH', 'wide_resnet50_2', 'wide_resnet101_2'."""
    arch = model_architecture(name)
    cls = WideResNetBottleneck if "layers" in arch else WideResNet
    return cls(**arch, **kwargs)
