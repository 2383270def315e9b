"""Fused elementwise BN-apply + activation + dropout (forward and backward).

For the places where no convolution follows to fuse into (the final BN-act before
pooling, a standalone building block). These are the CUDA kernels of the op
``wrn_fast::bn_act_dropout`` / ``bn_act_dropout_backward`` (registered by
wrn_fast/ops/bn_act.py; its CPU kernels are C++, with the same dropout mask), and the
two-pass convolution's elementwise pass. With ``scale``/``shift`` the fused BN
affine (see ``wrn_fast.ops``: scale = gamma * invstd, shift = beta - mean * scale):

forward   z = x * scale[c] + shift[c]                       (fp32 compute; fp64 for fp64 x)
          y = dropout(act(z)) = keep ? act(z) / (1 - p) : 0  stored in x's dtype
backward  g_z        = grad_y * keep / (1 - p) * act'(z)     (z recomputed, mask regenerated)
          grad_x     = g_z * scale[c]                        x's dtype
          grad_scale = sum_{n,h,w} g_z * x                   fp32 (BN backward's sum(g * xhat) part)
          grad_shift = sum_{n,h,w} g_z                       fp32 (BN backward's sum(g))

The dropout mask is ``keep = tl.rand(seed, idx) >= p`` with the logical NCHW index
``idx = ((n*C + c)*H + h)*W + w`` (kernels/_common.py), so it never depends on the
tiling or the memory layout and is regenerated, not stored, in backward.

Tiling. The logical tensor is viewed as rows (the N*H*W positions) x columns (the C
channels); a program owns a [BLOCK_R, BLOCK_C] tile, so scale/shift are loaded once
per column block. How a row maps to memory is a constexpr mode chosen by the
launcher from the strides of every tensor the kernel touches:

  FLAT       n, h, w collapse into one row stride (channels_last, [N, C] 2-D,
             N == 1): row offset = r * s_row; tiles run across images.
  per-image  h, w collapse (NCHW contiguous and most views): a tile lies inside
             one image n, offset = n*s_n + hw*s_hw; on GPU hw is the contiguous,
             coalesced axis for NCHW and c for channels_last.
  SPLIT_HW   nothing collapses (e.g. x[..., 1:]): offset = n*s_n + h*s_h + w*s_w.

Backward reduces grad_scale / grad_shift without atomics: a grid of (P, column
blocks) programs, each looping over row tiles P apart and writing one fp32
partial row, then the [P, C] partials are summed (P is a few hundred at most).
grad_scale / grad_shift are returned in scale's dtype (the statistics dtype: float32,
float64 for fp64 x, as the C++ kernel; accumulated in fp64 when x is fp64). Float
scalars (negative_slope, p, 1/(1-p)) reach the kernels as fp32.
"""
import math
import os

import torch
import triton
import triton.language as tl

from ._common import _f32, act_grad, apply_act, dropout_keep, launch_device
from .contract import MAX_INDEX, IndexRangeError, check_activation, output_memory_format, stats_dtype

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_GRID_Y = 65535  # CUDA's limit on grid dimension 1


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _tile_rows(t, R, HW, nhb, BLOCK_R: tl.constexpr, FLAT: tl.constexpr):
    """Rows of row tile ``t``: (r, n, hw, mask_r).

    FLAT: r = global row index in [0, N*HW) (vector); n, hw derived from it.
    else: the tile lies in image n = t // nhb (scalar); hw is a vector in [0, HW).
    """
    if FLAT:
        r = t * BLOCK_R + tl.arange(0, BLOCK_R)
        mask_r = r < R
        n = r // HW
        hw = r - n * HW
    else:
        n = t // nhb
        hw = (t - n * nhb) * BLOCK_R + tl.arange(0, BLOCK_R)
        mask_r = hw < HW
        r = hw
    return r, n, hw, mask_r


@triton.jit
def _row_offsets(r, n, hw, W, s_n, s_h, s_w,
                 FLAT: tl.constexpr, SPLIT_HW: tl.constexpr, OFFS_64: tl.constexpr):
    """Memory offset (in elements) of each row for one tensor with strides (s_n, s_h, s_w).

    FLAT: s_w is the collapsed row stride. per-image: s_w is the collapsed hw stride.
    """
    if OFFS_64:
        r = r.to(tl.int64)
        n = n.to(tl.int64)
        hw = hw.to(tl.int64)
    if FLAT:
        off = r * s_w
    elif SPLIT_HW:
        h = hw // W
        w = hw - h * W
        off = n * s_n + h * s_h + w * s_w
    else:
        off = n * s_n + hw * s_w
    return off


@triton.jit
def _col_offsets(c, s_c, OFFS_64: tl.constexpr):
    if OFFS_64:
        c = c.to(tl.int64)
    return c * s_c


@triton.jit
def _keep_mask(seed_ptr, n, hw, c, C, HW, p):
    """Dropout keep mask of the tile from the logical NCHW index (int32)."""
    seed = tl.load(seed_ptr)
    row_idx = n * (C * HW) + hw                                  # [BLOCK_R]
    idx = row_idx[:, None] + (c * HW)[None, :]                   # [BLOCK_R, BLOCK_C]
    return dropout_keep(seed, idx, p)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _bn_act_dropout_fwd_kernel(
    x_ptr,          # input  x, logical [N, C, H, W], strides (sx_n, sx_c, sx_h, sx_w) (row-mode adjusted)
    y_ptr,          # output y, logical [N, C, H, W], strides (sy_n, sy_c, sy_h, sy_w)
    scale_ptr,      # [C] fp32/fp64, contiguous
    shift_ptr,      # [C] fp32/fp64, contiguous
    seed_ptr,       # int64 [1] dropout seed (read only if HAS_DROPOUT)
    R, C, HW, W, nhb,   # R = N*H*W rows, nhb = row tiles per image (per-image modes)
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    slope,          # negative_slope of leaky_relu (fp32)
    p,              # dropout probability (fp32)
    inv_keep,       # 1 / (1 - p) (0 when p == 1)
    ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    FLAT: tl.constexpr, SPLIT_HW: tl.constexpr, OFFS_64: tl.constexpr,
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for fp64 x
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    t = tl.program_id(0)
    pid_c = tl.program_id(1)
    r, n, hw, mask_r = _tile_rows(t, R, HW, nhb, BLOCK_R, FLAT)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    mask = mask_r[:, None] & mask_c[None, :]

    scale = tl.load(scale_ptr + c, mask=mask_c, other=0.0).to(COMPUTE)
    shift = tl.load(shift_ptr + c, mask=mask_c, other=0.0).to(COMPUTE)

    x_off = (_row_offsets(r, n, hw, W, sx_n, sx_h, sx_w, FLAT, SPLIT_HW, OFFS_64)[:, None]
             + _col_offsets(c, sx_c, OFFS_64)[None, :])
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(COMPUTE)
    a = apply_act(x * scale[None, :] + shift[None, :], ACT, slope)
    if HAS_DROPOUT:
        keep = _keep_mask(seed_ptr, n, hw, c, C, HW, p)
        a = tl.where(keep, a * inv_keep, 0.0)

    y_off = (_row_offsets(r, n, hw, W, sy_n, sy_h, sy_w, FLAT, SPLIT_HW, OFFS_64)[:, None]
             + _col_offsets(c, sy_c, OFFS_64)[None, :])
    tl.store(y_ptr + y_off, a.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_act_dropout_bwd_kernel(
    gy_ptr,         # grad_y, logical [N, C, H, W], strides (sg_*) (any, e.g. expanded)
    x_ptr,          # x, logical [N, C, H, W], strides (sx_*)
    gx_ptr,         # grad_x out, logical [N, C, H, W], strides (sgx_*)
    scale_ptr,      # [C] fp32/fp64
    shift_ptr,      # [C] fp32/fp64
    seed_ptr,       # int64 [1] (read only if HAS_DROPOUT)
    part_s_ptr,     # [P, C] COMPUTE: per-program partial sums of g_z * x  (-> grad_scale)
    part_b_ptr,     # [P, C] COMPUTE: per-program partial sums of g_z      (-> grad_shift)
    R, C, HW, W, nhb, num_tiles, P,
    sg_n, sg_c, sg_h, sg_w,
    sx_n, sx_c, sx_h, sx_w,
    sgx_n, sgx_c, sgx_h, sgx_w,
    slope, p, inv_keep,
    ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    FLAT: tl.constexpr, SPLIT_HW: tl.constexpr, OFFS_64: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    scale = tl.load(scale_ptr + c, mask=mask_c, other=0.0).to(COMPUTE)
    shift = tl.load(shift_ptr + c, mask=mask_c, other=0.0).to(COMPUTE)
    col_g = _col_offsets(c, sg_c, OFFS_64)
    col_x = _col_offsets(c, sx_c, OFFS_64)
    col_gx = _col_offsets(c, sgx_c, OFFS_64)

    acc_s = tl.zeros([BLOCK_C], dtype=COMPUTE)
    acc_b = tl.zeros([BLOCK_C], dtype=COMPUTE)
    for t in range(pid_p, num_tiles, P):
        r, n, hw, mask_r = _tile_rows(t, R, HW, nhb, BLOCK_R, FLAT)
        mask = mask_r[:, None] & mask_c[None, :]
        g_off = _row_offsets(r, n, hw, W, sg_n, sg_h, sg_w, FLAT, SPLIT_HW, OFFS_64)[:, None] + col_g[None, :]
        x_off = _row_offsets(r, n, hw, W, sx_n, sx_h, sx_w, FLAT, SPLIT_HW, OFFS_64)[:, None] + col_x[None, :]
        g = tl.load(gy_ptr + g_off, mask=mask, other=0.0).to(COMPUTE)
        x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(COMPUTE)
        z = x * scale[None, :] + shift[None, :]
        if HAS_DROPOUT:
            keep = _keep_mask(seed_ptr, n, hw, c, C, HW, p)
            g = tl.where(keep, g * inv_keep, 0.0)
        gz = g * act_grad(z, ACT, slope)
        # out-of-range lanes (g = x = 0 there) contribute nothing, even if act'(shift) is not finite
        gz = tl.where(mask, gz, 0.0)
        gx_off = (_row_offsets(r, n, hw, W, sgx_n, sgx_h, sgx_w, FLAT, SPLIT_HW, OFFS_64)[:, None]
                  + col_gx[None, :])
        tl.store(gx_ptr + gx_off, (gz * scale[None, :]).to(gx_ptr.dtype.element_ty), mask=mask)
        acc_s += tl.sum(gz * x, axis=0)
        acc_b += tl.sum(gz, axis=0)
    tl.store(part_s_ptr + pid_p * C + c, acc_s, mask=mask_c)
    tl.store(part_b_ptr + pid_p * C + c, acc_b, mask=mask_c)


# ----------------------------------------------------------------------------- launch helpers


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _empty_like_format(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def _strides4(t: torch.Tensor):
    """(N, C, H, W) sizes and strides of a logical [N, C, H, W] or [N, C] tensor."""
    if t.dim() == 2:
        return (t.shape[0], t.shape[1], 1, 1), (t.stride(0), t.stride(1), 0, 0)
    return tuple(t.shape), tuple(t.stride())


def _row_mode(tensors):
    """Pick FLAT / per-image / SPLIT_HW for all tensors and return per-tensor (s_n, s_c, s_h, s_w).

    In FLAT mode s_w is the collapsed row stride; in per-image mode s_w is the
    collapsed hw stride (see the module docstring).
    """
    sizes, _ = _strides4(tensors[0])
    N, C, H, W = sizes
    HW = H * W

    def hw_stride(s):  # stride of the collapsed (h, w) axis, or None
        if W == 1:
            return s[2] if H > 1 else 0
        if H == 1 or s[2] == W * s[3]:
            return s[3]
        return None

    def row_stride(s):  # stride of the collapsed (n, h, w) axis, or None
        shw = hw_stride(s)
        if shw is None:
            return None
        if HW == 1:
            return s[0]
        if N == 1 or s[0] == HW * shw:
            return shw
        return None

    strides = [_strides4(t)[1] for t in tensors]
    rows = [row_stride(s) for s in strides]
    if all(v is not None for v in rows):
        return True, False, [(s[0], s[1], 0, rs) for s, rs in zip(strides, rows)]
    hws = [hw_stride(s) for s in strides]
    if all(v is not None for v in hws):
        return False, False, [(s[0], s[1], 0, hs) for s, hs in zip(strides, hws)]
    return False, True, [(s[0], s[1], s[2], s[3]) for s in strides]


def _needs_int64(tensors) -> bool:
    for t in tensors:
        if t.numel() and sum((d - 1) * s for d, s in zip(t.shape, t.stride())) >= 2**31:
            return True
    return False


def _config(C: int, HW: int, R: int, flat: bool, channels_fast: bool):
    """(BLOCK_R, BLOCK_C, num_warps) for the tile.

    GPU: ~4096-element tiles. When channels are the contiguous axis (channels_last,
    2-D) the column block is wide (up to 64, a divisor of the WRN widths 160/320/640
    where possible); for NCHW the hw axis is contiguous, so rows get the long side.
    Interpreter: small tiles for small tensors, so that small test shapes span several
    tiles per axis (masking and the multi-tile reduction are exercised); bigger tiles
    for big ones, since the interpreter's cost is per program.
    """
    if _INTERPRET:
        rows = R if flat else HW
        return (16 if rows <= 512 else 256), (8 if C <= 32 else 32), 1
    if channels_fast:
        block_c = 64 if C % 64 == 0 else (32 if C % 32 == 0 else min(64, _next_pow2(C)))
        block_r = max(16, 4096 // block_c)
        block_r = min(block_r, _next_pow2(R if flat else HW))
    else:
        block_r = min(256, _next_pow2(HW if not flat else R))
        block_c = min(_next_pow2(C), max(1, 4096 // block_r), 64)
    block_r = max(block_r, 16)
    block_c = max(block_c, 1)
    num_warps = 8 if block_r * block_c >= 4096 else 4
    return block_r, block_c, num_warps


def _num_reduce_programs(num_tiles: int, col_blocks: int, device: torch.device) -> int:
    """Row programs P of the backward grid: enough to fill the GPU a few times over."""
    if _INTERPRET or device.type != "cuda":
        return max(1, min(num_tiles, 3))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(num_tiles, (4 * sms + col_blocks - 1) // col_blocks, 1024))


def _check_common(x, scale, shift, act, negative_slope, dropout_p, seed, what):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 4):
        raise ValueError(f"{what}: x must be [N, C, H, W] or [N, C], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what}: x dtype must be one of float16/bfloat16/float32/float64, got {x.dtype}")
    if x.device.type != "cuda" and not _INTERPRET:
        raise RuntimeError(f"{what}: x is on {x.device}; the Triton kernel needs a CUDA tensor, or "
                           "TRITON_INTERPRET=1 set before triton is imported to run on CPU tensors")
    C = x.shape[1]
    for name, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != C:
            raise ValueError(f"{what}: {name} must have shape [C] = [{C}] (C = x.shape[1]), got {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{what}: {name} dtype must be float32 or float64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{what}: {name} must be on x's device {x.device}, got {t.device}")
    if scale.dtype != shift.dtype:
        raise TypeError(f"{what}: scale and shift must have the same dtype, got {scale.dtype} and {shift.dtype}")
    if scale.dtype != stats_dtype(x.dtype):  # the C++ kernel's rule too (csrc/bn_act_dropout.h)
        raise TypeError(f"{what}: scale and shift must be {stats_dtype(x.dtype)} for {x.dtype} x (the statistics "
                        f"dtype), got {scale.dtype}")
    check_activation(act, f"{what}: act")
    if not isinstance(negative_slope, (int, float)) or not math.isfinite(negative_slope):
        raise ValueError(f"{what}: negative_slope must be a finite float, got {negative_slope!r}")
    if not isinstance(dropout_p, (int, float)) or not (0.0 <= dropout_p <= 1.0):
        raise ValueError(f"{what}: dropout_p must be a float in [0, 1], got {dropout_p!r}")
    if dropout_p > 0 or seed is not None:
        if not isinstance(seed, torch.Tensor):
            raise ValueError(f"{what}: dropout_p = {dropout_p} > 0 needs seed, an int64 tensor of shape [1] "
                             f"(wrn_fast.ops.new_dropout_seed), got {seed!r}")
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"{what}: seed must be an int64 tensor with 1 element, got dtype {seed.dtype} "
                             f"shape {tuple(seed.shape)}")
        if seed.device != x.device:
            raise ValueError(f"{what}: seed must be on x's device {x.device}, got {seed.device}")
    if x.numel() >= MAX_INDEX:
        per_sample = max(1, x[0].numel()) if x.shape[0] else 1
        raise IndexRangeError(f"{what}: x has {x.numel()} elements; the dropout index is int32, so numel must be "
                              f"< 2**31 = {MAX_INDEX} (split the batch)", (MAX_INDEX - 1) // per_sample)


def _launch_params(tensors, x, dropout_p):
    (N, C, H, W), _ = _strides4(x)
    HW = H * W
    R = N * HW
    flat, split_hw, strides = _row_mode(tensors)
    channels_fast = x.stride(1) == 1 and C > 1
    block_r, block_c, num_warps = _config(C, HW, R, flat, channels_fast)
    nhb = triton.cdiv(HW, block_r)
    num_tiles = triton.cdiv(R, block_r) if flat else N * nhb
    col_blocks = triton.cdiv(C, block_c)
    if col_blocks > _MAX_GRID_Y:
        raise ValueError(f"too many channels: C = {C} needs {col_blocks} column blocks > {_MAX_GRID_Y}")
    compute = tl.float64 if x.dtype == torch.float64 else tl.float32
    # fp32 scalars, rounded here so the interpreter (which may keep fp64) sees what the
    # GPU sees, and the same values as kernels/bn_act_conv.py (its two-pass path)
    p = _f32(dropout_p)
    inv_keep = 0.0 if p >= 1.0 else _f32(1.0 / (1.0 - p))
    return dict(N=N, C=C, H=H, W=W, HW=HW, R=R, flat=flat, split_hw=split_hw, strides=strides,
                block_r=block_r, block_c=block_c, num_warps=num_warps, nhb=nhb, num_tiles=num_tiles,
                col_blocks=col_blocks, compute=compute, p=p, inv_keep=inv_keep,
                offs64=_needs_int64(tensors))


# ----------------------------------------------------------------------------- launchers


def bn_act_dropout_fwd(x, scale, shift, *, act="relu", negative_slope=0.0, dropout_p=0.0, seed=None,
                       out=None):
    """y = dropout(act(x * scale[c] + shift[c])) (see the module docstring).

    x: [N, C, H, W] or [N, C], float16/bfloat16/float32/float64, any strides.
    scale, shift: [C] float32 (float64 for float64 x). seed: int64 [1] on x's device, needed when dropout_p > 0.
    out: optional preallocated output (x's shape and dtype, any strides); by default y is
    allocated in x's memory format (channels_last in -> channels_last out).
    """
    _check_common(x, scale, shift, act, negative_slope, dropout_p, seed, "bn_act_dropout_fwd")
    if out is None:
        out = _empty_like_format(x)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"bn_act_dropout_fwd: out must match x (shape {tuple(x.shape)}, {x.dtype}, {x.device}), "
                         f"got shape {tuple(out.shape)}, {out.dtype}, {out.device}")
    if x.numel() == 0:
        return out
    scale = scale.contiguous()
    shift = shift.contiguous()
    k = _launch_params([x, out], x, dropout_p)
    sx, sy = k["strides"]
    has_dropout = k["p"] > 0.0
    grid = (k["num_tiles"], k["col_blocks"])
    with launch_device(x):
        _bn_act_dropout_fwd_kernel[grid](
            x, out, scale, shift, seed if has_dropout else scale,
            k["R"], k["C"], k["HW"], k["W"], k["nhb"],
            *sx, *sy,
            _f32(negative_slope), k["p"], k["inv_keep"],
            ACT=check_activation(act), HAS_DROPOUT=has_dropout,
            FLAT=k["flat"], SPLIT_HW=k["split_hw"], OFFS_64=k["offs64"], COMPUTE=k["compute"],
            BLOCK_R=k["block_r"], BLOCK_C=k["block_c"], num_warps=k["num_warps"],
        )
    return out


def bn_act_dropout_bwd(grad_y, x, scale, shift, *, act="relu", negative_slope=0.0, dropout_p=0.0, seed=None,
                       grad_x_out=None):
    """(grad_x, grad_scale, grad_shift) of ``bn_act_dropout_fwd`` (see the module docstring).

    grad_y: x's shape, any floating dtype and strides (expanded grads are fine).
    grad_x has x's dtype and memory format (or is written into ``grad_x_out``);
    grad_scale / grad_shift have scale's dtype (float32, float64 for float64 x), reduced in that dtype.
    """
    _check_common(x, scale, shift, act, negative_slope, dropout_p, seed, "bn_act_dropout_bwd")
    if not isinstance(grad_y, torch.Tensor):
        raise TypeError(f"bn_act_dropout_bwd: grad_y must be a torch.Tensor, got {type(grad_y).__name__}")
    if grad_y.shape != x.shape or grad_y.device != x.device:
        raise ValueError(f"bn_act_dropout_bwd: grad_y must have x's shape {tuple(x.shape)} on {x.device}, "
                         f"got {tuple(grad_y.shape)} on {grad_y.device}")
    if grad_y.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"bn_act_dropout_bwd: grad_y dtype must be floating, got {grad_y.dtype}")
    if grad_x_out is None:
        grad_x_out = _empty_like_format(x)
    elif grad_x_out.shape != x.shape or grad_x_out.dtype != x.dtype or grad_x_out.device != x.device:
        raise ValueError(f"bn_act_dropout_bwd: grad_x_out must match x (shape {tuple(x.shape)}, {x.dtype}, "
                         f"{x.device}), got shape {tuple(grad_x_out.shape)}, {grad_x_out.dtype}, {grad_x_out.device}")
    C = x.shape[1]
    if x.numel() == 0:
        z = torch.zeros(C, dtype=scale.dtype, device=x.device)
        return grad_x_out, z, z.clone()
    scale = scale.contiguous()
    shift = shift.contiguous()
    k = _launch_params([grad_y, x, grad_x_out], x, dropout_p)
    sg, sx, sgx = k["strides"]
    P = _num_reduce_programs(k["num_tiles"], k["col_blocks"], x.device)
    acc_dtype = torch.float64 if k["compute"] == tl.float64 else torch.float32
    has_dropout = k["p"] > 0.0
    grid = (P, k["col_blocks"])
    with launch_device(x):
        part_s = torch.empty((P, C), dtype=acc_dtype, device=x.device)
        part_b = torch.empty((P, C), dtype=acc_dtype, device=x.device)
        _bn_act_dropout_bwd_kernel[grid](
            grad_y, x, grad_x_out, scale, shift, seed if has_dropout else scale, part_s, part_b,
            k["R"], C, k["HW"], k["W"], k["nhb"], k["num_tiles"], P,
            *sg, *sx, *sgx,
            _f32(negative_slope), k["p"], k["inv_keep"],
            ACT=check_activation(act), HAS_DROPOUT=has_dropout,
            FLAT=k["flat"], SPLIT_HW=k["split_hw"], OFFS_64=k["offs64"], COMPUTE=k["compute"],
            BLOCK_R=k["block_r"], BLOCK_C=k["block_c"], num_warps=k["num_warps"],
        )
        grad_scale = part_s.sum(dim=0).to(scale.dtype)
        grad_shift = part_b.sum(dim=0).to(scale.dtype)
    return grad_x_out, grad_scale, grad_shift
