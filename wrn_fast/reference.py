"""Pure-PyTorch Wide Residual Networks: the specification every fused kernel is tested against.

Wide Residual Networks, Zagoruyko & Komodakis 2016 (arXiv 1605.07146).

CIFAR-style WRN-depth-k (pre-activation, widths 16k / 32k / 64k)::

    x ─ [(x - mean) / std] ─ conv1 3x3 (16) ─ block1 (16k, s1) ─ block2 (32k, s2) ─ block3 (64k, s2)
      ─ bn1 ─ act ─ global average pool ─ fc

Depth convention (the paper's Table 1 names): every group holds ``n = (depth - 4) / 6`` BasicBlocks,
whatever the block type B(M): WRN-40-2-B(1,3,1) has 6 blocks of three convolutions per group (1.43M
parameters, the paper's 1.4M), WRN-22-2-B(3,1,3) has 3 (1.15M, the paper's 1.1M). For the two-convolution
blocks depth is the number of weighted layers, as usual. ``blocks_per_group=`` sets n explicitly (the
paper's Table 2 keeps 36 convolutions at depth 40: B(3,3,3) with blocks_per_group=4).
Module and parameter names are those of xternalz/WideResNet-pytorch, RobustBench and TRADES
(``conv1``, ``block1.layer.0.bn1``, ``...convShortcut``, ``bn1``, ``fc``), so their checkpoints
load strict. The fast model (``wrn_fast.WideResNet``) subclasses :class:`WideResNet` and reads
the submodules and attributes documented here; treat them as a contract.

ImageNet-style WRN-50-2 / WRN-101-2 (post-activation bottlenecks, torchvision names):
:class:`WideResNetBottleneck`.

No fast paths live here: plain ``nn.Module``s and ``torch.nn.functional``.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "BLOCK_STRUCTURES",
    "apply_activation",
    "normalize_activation",
    "parse_block",
    "init_like_xternalz_",
    "conv_paddings_for",
    "BasicBlock",
    "NetworkBlock",
    "WideResNet",
    "Bottleneck",
    "WideResNetBottleneck",
    "wrn_28_10",
    "wrn_16_8",
    "wrn_40_4",
    "wrn_28_2",
    "wrn_34_10",
    "wrn_70_16",
    "wide_resnet50_2",
    "wide_resnet101_2",
]

ACTIVATIONS = ("relu", "leaky_relu", "silu")
_ACTIVATION_ALIASES = {"swish": "silu"}

# Block structures B(M) studied in the paper (Tables 1 and 2): M lists the kernel sizes of
# the block's convolutions; l = len(M) is the deepening factor.
BLOCK_STRUCTURES = (
    (3, 3),
    (3, 1, 3),
    (1, 3, 1),
    (1, 3),
    (3, 1),
    (3, 1, 1),
    (3,),
    (3, 3, 3),
    (3, 3, 3, 3),
)

SHORTCUTS = ("preact", "raw")
PADDINGS = ("symmetric", "tf_same")

Pads = Tuple[int, int, int, int]  # (top, bottom, left, right) zero padding


# ----------------------------------------------------------------------------- helpers


def normalize_activation(activation: str) -> str:
    """Canonical activation name: 'relu', 'leaky_relu' or 'silu' ('swish' is an alias of 'silu')."""
    if not isinstance(activation, str):
        raise ValueError(f"activation: expected one of {ACTIVATIONS} (or 'swish'), got {activation!r}")
    name = _ACTIVATION_ALIASES.get(activation.lower(), activation.lower())
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS} (or 'swish'), got {activation!r}")
    return name


def apply_activation(x: torch.Tensor, activation: str, negative_slope: float = 0.1) -> torch.Tensor:
    """The one activation used everywhere in the reference. ``activation`` must be canonical."""
    if activation == "relu":
        return F.relu(x)
    if activation == "leaky_relu":
        return F.leaky_relu(x, negative_slope)
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def parse_block(block: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    """Kernel sizes of a block structure: ``'B(3,1,3)'`` or ``(3, 1, 3)`` -> ``(3, 1, 3)``."""
    expected = "a block structure such as 'B(3,3)' or (3, 3), one of " + ", ".join(
        "B(" + ",".join(map(str, b)) + ")" for b in BLOCK_STRUCTURES
    )
    if isinstance(block, str):
        match = re.fullmatch(r"\s*B?\s*\(\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*\)\s*", block)
        if match is None:
            raise ValueError(f"block: expected {expected}; got {block!r}")
        sizes = tuple(int(s) for s in match.group(1).split(","))
    else:
        try:
            sizes = tuple(int(s) for s in block)
        except (TypeError, ValueError):
            raise ValueError(f"block: expected {expected}; got {block!r}") from None
        if any(isinstance(s, bool) or int(s) != s for s in block):
            raise ValueError(f"block: expected {expected}; got {block!r}")
    if sizes not in BLOCK_STRUCTURES:
        raise ValueError(f"block: expected {expected}; got {block!r}")
    return sizes


def conv_paddings_for(kernel_size: int, stride: int, padding: str) -> Pads:
    """Zero padding (top, bottom, left, right) of a k x k convolution.

    'symmetric': k // 2 on every side.
    'tf_same':   DeepMind/RobustBench DMWideResNet: stride-1 convs symmetric; stride-s convs pad
                 k - s in total, the extra pixel at the bottom/right (TensorFlow 'SAME' for even
                 input sizes): a 3x3 stride-2 conv pads (0, 1, 0, 1), a 1x1 stride-2 conv nothing.
    """
    if padding == "symmetric" or stride == 1:
        p = kernel_size // 2
        return (p, p, p, p)
    if padding == "tf_same":
        total = max(kernel_size - stride, 0)
        before, after = total // 2, total - total // 2
        return (before, after, before, after)
    raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bn(bn_momentum, bn_eps, eps_name: str = "bn_eps") -> None:
    if bn_momentum is not None and not (_is_real(bn_momentum) and 0.0 <= bn_momentum <= 1.0):
        raise ValueError(f"bn_momentum: expected a float in [0, 1] or None, got {bn_momentum!r}")
    if not (_is_real(bn_eps) and 0 < bn_eps < math.inf):
        raise ValueError(f"{eps_name}: expected a finite float > 0, got {bn_eps!r}")


def _check_negative_slope(negative_slope) -> None:
    # NaN or inf would turn every negative activation into NaN (or inf) without any error.
    if not (_is_real(negative_slope) and math.isfinite(negative_slope)):
        raise ValueError(f"negative_slope: expected a finite float (leaky_relu's slope for x < 0), got {negative_slope!r}")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


# ----------------------------------------------------------------------------- CIFAR-style WRN


class BasicBlock(nn.Module):
    """Pre-activation wide block B(kernel_sizes): [BN - act - (dropout) - conv] x l, plus shortcut.

    Input ``[N, in_planes, H, W]`` -> output ``[N, out_planes, H', W']`` with H' = ceil(H / stride)
    (exact for even H). The stride sits on the block's first convolution.

    Attributes (a contract for the fast model):
        bn1, conv1, bn2, conv2, ...  one BN + conv per kernel size; bn_i normalises conv_i's input.
        convShortcut                 1x1 stride-s conv, or None when in_planes == out_planes and s == 1.
        in_planes, out_planes, stride, kernel_sizes (tuple), dropout_rate, equal_in_out (bool),
        shortcut ('preact': projection of act(bn1(x)); 'raw': projection of x),
        raw_input (bool: conv1 and the projection read x itself; bn1 still runs and updates its
        running stats in training, its output is discarded; TorchSSL's activate_before_residual=False),
        activation (canonical name), negative_slope,
        conv_paddings (tuple of (top, bottom, left, right) per conv, shortcut excluded: it has none).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int = 1,
        kernel_sizes: Sequence[int] = (3, 3),
        dropout_rate: float = 0.0,
        activation: str = "relu",
        negative_slope: float = 0.1,
        shortcut: str = "preact",
        conv_bias: bool = False,
        bn_momentum: Optional[float] = 0.1,
        bn_eps: float = 1e-5,
        raw_input: bool = False,
        padding: str = "symmetric",
    ):
        super().__init__()
        _check_positive_int("in_planes", in_planes)
        _check_positive_int("out_planes", out_planes)
        _check_positive_int("stride", stride)
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut: expected one of {SHORTCUTS}, got {shortcut!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")
        if not (_is_real(dropout_rate) and 0.0 <= dropout_rate < 1.0):
            raise ValueError(f"dropout_rate: expected a float in [0, 1), got {dropout_rate!r}")
        _check_negative_slope(negative_slope)
        _check_bn(bn_momentum, bn_eps)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.stride = stride
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.dropout_rate = float(dropout_rate)
        self.activation = normalize_activation(activation)
        self.negative_slope = float(negative_slope)
        self.shortcut = shortcut
        self.raw_input = bool(raw_input)
        self.equal_in_out = in_planes == out_planes and stride == 1

        paddings = []
        for i, k in enumerate(self.kernel_sizes, start=1):
            conv_in = in_planes if i == 1 else out_planes
            conv_stride = stride if i == 1 else 1
            pads = conv_paddings_for(k, conv_stride, padding)
            paddings.append(pads)
            symmetric = len(set(pads)) == 1
            # Symmetric padding stays inside the conv (as in the source codebases); asymmetric
            # padding is applied with F.pad in forward and the conv itself pads nothing.
            self.add_module(f"bn{i}", nn.BatchNorm2d(conv_in, eps=bn_eps, momentum=bn_momentum))
            self.add_module(
                f"conv{i}",
                nn.Conv2d(conv_in, out_planes, k, stride=conv_stride, padding=pads[0] if symmetric else 0, bias=conv_bias),
            )
        self.conv_paddings: Tuple[Pads, ...] = tuple(paddings)
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=conv_bias)
        )

    def _conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """conv_i (1-based) with its padding from conv_paddings."""
        conv = getattr(self, f"conv{i}")
        top, bottom, left, right = self.conv_paddings[i - 1]
        if conv.padding == (0, 0) and (top, bottom, left, right) != (0, 0, 0, 0):
            x = F.pad(x, (left, right, top, bottom))
        return conv(x)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(x, self.activation, self.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_planes, H, W] -> [N, out_planes, H', W']``."""
        o = self._act(self.bn1(x))
        h = self._conv(1, x if self.raw_input else o)
        for i in range(2, len(self.kernel_sizes) + 1):
            a = self._act(getattr(self, f"bn{i}")(h))
            a = F.dropout(a, p=self.dropout_rate, training=self.training)
            h = self._conv(i, a)
        if self.equal_in_out:
            residual = x
        else:
            project_preact = self.shortcut == "preact" and not self.raw_input
            residual = self.convShortcut(o if project_preact else x)
        return h + residual

    def extra_repr(self) -> str:
        return (
            f"in_planes={self.in_planes}, out_planes={self.out_planes}, stride={self.stride}, "
            f"kernel_sizes={self.kernel_sizes}, dropout_rate={self.dropout_rate}, activation={self.activation!r}, "
            f"shortcut={self.shortcut!r}, raw_input={self.raw_input}, conv_paddings={self.conv_paddings}"
        )


class NetworkBlock(nn.Module):
    """One group of ``num_blocks`` BasicBlocks in ``.layer`` (nn.Sequential); stride on the first."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, first_raw_input: bool = False, **block_kwargs):
        super().__init__()
        _check_positive_int("num_blocks", num_blocks)
        blocks = []
        for i in range(num_blocks):
            block_in = in_planes if i == 0 else out_planes
            block_stride = stride if i == 0 else 1
            # Only a block with a projection can read its raw input (as in TorchSSL, where the
            # flag only matters when in_planes != out_planes).
            projects = not (block_in == out_planes and block_stride == 1)
            blocks.append(
                BasicBlock(block_in, out_planes, block_stride, raw_input=first_raw_input and i == 0 and projects, **block_kwargs)
            )
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _normalize_activate_before_residual(value) -> Optional[Tuple[bool, bool, bool]]:
    if value is None:
        return None
    if isinstance(value, bool):
        return (value, value, value)
    try:
        flags = tuple(value)
    except TypeError:
        flags = ()
    if len(flags) != 3 or not all(isinstance(f, bool) for f in flags):
        raise ValueError(
            "activate_before_residual: expected None, a bool, or 3 bools (one per group, "
            f"TorchSSL uses (True, False, False)), got {value!r}"
        )
    return flags


def _channel_buffer(name: str, value, channels: int, positive: bool = False) -> Optional[torch.Tensor]:
    """[1, C, 1, 1] fp32 from a scalar or C values; checked on the CPU (also when building on 'meta')."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32, device="cpu").flatten()
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ValueError(f"{name}: expected {channels} values (one per input channel) or a scalar, got {t.numel()}")
    if not bool(torch.isfinite(t).all()) or (positive and not bool((t > 0).all())):
        raise ValueError(f"{name}: expected every value finite{' and > 0' if positive else ''}, got {t.tolist()}")
    return t.view(1, channels, 1, 1)


def init_like_xternalz_(modules) -> None:
    """xternalz / RobustBench / TRADES init: convs Kaiming-normal fan_out (ReLU gain: their
    N(0, sqrt(2 / (k*k*out)))), conv and Linear biases 0, BN 1 / 0; the Linear weight keeps
    PyTorch's default."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _depth_and_blocks_per_group(depth, blocks_per_group, kernel_sizes) -> Tuple[int, int]:
    """(depth, n) from the constructor's depth / blocks_per_group (see WideResNet's docstring)."""
    per_block = len(kernel_sizes)
    name = "B(" + ",".join(map(str, kernel_sizes)) + ")"
    if blocks_per_group is not None:
        _check_positive_int("blocks_per_group", blocks_per_group)
        n = blocks_per_group
        table1, convs = 6 * n + 4, 3 * n * per_block + 4
        if depth is None:
            return table1, n
        if depth not in (table1, convs) or isinstance(depth, bool):
            choices = f"{table1}" if table1 == convs else f"{table1} (6n + 4, the paper's names) or {convs} (3 * n * {per_block} + 4, the convolutions + 4)"
            raise ValueError(f"depth: with blocks_per_group={n} and block {name} expected {choices} or None, got {depth!r}")
        return depth, n
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        hint = ""
        if isinstance(depth, int) and per_block != 2 and depth >= 4 + 3 * per_block and (depth - 4) % (3 * per_block) == 0:
            m = (depth - 4) // (3 * per_block)
            hint = (f"; {depth} = 3 * {m} * {per_block} + 4 counts the convolutions of {m} {name} blocks per group: "
                    f"that network is WideResNet({6 * m + 4}, ..., block='{name}'), or pass blocks_per_group={m}")
        raise ValueError(
            f"depth: expected 6n + 4 with n >= 1 (n blocks per group for every block type, the paper's "
            f"naming, e.g. 28 or 40), got {depth!r}{hint}"
        )
    return depth, (depth - 4) // 6


# Wider than any published CIFAR WRN (WRN-34-20, WRN-70-16): a second positional argument above this
# is far more likely a class count in xternalz's argument order than a widen factor.
_MAX_POSITIONAL_WIDEN_FACTOR = 32


def _check_positional_order(args) -> None:
    """``WideResNet(16, 100)`` means widen_factor=100 here but num_classes=100 in xternalz's
    ``WideResNet(depth, num_classes, widen_factor, dropRate)``: refuse the absurd reading."""
    widen_factor = args[1]
    if _is_real(widen_factor) and widen_factor > _MAX_POSITIONAL_WIDEN_FACTOR:
        widths = ", ".join(str(int(c * widen_factor)) for c in (16, 32, 64))
        raise ValueError(
            f"widen_factor: got {widen_factor!r} as the second positional argument, which would build groups "
            f"of {widths} channels. The order here is WideResNet(depth, widen_factor, dropout_rate, num_classes); "
            "xternalz / RobustBench / TRADES use WideResNet(depth, num_classes, widen_factor, dropRate). "
            "Use keywords (WideResNet(depth=16, widen_factor=4, num_classes=100)), or "
            "wrn_fast.compat.xternalz.WideResNet for their order; pass widen_factor= as a keyword if you "
            "really mean such a wide network."
        )


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR-sized inputs (any size: the final pooling is global).

    Input ``[N, in_channels, H, W]`` -> logits ``[N, num_classes]``.

    Args:
        depth: ``6n + 4``: n BasicBlocks per group whatever the block type, the paper's naming
            (WRN-40-2-B(1,3,1) = ``WideResNet(40, 2, block='B(1,3,1)')``: 6 blocks of 3 convs per group).
            With ``blocks_per_group`` given, depth may also be ``3 * n * l + 4`` (the number of
            convolutions + 4, how the paper's Table 2 names its l = 1..4 networks) or None.
        widen_factor: k (int >= 1); group widths 16k, 32k, 64k. Passed positionally it must be
            <= 32 (a guard against xternalz's (depth, num_classes, ...) argument order).
        dropout_rate: dropout before every conv of a block but the first, in [0, 1).
        num_classes: size of the classifier output.
        in_channels: input channels of the stem.
        activation: 'relu', 'leaky_relu' (uses negative_slope) or 'silu' (alias 'swish').
        negative_slope: leaky_relu's slope, a finite float.
        bn_momentum, bn_eps: every BatchNorm2d's momentum and eps (but see final_bn_eps).
        final_bn_eps: eps of the last BatchNorm (``bn1``, before the pooling); None = bn_eps.
            USB (semilearn 0.3) uses 1e-5 in its blocks and 1e-3 there.
        shortcut: 'preact' (projection of act(bn1(x)): paper/xternalz/RobustBench) or 'raw' (of x).
        conv_bias: give every convolution a bias (TorchSSL / USB-2022 checkpoints have them).
        stem_bias: the stem convolution's bias; None = conv_bias (USB 0.3: stem only).
        fc_bias: the classifier's bias (RobustBench's bias_last).
        block: block structure, e.g. (3, 3), 'B(3,1,3)', (3, 3, 3).
        blocks_per_group: n, explicitly (otherwise ``(depth - 4) / 6``).
        first_stride: stride of group 1 (TorchSSL / USB use 2 for STL-10's 96x96 images).
        activate_before_residual: None (every block pre-activated) or per-group flags as TorchSSL /
            kekmodel FixMatch pass them to their NetworkBlocks (their layout is (True, False, False));
            a single bool applies to all three groups. False makes the group's first block, when it
            has a projection, read its raw input (BasicBlock.raw_input).
        padding: 'symmetric' or 'tf_same' (DMWideResNet's stride-2 padding), see conv_paddings_for.
        input_mean, input_std: optional per-channel normalisation ``(x - mean) / std`` before the
            stem (DMWideResNet); stored as non-persistent buffers [1, C, 1, 1] (or None).

    Attributes: conv1, block1, block2, block3 (NetworkBlock), bn1, fc; depth, widen_factor,
    num_classes, in_channels, dropout_rate, activation, negative_slope, shortcut, conv_bias, stem_bias,
    fc_bias, bn_momentum, bn_eps, final_bn_eps, padding, block_kernel_sizes, num_blocks_per_group,
    first_stride, widths (16, 16k, 32k, 64k), activate_before_residual (None or 3 bools), input_mean,
    input_std. Each BatchNorm module carries its own eps and momentum (the fast model reads them there).
    """

    # Subclasses with another positional signature (wrn_fast.compat) switch the guard off.
    _check_positional_widen_factor = True

    def __new__(cls, *args, **kwargs):
        if cls._check_positional_widen_factor and len(args) >= 2:
            _check_positional_order(args)
        return super().__new__(cls)

    def __init__(
        self,
        depth: Optional[int] = 28,
        widen_factor: int = 10,
        dropout_rate: float = 0.0,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        activation: str = "relu",
        negative_slope: float = 0.1,
        bn_momentum: Optional[float] = 0.1,
        bn_eps: float = 1e-5,
        final_bn_eps: Optional[float] = None,
        shortcut: str = "preact",
        conv_bias: bool = False,
        stem_bias: Optional[bool] = None,
        fc_bias: bool = True,
        block: Union[str, Sequence[int]] = (3, 3),
        blocks_per_group: Optional[int] = None,
        first_stride: int = 1,
        activate_before_residual=None,
        padding: str = "symmetric",
        input_mean=None,
        input_std=None,
    ):
        super().__init__()
        kernel_sizes = parse_block(block)
        depth, n = _depth_and_blocks_per_group(depth, blocks_per_group, kernel_sizes)
        _check_positive_int("widen_factor", widen_factor)
        if not (_is_real(dropout_rate) and 0.0 <= dropout_rate < 1.0):
            raise ValueError(
                f"dropout_rate: expected a float in [0, 1), got {dropout_rate!r} (the positional order is "
                "WideResNet(depth, widen_factor, dropout_rate, num_classes); for xternalz's order use "
                "wrn_fast.compat.xternalz.WideResNet)"
            )
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("first_stride", first_stride)
        activation = normalize_activation(activation)
        _check_negative_slope(negative_slope)
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut: expected one of {SHORTCUTS}, got {shortcut!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")
        _check_bn(bn_momentum, bn_eps)
        final_bn_eps = bn_eps if final_bn_eps is None else final_bn_eps
        _check_bn(bn_momentum, final_bn_eps, "final_bn_eps")
        for name, flag in (("conv_bias", conv_bias), ("fc_bias", fc_bias), ("stem_bias", stem_bias)):
            if not (isinstance(flag, bool) or (name == "stem_bias" and flag is None)):
                raise ValueError(f"{name}: expected a bool{' or None' if name == 'stem_bias' else ''}, got {flag!r}")
        stem_bias = conv_bias if stem_bias is None else stem_bias
        abr = _normalize_activate_before_residual(activate_before_residual)

        self.depth = depth
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.dropout_rate = float(dropout_rate)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.shortcut = shortcut
        self.conv_bias = conv_bias
        self.stem_bias = stem_bias
        self.fc_bias = fc_bias
        self.bn_momentum = bn_momentum
        self.bn_eps = bn_eps
        self.final_bn_eps = final_bn_eps
        self.padding = padding
        self.block_kernel_sizes = kernel_sizes
        self.activate_before_residual = abr
        self.num_blocks_per_group = n
        self.first_stride = first_stride
        self.widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        # Non-persistent: state_dict keys stay exactly xternalz's.
        self.register_buffer("input_mean", _channel_buffer("input_mean", input_mean, in_channels), persistent=False)
        self.register_buffer("input_std", _channel_buffer("input_std", input_std, in_channels, positive=True),
                             persistent=False)

        block_kwargs = dict(
            kernel_sizes=kernel_sizes,
            dropout_rate=dropout_rate,
            activation=activation,
            negative_slope=negative_slope,
            shortcut=shortcut,
            conv_bias=conv_bias,
            bn_momentum=bn_momentum,
            bn_eps=bn_eps,
            padding=padding,
        )
        w = self.widths
        raw = (False, False, False) if abr is None else tuple(not f for f in abr)
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, stride=1, padding=1, bias=stem_bias)
        self.block1 = NetworkBlock(n, w[0], w[1], first_stride, first_raw_input=raw[0], **block_kwargs)
        self.block2 = NetworkBlock(n, w[1], w[2], 2, first_raw_input=raw[1], **block_kwargs)
        self.block3 = NetworkBlock(n, w[2], w[3], 2, first_raw_input=raw[2], **block_kwargs)
        self.bn1 = nn.BatchNorm2d(w[3], eps=final_bn_eps, momentum=bn_momentum)
        self.fc = nn.Linear(w[3], num_classes, bias=fc_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """xternalz init (see init_like_xternalz_)."""
        init_like_xternalz_(self.modules())

    def blocks(self):
        """Every BasicBlock in forward order."""
        for group in (self.block1, self.block2, self.block3):
            yield from group.layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, H, W] -> [N, num_classes]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape [N, {self.in_channels}, H, W], got {list(x.shape)}")
        if self.padding == "tf_same" and (x.shape[-2] % 4 or x.shape[-1] % 4):
            # With odd sizes at a stride-2 block the (0, 1) padded conv and the unpadded 1x1
            # shortcut disagree on the output size (DMWideResNet has the same limit).
            raise ValueError(f"x: padding='tf_same' expects H and W divisible by 4, got {list(x.shape[-2:])}")
        if self.input_mean is not None:
            x = x - self.input_mean
        if self.input_std is not None:
            x = x / self.input_std
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = apply_activation(self.bn1(out), self.activation, self.negative_slope)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


# ----------------------------------------------------------------------------- ImageNet-style WRN-50-2


class Bottleneck(nn.Module):
    """torchvision's post-activation bottleneck (stride on the 3x3 conv, "ResNet v1.5").

    ``[N, inplanes, H, W] -> [N, planes * 4, H / stride, W / stride]``:
    relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + downsample(x))

    Attributes: conv1 bn1 conv2 bn2 conv3 bn3 relu downsample (Sequential(conv 1x1, BN) or None),
    stride, inplanes, planes, width (the 3x3 conv's channels).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 width_per_group: int = 64, bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5):
        super().__init__()
        width = int(planes * (width_per_group / 64.0))
        self.inplanes, self.planes, self.width, self.stride = inplanes, planes, width, stride
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class WideResNetBottleneck(nn.Module):
    """ImageNet WRN (e.g. WRN-50-2) with torchvision's module names, so its state_dicts load strict.

    ``[N, in_channels, H, W] -> [N, num_classes]``; stem conv 7x7 s2 + max-pool 3x3 s2, four stages
    of ``layers[i]`` Bottlenecks (planes 64, 128, 256, 512; stride 1, 2, 2, 2), global average pool, fc.
    ``width_per_group=128`` doubles the bottleneck width (64 would be the plain ResNet).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        width_per_group: int = 128,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        bn_momentum: Optional[float] = 0.1,
        bn_eps: float = 1e-5,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        layers = tuple(layers)
        if len(layers) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in layers):
            raise ValueError(f"layers: expected 4 ints >= 1 (blocks per stage), got {layers!r}")
        _check_positive_int("width_per_group", width_per_group)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        _check_bn(bn_momentum, bn_eps)
        self.layers = layers
        self.width_per_group = width_per_group
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.bn_momentum, self.bn_eps = bn_momentum, bn_eps

        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2)), start=1):
            stage_blocks = []
            for i in range(blocks):
                s = stride if i == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes * Bottleneck.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=s, bias=False),
                        nn.BatchNorm2d(planes * Bottleneck.expansion, eps=bn_eps, momentum=bn_momentum),
                    )
                stage_blocks.append(Bottleneck(inplanes, planes, s, downsample, width_per_group, bn_momentum, bn_eps))
                inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, H, W] -> [N, num_classes]``."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- factories


def wrn_28_10(**kwargs) -> WideResNet:
    """WRN-28-10 (36.5M parameters with 10 classes)."""
    return WideResNet(**{"depth": 28, "widen_factor": 10, **kwargs})


def wrn_16_8(**kwargs) -> WideResNet:
    """WRN-16-8 (11.0M parameters)."""
    return WideResNet(**{"depth": 16, "widen_factor": 8, **kwargs})


def wrn_40_4(**kwargs) -> WideResNet:
    """WRN-40-4 (8.9M parameters)."""
    return WideResNet(**{"depth": 40, "widen_factor": 4, **kwargs})


def wrn_28_2(**kwargs) -> WideResNet:
    """WRN-28-2 (1.5M parameters; the semi-supervised learning baseline)."""
    return WideResNet(**{"depth": 28, "widen_factor": 2, **kwargs})


def wrn_34_10(**kwargs) -> WideResNet:
    """WRN-34-10 (46.2M parameters; the adversarial-training baseline)."""
    return WideResNet(**{"depth": 34, "widen_factor": 10, **kwargs})


def wrn_70_16(**kwargs) -> WideResNet:
    """WRN-70-16 (266.8M parameters; RobustBench's largest WRNs)."""
    return WideResNet(**{"depth": 70, "widen_factor": 16, **kwargs})


def wide_resnet50_2(**kwargs) -> WideResNetBottleneck:
    """WRN-50-2 for ImageNet (68.9M parameters), torchvision-compatible state_dict."""
    return WideResNetBottleneck(**{"layers": (3, 4, 6, 3), "width_per_group": 128, **kwargs})


def wide_resnet101_2(**kwargs) -> WideResNetBottleneck:
    """WRN-101-2 for ImageNet (126.9M parameters), torchvision-compatible state_dict."""
    return WideResNetBottleneck(**{"layers": (3, 4, 23, 3), "width_per_group": 128, **kwargs})
