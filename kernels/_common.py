"""Helpers shared by the Triton kernels: activations, the dropout mask, the launch device.

The dropout mask is a pure function of (seed, logical element index) so that the
forward, dgrad and wgrad kernels (and the C++ ops, which implement the same
Philox4x32-10 as ``tl.rand``) agree on it under any tiling:

    idx  = ((n * C + c) * H + h) * W + w          (logical NCHW index, int32)
    keep = tl.rand(seed, idx) >= p                 (P(keep) = 1 - p)
    y    = keep ? a / (1 - p) : 0

``seed`` is an int64 scalar in [0, 2**31) read from a 1-element device tensor
(drawn from torch's generator, so it is reproducible under torch.manual_seed
and changes on every replay of a captured CUDA graph).

The convolutions do not run Philox in their K loops: the mask is evaluated once
per use into a bitmask (``keep_bits``: int32 [N*H*W, ceil(C/32)], bit c % 32 of
word [(n*H + h)*W + w, c // 32] = keep of channel c of that pixel; bits past C are
0) and the kernels test bits (``keep_from_bits``).
"""
import contextlib
import struct

import torch
import triton
import triton.language as tl



def launch_device(t: torch.Tensor):
    """Context in which to launch kernels on ``t``: Triton launches on the *current*
    CUDA device, which need not be the tensors' (e.g. a model on cuda:1)."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@triton.jit
def apply_act(z, ACT: tl.constexpr, slope):
    """act(z) in fp32 (fp64 for fp64 z). NaN propagates as in torch (relu(NaN) = NaN)."""
    if ACT == 1:
        return tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)  # one max.NaN per element
    elif ACT == 2:
        return tl.where(z < 0, z * slope, z)
    elif ACT == 3:
        return z * tl.sigmoid(z)
    else:
        return z


@triton.jit
def act_grad(z, ACT: tl.constexpr, slope):
    """d act / dz at z, matching PyTorch's backward (relu'(0) = 0, leaky'(0) = slope)."""
    if ACT == 1:
        return tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        return tl.where(z > 0, 1.0, slope)
    elif ACT == 3:
        s = tl.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    else:
        return tl.full(z.shape, 1.0, tl.float32)


@triton.jit
def dropout_keep(seed, idx, p):
    """Boolean keep mask for logical element indices ``idx`` (int32 block)."""
    return tl.rand(seed, idx) >= p


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def dropout_bits_kernel(seed_ptr, bits_ptr, R, C, HW, CW, p, BLOCK_R: tl.constexpr):
    """keep_bits[r, j] for rows r = n*HW + hw of one row block and word column j."""
    pid_r = tl.program_id(0)
    j = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    n = r // HW
    hw = r - n * HW
    bit = tl.arange(0, 32)
    c = j * 32 + bit
    idx = (n * C * HW + hw)[:, None] + (c * HW)[None, :]
    keep = dropout_keep(tl.load(seed_ptr), idx, p) & (c < C)[None, :]
    word = tl.reduce(keep.to(tl.int32) << bit[None, :], 1, _bit_or)
    tl.store(bits_ptr + r * CW + j, word, mask=r_ok)


@triton.jit
def keep_from_bits(bits_ptr, row_words, row_ok, c0, cols, CW, BLOCK: tl.constexpr):
    """Keep mask [R, BLOCK] of channels c0 + cols (cols = tl.arange(0, BLOCK)) of the
    rows whose first word is at ``row_words`` (= pixel * CW, [R]); False where not row_ok.

    c0 is a multiple of BLOCK. BLOCK <= 32: one word per row (the bits at c0 % 32);
    BLOCK > 32 (a multiple of 32): BLOCK // 32 words per row, selected per column."""
    if BLOCK <= 32:
        wd = tl.load(bits_ptr + row_words + c0 // 32, mask=row_ok, other=0)
        if BLOCK == 32:
            sel = 1 << cols                      # loop-invariant: hoisted out of K loops
        else:
            sel = 1 << (cols + c0 % 32)
        keep = (wd[:, None] & sel[None, :]) != 0
    else:
        NW: tl.constexpr = BLOCK // 32
        wj = tl.arange(0, NW)
        wds = tl.load(bits_ptr + row_words[:, None] + (c0 // 32 + wj)[None, :],
                      mask=row_ok[:, None] & (c0 // 32 + wj < CW)[None, :], other=0)       # [R, NW]
        wd = tl.reshape(tl.broadcast_to(wds[:, :, None], (row_words.shape[0], NW, 32)),
                        (row_words.shape[0], BLOCK))                                          # word of each column
        keep = (wd & (1 << (cols % 32))[None, :]) != 0
    return keep


def _f32(v: float) -> float:
    """Round a Python float to fp32: the kernels see every scalar as fp32 on the GPU;
    doing it here makes the interpreter (which may keep fp64) see the same values."""
    return struct.unpack("f", struct.pack("f", float(v)))[0]


def _scalars(negative_slope, dropout_p):
    """(slope, p, inv_keep) as the kernels use them: fp32(p), fp32(1 / (1 - fp32(p)))."""
    p = _f32(dropout_p)
    return _f32(negative_slope), p, _f32(1.0 / (1.0 - p))
