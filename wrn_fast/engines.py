"""Engines: how one forward pass of a fast model runs on one backend.

The models (``wrn_fast.model``) walk their layers and call an engine; they never
ask which backend runs. Every engine has the same small interface:

    prepare(x) -> Tensor
        the model's input in the engine's memory layout.
    conv(src, conv, padding, residual=None, stats=False) -> Feature
        conv2d of ``src`` (+ bias) (+ residual). ``src`` is a Tensor, a Feature
        (a conv's output) or an Activation (a BN-act(-dropout) applied on the way in).
        CPU eval without autograd: oneDNN's inference op on weights packed once, the
        residual added as a post-op written into ``residual`` (which must be a tensor
        nothing reads afterwards: a block's input or its shortcut conv's output).
        ``stats``: a BN will normalise the output (the Triton epilogue then emits
        partial statistics when batch statistics are needed).
    bn_affine(feature, bn) -> (scale, shift)
        the BatchNorm as a per-channel affine: batch statistics in training (or for a
        BN without running stats), running statistics in eval.
    bn_act(feature, bn, act, negative_slope, dropout_p) -> Activation
        dropout(act(bn(feature))); consumed by ``conv`` or materialised by ``tensor``.
    conv_bn_act(src, conv, padding, bn, act, negative_slope, dropout_p) -> Activation
        ``bn_act(conv(src, ...), bn, ...)`` for a BN that reads nothing but this conv's
        output (a block's bn2 after conv1): in eval the CPU engine folds the BN into
        the conv's weights and bias and runs oneDNN's fused conv + bias + activation.
    affine(x, scale, shift) -> Activation
        a fixed affine with no activation (the stem's input normalisation).
    tensor(activation) -> Tensor
        an Activation materialised (where no conv follows).
    track_only(bn, feature)
        a BN whose output is discarded: its running statistics only.
    commit()
        the running-stat updates, applied once the forward succeeded (a failing
        step mutates no buffer).
    describe(sync_bn) -> Description  (class method)
        what runs each kind of layer, for ``wrn_fast.model.explain``.

CpuEngine: the C++ extension ops (``wrn_fast.ops.ext``) and PyTorch's convolution.
A training BN is one C++ autograd node (``batch_norm_act``: statistics + BN + act
+ dropout) whose result is materialised once, so a block's conv1 and its 'preact'
shortcut share it.

TritonEngine: the Triton implicit-GEMM conv (``wrn_fast.ops.conv.bn_act_conv``):
BN-act-dropout in its prologue, residual add and partial statistics in its
epilogue; a training BN is one C++ node merging those partials
(``bn_finalize_partials``), whose statistics' backward a consuming conv runs in its
own autograd node (``bn_batch_act_conv``: grad_x in one pass).

Sync-BN (``sync_bn=True`` or nn.SyncBatchNorm modules): the local statistics are
all-gathered (``wrn_fast.ops.sync_bn``) and the BN is applied with the global ones.
"""
import weakref
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .ops import bn_act, ext, stats_dtype

__all__ = ["Feature", "Activation", "Description", "CpuEngine", "TritonEngine", "engine_class"]

Padding = Tuple[int, int, int, int]  # (top, bottom, left, right)


class Feature(NamedTuple):
    """A conv's output: the tensor, and (Triton) its epilogue's partial statistics
    ``(mean_p, m2_p, count_p)`` when batch statistics are needed."""

    tensor: torch.Tensor
    partials: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None


class Activation(NamedTuple):
    """dropout(act(x * scale + shift)): materialised (``value``, CPU) or a conv
    prologue still to apply (``value`` None, Triton). ``seed`` is drawn once, so every
    consumer sees the same dropout mask."""

    x: torch.Tensor
    scale: Optional[torch.Tensor]
    shift: Optional[torch.Tensor]
    act: str = "identity"
    negative_slope: float = 0.0
    dropout_p: float = 0.0
    seed: Optional[torch.Tensor] = None
    value: Optional[torch.Tensor] = None
    # Triton, training BN: scale / shift come from x's batch statistics (ops.conv.BatchBN);
    # a conv consumer differentiates through them in its own backward
    batch_bn: Optional[NamedTuple] = None


class Description(NamedTuple):
    conv: str                # a conv with its input's BN-act
    bn_act: str              # a BN-act with no conv after it
    conv_bn_act_eval: str    # conv_bn_act in eval mode


class _RunningUpdate(NamedTuple):
    bn: nn.Module
    mean: torch.Tensor
    var: torch.Tensor
    count: int


def _scan_batch_norms(model: nn.Module) -> Tuple[bool, bool]:
    """One walk over the modules: (a BN without running stats, an nn.SyncBatchNorm)."""
    no_running_stats = has_sync_modules = False
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            no_running_stats = no_running_stats or m.running_mean is None
            has_sync_modules = has_sync_modules or isinstance(m, nn.SyncBatchNorm)
    return no_running_stats, has_sync_modules


class _Engine:
    """What both engines share: batch vs running statistics, sync-BN, deferred running-stat updates."""

    def __init__(self, model: nn.Module, compute_dtype: Optional[torch.dtype], sync_bn: bool):
        self.training = model.training
        no_running_stats, has_sync_modules = _scan_batch_norms(model)
        # Batch statistics are needed in training, or in eval by a BN without running
        # stats; otherwise (eval) producers skip them and sync-BN exchanges nothing.
        self.batch_stats = model.training or no_running_stats
        self.compute_dtype = compute_dtype  # autocast: convs run in this dtype
        # sync_bn=True, or nn.SyncBatchNorm modules (convert_sync_batchnorm): global statistics
        self.sync_bn = sync_bn or has_sync_modules
        self._pending: List[_RunningUpdate] = []

    # -- helpers for the engines
    def _cast(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if t is None or self.compute_dtype is None or t.dtype == self.compute_dtype:
            return t
        return t.to(self.compute_dtype)

    def _weights(self, conv: nn.Conv2d):
        return self._cast(conv.weight), self._cast(conv.bias)

    def _seed(self, x: torch.Tensor, dropout_p: float):
        p = dropout_p if self.training else 0.0
        return p, (ops.new_dropout_seed(x.device) if p > 0 else None)

    @staticmethod
    def _uses_batch_stats(bn: nn.Module) -> bool:
        return bn.training or bn.running_mean is None

    def _track(self, bn: nn.Module, mean, var, count: int) -> None:
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            self._pending.append(_RunningUpdate(bn, mean, var, count))

    def _global_stats(self, feature: Feature):
        """(mean, var, count) of a feature over the batch of all ranks (sync-BN)."""
        from .ops import sync_bn

        y = feature.tensor
        mean, var = self._local_stats(feature)
        return sync_bn.all_gather_stats(mean, var, y.numel() // y.shape[1])

    # -- the interface
    def bn_affine(self, feature: Feature, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self._uses_batch_stats(bn):
            sd = stats_dtype(bn.running_mean.dtype)  # half models keep half running stats: compute in fp32
            return ext.bn_finalize(bn.running_mean.to(sd), bn.running_var.to(sd), bn.weight, bn.bias, bn.eps)
        if self.sync_bn:
            mean, var, count = self._global_stats(feature)
            self._track(bn, mean, var, count)
            return ext.bn_finalize(mean, var, bn.weight, bn.bias, bn.eps)
        return self._batch_affine(feature, bn)

    def bn_act(self, feature: Feature, bn: nn.Module, act: str = "identity", negative_slope: float = 0.0,
               dropout_p: float = 0.0) -> "Activation":
        p, seed = self._seed(feature.tensor, dropout_p)
        return self.affine(feature.tensor, *self.bn_affine(feature, bn), act, negative_slope, p, seed)

    def conv_bn_act(self, src, conv: nn.Conv2d, padding: Padding, bn: nn.Module, act: str = "identity",
                    negative_slope: float = 0.0, dropout_p: float = 0.0) -> Activation:
        return self.bn_act(self.conv(src, conv, padding, stats=True), bn, act, negative_slope, dropout_p)

    def track_only(self, bn: nn.Module, feature: Feature) -> None:
        if not (bn.training and self.batch_stats):
            return
        with torch.no_grad():
            if self.sync_bn:
                self._track(bn, *self._global_stats(feature))
            else:
                y = feature.tensor
                self._track(bn, *self._local_stats(feature), y.numel() // y.shape[1])

    def commit(self) -> None:
        with torch.no_grad():
            for bn, mean, var, count in self._pending:
                ext.bn_update_running_stats(bn.running_mean, bn.running_var, bn.num_batches_tracked,
                                            mean.detach(), var.detach(), count, bn.momentum)
        self._pending.clear()

    # -- per engine
    def _local_stats(self, feature: Feature):
        raise NotImplementedError

    def _batch_affine(self, feature: Feature, bn: nn.Module):
        raise NotImplementedError

    def affine(self, x, scale, shift, act="identity", negative_slope=0.0, dropout_p=0.0, seed=None) -> Activation:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def conv(self, src, conv: nn.Conv2d, padding: Padding, residual: Optional[torch.Tensor] = None,
             stats: bool = False) -> Feature:
        raise NotImplementedError

    def tensor(self, activation: Activation) -> torch.Tensor:
        raise NotImplementedError


class CpuEngine(_Engine):
    """C++ extension ops + PyTorch's convolution (any device the extension has kernels for)."""

    @classmethod
    def describe(cls, sync_bn: bool) -> Description:
        fold = (f"BN folded into the conv's weights and bias, oneDNN conv + bias + {'/'.join(_ONEDNN_ACTS)} "
                "on weights packed once (fp32; else conv2d + C++ bn_act_dropout); every other eval conv also "
                "oneDNN on packed weights, the residual add as conv2's post-op")
        if sync_bn:  # statistics must exist as tensors to be all-gathered
            return Description("C++ channel_stats -> all_gather -> bn_finalize -> bn_act_dropout + torch conv2d "
                               "(channels-last activations)",
                               "C++ bn_act_dropout", fold)
        return Description("C++ batch_norm_act (stats + BN-act-dropout, one C++ autograd node; AVX2 loops where "
                           "the CPU has AVX2) + torch conv2d (oneDNN), activations channels-last (NHWC)",
                           "C++ batch_norm_act", fold)

    def prepare(self, x):
        # NHWC activations throughout: oneDNN's convolutions and the C++ BN loops are
        # faster channels-last at every WRN shape measured (bench/cpu_job.py); for one
        # input channel (wrn_fast.data's batches) the input already is.
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _local_stats(self, feature):
        return ext.channel_stats(feature.tensor)

    def bn_affine(self, feature, bn):
        if self._uses_batch_stats(bn) or torch.is_grad_enabled():
            return super().bn_affine(feature, bn)
        # eval without autograd: the running statistics' scale / shift, computed once per BN and
        # reused until a statistic, the weight, the bias or eps changes (as _packed's weights)
        key = (bn.eps,) + tuple(_version_key(t) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
        cached = _AFFINE.get(bn)
        if cached is not None and cached[0] == key:
            return cached[1]
        affine = super().bn_affine(feature, bn)
        if None not in key:
            _AFFINE[bn] = (key, affine)
        return affine

    def _batch_affine(self, feature, bn):
        # Only the bottleneck's bn3 / downsample BN need a bare affine; the usual path is bn_act.
        mean, var = ext.channel_stats(feature.tensor)
        y = feature.tensor
        self._track(bn, mean, var, y.numel() // y.shape[1])
        return ext.bn_finalize(mean, var, bn.weight, bn.bias, bn.eps)

    def bn_act(self, feature, bn, act="identity", negative_slope=0.0, dropout_p=0.0):
        if not self._uses_batch_stats(bn) or self.sync_bn:
            return super().bn_act(feature, bn, act, negative_slope, dropout_p)
        # one C++ autograd node: statistics + BN + act + dropout
        y = feature.tensor
        p, seed = self._seed(y, dropout_p)
        value, mean, var = ext.batch_norm_act(y, bn.weight, bn.bias, bn.eps, act, negative_slope, p, seed)
        self._track(bn, mean, var, y.numel() // y.shape[1])
        return Activation(y, None, None, act, negative_slope, p, seed, value)

    def affine(self, x, scale, shift, act="identity", negative_slope=0.0, dropout_p=0.0, seed=None):
        x = self._cast(x)
        value = bn_act.bn_act_dropout(x, scale, shift, act, negative_slope, dropout_p, seed)
        return Activation(x, scale, shift, act, negative_slope, dropout_p, seed, value)

    def conv(self, src, conv, padding, residual=None, stats=False):
        a = src.value if isinstance(src, Activation) else (src.tensor if isinstance(src, Feature) else src)
        top, bottom, left, right = padding
        if self._onednn_eval(a, conv, padding):
            weight, bias = self._packed(conv, None, a, [top, left])
            args = ([top, left], list(conv.stride), [1, 1], 1)
            if (residual is None or residual.dtype != a.dtype or residual.requires_grad
                    or _shares_storage(residual, a)):
                y = torch.ops.mkldnn._convolution_pointwise(a, weight, bias, *args, "none", [], "")
                return Feature(y if residual is None else y + residual)
            # eval, no autograd: the residual add as oneDNN's add post-op, written into the
            # residual (a block's input or shortcut conv output, read by nothing after this)
            return Feature(torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, a, weight, bias, *args, "add", None, None, [], None))
        a = self._cast(a)
        weight, bias = self._weights(conv)
        if top == bottom and left == right:
            y = F.conv2d(a, weight, bias, conv.stride, (top, left))
        else:
            y = F.conv2d(F.pad(a, (left, right, top, bottom)), weight, bias, conv.stride)
        if residual is not None:
            y = y.add_(self._cast(residual))  # in place: conv backward keeps its input, not its output
        return Feature(y)

    def _onednn_eval(self, a, conv, padding) -> bool:
        """Whether this conv may run as oneDNN's inference op (fused post-ops, packed weights):
        fp32, no gradient wanted (eval under no_grad; an attack's eval-mode input gradient keeps
        the differentiable ops), symmetric padding, plain conv."""
        top, bottom, left, right = padding
        differentiable = torch.is_grad_enabled() and (a.requires_grad or conv.weight.requires_grad)
        return (not differentiable and self.compute_dtype is None and a.device.type == "cpu"
                and a.dtype == torch.float32 and conv.weight.dtype == torch.float32 and conv.groups == 1
                and conv.dilation == (1, 1) and top == bottom and left == right
                and torch.backends.mkldnn.is_available())

    def conv_bn_act(self, src, conv, padding, bn, act="identity", negative_slope=0.0, dropout_p=0.0):
        top, bottom, left, right = padding
        a = src.value if isinstance(src, Activation) else (src.tensor if isinstance(src, Feature) else src)
        if self._uses_batch_stats(bn) or act not in _ONEDNN_ACTS or not self._onednn_eval(a, conv, padding):
            return super().conv_bn_act(src, conv, padding, bn, act, negative_slope, dropout_p)
        weight, bias = self._packed(conv, bn, a, [top, left])
        y = torch.ops.mkldnn._convolution_pointwise(
            a, weight, bias, [top, left], list(conv.stride), [1, 1], 1, _ONEDNN_ACTS[act],
            [negative_slope] if act == "leaky_relu" else [], "")
        return Activation(y, None, None, "identity", 0.0, 0.0, None, y)

    def _packed(self, conv, bn, a, padding):
        """eval: the conv's (weight, bias) for oneDNN's inference op, with ``bn`` (if given)
        folded in: act(bn(conv(a))) = act(conv'(a)), W' = W * scale[o], b' = b * scale + shift;
        the weight reordered once into oneDNN's layout for ``a``'s shape (not on every call).
        Cached per conv until the input shape, a parameter or a running statistic changes
        (in place or replaced)."""
        tensors = (conv.weight, conv.bias) + ((bn.weight, bn.bias, bn.running_mean, bn.running_var)
                                              if bn is not None else ())
        key = (tuple(a.shape), tuple(padding), bn is not None and bn.eps) + tuple(_version_key(t) for t in tensors)
        cached = _PACKED.get(conv)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            scale, shift = self.bn_affine(None, bn)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
        weight = torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(padding), list(conv.stride), [1, 1], 1, list(a.shape))
        if None not in key:
            _PACKED[conv] = (key, weight, bias)
        return weight, bias

    def tensor(self, activation):
        return activation.value


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _version_key(t: Optional[torch.Tensor]):
    """What identifies a tensor's current values: (storage, version counter); () for None,
    None where no version counter is kept (inference tensors: never cached)."""
    if t is None:
        return ()
    try:
        return (t.data_ptr(), t._version)
    except RuntimeError:
        return None


# conv module -> (key, packed (folded) weight, (folded) bias); weak: the cache dies with the model
_PACKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# BN module -> (key, (scale, shift)) from its running statistics (eval, no autograd)
_AFFINE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# wrn_fast activation -> oneDNN post-op name of mkldnn._convolution_pointwise
_ONEDNN_ACTS = {"relu": "relu", "leaky_relu": "leaky_relu", "silu": "swish"}


class TritonEngine(_Engine):
    """Triton implicit-GEMM convs with BN-act-dropout prologues and statistics epilogues."""

    @classmethod
    def describe(cls, sync_bn: bool) -> Description:
        stats = ("merge_partial_stats -> all_gather -> bn_finalize" if sync_bn else
                 "C++ bn_finalize_partials, its backward in the conv's node")
        conv = f"triton bn_act_conv (prologue BN-act-dropout, epilogue residual + stats; {stats})"
        return Description(conv, "triton bn_act_dropout", "as in training: conv, BN-act in the next prologue")

    def _local_stats(self, feature):
        return ext.merge_partial_stats(feature.tensor, *feature.partials)

    def _batch_affine(self, feature, bn):
        return self._finalize(feature, bn)[:2]

    def _finalize(self, feature, bn):
        """(scale, shift, mean, var) of a BN from its producer's partials (one C++ autograd
        node), the running-stat update queued."""
        y = feature.tensor
        scale, shift, mean, var = ext.bn_finalize_partials(y, *feature.partials, bn.weight, bn.bias, bn.eps)
        self._track(bn, mean, var, y.numel() // y.shape[1])
        return scale, shift, mean, var

    def bn_act(self, feature, bn, act="identity", negative_slope=0.0, dropout_p=0.0):
        """As _Engine.bn_act; a BN on batch statistics (not sync-BN) also carries them
        (``batch_bn``) so that a conv consumer runs the conv and the statistics' backward
        as one autograd node (``ops.conv``: grad_x summed in one pass). ``tensor`` keeps
        the finalize node's differentiable scale / shift."""
        from .ops.conv import BatchBN

        if self.sync_bn or not self._uses_batch_stats(bn) or feature.partials is None:
            return super().bn_act(feature, bn, act, negative_slope, dropout_p)
        p, seed = self._seed(feature.tensor, dropout_p)
        scale, shift, mean, var = self._finalize(feature, bn)
        batch_bn = BatchBN(mean.detach(), var.detach(), bn.weight, bn.bias, bn.eps)
        return Activation(feature.tensor, scale, shift, act, negative_slope, p, seed, batch_bn=batch_bn)

    def affine(self, x, scale, shift, act="identity", negative_slope=0.0, dropout_p=0.0, seed=None):
        return Activation(x, scale, shift, act, negative_slope, dropout_p, seed)  # applied in the conv's prologue

    def prepare(self, x):
        return x.contiguous(memory_format=torch.channels_last)  # NHWC: the implicit GEMM's layout

    def conv(self, src, conv, padding, residual=None, stats=False):
        from .ops.conv import bn_act_conv

        batch_bn = None
        if isinstance(src, Activation):
            x, scale, shift = src.x, src.scale, src.shift
            act, slope, p, seed = src.act, src.negative_slope, src.dropout_p, src.seed
            batch_bn = src.batch_bn
            if batch_bn is not None:  # the conv's backward differentiates the BN (see bn_act)
                scale, shift = scale.detach(), shift.detach()
        else:
            x = src.tensor if isinstance(src, Feature) else src
            scale = shift = seed = None
            act, slope, p = "identity", 0.0, 0.0
        weight, bias = self._weights(conv)
        stats = stats and self.batch_stats
        y, mean_p, m2_p, count_p = bn_act_conv(
            self._cast(x), weight, scale, shift, bias, self._cast(residual), seed,
            stride=conv.stride[0], padding=list(padding), act=act, negative_slope=slope,
            dropout_p=p, compute_stats=stats, batch_bn=batch_bn)
        return Feature(y, (mean_p, m2_p, count_p) if stats else None)

    def tensor(self, activation):
        a = activation
        return bn_act.bn_act_dropout(self._cast(a.x), a.scale, a.shift, a.act, a.negative_slope, a.dropout_p,
                                     a.seed)


def engine_class(backend: str):
    """The engine of a resolved backend ('cpu' or 'triton')."""
    return {"cpu": CpuEngine, "triton": TritonEngine}[backend]
