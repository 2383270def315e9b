"""The fast WideResNet: the reference's modules and state_dict, fused ops in forward.

``WideResNet`` subclasses ``reference.WideResNet`` and adds no parameter or
buffer, so the two load each other's state_dicts strictly. Only ``forward``
differs: it walks the same submodules but runs each BatchNorm as

    producer epilogue -> (mean, var)           batch statistics of what it wrote
    bn_finalize       -> (scale, shift)        per channel, fp32
    consumer prologue -> act(x*scale + shift)  (+ dropout) inside the next conv

Backends (``wrn_fast.backend``):
  'triton'    bn_act_conv (Triton implicit GEMM: prologue BN-act-dropout, epilogue
              residual add + partial stats) + extension ops for stats merge/finalize
  'cpu'       extension ops (fused BN-act-dropout, stats) + PyTorch's convolution
  'reference' the reference forward, unchanged

Running statistics are updated exactly as nn.BatchNorm2d does, but only after
the whole forward succeeded: a step that fails leaves every buffer untouched.
"""
import re
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reference
from ._ext import ext_available
from .backend import resolve

ext_available()  # prime the cached answer outside any torch.compile trace

__all__ = [
    "WideResNet",
    "WideResNetBottleneck",
    "create_model",
    "explain",
    "wrn_28_10",
    "wrn_16_8",
    "wrn_40_4",
    "wrn_28_2",
    "wrn_34_10",
    "wrn_70_16",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


class Stats(NamedTuple):
    """Batch statistics of a tensor: fp32 [C] mean and biased var, and n values per channel.

    Without sync-BN, mean/var are None and ``source`` is the tensor they describe:
    cpu backend: its consumer computes them fused with the BN-act (``batch_norm_act``);
    triton backend: ``partials`` are the producer epilogue's (mean_p, m2_p, count_p),
    merged and finalized by one C++ autograd node (``bn_finalize_partials``).
    """

    mean: Optional[torch.Tensor]
    var: Optional[torch.Tensor]
    count: int
    source: Optional[torch.Tensor] = None
    partials: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None


class _DeferredBN(NamedTuple):
    """A training-mode BN whose statistics its consumer computes (cpu backend):
    ``batch_norm_act(x, weight, bias)`` is one C++ autograd node, not three Python ones."""

    bn: nn.BatchNorm2d
    count: int


class _RunningUpdate(NamedTuple):
    bn: nn.BatchNorm2d
    stats: Stats


# --------------------------------------------------------------------------- ops
def _ext():
    from .ops import ext

    return ext


class _Engine:
    """One forward pass on one backend: the conv unit, BN affine and elementwise BN-act.

    Collects running-stat updates and applies them in ``commit()`` after the
    forward finished, so a failing step mutates nothing.
    """

    def __init__(self, backend: str, model: nn.Module, compute_dtype: Optional[torch.dtype], sync_bn: bool):
        self.backend = backend
        self.training = model.training
        # Batch statistics are needed in training, or in eval by a BN without running
        # stats; otherwise (eval) producers skip them and sync-BN exchanges nothing.
        self.batch_stats = model.training or any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules()
        )
        self.compute_dtype = compute_dtype
        # nn.SyncBatchNorm modules (convert_sync_batchnorm) ask for global statistics too
        self.sync_bn = sync_bn or any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        self.pending: List[_RunningUpdate] = []
        self._unconsumed: List[_DeferredBN] = []
        self._last_activation = None  # (x, affine, (act, slope), a): the cpu backend's last prologue

    # -- convolution with optional BN-act(-dropout) prologue, residual and stats epilogue
    def conv(
        self,
        x: torch.Tensor,
        conv: nn.Conv2d,
        padding: Tuple[int, int, int, int],
        affine: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        act: str = "identity",
        negative_slope: float = 0.0,
        dropout_p: float = 0.0,
        residual: Optional[torch.Tensor] = None,
        stats: bool = False,
    ) -> Tuple[torch.Tensor, Optional[Stats]]:
        stats = stats and self.batch_stats
        weight, bias = conv.weight, conv.bias
        if self.compute_dtype is not None:  # autocast: convs run in the autocast dtype
            weight = weight.to(self.compute_dtype)
            bias = None if bias is None else bias.to(self.compute_dtype)
            if x.dtype != self.compute_dtype:
                x = x.to(self.compute_dtype)
            if residual is not None and residual.dtype != self.compute_dtype:
                residual = residual.to(self.compute_dtype)
        p = dropout_p if self.training else 0.0
        seed = None
        if p > 0:
            from .ops import new_dropout_seed

            seed = new_dropout_seed(x.device)
        stride = conv.stride[0]
        if self.backend == "triton":
            scale, shift = affine if affine is not None else (None, None)
            from .ops.conv import bn_act_conv

            y, mean_p, m2_p, count_p = bn_act_conv(
                x, weight, scale, shift, bias, residual, seed,
                stride=stride, padding=list(padding),
                act=act if affine is not None else "identity",
                negative_slope=negative_slope, dropout_p=p, compute_stats=stats,
            )
            partials = (mean_p, m2_p, count_p)
        else:
            a = x
            if affine is not None:
                a = self._activated(x, affine, act, negative_slope, p, seed)
            top, bottom, left, right = padding
            if top == bottom and left == right:
                y = F.conv2d(a, weight, bias, stride, (top, left))
            else:
                y = F.conv2d(F.pad(a, (left, right, top, bottom)), weight, bias, stride)
            if residual is not None:
                y = y + residual
            partials = None
        if not stats:
            return y, None
        count = y.numel() // y.shape[1]
        if not self.sync_bn:  # the consumer's BN computes / merges them in one C++ autograd node
            return y, Stats(None, None, count, source=y, partials=partials)
        # sync-BN all-gathers the statistics: they must exist as tensors here
        return y, _sync_stats(Stats(*_batch_stats(y, partials), count))

    def _activated(self, x, affine, act, negative_slope, p, seed):
        """cpu backend: dropout(act(bn(x))) materialised once per (x, affine), since a
        block's conv1 and its 'preact' projection shortcut consume the same one."""
        last = self._last_activation
        if p == 0 and last is not None and last[0] is x and last[1] is affine and last[2] == (act, negative_slope):
            return last[3]
        a = self._bn_act_dropout(x, affine, act, negative_slope, p, seed)
        if p == 0:
            self._last_activation = (x, affine, (act, negative_slope), a)
        return a

    def _bn_act_dropout(self, x, affine, act, negative_slope, p, seed):
        """cpu backend: one C++ op; with a deferred BN it also computes x's statistics."""
        if isinstance(affine, _DeferredBN):
            bn = affine.bn
            a, mean, var = _ext().batch_norm_act(x, bn.weight, bn.bias, bn.eps, act, negative_slope, p, seed)
            self._unconsumed.remove(affine)
            self._track(bn, Stats(mean, var, affine.count))
            return a
        scale, shift = affine
        return _ext().bn_act_dropout(x, scale, shift, act, negative_slope, p, seed)

    def _track(self, bn: nn.BatchNorm2d, stats: Stats) -> None:
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            self.pending.append(_RunningUpdate(bn, stats))

    def track_only(self, bn: nn.BatchNorm2d, stats: Optional[Stats]) -> None:
        """A BN whose output is discarded (TorchSSL's raw-input blocks): running stats only."""
        if stats is None or not bn.training:
            return
        if stats.source is not None:
            with torch.no_grad():
                stats = Stats(*_batch_stats(stats.source, stats.partials), stats.count)
        self._track(bn, stats)

    # -- a BatchNorm as a per-channel affine (train: batch stats; eval: running stats)
    def bn_affine(self, bn: nn.BatchNorm2d, stats: Optional[Stats]) -> Tuple[torch.Tensor, torch.Tensor]:
        ext = _ext()
        use_batch_stats = bn.training or bn.running_mean is None
        if use_batch_stats:
            if stats is None:
                raise RuntimeError("internal: batch statistics were not computed for a training-mode BatchNorm")
            if stats.partials is not None:
                scale, shift, mean, var = ext.bn_finalize_partials(stats.source, *stats.partials, bn.weight, bn.bias,
                                                                   bn.eps)
                self._track(bn, Stats(mean, var, stats.count))
                return scale, shift
            if stats.source is not None:
                deferred = _DeferredBN(bn, stats.count)
                self._unconsumed.append(deferred)
                return deferred
            self._track(bn, stats)
            return ext.bn_finalize(stats.mean, stats.var, bn.weight, bn.bias, bn.eps)
        # half / bf16 models keep half running stats: the affine is computed in fp32, as BN does
        sd = _stats_dtype(bn.running_mean.dtype)
        return ext.bn_finalize(bn.running_mean.to(sd), bn.running_var.to(sd), bn.weight, bn.bias, bn.eps)

    # -- y = dropout(act(x*scale + shift)) where no conv follows
    def bn_act(self, x, affine, act, negative_slope):
        if self.backend == "triton":
            from .ops.bn_act import bn_act_dropout

            scale, shift = affine
            return bn_act_dropout(x, scale, shift, None, act=act, negative_slope=negative_slope, dropout_p=0.0)
        return self._bn_act_dropout(x, affine, act, negative_slope, 0.0, None)

    def commit(self) -> None:
        if self._unconsumed:  # a BN's statistics were never computed: its running stats would go stale
            raise RuntimeError(f"internal: {len(self._unconsumed)} BatchNorm(s) were never applied")
        if not self.pending:
            return
        ext = _ext()
        with torch.no_grad():
            for bn, st in self.pending:
                ext.bn_update_running_stats(
                    bn.running_mean, bn.running_var, bn.num_batches_tracked,
                    st.mean.detach(), st.var.detach(), st.count, bn.momentum,
                )
        self.pending.clear()


def _batch_stats(y: torch.Tensor, partials) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of y: merged from its producer's epilogue partials (triton) or computed."""
    return _ext().merge_partial_stats(y, *partials) if partials is not None else _ext().channel_stats(y)


def _sync_stats(st: Stats) -> Stats:
    """SyncBatchNorm semantics: statistics over the global batch of all ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return st
    mean, var = _SyncStats.apply(st.mean, st.var, st.count)
    total = st.count * dist.get_world_size()  # equal per-rank batches (checked by DDP users' samplers)
    return Stats(mean, var, total)


class _SyncStats(torch.autograd.Function):
    """Merge per-rank (n, mean, var) into global stats: one all_gather forward, one all_reduce backward."""

    @staticmethod
    def forward(ctx, mean, var, count):
        import torch.distributed as dist

        world = dist.get_world_size()
        local = torch.stack([torch.full_like(mean, float(count)), mean, var]).contiguous()
        gathered = torch.empty((world * 3, local.shape[1]), dtype=local.dtype, device=local.device)
        # all_gather_single (torch >= 2.14) is the new name of all_gather_into_tensor
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(gathered, local)
        gathered = gathered.view(world, 3, -1)
        n, m, v = gathered[:, 0], gathered[:, 1], gathered[:, 2]
        total = n.sum(0)
        g_mean = (n * m).sum(0) / total
        g_var = (n * (v + (m - g_mean) ** 2)).sum(0) / total
        ctx.save_for_backward(mean, g_mean, total)
        ctx.count = count
        return g_mean, g_var

    @staticmethod
    def backward(ctx, grad_mean, grad_var):
        import torch.distributed as dist

        mean, g_mean, total = ctx.saved_tensors
        grads = torch.stack([
            torch.zeros_like(g_mean) if grad_mean is None else grad_mean.to(g_mean.dtype),
            torch.zeros_like(g_mean) if grad_var is None else grad_var.to(g_mean.dtype),
        ]).contiguous()
        dist.all_reduce(grads)  # every rank's loss depends on every rank's statistics
        gm, gv = grads[0], grads[1]
        w = ctx.count / total
        d_mean = w * gm + w * 2.0 * (mean - g_mean) * gv
        d_var = w * gv
        return d_mean, d_var, None


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


def _autocast_enabled(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def _compute_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    if _autocast_enabled(x.device):
        return torch.get_autocast_dtype(x.device.type)
    return None


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics, scale / shift: fp32, or fp64 for fp64 data (as nn.BatchNorm2d computes them)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_sync_bn(sync_bn) -> bool:
    if not isinstance(sync_bn, bool):
        raise ValueError(f"sync_bn: expected True or False, got {sync_bn!r}")
    return sync_bn


# --------------------------------------------------------------------------- models
class WideResNet(reference.WideResNet):
    """Drop-in fast WRN: same constructor and state_dict as ``wrn_fast.reference.WideResNet``.

    Extra keyword: ``sync_bn=False`` -- when True and torch.distributed is
    initialised, BatchNorm statistics are those of the global batch (one
    all_gather per BN in forward, one all_reduce in backward), like
    nn.SyncBatchNorm.

    Input: float tensor [N, in_channels, H, W] (NCHW or channels_last) on the
    model's device; autocast bf16/fp16 supported (statistics stay fp32).
    Output: logits [N, num_classes].
    """

    def __init__(self, *args, sync_bn: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync_bn = _check_sync_bn(sync_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = resolve(x.device) if isinstance(x, torch.Tensor) else "reference"
        if backend == "reference":
            return super().forward(x)
        _check_input(self, x, self.conv1.in_channels, spatial_divisor=4)
        if x.shape[0] == 0:  # an empty batch: the reference's [0, num_classes] (and its buffer semantics)
            return super().forward(x)
        eng = _Engine(backend, self, _compute_dtype(x), self.sync_bn)
        if backend == "triton" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # NHWC: the implicit GEMM's layout
        # Stem. In-model normalisation (x - mean) / std is an affine prologue with no activation.
        norm = None
        if getattr(self, "input_mean", None) is not None:
            sd = _stats_dtype(x.dtype)  # the affine's dtype: fp64 for fp64 data, else fp32
            inv_std = 1.0 / self.input_std.reshape(-1).to(sd)
            norm = (inv_std, -self.input_mean.reshape(-1).to(sd) * inv_std)
        out, st = eng.conv(x, self.conv1, _same_padding(self.conv1), affine=norm, stats=True)
        for group in (self.block1, self.block2, self.block3):
            for block in group.layer:
                out, st = _basic_block(eng, block, out, st)
        affine = eng.bn_affine(self.bn1, st)
        a = eng.bn_act(out, affine, self.activation, self.negative_slope)
        logits = self.fc(torch.flatten(a.mean(dim=(2, 3)), 1))
        eng.commit()
        return logits


def _same_padding(conv: nn.Conv2d) -> Tuple[int, int, int, int]:
    ph, pw = conv.padding
    return (ph, ph, pw, pw)


def _basic_block(eng: _Engine, block: nn.Module, x: torch.Tensor, st: Stats):
    """One pre-activation block B(k1, ..., kl) as a chain of fused convolutions."""
    act, slope = block.activation, block.negative_slope
    convs = [getattr(block, f"conv{i + 1}") for i in range(len(block.kernel_sizes))]
    bns = [getattr(block, f"bn{i + 1}") for i in range(len(block.kernel_sizes))]
    pads = block.conv_paddings
    if block.raw_input:
        eng.track_only(bns[0], st)  # raw_input blocks still compute bn1 (its running stats update)
        a1 = None
    else:
        a1 = eng.bn_affine(bns[0], st)
    if block.equal_in_out:
        shortcut = x
    elif block.shortcut == "preact" and not block.raw_input:
        shortcut, _ = eng.conv(x, block.convShortcut, (0, 0, 0, 0), affine=a1, act=act, negative_slope=slope)
    else:
        shortcut, _ = eng.conv(x, block.convShortcut, (0, 0, 0, 0))
    last = len(convs) - 1
    if block.raw_input:
        h, hst = eng.conv(x, convs[0], pads[0], residual=shortcut if last == 0 else None, stats=True)
    else:
        h, hst = eng.conv(x, convs[0], pads[0], affine=a1, act=act, negative_slope=slope,
                          residual=shortcut if last == 0 else None, stats=True)
    for i in range(1, len(convs)):
        ai = eng.bn_affine(bns[i], hst)
        h, hst = eng.conv(h, convs[i], pads[i], affine=ai, act=act, negative_slope=slope,
                          dropout_p=block.dropout_rate, residual=shortcut if i == last else None, stats=True)
    return h, hst


class WideResNetBottleneck(reference.WideResNetBottleneck):
    """Fast ImageNet WRN-50-2 / WRN-101-2 (post-activation bottleneck), torchvision names.

    Convolutions run fused with the BN-ReLU of the previous conv in their
    prologue and statistics in their epilogue; the block's last BN + residual
    add + ReLU, the stem's BN-ReLU-maxpool and the downsample BN are
    elementwise PyTorch ops (not fused yet; ``explain`` says so).

    Extra keyword: ``sync_bn=False``, as for ``WideResNet``.
    """

    def __init__(self, *args, sync_bn: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync_bn = _check_sync_bn(sync_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = resolve(x.device) if isinstance(x, torch.Tensor) else "reference"
        if backend == "reference":
            return super().forward(x)
        _check_input(self, x, self.conv1.in_channels, spatial_divisor=32)
        if x.shape[0] == 0:
            return super().forward(x)
        eng = _Engine(backend, self, _compute_dtype(x), self.sync_bn)
        if backend == "triton":
            x = x.contiguous(memory_format=torch.channels_last)
        h, st = eng.conv(x, self.conv1, _same_padding(self.conv1), stats=True)
        out = eng.bn_act(h, eng.bn_affine(self.bn1, st), "relu", 0.0)
        out = self.maxpool(out)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                out = _bottleneck(eng, block, out)
        logits = self.fc(torch.flatten(out.mean(dim=(2, 3)), 1))
        eng.commit()
        return logits


def _bottleneck(eng: _Engine, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h1, s1 = eng.conv(x, block.conv1, _same_padding(block.conv1), stats=True)
    h2, s2 = eng.conv(h1, block.conv2, _same_padding(block.conv2), affine=eng.bn_affine(block.bn1, s1),
                      act="relu", stats=True)
    h3, s3 = eng.conv(h2, block.conv3, _same_padding(block.conv3), affine=eng.bn_affine(block.bn2, s2),
                      act="relu", stats=True)
    out = _bn(eng, h3, eng.bn_affine(block.bn3, s3))
    if block.downsample is not None:
        hd, sd = eng.conv(x, block.downsample[0], _same_padding(block.downsample[0]), stats=True)
        identity = _bn(eng, hd, eng.bn_affine(block.downsample[1], sd))
    else:
        identity = x
    return F.relu(out + identity).to(h3.dtype)


def _bn(eng: _Engine, x: torch.Tensor, affine) -> torch.Tensor:
    """A BN with no activation and no conv after it (the bottleneck's bn3 / downsample BN)."""
    if isinstance(affine, _DeferredBN):
        return eng.bn_act(x, affine, "identity", 0.0)
    scale, shift = affine
    return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


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
    if backend == "triton":
        conv_impl = "triton bn_act_conv (prologue BN-act-dropout, epilogue residual + stats)"
        tail_impl = "triton bn_act_dropout"
    elif getattr(model, "sync_bn", False):  # statistics must exist as tensors to be all-gathered
        conv_impl = "C++ channel_stats -> sync -> bn_finalize -> bn_act_dropout + torch conv2d"
        tail_impl = "C++ bn_act_dropout"
    else:
        conv_impl = "C++ batch_norm_act (stats + BN-act-dropout, one C++ autograd node) + torch conv2d"
        tail_impl = "C++ batch_norm_act"
    if isinstance(model, WideResNet):
        lines.append(f"  conv1 (stem): {conv_impl}")
        for gname in ("block1", "block2", "block3"):
            for i, block in enumerate(getattr(model, gname).layer):
                ks = ",".join(str(k) for k in block.kernel_sizes)
                sc = ("identity" if block.equal_in_out else
                      f"convShortcut ({'preact' if block.shortcut == 'preact' and not block.raw_input else 'raw'})")
                lines.append(f"  {gname}.layer.{i} B({ks}) stride {block.stride}, shortcut {sc}: {conv_impl}")
        lines.append(f"  bn1 + {model.activation} (head): {tail_impl}; avgpool + fc: torch")
    else:
        lines.append(f"  conv1 (stem 7x7): {conv_impl}; bn1-relu: {tail_impl}; maxpool: torch")
        lines.append(f"  bottleneck conv1/conv2/conv3, downsample conv: {conv_impl}")
        lines.append("  bottleneck bn3 + residual add + relu, downsample bn: torch elementwise (not fused)")
        lines.append("  avgpool + fc: torch")
    return "\n".join(lines)


# --------------------------------------------------------------------------- factories
def _wrn(depth: int, widen_factor: int):
    def make(**kwargs) -> WideResNet:
        return WideResNet(depth=depth, widen_factor=widen_factor, **kwargs)

    make.__name__ = f"wrn_{depth}_{widen_factor}"
    make.__doc__ = f"Fast WRN-{depth}-{widen_factor} (keyword overrides go to WideResNet)."
    return make


wrn_28_10 = _wrn(28, 10)
wrn_16_8 = _wrn(16, 8)
wrn_40_4 = _wrn(40, 4)
wrn_28_2 = _wrn(28, 2)
wrn_34_10 = _wrn(34, 10)
wrn_70_16 = _wrn(70, 16)


def wide_resnet50_2(**kwargs) -> WideResNetBottleneck:
    """Fast WRN-50-2 (ImageNet bottleneck, torchvision names)."""
    return WideResNetBottleneck(layers=(3, 4, 6, 3), **kwargs)


def wide_resnet101_2(**kwargs) -> WideResNetBottleneck:
    """Fast WRN-101-2 (ImageNet bottleneck, torchvision names)."""
    return WideResNetBottleneck(layers=(3, 4, 23, 3), **kwargs)


def create_model(name: str, **kwargs) -> nn.Module:
    """A fast model by name: 'wrn-28-10', 'wrn-16-8', any 'wrn-DEPTH-WIDTH', 'wide_resnet50_2', 'wide_resnet101_2'."""
    key = name.lower().replace("_", "-")
    if key in ("wide-resnet50-2", "wrn-50-2"):  # the ImageNet bottleneck WRN, not a 6n+4 CIFAR one
        return wide_resnet50_2(**kwargs)
    if key in ("wide-resnet101-2", "wrn-101-2"):
        return wide_resnet101_2(**kwargs)
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", key)
    if m:
        return WideResNet(depth=int(m.group(1)), widen_factor=int(m.group(2)), **kwargs)
    raise ValueError(
        f"model: unknown name {name!r}; expected 'wrn-DEPTH-WIDTH' (e.g. 'wrn-28-10'), "
        "'wide_resnet50_2' or 'wide_resnet101_2'"
    )
