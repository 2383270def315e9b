"""BN-act-dropout -> conv2d (+ bias + residual, + partial BN stats) as Triton implicit GEMMs.

Three kernels share one prologue (``a = dropout(act(x * scale[c] + shift[c]))``,
then zero padding) so the normalised activation ``a`` never exists in memory:

  forward   y[n,co,oh,ow] = sum_{c,kh,kw} a[n,c,oh*s-pt+kh,ow*s-pl+kw] * w[co,c,kh,kw]
                            (+ bias[co]) (+ residual[n,co,oh,ow])
            GEMM  M = N*Ho*Wo, N = Cout, K = kh*kw*Cin; epilogue emits per-(row
            chunk, channel) partial mean / M2 / count of the stored y (Chan merge).
  dgrad     g_a[n,c,ih,iw] = sum_{co,kh,kw} gy[n,co,oh,ow] * w[co,c,kh,kw], where
            oh = (ih + pt - kh) / s when divisible and in range (gather form);
            GEMM  M = N*H*W, N = Cin, K = kh*kw*Cout.  Epilogue (with BN):
            g_z = g_a * keep/(1-p) * act'(z), z = x*scale+shift recomputed,
            grad_x = g_z*scale, per-channel partial sums of g_z and g_z*x.
  wgrad     gw[co,c,kh,kw] = sum_{n,oh,ow} gy[n,co,oh,ow] * a[n,c,ih,iw], ``a``
            recomputed in the prologue; GEMM M = Cout, N = Cin (one tap per
            program column), K = N*Ho*Wo with split-K (partials summed in fp32).

Tensors are logical NCHW with arbitrary strides (channels_last is the fast
layout). The dropout mask is a function of (seed, logical NCHW index of the input
element) only (``kernels._common``); it is evaluated once into a bitmask
(``dropout_bits``: 1 bit per element, one int32 word per pixel and 32 channels),
which the three kernels test instead of running Philox per element in their K
loops. ``p`` reaches the kernels as an fp32 scalar: the mask is ``rand >= fp32(p)``
and kept values are scaled by ``1/(1-fp32(p))``.

Accumulation is fp32 (fp64 for fp64 inputs). fp32 inputs use TF32 tensor cores when
``allow_tf32`` (PyTorch's convention for convolutions), else exact ("ieee")
products; fp16/bf16 go to tl.dot natively.

Tile configs: with WRN_FAST_AUTOTUNE=0 (or in the interpreter) each launch uses
``default_config`` (a per-shape heuristic, no timing); otherwise the autotuner picks
from the kind's list, keyed on the shape and every compile-time variant.
"""
import os

import torch
import triton
import triton.language as tl

from ._common import _f32, _scalars, act_grad, apply_act, dropout_bits_kernel, keep_from_bits, launch_device
from .contract import (IndexRangeError, MAX_INDEX, check_activation, dropout_bits_shape, norm_padding, out_hw,
                       output_memory_format)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Tile decisions are fixed at import: compile-only harnesses (tests/_triton_aot.py,
# bench/sass.py) flip INTERPRET afterwards to accept CPU tensors, and must still get
# the GPU's configs.
_GPU_TILES = not INTERPRET

# Rows of the forward GEMM (output pixels) per partial-stats record. Fixed (not
# tied to the autotuned BLOCK_M) so the number of partials is a function of the
# shape alone, which the fake kernel needs; every BLOCK_M is a multiple of it.
STATS_M = 64

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------- configs

def _cfg(bm, bn, bk, stages, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=stages, num_warps=warps)


# WRN_FAST_AUTOTUNE=0: no autotuning, one config per launch from ``default_config``
# (fast first calls; the GPU test suite and protocol set it). Default: autotune;
# timings are cached on disk by Triton (cache_results), so a restarted run does not
# re-time its shapes.
AUTOTUNE = os.environ.get("WRN_FAST_AUTOTUNE", "1") != "0"

# The interpreter's one config: BLOCK_N = 16 so the small test channel counts (12, 20)
# span several, partially masked tiles; BLOCK_K = 32 (one dropout-bitmask word).
_INTERPRET_CONFIGS = {"fwd": _cfg(64, 16, 32, 1, 4), "dgrad": _cfg(64, 16, 32, 1, 4),
                      "wgrad": _cfg(16, 32, 32, 1, 4)}

# GPU lists (Hopper / Ampere). 16-bit operands: wgmma tiles; BLOCK_K = 64 halves the
# per-iteration overhead of the K loop against 32. fp32 (TF32 or exact) and fp64 hold
# twice the bytes per operand: their own, smaller list, free of spills.
_CONFIGS_16 = {
    "fwd": [_cfg(128, 256, 64, 3, 8), _cfg(128, 128, 64, 3, 8), _cfg(128, 128, 32, 4, 8), _cfg(128, 256, 32, 4, 8),
            _cfg(256, 64, 64, 3, 8), _cfg(256, 32, 64, 3, 8), _cfg(256, 64, 32, 4, 8), _cfg(256, 32, 32, 4, 8),
            _cfg(128, 64, 64, 3, 4), _cfg(64, 128, 64, 3, 4), _cfg(64, 64, 64, 4, 4), _cfg(128, 32, 64, 4, 4),
            _cfg(64, 32, 64, 4, 4)],
    "wgrad": [_cfg(256, 128, 64, 3, 8), _cfg(128, 128, 64, 3, 8), _cfg(128, 128, 32, 4, 8), _cfg(64, 128, 64, 3, 4),
              _cfg(128, 64, 64, 3, 4), _cfg(128, 32, 64, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(64, 32, 64, 4, 4), _cfg(32, 64, 64, 4, 4)],
}
_CONFIGS_16["dgrad"] = list(_CONFIGS_16["fwd"])
_CONFIGS_32 = {
    "fwd": [_cfg(128, 64, 32, 3, 8), _cfg(64, 128, 32, 3, 8), _cfg(64, 64, 32, 3, 4), _cfg(128, 32, 32, 3, 4),
            _cfg(64, 32, 32, 4, 4)],
    "wgrad": [_cfg(128, 64, 32, 3, 8), _cfg(64, 128, 32, 3, 8), _cfg(64, 64, 32, 3, 4), _cfg(64, 32, 32, 4, 4),
              _cfg(32, 64, 32, 4, 4)],
}
_CONFIGS_32["dgrad"] = list(_CONFIGS_32["fwd"])
# Every config a GPU may use (the GPU tests run each once, whatever AUTOTUNE says).
ALL_CONFIGS = {k: _CONFIGS_16[k] + _CONFIGS_32[k] for k in ("fwd", "dgrad", "wgrad")}


# 16-bit tiles the default chooses between, with the issue ceiling their K loop reaches
# in the sm_90a SASS (WRN-28-10 shapes, ReLU prologue, no dropout): the prologue costs
# instructions per element of the x operand, so the ceiling grows with the other side of
# the tile (BLOCK_N = Cout for fwd, BLOCK_M = Cout for wgrad).
_WIDE_16 = {
    "fwd": [((128, 256, 64, 3, 8), 1.0), ((128, 128, 64, 3, 8), 0.65)],
    "wgrad": [((256, 128, 64, 3, 8), 1.0), ((128, 128, 64, 3, 8), 0.73)],
    "dgrad": [((128, 128, 64, 3, 8), 1.0)],
}


def default_config(kind: str, dtype: torch.dtype, cin: int, cout: int, *, dropout: bool = False,
                   prologue: bool = True):
    """The tile config used without autotuning: (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps).

    A heuristic, not timed, read from the sm_90a SASS. 16-bit operands with 128 or more
    channels on the tiled sides: of the tiles in ``_WIDE_16``, the one with the highest
    (issue ceiling x share of the tile that falls inside Cout), e.g. fwd Cout = 320 takes
    128x256 (1.0 x 62.5%) over 128x128 (0.65 x 83%). 32..127 channels: a plain K loop
    (dgrad's always; the forward's without the BN-act ``prologue``, as in the two-pass
    path) takes 256 rows on 8 warps, which spreads its per-row address math over more
    tensor work (bf16, N=128, issue ceiling 64 -> 256 rows: fwd 0.58 -> 0.92 at 64
    channels, 0.33 -> 0.48 at 32; dgrad 0.62 -> 0.90, 0.34 -> 0.49; no spills), with
    BLOCK_K = 32 when the K side (Cin for fwd, Cout for dgrad) has <= 32 channels per tap
    (a 64-deep K step would be half masked: useful ceiling 0.245 -> 0.36); with the
    prologue (whose cost per element does not shrink with more rows) and for wgrad:
    64x64x64 on 4 warps from 64 channels, else 64x32x64 (a wgrad without prologue over
    Cout >= 128: 128x32x64). fp32 (TF32 or exact) / fp64:
    smaller, spill-free tiles, 64 wide when that fills >= 80% of N. ``dropout`` is
    accepted for the variants' sake; the bitmask costs the same under every tile.
    """
    if kind not in ("fwd", "dgrad", "wgrad"):
        raise ValueError(f"kind must be 'fwd', 'dgrad' or 'wgrad', got {kind!r}")
    if not _GPU_TILES:
        c = _INTERPRET_CONFIGS[kind]
        return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages, c.num_warps)
    n = cout if kind == "fwd" else cin  # the GEMM's N side

    def fill(size, block):  # useful fraction of the tiles along one side
        return size / (triton.cdiv(size, block) * block)

    if dtype not in (torch.float16, torch.bfloat16):
        if dtype == torch.float64:
            return (64, 32, 16, 3, 4)
        return (128, 64, 32, 3, 8) if n >= 64 and fill(n, 64) >= 0.8 else (64, 32, 32, 4, 4)
    if n >= 128 and (kind != "wgrad" or cout >= 128):
        def score(item):  # fwd: Cout along BLOCK_N; wgrad: Cout along BLOCK_M; dgrad: one tile
            (bm, bn, _, _, _), ceiling = item
            return ceiling * (fill(cout, bn) if kind == "fwd" else fill(cout, bm) if kind == "wgrad" else 1.0)
        return max(_WIDE_16[kind], key=score)[0]
    plain_loop = kind == "dgrad" or (kind == "fwd" and not prologue)
    if plain_loop and n >= 32:
        k_side = cin if kind == "fwd" else cout  # channels per tap along K
        if k_side <= 32:  # BLOCK_K = 64 would leave half of each K step masked
            return (256, 64 if n >= 64 else 32, 32, 4, 8)
        return (256, 64 if n >= 64 else 32, 64, 3, 8)
    if kind == "wgrad" and not prologue and cout >= 128 and n < 64:
        return (128, 32, 64, 4, 4)  # Cin = 16 under a wide Cout (two-pass path): 0.34 -> 0.55 (64 rows -> 128)
    if n >= 64:
        return (64, 64, 64, 4, 4)
    return (64, 32, 64, 4, 4)


# Narrow 16-bit layers run as two kernels (``two_pass_layer``): the BN-act-dropout
# prologue costs a fixed number of instructions per element of the activation while the
# tensor work per element scales with the GEMM's other side (Cout for the forward and
# wgrad), so below this many output channels the fused prologue, not the tensor cores,
# bounds the K loop. sm_90a SASS, bf16, N=128, WRN-28-2 widths (default tiles), issue
# ceiling of the forward / wgrad K loop with the prologue -> without it (identity; the
# forward then also takes 256-row tiles, see default_config):
#   width 32 @ 32x32   fwd 0.17 -> 0.49   wgrad 0.25 -> 0.34
#   width 64 @ 16x16   fwd 0.30 -> 0.94   wgrad 0.37 -> 0.64
#   width 128 @ 8x8    fwd 0.65 -> 1.00   wgrad 0.73 -> 1.00
# dgrad keeps its fused epilogue (its K loop has no prologue). The price: one
# elementwise pass (read x, write a: 4 bytes per bf16 element, ~0.9 ps at 4.3 TB/s) and
# the activation a kept for wgrad. It pays where the tensor work per element of x is
# large: a 3x3 stride-1 conv does 18*Cout FLOPs per element (Cout = 32: 0.73 ps at
# 790 TFLOP/s, 4.3 ps at ceiling 0.17, 1.5-2.2 ps without the prologue); a 1x1 conv
# (2*Cout) or a stride-2 conv (a quarter of that per element) loses more to the pass
# than the prologue costs it.
TWO_PASS_MAX_COUT = 128


def two_pass_layer(dtype: torch.dtype, cin: int, cout: int, taps: int = 9, stride: int = 1) -> bool:
    """Whether a BN-act(-dropout) -> conv of this shape should run as a standalone
    elementwise pass writing the activation ``a`` (``kernels.bn_act_dropout``) followed by
    this module's kernels without a prologue (forward, wgrad on ``a``; dgrad still fused
    on x). ``taps`` = kh*kw. True for fp16/bf16 on the GPU with Cout <= TWO_PASS_MAX_COUT
    or Cin <= 16 (the first block after the 16-channel stem: the pass over 16 channels is
    cheap and its wgrad, whose prologue runs on the Cin side, goes 0.25 -> 0.55), at least
    9 taps and stride 1 (see above); False in the interpreter, whose tests pick either
    path explicitly."""
    return (_GPU_TILES and dtype in (torch.float16, torch.bfloat16) and (cout <= TWO_PASS_MAX_COUT or cin <= 16)
            and taps >= 9 and stride == 1)


def _configs_for(kind):
    return _CONFIGS_16[kind] + _CONFIGS_32[kind]


def _prune(key_n):
    """Keep the configs of the operand width (16-bit vs 32/64-bit lists) whose BLOCK_N
    is not far wider than the GEMM's N (stem, thin layers)."""
    def prune(configs, named_args, **kwargs):
        def arg(name):
            return named_args[name] if name in named_args else kwargs[name]
        n = int(arg(key_n))
        wide = arg("w_ptr" if "w_ptr" in named_args else "gy_ptr").dtype in (torch.float16, torch.bfloat16)
        kind_cfgs = [c for c in configs if (c in _CONFIGS_16_ALL) == wide]
        cap = max(32, triton.next_power_of_2(n))
        kept = [c for c in kind_cfgs if c.kwargs["BLOCK_N"] <= cap]
        return kept or kind_cfgs or configs
    return {"early_config_prune": prune}


_CONFIGS_16_ALL = [c for k in _CONFIGS_16 for c in _CONFIGS_16[k]]

# The autotune key: the shape and every compile-time variant (tensor dtypes are added
# by Triton itself).
_KEY = ["Cin", "Cout", "H", "W", "Ho", "Wo", "KH", "KW", "STRIDE", "PT", "PL", "ACT", "HAS_AFFINE", "HAS_DROPOUT",
        "IS_FP64", "IN_PREC"]  # (wgrad's POW2_OUT is a function of Ho, Wo)


def _launch(kernel, grid, args, consts, kind, dtype, cin, cout, dropout):
    """Launch ``kernel`` (an autotuner) with autotuning, or its jit function with the
    default config (WRN_FAST_AUTOTUNE=0, interpreter)."""
    if AUTOTUNE and _GPU_TILES:
        kernel[grid](*args, **consts)
        return
    bm, bn, bk, stages, warps = default_config(kind, dtype, cin, cout, dropout=dropout,
                                               prologue=bool(consts.get("HAS_AFFINE", True)))
    kernel.fn[grid](*args, **consts, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_stages=stages, num_warps=warps)


def _min_block_m(kind, dtype, cin, cout, dropout):
    if AUTOTUNE and _GPU_TILES:
        return min(c.kwargs["BLOCK_M"] for c in _configs_for(kind))
    return default_config(kind, dtype, cin, cout, dropout=dropout)[0]


# --------------------------------------------------------------------------- jit helpers

@triton.jit
def _mma(a, b, acc, IN_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b. UPCAST: the interpreter's bf16 dot is wrong; compute it in fp32
    (bf16 x bf16 products are exact in fp32, so this equals the native result).
    out_dtype=acc.dtype: Triton 3.6 (the GPU machines') asserts acc's dtype equals
    out_dtype, whose default is fp32, so an fp64 accumulator needs it spelled out."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision=IN_PREC, out_dtype=acc.dtype)


@triton.jit
def _prologue(xv, sc, sh, m, slope, inv_keep, ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """a = dropout(act(x*scale+shift)), zero in rows that fall in the padding, as
    act((x*scale + shift) * m), m = 0 in padding rows and dropped elements, else
    ``keep_mul`` (1/(1-p); 1 for silu or without dropout): every activation has act(0) = 0
    and identity / relu / leaky_relu commute with a positive scale, so one multiply does
    padding, mask and 1/(1-p) (silu: times 1/(1-p) afterwards). A multiply, not a select:
    it stays in fp32 ahead of the bf16 pack (the max of relu then folds into the pack).

    xv [R, C] in the compute dtype, sc/sh [1, C]. Lanes past Cin come out 0: x = scale =
    shift = 0 there."""
    a = apply_act((xv * sc + sh) * m, ACT, slope)
    if HAS_DROPOUT and ACT == 3:
        a = a * inv_keep
    return a


# --------------------------------------------------------------------------- forward

@triton.autotune(configs=ALL_CONFIGS["fwd"], key=_KEY + ["HAS_BIAS", "HAS_RES", "STATS"],
                 prune_configs_by=_prune("Cout"), cache_results=not INTERPRET)
@triton.jit
def _fwd_kernel(
    x_ptr,          # [N, Cin, H, W] any strides (sxn, sxc, sxh, sxw)
    w_ptr,          # [KH*KW*Cin, Cout] contiguous, row = (kh*KW + kw)*Cin + c
    scale_ptr,      # [Cin] (HAS_AFFINE)
    shift_ptr,      # [Cin] (HAS_AFFINE)
    bias_ptr,       # [Cout] (HAS_BIAS)
    res_ptr,        # [N, Cout, Ho, Wo] any strides (HAS_RES)
    y_ptr,          # [N, Cout, Ho, Wo] strides (syn, syc, syh, syw)
    bits_ptr,       # int32 [N*H*W, CW] dropout keep bits (HAS_DROPOUT)
    mean_ptr,       # fp32 [P, Cout] (STATS)
    m2_ptr,         # fp32 [P, Cout] (STATS)
    cnt_ptr,        # fp32 [P] (STATS)
    Nb, Cin, H, W, Cout, Ho, Wo, M, P, CW,
    sxn, sxc, sxh, sxw,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    slope, inv_keep, keep_mul,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr, STATS: tl.constexpr, STATS_ROWS: tl.constexpr, FLAT_K: tl.constexpr,
    OFFS_64: tl.constexpr, IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # BLOCK_N >= 256 with statistics and no dropout: two accumulators of BLOCK_N / 2
    # columns (two wgmma chains sharing the prologue's A operand), so that the epilogue
    # holds half a tile at a time: its per-column statistics spill next to a 128x256 fp32
    # tile (sm_90a: 19 spill stores). With dropout the whole tile fits (and the split's
    # extra loop instructions would cost more: 526 -> 570 per iteration).
    BH: tl.constexpr = BLOCK_N // 2 if (BLOCK_N >= 256 and STATS and not HAS_DROPOUT) else BLOCK_N
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn0 = pid_n * BLOCK_N + tl.arange(0, BH)
    rn1 = rn0 + BH
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok0 = rn0 < Cout
    n_ok1 = rn1 < Cout
    rmc = tl.where(m_ok, rm, 0)
    HoWo = Ho * Wo
    nb = rmc // HoWo
    rem = rmc - nb * HoWo
    oh = rem // Wo
    ow = rem - oh * Wo
    # element offsets in int64 only when a tensor of the launch spans 2**31 elements
    # (OFFS_64, see _needs_int64): int32 address math is half the instructions
    x_row = (nb.to(tl.int64) if OFFS_64 else nb) * sxn
    if IS_FP64:
        acc0 = tl.zeros((BLOCK_M, BH), dtype=tl.float64)
        acc1 = tl.zeros((BLOCK_M, BH), dtype=tl.float64)
    else:
        acc0 = tl.zeros((BLOCK_M, BH), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_M, BH), dtype=tl.float32)

    if FLAT_K:
        # Small Cin (stem, Cin=3): K = (tap, c) flattened, gathered per element.
        KTOT = KH * KW * Cin
        for k0 in range(0, KTOT, BLOCK_K):
            k = k0 + rk
            k_ok = k < KTOT
            tap = k // Cin
            c = k - tap * Cin
            kh = tap // KW
            kw = tap - kh * KW
            ih = oh[:, None] * STRIDE - PT + kh[None, :]
            iw = ow[:, None] * STRIDE - PL + kw[None, :]
            inb = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + x_row[:, None] + c[None, :] * sxc + ih * sxh + iw * sxw, mask=inb, other=0.0)
            w0 = tl.load(w_ptr + k[:, None] * Cout + rn0[None, :], mask=k_ok[:, None] & n_ok0[None, :], other=0.0)
            if HAS_AFFINE:
                sc = tl.load(scale_ptr + c, mask=k_ok, other=0.0).to(acc0.dtype)
                sh = tl.load(shift_ptr + c, mask=k_ok, other=0.0).to(acc0.dtype)
                a = apply_act(xv.to(acc0.dtype) * sc[None, :] + sh[None, :], ACT, slope)
                if HAS_DROPOUT:  # a word per element: only the stem takes this path
                    wd = tl.load(bits_ptr + ((nb[:, None] * H + ih) * W + iw) * CW + c[None, :] // 32,
                                 mask=inb, other=0)
                    a = tl.where(((wd >> (c[None, :] % 32)) & 1) != 0, a * inv_keep, 0.0)
                a = tl.where(inb, a, 0.0).to(w0.dtype)
            else:
                a = xv
            acc0 = _mma(a, w0, acc0, IN_PREC, UPCAST)
            if BH < BLOCK_N:
                w1 = tl.load(w_ptr + k[:, None] * Cout + rn1[None, :], mask=k_ok[:, None] & n_ok1[None, :],
                             other=0.0)
                acc1 = _mma(a, w1, acc1, IN_PREC, UPCAST)
    else:
        nkc = tl.cdiv(Cin, BLOCK_K)
        for ks in range(0, KH * KW * nkc):
            tap = ks // nkc
            c0 = (ks - tap * nkc) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            c = c0 + rk
            c_ok = c < Cin
            ih = oh * STRIDE - PT + kh
            iw = ow * STRIDE - PL + kw
            r_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + (x_row + ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc,
                         mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            w_rows = (tap * Cin + c)[:, None] * Cout
            w0 = tl.load(w_ptr + w_rows + rn0[None, :], mask=c_ok[:, None] & n_ok0[None, :], other=0.0)
            if HAS_AFFINE:
                sc = tl.load(scale_ptr + c, mask=c_ok, other=0.0).to(acc0.dtype)
                sh = tl.load(shift_ptr + c, mask=c_ok, other=0.0).to(acc0.dtype)
                if HAS_DROPOUT:
                    keep = keep_from_bits(bits_ptr, ((nb * H + ih) * W + iw) * CW, r_ok, c0, rk, CW, BLOCK_K)
                    m = tl.where(keep, keep_mul, 0.0)
                else:
                    m = tl.where(r_ok, 1.0, 0.0)[:, None]
                a = _prologue(xv.to(acc0.dtype), sc[None, :], sh[None, :], m, slope, inv_keep, ACT, HAS_DROPOUT)
                a = a.to(w0.dtype)
            else:
                a = xv
            acc0 = _mma(a, w0, acc0, IN_PREC, UPCAST)
            if BH < BLOCK_N:
                w1 = tl.load(w_ptr + w_rows + rn1[None, :], mask=c_ok[:, None] & n_ok1[None, :], other=0.0)
                acc1 = _mma(a, w1, acc1, IN_PREC, UPCAST)

    nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
    _fwd_epilogue(acc0, rn0, n_ok0, m_ok, nb64, oh, ow, pid_m, pid_n == 0, bias_ptr, res_ptr, y_ptr,
                  mean_ptr, m2_ptr, cnt_ptr, Cout, P, srn, src, srh, srw, syn, syc, syh, syw,
                  HAS_BIAS, HAS_RES, STATS, STATS_ROWS, BLOCK_M)
    if BH < BLOCK_N:
        _fwd_epilogue(acc1, rn1, n_ok1, m_ok, nb64, oh, ow, pid_m, False, bias_ptr, res_ptr, y_ptr,
                      mean_ptr, m2_ptr, cnt_ptr, Cout, P, srn, src, srh, srw, syn, syc, syh, syw,
                      HAS_BIAS, HAS_RES, STATS, STATS_ROWS, BLOCK_M)


@triton.jit
def _fwd_epilogue(acc, rn, n_ok, m_ok, nb64, oh, ow, pid_m, write_count, bias_ptr, res_ptr, y_ptr, mean_ptr,
                  m2_ptr, cnt_ptr, Cout, P, srn, src, srh, srw, syn, syc, syh, syw,
                  HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, STATS: tl.constexpr, STATS_ROWS: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """Bias, residual, store, partial stats of the stored values, for output columns rn."""
    out_mask = m_ok[:, None] & n_ok[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)
        acc += b[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + (nb64 * srn + oh * srh + ow * srw)[:, None] + rn[None, :] * src,
                    mask=out_mask, other=0.0)
        acc += r.to(acc.dtype)
    yv = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + (nb64 * syn + oh * syh + ow * syw)[:, None] + rn[None, :] * syc, yv, mask=out_mask)
    if STATS:
        v = yv.to(tl.float32)
        chunk = tl.arange(0, BLOCK_M) // STATS_ROWS
        for j in tl.static_range(BLOCK_M // STATS_ROWS):
            valid = m_ok & (chunk == j)
            cnt = tl.sum(valid.to(tl.float32), axis=0)
            s = tl.sum(tl.where(valid[:, None], v, 0.0), axis=0)
            mean = s / tl.maximum(cnt, 1.0)
            d = tl.where(valid[:, None], v - mean[None, :], 0.0)
            m2 = tl.sum(d * d, axis=0)
            prow = pid_m * (BLOCK_M // STATS_ROWS) + j
            row_ok = prow < P
            tl.store(mean_ptr + prow * Cout + rn, mean, mask=n_ok & row_ok)
            tl.store(m2_ptr + prow * Cout + rn, m2, mask=n_ok & row_ok)
            tl.store(cnt_ptr + prow, cnt, mask=row_ok & write_count)


# --------------------------------------------------------------------------- dgrad

@triton.autotune(configs=ALL_CONFIGS["dgrad"], key=_KEY,
                 prune_configs_by=_prune("Cin"), reset_to_zero=["psc_ptr", "psh_ptr"],
                 cache_results=not INTERPRET)
@triton.jit
def _dgrad_kernel(
    gy_ptr,         # [N, Cout, Ho, Wo] any strides (sgn, sgc, sgh, sgw)
    w_ptr,          # [KH*KW*Cout, Cin] contiguous, row = (kh*KW + kw)*Cout + co
    x_ptr,          # [N, Cin, H, W] saved pre-BN input, any strides (HAS_AFFINE)
    scale_ptr,      # [Cin] (HAS_AFFINE)
    shift_ptr,      # [Cin] (HAS_AFFINE)
    bits_ptr,       # int32 [N*H*W, CW] dropout keep bits (HAS_DROPOUT)
    gx_ptr,         # [N, Cin, H, W] strides (sdn, sdc, sdh, sdw)
    psc_ptr,        # [PM, Cin] partial sum(g_z * x) per M-tile (HAS_AFFINE), zero-initialised
    psh_ptr,        # [PM, Cin] partial sum(g_z) per M-tile (HAS_AFFINE), zero-initialised
    Nb, Cin, H, W, Cout, Ho, Wo, M, CW,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    slope, inv_keep,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr, OFFS_64: tl.constexpr,
    GX_LIKE_X: tl.constexpr, IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)   # input pixels (n, ih, iw)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)   # input channels c
    rk = tl.arange(0, BLOCK_K)                     # output channels co (within a tap)
    m_ok = rm < M
    n_ok = rn < Cin
    rmc = tl.where(m_ok, rm, 0)
    HW = H * W
    nb = rmc // HW
    rem = rmc - nb * HW
    ih = rem // W
    iw = rem - ih * W
    nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
    g_row = nb64 * sgn
    if IS_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    nkc = tl.cdiv(Cout, BLOCK_K)
    for ks in range(0, KH * KW * nkc):
        tap = ks // nkc
        co0 = (ks - tap * nkc) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        co = co0 + rk
        co_ok = co < Cout
        ohn = ih + PT - kh
        own = iw + PL - kw
        if STRIDE == 1:
            oh = ohn
            ow = own
            r_ok = m_ok & (oh >= 0) & (oh < Ho) & (ow >= 0) & (ow < Wo)
        else:
            pos = (ohn >= 0) & (own >= 0)
            ohn = tl.where(pos, ohn, 0)
            own = tl.where(pos, own, 0)
            oh = ohn // STRIDE
            ow = own // STRIDE
            r_ok = m_ok & pos & (oh * STRIDE == ohn) & (ow * STRIDE == own) & (oh < Ho) & (ow < Wo)
        g = tl.load(gy_ptr + (g_row + oh * sgh + ow * sgw)[:, None] + co[None, :] * sgc,
                    mask=r_ok[:, None] & co_ok[None, :], other=0.0)
        w = tl.load(w_ptr + (tap * Cout + co)[:, None] * Cin + rn[None, :],
                    mask=co_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(g, w, acc, IN_PREC, UPCAST)

    out_mask = m_ok[:, None] & n_ok[None, :]
    gx_off = (nb64 * sdn + ih * sdh + iw * sdw)[:, None] + rn[None, :] * sdc
    gx_ptrs = gx_ptr + gx_off
    if HAS_AFFINE:
        if GX_LIKE_X:  # grad_x has x's strides (its memory format): one set of offsets, fewer registers
            x_off = gx_off
        else:
            x_off = (nb64 * sxn + ih * sxh + iw * sxw)[:, None] + rn[None, :] * sxc
        xv = tl.load(x_ptr + x_off, mask=out_mask, other=0.0).to(acc.dtype)
        sc = tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)
        sh = tl.load(shift_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)
        z = xv * sc[None, :] + sh[None, :]
        gz = acc * act_grad(z, ACT, slope)
        if HAS_DROPOUT:  # rows are input pixels: word row = rm
            if BLOCK_N > 32:
                # a select per word, not keep_from_bits' broadcast: fewer live registers
                # next to the accumulator (the 128x128 tile would spill here)
                cols = tl.arange(0, BLOCK_N)
                sel = 1 << (cols % 32)
                for j in tl.static_range(BLOCK_N // 32):
                    wj = tl.load(bits_ptr + rmc * CW + (pid_n * (BLOCK_N // 32) + j),
                                 mask=m_ok & (pid_n * (BLOCK_N // 32) + j < CW), other=0)
                    gz = tl.where((cols // 32 == j)[None, :] & ((wj[:, None] & sel[None, :]) == 0), 0.0, gz)
                gz = gz * inv_keep
            else:
                keep = keep_from_bits(bits_ptr, rmc * CW, m_ok, pid_n * BLOCK_N, tl.arange(0, BLOCK_N), CW, BLOCK_N)
                gz = tl.where(keep, gz * inv_keep, 0.0)
        # Out-of-range rows / channels need no select: acc is 0 there (masked operand
        # loads) and act'(z) is finite for the zero-loaded x, scale, shift (a non-finite
        # shift makes the whole column non-finite anyway); under dropout they have no bits.
        tl.store(gx_ptrs, (gz * sc[None, :]).to(gx_ptr.dtype.element_ty), mask=out_mask)
        tl.store(psh_ptr + pid_m * Cin + rn, tl.sum(gz, axis=0), mask=n_ok)
        tl.store(psc_ptr + pid_m * Cin + rn, tl.sum(gz * xv, axis=0), mask=n_ok)
    else:
        tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=out_mask)


# --------------------------------------------------------------------------- wgrad

@triton.autotune(configs=ALL_CONFIGS["wgrad"], key=_KEY + ["K_CHUNK"],
                 prune_configs_by=_prune("Cin"), cache_results=not INTERPRET)
@triton.jit
def _wgrad_kernel(
    gy_ptr,         # [N, Cout, Ho, Wo] any strides (sgn, sgc, sgh, sgw)
    x_ptr,          # [N, Cin, H, W] saved pre-BN input, any strides
    scale_ptr,      # [Cin] (HAS_AFFINE)
    shift_ptr,      # [Cin] (HAS_AFFINE)
    bits_ptr,       # int32 [N*H*W, CW] dropout keep bits (HAS_DROPOUT)
    part_ptr,       # [SPLIT, Cout, Cin*KH*KW] contiguous partial grad_w (fp32 / fp64)
    Nb, Cin, H, W, Cout, Ho, Wo, M, K_CHUNK, CW, LOG2_HOWO, LOG2_WO,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    slope, inv_keep, keep_mul,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr, POW2_OUT: tl.constexpr,
    OFFS_64: tl.constexpr,
    IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)          # Cout tile
    pid_t = tl.program_id(1)          # (tap, Cin tile)
    pid_k = tl.program_id(2)          # split-K chunk of the N*Ho*Wo reduction
    ncb = tl.cdiv(Cin, BLOCK_N)
    tap = pid_t // ncb
    cb = pid_t - tap * ncb
    kh = tap // KW
    kw = tap - kh * KW
    rco = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    co_ok = rco < Cout
    c_ok = rc < Cin
    if HAS_AFFINE:
        sc = tl.load(scale_ptr + rc, mask=c_ok, other=0.0)
        sh = tl.load(shift_ptr + rc, mask=c_ok, other=0.0)
    if IS_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    HoWo = Ho * Wo
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, M)
    for r0 in range(k_lo, k_hi, BLOCK_K):
        r = r0 + rk
        r_ok = r < k_hi
        rr = tl.where(r_ok, r, 0)
        if POW2_OUT:  # Ho, Wo powers of two (every WRN shape): shifts, not integer divisions
            nb = rr >> LOG2_HOWO
            oh = (rr >> LOG2_WO) & (Ho - 1)
            ow = rr & (Wo - 1)
        else:
            nb = rr // HoWo
            rem = rr - nb * HoWo
            oh = rem // Wo
            ow = rem - oh * Wo
        nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
        g = tl.load(gy_ptr + (nb64 * sgn + oh * sgh + ow * sgw)[None, :] + rco[:, None] * sgc,
                    mask=co_ok[:, None] & r_ok[None, :], other=0.0)
        ih = oh * STRIDE - PT + kh
        iw = ow * STRIDE - PL + kw
        sp_ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_ptr + (nb64 * sxn + ih * sxh + iw * sxw)[:, None] + rc[None, :] * sxc,
                     mask=sp_ok[:, None] & c_ok[None, :], other=0.0)
        if HAS_AFFINE:
            if HAS_DROPOUT:
                keep = keep_from_bits(bits_ptr, ((nb * H + ih) * W + iw) * CW, sp_ok, cb * BLOCK_N,
                                      tl.arange(0, BLOCK_N), CW, BLOCK_N)
                m = tl.where(keep, keep_mul, 0.0)
            else:
                m = tl.where(sp_ok, 1.0, 0.0)[:, None]
            a = _prologue(xv.to(acc.dtype), sc.to(acc.dtype)[None, :], sh.to(acc.dtype)[None, :], m, slope,
                          inv_keep, ACT, HAS_DROPOUT)
            a = a.to(g.dtype)
        else:
            a = xv
        acc = _mma(g, a, acc, IN_PREC, UPCAST)

    KK = Cin * KH * KW
    base = part_ptr + pid_k.to(tl.int64) * Cout * KK
    ptrs = base + rco[:, None] * KK + rc[None, :] * (KH * KW) + tap
    tl.store(ptrs, acc, mask=co_ok[:, None] & c_ok[None, :])


# --------------------------------------------------------------------------- launchers

def _needs_int64(*tensors) -> bool:
    """Whether an element offset of one of ``tensors`` (any strides) can reach 2**31."""
    return any(t.numel() and sum((d - 1) * abs(st) for d, st in zip(t.shape, t.stride())) >= MAX_INDEX
               for t in tensors)


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _keep_mul(act, inv_keep):
    """The prologue's multiplier of kept elements: 1/(1-p) is applied before the
    activation except for silu, which does not commute with a scale (see _prologue)."""
    return 1.0 if act == "silu" else inv_keep


def stats_rows(n_rows: int) -> int:
    """Number of partial-stats records for a forward GEMM with ``n_rows`` = N*Ho*Wo rows."""
    return triton.cdiv(n_rows, STATS_M)


def _dot_modes(dtype, allow_tf32):
    if dtype == torch.float32:
        in_prec = "tf32" if allow_tf32 else "ieee"
    elif dtype == torch.float64:
        in_prec = "ieee"
    else:
        in_prec = "tf32"  # ignored for 16-bit operands (native MMA)
    upcast = INTERPRET and dtype == torch.bfloat16
    return in_prec, upcast


def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def max_batch(x_shape, dropout_p: float = 0.0) -> int:
    """The largest batch size N the launchers accept for an input [N, C, H, W] (the rest of
    ``x_shape`` is what counts): the dropout index ((n*C + c)*H + h)*W + w is int32, so
    with dropout N*C*H*W < 2**31; the GEMM row and bitmask word indices are int32 too."""
    _, c, h, w = (int(v) for v in x_shape)
    limit = (MAX_INDEX - 1) // max(1, h * w * triton.cdiv(c, 32))  # bitmask words, GEMM rows
    if dropout_p > 0:
        limit = min(limit, (MAX_INDEX - 1) // max(1, c * h * w))
    return limit


def _check_tensor(name, t, *, dim=None, dtypes=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} dtype must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (the device of x), got {t.device}")


def _check_common(x, weight_shape, scale, shift, stride, padding, act, dropout_p, seed, keep_bits, *,
                  weight=None):
    """Validate the shared arguments; return (KH, KW, pads, Ho, Wo, act_code)."""
    _check_tensor("x", x, dim=4, dtypes=_DTYPES)
    dev = x.device
    if dev.type != "cuda" and not INTERPRET:
        raise ValueError(f"x must be a CUDA tensor (or set TRITON_INTERPRET=1 before importing triton), "
                         f"got device {dev}")
    if weight is not None:
        _check_tensor("weight", weight, dim=4, device=dev)
        if weight.dtype != x.dtype:
            raise ValueError(f"weight dtype must match x dtype {x.dtype}, got {weight.dtype}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must be 4-D [Cout, Cin, kh, kw], got shape {tuple(weight_shape)}")
    cout, cin, kh, kw = (int(v) for v in weight_shape)
    if cin != x.shape[1]:
        raise ValueError(f"weight Cin (weight.shape[1] = {cin}) must equal x channels (x.shape[1] = {x.shape[1]})")
    if min(cout, cin, kh, kw) < 1:
        raise ValueError(f"weight shape must be positive, got {tuple(weight_shape)}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    pads = norm_padding(padding)
    ho, wo = out_hw(x.shape[2], x.shape[3], kh, kw, stride, pads)
    if ho < 1 or wo < 1:
        raise ValueError(f"output would be empty: input {tuple(x.shape[2:])}, kernel {(kh, kw)}, "
                         f"stride {stride}, padding {pads}")
    act_code = check_activation(act, "act")
    if not (0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift must be given together (got only "
                         f"{'scale' if shift is None else 'shift'})")
    if scale is None:
        if act != "identity":
            raise ValueError(f"act={act!r} needs the BN prologue (scale/shift); without it act must be 'identity'")
        if dropout_p != 0:
            raise ValueError(f"dropout_p={dropout_p} needs the BN prologue (scale/shift); without it it must be 0")
    else:
        ok = (torch.float32, torch.float64) if x.dtype == torch.float64 else (torch.float32,)
        for name, t in (("scale", scale), ("shift", shift)):
            _check_tensor(name, t, dim=1, dtypes=ok, device=dev)
            if t.shape[0] != cin:
                raise ValueError(f"{name} must have shape [Cin] = [{cin}], got {tuple(t.shape)}")
        if scale.dtype != shift.dtype:
            raise ValueError(f"scale and shift dtypes must match, got {scale.dtype} and {shift.dtype}")
    limit = max_batch(x.shape, dropout_p)
    if x.shape[0] > limit:
        raise IndexRangeError(f"x of shape {tuple(x.shape)} is too large for the kernels' int32 indices "
                              f"(dropout_p={dropout_p}): the batch must be <= {limit}; split it", limit)
    if dropout_p > 0:
        if keep_bits is None:
            if seed is None:
                raise ValueError("seed (int64 tensor [1]) is required when dropout_p > 0")
            _check_tensor("seed", seed, dtypes=(torch.int64,), device=dev)
            if seed.numel() != 1:
                raise ValueError(f"seed must have one element, got shape {tuple(seed.shape)}")
        else:
            _check_tensor("keep_bits", keep_bits, dim=2, dtypes=(torch.int32,), device=dev)
            if tuple(keep_bits.shape) != dropout_bits_shape(x.shape) or not keep_bits.is_contiguous():
                raise ValueError(f"keep_bits must be a contiguous int32 tensor of shape {dropout_bits_shape(x.shape)} "
                                 f"(dropout_bits of x's shape), got {tuple(keep_bits.shape)}")
    return kh, kw, pads, ho, wo, act_code


def dropout_bits(seed, x_shape, dropout_p):
    """The dropout keep mask of an input of logical shape [N, C, H, W] as a bitmask:
    int32 [N*H*W, ceil(C/32)], bit c % 32 of word [(n*H + h)*W + w, c // 32] is
    ``tl.rand(seed, ((n*C + c)*H + h)*W + w) >= fp32(p)`` (bits past C are 0). Evaluated
    once and passed to the three kernels (``keep_bits=``), which test bits in their loops."""
    _check_tensor("seed", seed, dtypes=(torch.int64,))
    if seed.numel() != 1:
        raise ValueError(f"seed must have one element, got shape {tuple(seed.shape)}")
    if not (0.0 < float(dropout_p) < 1.0):
        raise ValueError(f"dropout_p must be in (0, 1) for a dropout mask, got {dropout_p}")
    n, c, h, w = (int(v) for v in x_shape)
    if n * c * h * w >= MAX_INDEX:
        raise IndexRangeError(f"dropout index is int32: N*C*H*W must be < 2**31, got shape {tuple(x_shape)}",
                              (MAX_INDEX - 1) // max(1, c * h * w))
    rows, cw = dropout_bits_shape(x_shape)
    bits = torch.empty((rows, cw), device=seed.device, dtype=torch.int32)
    if bits.numel() == 0:
        return bits
    block_r = 64 if INTERPRET else 128
    with launch_device(seed):
        dropout_bits_kernel[(triton.cdiv(rows, block_r), cw)](seed, bits, rows, c, h * w, cw, _f32(dropout_p),
                                                             BLOCK_R=block_r, num_warps=4)
    return bits


def _affine_args(scale, shift, x):
    if scale is None:
        return x, x  # never read (HAS_AFFINE=False)
    return scale.contiguous(), shift.contiguous()


def _bits_arg(keep_bits, seed, x, p):
    """(bits tensor, words per pixel) for the kernels: the given bitmask, one made from
    seed, or (x, 1) without dropout (never read)."""
    if p <= 0:
        return x, 1
    if keep_bits is None:
        keep_bits = dropout_bits(seed, x.shape, p)
    return keep_bits, keep_bits.shape[1]


def bn_act_conv_fwd(x, weight, scale=None, shift=None, *, stride=1, padding=(1, 1, 1, 1), act="identity",
                    negative_slope=0.0, dropout_p=0.0, seed=None, keep_bits=None, bias=None, residual=None,
                    compute_stats=False, allow_tf32=False):
    """y = conv2d(pad(dropout(act(x*scale + shift))), weight) (+ bias) (+ residual).

    The dropout mask is ``keep_bits`` (``dropout_bits(seed, x.shape, dropout_p)``, made
    here from ``seed`` when not given). Returns ``(y, stats)``; ``stats = (mean_p [P, Cout],
    m2_p [P, Cout], count_p [P])`` (fp32, P = stats_rows(N*Ho*Wo)) when ``compute_stats``
    else None: per chunk of STATS_M output pixels, mean and sum of squared deviations of
    the stored y.
    """
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code = _check_common(
        x, weight.shape if isinstance(weight, torch.Tensor) else (), scale, shift, stride, padding, act,
        dropout_p, seed, keep_bits, weight=weight)
    nb, cin, h, w = x.shape
    cout = weight.shape[0]
    dev = x.device
    if bias is not None:
        _check_tensor("bias", bias, dim=1, dtypes=(weight.dtype,), device=dev)
        if bias.shape[0] != cout:
            raise ValueError(f"bias must have shape [Cout] = [{cout}], got {tuple(bias.shape)}")
    if residual is not None:
        _check_tensor("residual", residual, dim=4, dtypes=(x.dtype,), device=dev)
        if tuple(residual.shape) != (nb, cout, ho, wo):
            raise ValueError(f"residual shape must equal the output shape {(nb, cout, ho, wo)}, "
                             f"got {tuple(residual.shape)}")

    fmt = output_memory_format(x)
    y = torch.empty((nb, cout, ho, wo), device=dev, dtype=x.dtype, memory_format=fmt)
    m_rows = nb * ho * wo
    P = stats_rows(m_rows) if compute_stats else 0
    if compute_stats:
        mean_p = torch.empty((P, cout), device=dev, dtype=torch.float32)
        m2_p = torch.empty((P, cout), device=dev, dtype=torch.float32)
        cnt_p = torch.empty((P,), device=dev, dtype=torch.float32)
    else:
        mean_p = m2_p = cnt_p = y  # never written (STATS=False)
    if y.numel() == 0:
        return y, ((mean_p, m2_p, cnt_p) if compute_stats else None)

    with launch_device(x):
        w_t = weight.permute(2, 3, 1, 0).reshape(kh * kw * cin, cout).contiguous()
        sc, sh = _affine_args(scale, shift, x)
        res = residual if residual is not None else y
        slope, p, inv_keep = _scalars(negative_slope, dropout_p)
        bits, cw = _bits_arg(keep_bits, seed, x, p)
        in_prec, upcast = _dot_modes(x.dtype, allow_tf32)
        grid = lambda META: (triton.cdiv(m_rows, META["BLOCK_M"]), triton.cdiv(cout, META["BLOCK_N"]))  # noqa: E731
        _launch(_fwd_kernel, grid, (
            x, w_t, sc, sh, bias if bias is not None else y, res, y, bits,
            mean_p, m2_p, cnt_p,
            nb, cin, h, w, cout, ho, wo, m_rows, P, cw,
            *x.stride(), *res.stride(), *y.stride(),
            slope, inv_keep, _keep_mul(act, inv_keep),
        ), dict(
            KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
            ACT=act_code, HAS_AFFINE=scale is not None, HAS_DROPOUT=p > 0, HAS_BIAS=bias is not None,
            HAS_RES=residual is not None, STATS=bool(compute_stats), STATS_ROWS=STATS_M, FLAT_K=cin < 16,
            OFFS_64=_needs_int64(x, y, res),
            IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
        ), "fwd", x.dtype, cin, cout, p > 0)
    return y, ((mean_p, m2_p, cnt_p) if compute_stats else None)


def bn_act_conv_dgrad(grad_y, weight, x, scale=None, shift=None, *, stride=1, padding=(1, 1, 1, 1),
                      act="identity", negative_slope=0.0, dropout_p=0.0, seed=None, keep_bits=None,
                      allow_tf32=False):
    """Gradient w.r.t. x (through the BN-act-dropout prologue when scale is given).

    Returns ``(grad_x, grad_scale, grad_shift)``; the last two are None without scale,
    else in scale's dtype. grad_x has x's dtype and memory format.
    """
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code = _check_common(
        x, weight.shape if isinstance(weight, torch.Tensor) else (), scale, shift, stride, padding, act,
        dropout_p, seed, keep_bits, weight=weight)
    nb, cin, h, w = x.shape
    cout = weight.shape[0]
    dev = x.device
    _check_tensor("grad_y", grad_y, dim=4, dtypes=(x.dtype,), device=dev)
    if tuple(grad_y.shape) != (nb, cout, ho, wo):
        raise ValueError(f"grad_y shape must equal the output shape {(nb, cout, ho, wo)}, got {tuple(grad_y.shape)}")

    fmt = output_memory_format(x)
    grad_x = torch.empty((nb, cin, h, w), device=dev, dtype=x.dtype, memory_format=fmt)
    has_affine = scale is not None
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    m_rows = nb * h * w
    p_on = float(dropout_p) > 0
    pm = triton.cdiv(m_rows, _min_block_m("dgrad", x.dtype, cin, cout, p_on)) if has_affine else 0
    if grad_x.numel() == 0:
        z = torch.zeros(cin, device=dev, dtype=scale.dtype) if has_affine else None
        return grad_x, z, (z.clone() if has_affine else None)

    with launch_device(x):
        psc = torch.zeros((pm, cin), device=dev, dtype=acc_dtype) if has_affine else grad_x
        psh = torch.zeros((pm, cin), device=dev, dtype=acc_dtype) if has_affine else grad_x
        w_d = weight.permute(2, 3, 0, 1).reshape(kh * kw * cout, cin).contiguous()
        sc, sh = _affine_args(scale, shift, x)
        slope, p, inv_keep = _scalars(negative_slope, dropout_p)
        bits, cw = _bits_arg(keep_bits, seed, x, p)
        in_prec, upcast = _dot_modes(x.dtype, allow_tf32)
        grid = lambda META: (triton.cdiv(m_rows, META["BLOCK_M"]), triton.cdiv(cin, META["BLOCK_N"]))  # noqa: E731
        _launch(_dgrad_kernel, grid, (
            grad_y, w_d, x, sc, sh, bits, grad_x, psc, psh,
            nb, cin, h, w, cout, ho, wo, m_rows, cw,
            *grad_y.stride(), *x.stride(), *grad_x.stride(),
            slope, inv_keep,
        ), dict(
            KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
            ACT=act_code, HAS_AFFINE=has_affine, HAS_DROPOUT=p > 0, OFFS_64=_needs_int64(grad_y, x, grad_x),
            GX_LIKE_X=grad_x.stride() == x.stride(),
            IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
        ), "dgrad", x.dtype, cin, cout, p > 0)
        if not has_affine:
            return grad_x, None, None
        return grad_x, psc.sum(0).to(scale.dtype), psh.sum(0).to(scale.dtype)


def bn_act_conv_wgrad(grad_y, x, scale=None, shift=None, *, weight_shape, stride=1, padding=(1, 1, 1, 1),
                      act="identity", negative_slope=0.0, dropout_p=0.0, seed=None, keep_bits=None,
                      allow_tf32=False, out_dtype=None):
    """Gradient w.r.t. the weight, ``a`` recomputed from x. Returns [Cout, Cin, kh, kw]
    in ``out_dtype`` (default x's dtype); accumulated in fp32 (fp64 for fp64)."""
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code = _check_common(
        x, tuple(weight_shape), scale, shift, stride, padding, act, dropout_p, seed, keep_bits)
    nb, cin, h, w = x.shape
    cout = int(weight_shape[0])
    dev = x.device
    _check_tensor("grad_y", grad_y, dim=4, dtypes=(x.dtype,), device=dev)
    if tuple(grad_y.shape) != (nb, cout, ho, wo):
        raise ValueError(f"grad_y shape must equal the output shape {(nb, cout, ho, wo)}, got {tuple(grad_y.shape)}")
    out_dtype = out_dtype or x.dtype
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    m_rows = nb * ho * wo
    if m_rows == 0:
        return torch.zeros((cout, cin, kh, kw), device=dev, dtype=out_dtype)

    # split-K so that small layers still fill the machine
    bm_est, bn_est = 64, 64
    tiles = triton.cdiv(cout, bm_est) * triton.cdiv(cin, bn_est) * kh * kw
    min_chunk = 64 if INTERPRET else 512
    target = 4 if INTERPRET else 4 * _num_sms(dev)
    split = max(1, min(triton.cdiv(target, tiles), triton.cdiv(m_rows, min_chunk)))
    chunk = triton.cdiv(triton.cdiv(m_rows, split), 64) * 64
    split = triton.cdiv(m_rows, chunk)

    with launch_device(x):
        part = torch.empty((split, cout, cin * kh * kw), device=dev, dtype=acc_dtype)
        sc, sh = _affine_args(scale, shift, x)
        slope, p, inv_keep = _scalars(negative_slope, dropout_p)
        bits, cw = _bits_arg(keep_bits, seed, x, p)
        in_prec, upcast = _dot_modes(x.dtype, allow_tf32)
        grid = lambda META: (triton.cdiv(cout, META["BLOCK_M"]),  # noqa: E731
                             kh * kw * triton.cdiv(cin, META["BLOCK_N"]), split)
        _launch(_wgrad_kernel, grid, (
            grad_y, x, sc, sh, bits, part,
            nb, cin, h, w, cout, ho, wo, m_rows, chunk, cw, (ho * wo).bit_length() - 1, wo.bit_length() - 1,
            *grad_y.stride(), *x.stride(),
            slope, inv_keep, _keep_mul(act, inv_keep),
        ), dict(
            KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
            ACT=act_code, HAS_AFFINE=scale is not None, HAS_DROPOUT=p > 0, POW2_OUT=_is_pow2(ho) and _is_pow2(wo),
            OFFS_64=_needs_int64(grad_y, x),
            IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
        ), "wgrad", x.dtype, cin, cout, p > 0)
        gw = part[0] if split == 1 else part.sum(0)
        return gw.view(cout, cin, kh, kw).to(out_dtype)
