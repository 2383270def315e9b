"""CIFAR-style WRN-depth-k: the pre-activation wide block B(M), its groups and the network."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .initialization import init_like_xternalz_
from .options import (PADDINGS, SHORTCUTS, Pads, _check_bn, _check_choice, _check_negative_slope, _check_positive_int,
                      _is_real, apply_activation, conv_paddings_for, normalize_activation, parse_block)


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
        _check_choice("shortcut", shortcut, SHORTCUTS)
        _check_choice("padding", padding, PADDINGS)
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


# ----------------------------------------------------------------------------- WideResNet's argument checks


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
        _check_choice("shortcut", shortcut, SHORTCUTS)
        _check_choice("padding", padding, PADDINGS)
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
