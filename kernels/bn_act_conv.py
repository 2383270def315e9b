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
layout). Dropout masks are a function of (seed, logical NCHW index of the input
element) only (``kernels._common.dropout_keep``), so the three kernels regenerate
the same mask under any tiling. ``p`` reaches the kernels as an fp32 scalar:
the mask is ``rand >= fp32(p)`` and kept values are scaled by ``1/(1-fp32(p))``.

Accumulation is fp32 (fp64 for fp64 inputs). fp32 inputs use exact ("ieee")
products unless ``allow_tf32``; fp16/bf16 go to tl.dot natively.
"""
import os
import struct

import torch
import triton
import triton.language as tl

from wrn_fast._counters import bump
from wrn_fast.ops import output_memory_format

from ._common import ACT_CODES, act_grad, apply_act, dropout_keep

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Rows of the forward GEMM (output pixels) per partial-stats record. Fixed (not
# tied to the autotuned BLOCK_M) so the number of partials is a function of the
# shape alone, which the fake kernel needs; every BLOCK_M is a multiple of it.
STATS_M = 64

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------- configs

def _cfg(bm, bn, bk, stages, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=stages, num_warps=warps)


# WRN_FAST_AUTOTUNE=0: one mid-size config per kernel, no autotuning (fast first
# calls: the GPU test suite sets it, each shape would otherwise compile and time
# every config). Default: autotune; timings are cached on disk by Triton
# (cache_results), so a restarted run does not re-time its shapes.
AUTOTUNE = os.environ.get("WRN_FAST_AUTOTUNE", "1") != "0"

if INTERPRET:
    # One small config: autotuning in the interpreter measures numpy, not a GPU.
    # BLOCK_N/BLOCK_K = 16 so the small test channel counts (12, 20) span
    # several, partially masked tiles.
    _FWD_CONFIGS = [_cfg(64, 16, 16, 1, 4)]
    _DGRAD_CONFIGS = [_cfg(64, 16, 16, 1, 4)]
    _WGRAD_CONFIGS = [_cfg(16, 16, 32, 1, 4)]
else:  # Hopper / Ampere
    _FWD_CONFIGS = [
        _cfg(128, 128, 32, 3, 8),
        _cfg(128, 128, 64, 3, 8),
        _cfg(128, 64, 32, 4, 4),
        _cfg(128, 64, 64, 3, 4),
        _cfg(64, 128, 32, 4, 4),
        _cfg(64, 64, 32, 4, 4),
        _cfg(128, 32, 32, 4, 4),
        _cfg(64, 32, 32, 4, 4),
    ]
    _DGRAD_CONFIGS = list(_FWD_CONFIGS)
    _WGRAD_CONFIGS = [
        _cfg(128, 128, 32, 3, 8),
        _cfg(128, 128, 64, 3, 8),
        _cfg(64, 128, 64, 3, 4),
        _cfg(128, 64, 64, 3, 4),
        _cfg(64, 64, 64, 4, 4),
        _cfg(64, 32, 64, 4, 4),
        _cfg(32, 64, 64, 4, 4),
    ]
# Every config a GPU may use (tests run each once, whatever AUTOTUNE says).
ALL_CONFIGS = {"fwd": list(_FWD_CONFIGS), "dgrad": list(_DGRAD_CONFIGS), "wgrad": list(_WGRAD_CONFIGS)}
if not AUTOTUNE and not INTERPRET:
    _FWD_CONFIGS = [_cfg(64, 64, 32, 4, 4)]
    _DGRAD_CONFIGS = [_cfg(64, 64, 32, 4, 4)]
    _WGRAD_CONFIGS = [_cfg(64, 64, 64, 4, 4)]


def _prune_by_n(key_n):
    """Drop configs whose BLOCK_N is far wider than the GEMM's N (stem, thin layers)."""
    def prune(configs, named_args, **kwargs):
        n = named_args[key_n] if key_n in named_args else kwargs[key_n]
        cap = max(32, triton.next_power_of_2(int(n)))
        kept = [c for c in configs if c.kwargs["BLOCK_N"] <= cap]
        return kept or configs
    return {"early_config_prune": prune}


def _min_block_m(configs):
    return min(c.kwargs["BLOCK_M"] for c in configs)


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
def _prologue(xv, sc, sh, inb, nb, c, ih, iw, Cin, H, W, seed, slope, p, inv_keep,
              ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """a = dropout(act(x*scale+shift)), zero where the tap falls in the padding.

    xv [R, C] in the compute dtype, sc/sh broadcastable; nb/c/ih/iw broadcastable
    int32 logical coordinates of the input element (for the dropout index)."""
    z = xv * sc + sh
    a = apply_act(z, ACT, slope)
    if HAS_DROPOUT:
        idx = ((nb * Cin + c) * H + ih) * W + iw
        keep = dropout_keep(seed, idx, p)
        a = tl.where(keep, a * inv_keep, 0.0)
    return tl.where(inb, a, 0.0)  # padding is applied AFTER bn-act: act(shift) != 0


# --------------------------------------------------------------------------- forward

@triton.autotune(configs=_FWD_CONFIGS, key=["Cin", "Cout", "H", "W", "Ho", "Wo", "KH", "KW", "STRIDE",
                                           "HAS_AFFINE", "STATS"],
                 prune_configs_by=_prune_by_n("Cout"), cache_results=not INTERPRET)
@triton.jit
def _fwd_kernel(
    x_ptr,          # [N, Cin, H, W] any strides (sxn, sxc, sxh, sxw)
    w_ptr,          # [KH*KW*Cin, Cout] contiguous, row = (kh*KW + kw)*Cin + c
    scale_ptr,      # [Cin] (HAS_AFFINE)
    shift_ptr,      # [Cin] (HAS_AFFINE)
    bias_ptr,       # [Cout] (HAS_BIAS)
    res_ptr,        # [N, Cout, Ho, Wo] any strides (HAS_RES)
    y_ptr,          # [N, Cout, Ho, Wo] strides (syn, syc, syh, syw)
    seed_ptr,       # int64 [1] (HAS_DROPOUT)
    mean_ptr,       # fp32 [P, Cout] (STATS)
    m2_ptr,         # fp32 [P, Cout] (STATS)
    cnt_ptr,        # fp32 [P] (STATS)
    Nb, Cin, H, W, Cout, Ho, Wo, M, P,
    sxn, sxc, sxh, sxw,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    slope, p, inv_keep,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr, STATS: tl.constexpr, STATS_ROWS: tl.constexpr, FLAT_K: tl.constexpr,
    IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < Cout
    rmc = tl.where(m_ok, rm, 0)
    HoWo = Ho * Wo
    nb = rmc // HoWo
    rem = rmc - nb * HoWo
    oh = rem // Wo
    ow = rem - oh * Wo
    x_row = nb.to(tl.int64) * sxn
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
    if IS_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

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
            w = tl.load(w_ptr + k[:, None] * Cout + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if HAS_AFFINE:
                sc = tl.load(scale_ptr + c, mask=k_ok, other=0.0).to(acc.dtype)
                sh = tl.load(shift_ptr + c, mask=k_ok, other=0.0).to(acc.dtype)
                a = _prologue(xv.to(acc.dtype), sc[None, :], sh[None, :], inb, nb[:, None], c[None, :], ih, iw,
                              Cin, H, W, seed, slope, p, inv_keep, ACT, HAS_DROPOUT)
                a = a.to(w.dtype)
            else:
                a = xv
            acc = _mma(a, w, acc, IN_PREC, UPCAST)
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
            inb = r_ok[:, None] & c_ok[None, :]
            xv = tl.load(x_ptr + (x_row + ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc, mask=inb, other=0.0)
            w = tl.load(w_ptr + (tap * Cin + c)[:, None] * Cout + rn[None, :],
                        mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            if HAS_AFFINE:
                sc = tl.load(scale_ptr + c, mask=c_ok, other=0.0).to(acc.dtype)
                sh = tl.load(shift_ptr + c, mask=c_ok, other=0.0).to(acc.dtype)
                a = _prologue(xv.to(acc.dtype), sc[None, :], sh[None, :], inb, nb[:, None], c[None, :],
                              ih[:, None], iw[:, None], Cin, H, W, seed, slope, p, inv_keep, ACT, HAS_DROPOUT)
                a = a.to(w.dtype)
            else:
                a = xv
            acc = _mma(a, w, acc, IN_PREC, UPCAST)

    # ---- epilogue: bias, residual, store, partial stats of the stored values
    out_mask = m_ok[:, None] & n_ok[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)
        acc += b[None, :]
    nb64 = nb.to(tl.int64)
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
            tl.store(cnt_ptr + prow, cnt, mask=row_ok & (pid_n == 0))


# --------------------------------------------------------------------------- dgrad

@triton.autotune(configs=_DGRAD_CONFIGS, key=["Cin", "Cout", "H", "W", "Ho", "Wo", "KH", "KW", "STRIDE",
                                             "HAS_AFFINE"],
                 prune_configs_by=_prune_by_n("Cin"), reset_to_zero=["psc_ptr", "psh_ptr"],
                 cache_results=not INTERPRET)
@triton.jit
def _dgrad_kernel(
    gy_ptr,         # [N, Cout, Ho, Wo] any strides (sgn, sgc, sgh, sgw)
    w_ptr,          # [KH*KW*Cout, Cin] contiguous, row = (kh*KW + kw)*Cout + co
    x_ptr,          # [N, Cin, H, W] saved pre-BN input, any strides (HAS_AFFINE)
    scale_ptr,      # [Cin] (HAS_AFFINE)
    shift_ptr,      # [Cin] (HAS_AFFINE)
    seed_ptr,       # int64 [1] (HAS_DROPOUT)
    gx_ptr,         # [N, Cin, H, W] strides (sdn, sdc, sdh, sdw)
    psc_ptr,        # [PM, Cin] partial sum(g_z * x) per M-tile (HAS_AFFINE), zero-initialised
    psh_ptr,        # [PM, Cin] partial sum(g_z) per M-tile (HAS_AFFINE), zero-initialised
    Nb, Cin, H, W, Cout, Ho, Wo, M,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    slope, p, inv_keep,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
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
    nb64 = nb.to(tl.int64)
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
    gx_ptrs = gx_ptr + (nb64 * sdn + ih * sdh + iw * sdw)[:, None] + rn[None, :] * sdc
    if HAS_AFFINE:
        xv = tl.load(x_ptr + (nb64 * sxn + ih * sxh + iw * sxw)[:, None] + rn[None, :] * sxc,
                     mask=out_mask, other=0.0).to(acc.dtype)
        sc = tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)
        sh = tl.load(shift_ptr + rn, mask=n_ok, other=0.0).to(acc.dtype)
        z = xv * sc[None, :] + sh[None, :]
        gz = acc * act_grad(z, ACT, slope)
        if HAS_DROPOUT:
            seed = tl.load(seed_ptr)
            idx = ((nb[:, None] * Cin + rn[None, :]) * H + ih[:, None]) * W + iw[:, None]
            keep = dropout_keep(seed, idx, p)
            gz = tl.where(keep, gz * inv_keep, 0.0)
        gz = tl.where(out_mask, gz, 0.0)
        tl.store(gx_ptrs, (gz * sc[None, :]).to(gx_ptr.dtype.element_ty), mask=out_mask)
        tl.store(psh_ptr + pid_m * Cin + rn, tl.sum(gz, axis=0), mask=n_ok)
        tl.store(psc_ptr + pid_m * Cin + rn, tl.sum(gz * xv, axis=0), mask=n_ok)
    else:
        tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=out_mask)


# --------------------------------------------------------------------------- wgrad

@triton.autotune(configs=_WGRAD_CONFIGS, key=["Cin", "Cout", "H", "W", "Ho", "Wo", "KH", "KW", "STRIDE",
                                             "HAS_AFFINE", "K_CHUNK"],
                 prune_configs_by=_prune_by_n("Cin"), cache_results=not INTERPRET)
@triton.jit
def _wgrad_kernel(
    gy_ptr,         # [N, Cout, Ho, Wo] any strides (sgn, sgc, sgh, sgw)
    x_ptr,          # [N, Cin, H, W] saved pre-BN input, any strides
    scale_ptr,      # [Cin] (HAS_AFFINE)
    shift_ptr,      # [Cin] (HAS_AFFINE)
    seed_ptr,       # int64 [1] (HAS_DROPOUT)
    part_ptr,       # [SPLIT, Cout, Cin*KH*KW] contiguous partial grad_w (fp32 / fp64)
    Nb, Cin, H, W, Cout, Ho, Wo, M, K_CHUNK,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    slope, p, inv_keep,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr,
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
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
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
        nb = rr // HoWo
        rem = rr - nb * HoWo
        oh = rem // Wo
        ow = rem - oh * Wo
        nb64 = nb.to(tl.int64)
        g = tl.load(gy_ptr + (nb64 * sgn + oh * sgh + ow * sgw)[None, :] + rco[:, None] * sgc,
                    mask=co_ok[:, None] & r_ok[None, :], other=0.0)
        ih = oh * STRIDE - PT + kh
        iw = ow * STRIDE - PL + kw
        sp_ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        inb = sp_ok[:, None] & c_ok[None, :]
        xv = tl.load(x_ptr + (nb64 * sxn + ih * sxh + iw * sxw)[:, None] + rc[None, :] * sxc,
                     mask=inb, other=0.0)
        if HAS_AFFINE:
            a = _prologue(xv.to(acc.dtype), sc.to(acc.dtype)[None, :], sh.to(acc.dtype)[None, :], inb,
                          nb[:, None], rc[None, :], ih[:, None], iw[:, None], Cin, H, W, seed, slope, p,
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

def _f32(v: float) -> float:
    """Round a Python float to fp32: the kernels see every scalar as fp32 on the GPU;
    doing it here makes the interpreter (which may keep fp64) see the same values."""
    return struct.unpack("f", struct.pack("f", float(v)))[0]


def _scalars(negative_slope, dropout_p):
    """(slope, p, inv_keep) as the kernels use them: fp32(p), fp32(1 / (1 - fp32(p)))."""
    p = _f32(dropout_p)
    return _f32(negative_slope), p, _f32(1.0 / (1.0 - p))


def _norm_padding(padding):
    """int | (ph, pw) | (top, bottom, left, right) -> (top, bottom, left, right)."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(v) for v in padding)
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    if len(padding) == 4:
        if min(padding) < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        return padding
    raise ValueError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), got {padding}")


def out_hw(h, w, kh, kw, stride, padding):
    pt, pb, pl, pr = _norm_padding(padding)
    return (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1


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


def _check_tensor(name, t, *, dim=None, dtypes=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} dtype must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (the device of x), got {t.device}")


def _check_common(x, weight_shape, scale, shift, stride, padding, act, dropout_p, seed, *, weight=None):
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
    pads = _norm_padding(padding)
    ho, wo = out_hw(x.shape[2], x.shape[3], kh, kw, stride, pads)
    if ho < 1 or wo < 1:
        raise ValueError(f"output would be empty: input {tuple(x.shape[2:])}, kernel {(kh, kw)}, "
                         f"stride {stride}, padding {pads}")
    if act not in ACT_CODES:
        raise ValueError(f"act must be one of {tuple(ACT_CODES)}, got {act!r}")
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
    if dropout_p > 0:
        if seed is None:
            raise ValueError("seed (int64 tensor [1]) is required when dropout_p > 0")
        _check_tensor("seed", seed, dtypes=(torch.int64,), device=dev)
        if seed.numel() != 1:
            raise ValueError(f"seed must have one element, got shape {tuple(seed.shape)}")
        if x.numel() >= 2**31:
            raise ValueError(f"dropout index is int32: x.numel() must be < 2**31, got {x.numel()}")
    return kh, kw, pads, ho, wo, ACT_CODES[act]


def _affine_args(scale, shift, x):
    if scale is None:
        return x, x  # never read (HAS_AFFINE=False)
    return scale.contiguous(), shift.contiguous()


def bn_act_conv_fwd(x, weight, scale=None, shift=None, *, stride=1, padding=(1, 1, 1, 1), act="identity",
                    negative_slope=0.0, dropout_p=0.0, seed=None, bias=None, residual=None,
                    compute_stats=False, allow_tf32=False):
    """y = conv2d(pad(dropout(act(x*scale + shift))), weight) (+ bias) (+ residual).

    Returns ``(y, stats)``; ``stats = (mean_p [P, Cout], m2_p [P, Cout], count_p [P])``
    (fp32, P = stats_rows(N*Ho*Wo)) when ``compute_stats`` else None: per chunk of
    STATS_M output pixels, mean and sum of squared deviations of the stored y.
    """
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code = _check_common(
        x, weight.shape if isinstance(weight, torch.Tensor) else (), scale, shift, stride, padding, act,
        dropout_p, seed, weight=weight)
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

    w_t = weight.permute(2, 3, 1, 0).reshape(kh * kw * cin, cout).contiguous()
    sc, sh = _affine_args(scale, shift, x)
    res = residual if residual is not None else y
    slope, p, inv_keep = _scalars(negative_slope, dropout_p)
    in_prec, upcast = _dot_modes(x.dtype, allow_tf32)
    grid = lambda META: (triton.cdiv(m_rows, META["BLOCK_M"]), triton.cdiv(cout, META["BLOCK_N"]))  # noqa: E731
    _fwd_kernel[grid](
        x, w_t, sc, sh, bias if bias is not None else y, res, y, seed if p > 0 else y,
        mean_p, m2_p, cnt_p,
        nb, cin, h, w, cout, ho, wo, m_rows, P,
        *x.stride(), *res.stride(), *y.stride(),
        slope, p, inv_keep,
        KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
        ACT=act_code, HAS_AFFINE=scale is not None, HAS_DROPOUT=p > 0, HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, STATS=bool(compute_stats), STATS_ROWS=STATS_M, FLAT_K=cin < 16,
        IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
    )
    bump("bn_act_conv_fwd")
    return y, ((mean_p, m2_p, cnt_p) if compute_stats else None)


def bn_act_conv_dgrad(grad_y, weight, x, scale=None, shift=None, *, stride=1, padding=(1, 1, 1, 1),
                      act="identity", negative_slope=0.0, dropout_p=0.0, seed=None, allow_tf32=False):
    """Gradient w.r.t. x (through the BN-act-dropout prologue when scale is given).

    Returns ``(grad_x, grad_scale, grad_shift)``; the last two are None without scale,
    else in scale's dtype. grad_x has x's dtype and memory format.
    """
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code = _check_common(
        x, weight.shape if isinstance(weight, torch.Tensor) else (), scale, shift, stride, padding, act,
        dropout_p, seed, weight=weight)
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
    pm = triton.cdiv(m_rows, _min_block_m(_dgrad_kernel.configs)) if has_affine else 0  # rows per tile >= min
    psc = torch.zeros((pm, cin), device=dev, dtype=acc_dtype) if has_affine else grad_x
    psh = torch.zeros((pm, cin), device=dev, dtype=acc_dtype) if has_affine else grad_x
    if grad_x.numel() == 0:
        z = torch.zeros(cin, device=dev, dtype=scale.dtype) if has_affine else None
        return grad_x, z, (z.clone() if has_affine else None)

    w_d = weight.permute(2, 3, 0, 1).reshape(kh * kw * cout, cin).contiguous()
    sc, sh = _affine_args(scale, shift, x)
    slope, p, inv_keep = _scalars(negative_slope, dropout_p)
    in_prec, upcast = _dot_modes(x.dtype, allow_tf32)
    grid = lambda META: (triton.cdiv(m_rows, META["BLOCK_M"]), triton.cdiv(cin, META["BLOCK_N"]))  # noqa: E731
    _dgrad_kernel[grid](
        grad_y, w_d, x, sc, sh, seed if p > 0 else x, grad_x, psc, psh,
        nb, cin, h, w, cout, ho, wo, m_rows,
        *grad_y.stride(), *x.stride(), *grad_x.stride(),
        slope, p, inv_keep,
        KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
        ACT=act_code, HAS_AFFINE=has_affine, HAS_DROPOUT=p > 0,
        IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
    )
    bump("bn_act_conv_dgrad")
    if not has_affine:
        return grad_x, None, None
    return grad_x, psc.sum(0).to(scale.dtype), psh.sum(0).to(scale.dtype)


def bn_act_conv_wgrad(grad_y, x, scale=None, shift=None, *, weight_shape, stride=1, padding=(1, 1, 1, 1),
                      act="identity", negative_slope=0.0, dropout_p=0.0, seed=None, allow_tf32=False,
                      out_dtype=None):
    """Gradient w.r.t. the weight, ``a`` recomputed from x. Returns [Cout, Cin, kh, kw]
    in ``out_dtype`` (default x's dtype); accumulated in fp32 (fp64 for fp64)."""
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code = _check_common(
        x, tuple(weight_shape), scale, shift, stride, padding, act, dropout_p, seed)
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
    part = torch.empty((split, cout, cin * kh * kw), device=dev, dtype=acc_dtype)

    sc, sh = _affine_args(scale, shift, x)
    slope, p, inv_keep = _scalars(negative_slope, dropout_p)
    in_prec, upcast = _dot_modes(x.dtype, allow_tf32)
    grid = lambda META: (triton.cdiv(cout, META["BLOCK_M"]), kh * kw * triton.cdiv(cin, META["BLOCK_N"]),  # noqa: E731
                         split)
    _wgrad_kernel[grid](
        grad_y, x, sc, sh, seed if p > 0 else x, part,
        nb, cin, h, w, cout, ho, wo, m_rows, chunk,
        *grad_y.stride(), *x.stride(),
        slope, p, inv_keep,
        KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
        ACT=act_code, HAS_AFFINE=scale is not None, HAS_DROPOUT=p > 0,
        IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
    )
    bump("bn_act_conv_wgrad")
    gw = part[0] if split == 1 else part.sum(0)
    return gw.view(cout, cin, kh, kw).to(out_dtype)
