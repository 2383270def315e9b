"""The op contract's plain facts, in one leaf module (imports torch only, never triton).

Installed as ``wrn_fast.kernels.contract``. The kernels (the bottom layer), the op
wiring (``wrn_fast.ops``, which re-exports these names) and the fake kernels all
read them from here, so each rule exists once:

  ACT_CODES / check_activation   activation names and their constexpr codes
  norm_padding                   int | (ph, pw) | (top, bottom, left, right) -> 4-tuple
  out_hw / conv_out_shape        output size of a convolution
  output_memory_format           channels_last in -> channels_last out
  dropout_bits_shape             shape of the convolutions' dropout keep bitmask
  max_index_elements             the kernels' int32 index bound (IndexRangeError)
  stats_dtype                    dtype of BN statistics, scale / shift for x's dtype
"""
from typing import Tuple

import torch

# Activation codes: constexpr arguments of the kernels.
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_LEAKY_RELU = 2
ACT_SILU = 3
ACT_CODES = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY_RELU, "silu": ACT_SILU}

# Element indices that the kernels compute in int32 (the dropout index, per-image
# offsets) must stay below this.
MAX_INDEX = 2**31


class IndexRangeError(ValueError):
    """A tensor is too large for the kernels' int32 indexing; split the batch.

    ``max_batch`` is the largest batch size that fits (0 if none does), so a batch-size
    search can use it as a bound instead of treating the error as a failure.
    """

    def __init__(self, message: str, max_batch: int):
        super().__init__(message)
        self.max_batch = max_batch


def check_activation(act: str, what: str = "activation") -> int:
    """The constexpr code of ``act``; ValueError naming the argument if unknown."""
    if act not in ACT_CODES:
        raise ValueError(f"{what} must be one of {tuple(ACT_CODES)}, got {act!r}")
    return ACT_CODES[act]


def norm_padding(padding) -> Tuple[int, int, int, int]:
    """int | (ph, pw) | (top, bottom, left, right) -> (top, bottom, left, right), all >= 0."""
    if isinstance(padding, int):
        pads = (padding,) * 4
    else:
        pads = tuple(int(v) for v in padding)
        if len(pads) == 2:
            pads = (pads[0], pads[0], pads[1], pads[1])
        elif len(pads) != 4:
            raise ValueError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), got {padding}")
    if min(pads) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return pads


def out_hw(h: int, w: int, kh: int, kw: int, stride: int, padding) -> Tuple[int, int]:
    """(Ho, Wo) of a kh x kw convolution with ``stride`` and ``padding`` (any form above)."""
    pt, pb, pl, pr = norm_padding(padding)
    return (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1


def conv_out_shape(x_shape, weight_shape, stride: int, padding) -> Tuple[int, int, int, int]:
    """[N, Cout, Ho, Wo] of conv2d(x [N, Cin, H, W], weight [Cout, Cin, kh, kw])."""
    ho, wo = out_hw(x_shape[2], x_shape[3], weight_shape[2], weight_shape[3], stride, padding)
    return int(x_shape[0]), int(weight_shape[0]), ho, wo


def dropout_bits_shape(x_shape) -> Tuple[int, int]:
    """int32 [N*H*W, ceil(C/32)]: the dropout keep bitmask of an input [N, C, H, W]
    (one word per pixel and 32 channels; see kernels/_common.py)."""
    n, c, h, w = (int(v) for v in x_shape)
    return n * h * w, (c + 31) // 32


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-channel BN statistics (mean, var, the convs' partials), scale / shift and the
    BN backward coefficients of data of ``dtype``: float32, float64 for float64 data (as
    nn.BatchNorm2d computes them; the C++ kernels' stats_dtype, csrc/common.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Memory format of outputs made for ``x``: channels_last in -> channels_last out.

    One rule for the launchers and their fake kernels (which must not import triton).
    """
    if x.dim() != 4 or x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    # a strided view: channels_last when c is its fastest-varying axis (e.g. a channel slice of one)
    others = [x.stride(d) for d in (2, 3) if x.shape[d] > 1]
    if x.shape[1] > 1 and others and x.stride(1) < min(others):
        return torch.channels_last
    return torch.contiguous_format
