"""Gradient w.r.t. the weight of BN-act-dropout -> conv2d, ``a`` recomputed from x.

  gw[co,c,kh,kw] = sum_{n,oh,ow} gy[n,co,oh,ow] * a[n,c,oh*s-pt+kh,ow*s-pl+kw]
  GEMM M = Cout, N = Cin (one tap per program column; below 16 channels, the stem, N =
  (tap, c) flattened), K = N*Ho*Wo with split-K (partials in fp32 / fp64, summed by the
  launcher).
"""
import torch
import triton
import triton.language as tl

from . import conv_config
from ._common import keep_from_bits, launch_device
from .conv_common import (_check_common, _check_grad_y, _first_part, _is_pow2, _keep_mul, _mma, _needs_int64,
                          _num_sms, _pixel_of_row, _prologue, _prologue_args)


@triton.jit
def _out_pixel(rr, HoWo, Ho, Wo, LOG2_HOWO, LOG2_WO, POW2_OUT: tl.constexpr):
    """(n, oh, ow) of output rows ``rr``: shifts when Ho, Wo are powers of two (every WRN
    shape), else integer divisions."""
    if POW2_OUT:
        return rr >> LOG2_HOWO, (rr >> LOG2_WO) & (Ho - 1), rr & (Wo - 1)
    else:
        return _pixel_of_row(rr, HoWo, Wo)


@triton.autotune(configs=conv_config.ALL_CONFIGS["wgrad"], key=conv_config.AUTOTUNE_KEY + ["K_CHUNK"],
                 prune_configs_by=conv_config.prune_by("Cin"), cache_results=not conv_config.INTERPRET)
@triton.heuristics({"EVEN_R": conv_config.even_rows})
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
    LINEAR: tl.constexpr, FLAT_N: tl.constexpr, OFFS_64: tl.constexpr, EVEN_R: tl.constexpr,
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
    # BLOCK_M rows (Cout) as one accumulator, or, when BLOCK_M is not a power of two, as
    # two (BM0 + BM1, e.g. 320 = 256 + 64, 192 = 128 + 64: two wgmma chains sharing the
    # prologue's B operand), so that Cout = 160 / 320 fill more of the tile than a power
    # of two does (256 rows over 160 channels: 62.5%; 192: 83%; 320 over 320: 100%).
    BM0: tl.constexpr = _first_part(BLOCK_M)
    BM1: tl.constexpr = BLOCK_M - BM0 if BM0 < BLOCK_M else BLOCK_M  # (unused when BM0 == BLOCK_M)
    rco = pid_m * BLOCK_M + tl.arange(0, BM0)
    rco1 = pid_m * BLOCK_M + BM0 + tl.arange(0, BM1)
    rc = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    co_ok = rco < Cout
    co_ok1 = rco1 < Cout
    c_ok = rc < Cin
    if HAS_AFFINE:
        sc = tl.load(scale_ptr + rc, mask=c_ok, other=0.0)
        sh = tl.load(shift_ptr + rc, mask=c_ok, other=0.0)
    if IS_FP64:
        acc = tl.zeros((BM0, BLOCK_N), dtype=tl.float64)
        acc1 = tl.zeros((BM1, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BM0, BLOCK_N), dtype=tl.float32)
        acc1 = tl.zeros((BM1, BLOCK_N), dtype=tl.float32)
    HoWo = Ho * Wo
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, M)
    if FLAT_N:
        # Cin < 16 (the stem): the GEMM's N is (tap, c) flattened, KH*KW*Cin columns gathered
        # per element (one tap per program would leave 3 of 16 columns useful at Cin = 3)
        kf = pid_t * BLOCK_N + tl.arange(0, BLOCK_N)
        kf_ok = kf < KH * KW * Cin
        ftap = kf // Cin
        fc = kf - ftap * Cin
        fkh = ftap // KW
        fkw = ftap - fkh * KW
        if HAS_AFFINE:
            fsc = tl.load(scale_ptr + fc, mask=kf_ok, other=0.0).to(acc.dtype)
            fsh = tl.load(shift_ptr + fc, mask=kf_ok, other=0.0).to(acc.dtype)
        for r0 in range(k_lo, k_hi, BLOCK_K):
            r = r0 + rk
            r_ok = r < k_hi
            rr = tl.where(r_ok, r, 0)
            nb, oh, ow = _out_pixel(rr, HoWo, Ho, Wo, LOG2_HOWO, LOG2_WO, POW2_OUT)
            nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
            g = tl.load(gy_ptr + (nb64 * sgn + oh * sgh + ow * sgw)[None, :] + rco[:, None] * sgc,
                        mask=co_ok[:, None] & r_ok[None, :], other=0.0)
            ih = oh[:, None] * STRIDE - PT + fkh[None, :]
            iw = ow[:, None] * STRIDE - PL + fkw[None, :]
            inb = r_ok[:, None] & kf_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + (nb64 * sxn)[:, None] + fc[None, :] * sxc + ih * sxh + iw * sxw, mask=inb,
                         other=0.0)
            if HAS_AFFINE:
                if HAS_DROPOUT:  # a word per element
                    wd = tl.load(bits_ptr + ((nb[:, None] * H + ih) * W + iw) * CW + fc[None, :] // 32, mask=inb,
                                 other=0)
                    m = tl.where(inb & (((wd >> (fc[None, :] % 32)) & 1) != 0), keep_mul, 0.0)
                else:
                    m = tl.where(inb, 1.0, 0.0)
                a = _prologue(xv.to(acc.dtype), fsc[None, :], fsh[None, :], m, slope, inv_keep, ACT, HAS_DROPOUT)
                a = a.to(g.dtype)
            else:
                a = xv
            acc = _mma(g, a, acc, IN_PREC, UPCAST)
    else:
        if LINEAR:
            # gy and x dense over pixels with the same (n, h, w) order, stride 1, Ho = H,
            # Wo = W: a pixel's offsets are linear in its row r, and tap (kh, kw) shifts x
            # by a constant: loop-carried pointers advance by BLOCK_K pixels per step
            # (sm_90a, bf16 32->32 64x32x64: 186 -> 122 instructions per iteration).
            k_lo_w = k_lo.to(tl.int64) if OFFS_64 else k_lo
            g_ptrs = gy_ptr + (k_lo_w * sgw + rk * sgw)[None, :] + rco[:, None] * sgc
            g_ptrs1 = gy_ptr + (k_lo_w * sgw + rk * sgw)[None, :] + rco1[:, None] * sgc
            x_tap = (kh - PT) * sxh + (kw - PL) * sxw
            x_ptrs = x_ptr + (k_lo_w * sxw + x_tap + rk * sxw)[:, None] + rc[None, :] * sxc
            pix_tap = (kh - PT) * W + (kw - PL)
        for r0 in range(k_lo, k_hi, BLOCK_K):
            r = r0 + rk
            # EVEN_R: the chunk and M are multiples of BLOCK_K, no row mask
            r_ok = tl.full([BLOCK_K], 1, tl.int1) if EVEN_R else r < k_hi
            if LINEAR:
                oh = (r >> LOG2_WO) & (Ho - 1)
                ow = r & (Wo - 1)
                pix = r + pix_tap
            else:
                rr = tl.where(r_ok, r, 0)
                nb, oh, ow = _out_pixel(rr, HoWo, Ho, Wo, LOG2_HOWO, LOG2_WO, POW2_OUT)
                nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
                g_ptrs = gy_ptr + (nb64 * sgn + oh * sgh + ow * sgw)[None, :] + rco[:, None] * sgc
                g_ptrs1 = gy_ptr + (nb64 * sgn + oh * sgh + ow * sgw)[None, :] + rco1[:, None] * sgc
                x_ptrs = x_ptr + (nb64 * sxn + (oh * STRIDE - PT + kh) * sxh + (ow * STRIDE - PL + kw) * sxw)[:, None] \
                    + rc[None, :] * sxc
                pix = (nb * H + oh * STRIDE - PT + kh) * W + ow * STRIDE - PL + kw
            g = tl.load(g_ptrs, mask=co_ok[:, None] & r_ok[None, :], other=0.0)
            ih = oh * STRIDE - PT + kh
            iw = ow * STRIDE - PL + kw
            sp_ok = r_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptrs, mask=sp_ok[:, None] & c_ok[None, :], other=0.0)
            if BM0 < BLOCK_M:
                g1 = tl.load(g_ptrs1, mask=co_ok1[:, None] & r_ok[None, :], other=0.0)
            if LINEAR:
                g_ptrs += BLOCK_K * sgw
                g_ptrs1 += BLOCK_K * sgw
                x_ptrs += BLOCK_K * sxw
            if HAS_AFFINE:
                if HAS_DROPOUT:
                    keep = keep_from_bits(bits_ptr, pix * CW, sp_ok, cb * BLOCK_N,
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
            if BM0 < BLOCK_M:
                acc1 = _mma(g1, a, acc1, IN_PREC, UPCAST)

    KK = Cin * KH * KW
    base = part_ptr + pid_k.to(tl.int64) * Cout * KK
    if FLAT_N:
        tl.store(base + rco[:, None] * KK + (fc * (KH * KW) + ftap)[None, :], acc,
                 mask=co_ok[:, None] & kf_ok[None, :])
    else:
        ptrs = base + rco[:, None] * KK + rc[None, :] * (KH * KW) + tap
        tl.store(ptrs, acc, mask=co_ok[:, None] & c_ok[None, :])
        if BM0 < BLOCK_M:
            tl.store(base + rco1[:, None] * KK + rc[None, :] * (KH * KW) + tap, acc1,
                     mask=co_ok1[:, None] & c_ok[None, :])


@triton.autotune(configs=conv_config.TAPS_CONFIGS, key=conv_config.TAPS_KEY,
                 prune_configs_by=conv_config.prune_taps(), cache_results=not conv_config.INTERPRET)
@triton.heuristics({"EVEN_R": conv_config.even_rows})
@triton.jit
def _wgrad_taps_kernel(
    gy_ptr,         # [N, Cout, Ho, Wo], pixels dense (stride sgw per pixel), channel stride sgc
    x_ptr,          # [N, Cin, H, W] the conv's input a (no prologue), pixels dense (sxw), channel stride sxc
    part_ptr,       # [SPLIT, Cout, Cin*KH*KW] contiguous partial grad_w (fp32)
    Cin, H, W, Cout, Ho, Wo, M, K_CHUNK, LOG2_WO,
    sgw, sgc, sxw, sxc,
    KH: tl.constexpr, KW: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr, TAPS: tl.constexpr,
    OFFS_64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr, EVEN_R: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_w of a plain 3x3-style stride-1 conv over narrow Cin (<= 32), with TAPS taps
    stacked along the GEMM's M: acc[(i, c), co] = sum_r a[r + shift(tap_i), c] * gy[r, co],
    M = TAPS * BLOCK_C = 64 rows, N = Cout, K = pixels (split-K). The wgrad kernel above
    puts Cout on M, which wgmma pads to 64 rows: Cout = 32 wastes half the tile. The stacked
    operand is one 2D load, each row at its tap's constant pixel offset and masked by its
    tap's padding test (sm_90a bf16 WRN-28-2 32 -> 32: 0.47 -> 0.54 over joining per-tap
    tiles, whose layout shuffle through shared memory serialized the wgmmas)."""
    pid_t = tl.program_id(0)          # group of TAPS taps
    pid_n = tl.program_id(1)          # Cout tile
    pid_k = tl.program_id(2)          # split-K chunk of the N*Ho*Wo reduction
    rco = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    co_ok = rco < Cout
    KK: tl.constexpr = KH * KW
    t0 = pid_t * TAPS  # the group's first tap
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, M)
    k_lo_w = k_lo.to(tl.int64) if OFFS_64 else k_lo
    # row j = (i, c) of the stacked operand: tap t0 + i shifts pixel r by a constant, so one
    # 2D load with a per-row offset (no per-tap tiles to join)
    rj = tl.arange(0, TAPS * BLOCK_C)
    ti = rj // BLOCK_C
    cj = rj - ti * BLOCK_C
    tj = t0 + ti
    dh = tj // KW - PT
    dw = tj - (tj // KW) * KW - PL
    j_ok = (cj < Cin) & (tj < KK)
    g_ptrs = gy_ptr + (k_lo_w * sgw + rk * sgw)[:, None] + rco[None, :] * sgc
    x_ptrs = x_ptr + (k_lo_w * sxw + rk * sxw)[None, :] + ((dh * W + dw) * sxw + cj * sxc)[:, None]
    acc = tl.zeros((TAPS * BLOCK_C, BLOCK_N), dtype=tl.float32)
    for r0 in range(k_lo, k_hi, BLOCK_K):
        r = r0 + rk
        r_ok = tl.full([BLOCK_K], 1, tl.int1) if EVEN_R else r < k_hi
        oh = (r >> LOG2_WO) & (Ho - 1)
        ow = r & (Wo - 1)
        g = tl.load(g_ptrs, mask=r_ok[:, None] & co_ok[None, :], other=0.0)
        # 0 <= oh + dh < H as one unsigned compare (a negative wraps past H)
        ok = (j_ok[:, None] & r_ok[None, :] & ((oh[None, :] + dh[:, None]).to(tl.uint32) < H)
              & ((ow[None, :] + dw[:, None]).to(tl.uint32) < W))
        a = tl.load(x_ptrs, mask=ok, other=0.0)
        acc = _mma(a, g, acc, IN_PREC, UPCAST)
        g_ptrs += BLOCK_K * sgw
        x_ptrs += BLOCK_K * sxw
    # row j = (i, c): tap t0 + i, channel c -> part[pid_k, co, c*KK + tap]
    base = part_ptr + pid_k.to(tl.int64) * Cout * (Cin * KK)
    tl.store(base + rco[None, :] * (Cin * KK) + (cj * KK + tj)[:, None], acc, mask=j_ok[:, None] & co_ok[None, :])


@triton.autotune(configs=conv_config.TAPGRID_CONFIGS, key=conv_config.TAPGRID_KEY,
                 cache_results=not conv_config.INTERPRET)
@triton.heuristics({"EVEN_R": conv_config.even_rows})
@triton.jit
def _wgrad_tapgrid_kernel(
    gy_ptr,         # [N, Cout, Ho, Wo], pixels dense (stride sgw per pixel), channel stride sgc
    x_ptr,          # [N, Cin, H, W] the conv's input a (no prologue), pixels dense (sxw), channel stride sxc
    part_ptr,       # [SPLIT, Cout, Cin*KH*KW] contiguous partial grad_w (fp32)
    Cin, H, W, Cout, M, K_CHUNK, LOG2_WO,
    sgw, sgc, sxw, sxc,
    KH: tl.constexpr, KW: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr, SW: tl.constexpr,
    OFFS_64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr, EVEN_R: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_w of a plain stride-1 conv over narrow Cin and Cout (<= 32) with the taps
    factored over both sides of one GEMM: with q = p + dh*W, tap (dh, dw) of
    gw = sum_p gy[p] a[p + dh*W + dw] is sum_q gy[q - dh*W] a[q + dw], so rows (kw, c) take
    a shifted along w, columns (kh, co) take gy shifted along h, and block (kw, kh) of
    acc[(kw, c), (kh, co)] is tap (kh, kw): SW w-shifts x BLOCK_C = 64 rows, KH x BLOCK_CO
    columns (96 = 64 + 32 as two accumulators), K = pixels (split-K). Each loaded element
    feeds KH x BLOCK_CO (or SW x BLOCK_C) products where the tap-stacked kernel's feed
    Cout = 32, and each side's padding test is one shift's (a: 0 <= w + dw < W; gy:
    0 <= h - dh < H, which also keeps p in q's image)."""
    pid_w = tl.program_id(0)          # group of SW w-shifts
    pid_n = tl.program_id(1)          # Cout tile
    pid_k = tl.program_id(2)          # split-K chunk of the N*H*W reduction
    KK: tl.constexpr = KH * KW
    # rows j = (i, c): kw = pid_w * SW + i
    rj = tl.arange(0, SW * BLOCK_C)
    kwj = pid_w * SW + rj // BLOCK_C
    cj = rj % BLOCK_C
    dw = kwj - PL
    j_ok = (cj < Cin) & (kwj < KW)
    # columns l = (kh, co), as two parts when KH * BLOCK_CO is not a power of two
    NL: tl.constexpr = KH * BLOCK_CO
    NL0: tl.constexpr = _first_part(NL)
    NL1: tl.constexpr = NL - NL0 if NL0 < NL else NL  # (unused when NL0 == NL)
    l0 = tl.arange(0, NL0)
    l1 = NL0 + tl.arange(0, NL1)
    kh0 = l0 // BLOCK_CO
    kh1 = l1 // BLOCK_CO
    co0 = pid_n * BLOCK_CO + l0 % BLOCK_CO
    co1 = pid_n * BLOCK_CO + l1 % BLOCK_CO
    dh0 = kh0 - PT
    dh1 = kh1 - PT
    l0_ok = co0 < Cout
    l1_ok = (co1 < Cout) & (kh1 < KH)
    rk = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, M)
    k_lo_w = k_lo.to(tl.int64) if OFFS_64 else k_lo
    x_ptrs = x_ptr + (k_lo_w * sxw + rk * sxw)[None, :] + (dw * sxw + cj * sxc)[:, None]
    g_ptrs0 = gy_ptr + (k_lo_w * sgw + rk * sgw)[:, None] + (co0 * sgc - dh0 * W * sgw)[None, :]
    g_ptrs1 = gy_ptr + (k_lo_w * sgw + rk * sgw)[:, None] + (co1 * sgc - dh1 * W * sgw)[None, :]
    acc0 = tl.zeros((SW * BLOCK_C, NL0), dtype=tl.float32)
    acc1 = tl.zeros((SW * BLOCK_C, NL1), dtype=tl.float32)
    for r0 in range(k_lo, k_hi, BLOCK_K):
        q = r0 + rk
        r_ok = tl.full([BLOCK_K], 1, tl.int1) if EVEN_R else q < k_hi
        qh = (q >> LOG2_WO) & (H - 1)
        qw = q & (W - 1)
        # one unsigned compare per bound: a negative wraps past H / W
        a = tl.load(x_ptrs, mask=j_ok[:, None] & (r_ok[None, :] & ((qw[None, :] + dw[:, None]).to(tl.uint32) < W)),
                    other=0.0)
        g0 = tl.load(g_ptrs0, mask=(r_ok[:, None] & ((qh[:, None] - dh0[None, :]).to(tl.uint32) < H))
                     & l0_ok[None, :], other=0.0)
        acc0 = _mma(a, g0, acc0, IN_PREC, UPCAST)
        if NL0 < NL:
            g1 = tl.load(g_ptrs1, mask=(r_ok[:, None] & ((qh[:, None] - dh1[None, :]).to(tl.uint32) < H))
                         & l1_ok[None, :], other=0.0)
            acc1 = _mma(a, g1, acc1, IN_PREC, UPCAST)
        x_ptrs += BLOCK_K * sxw
        g_ptrs0 += BLOCK_K * sgw
        g_ptrs1 += BLOCK_K * sgw
    # acc[(kw, c), (kh, co)] -> part[pid_k, co, c*KK + kh*KW + kw]
    base = part_ptr + pid_k.to(tl.int64) * Cout * (Cin * KK)
    rows = (cj * KK + kwj)[:, None]
    tl.store(base + rows + (co0 * (Cin * KK) + kh0 * KW)[None, :], acc0, mask=j_ok[:, None] & l0_ok[None, :])
    if NL0 < NL:
        tl.store(base + rows + (co1 * (Cin * KK) + kh1 * KW)[None, :], acc1, mask=j_ok[:, None] & l1_ok[None, :])


def _pixels_linear(grad_y, x, stride, ho, wo):
    """Whether pixel (n, h, w) of grad_y and of x sits at r * (stride of w), r = (n*H + h)*W + w,
    in both (dense pixels, e.g. channels_last contiguous) and the conv keeps the spatial
    size at stride 1: the wgrad kernel's LINEAR offsets."""
    def dense(t):
        sn, _, sh, sw = t.stride()
        return sh == t.shape[3] * sw and sn == t.shape[2] * sh
    return stride == 1 and tuple(x.shape[2:]) == (ho, wo) and dense(grad_y) and dense(x)


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
    _check_grad_y(grad_y, x, cout, ho, wo)
    out_dtype = out_dtype or x.dtype
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    m_rows = nb * ho * wo
    if m_rows == 0:
        return torch.zeros((cout, cin, kh, kw), device=dev, dtype=out_dtype)

    # split-K so that small layers still fill the machine
    bm_est, bn_est = 64, 64
    tiles = triton.cdiv(cout, bm_est) * triton.cdiv(cin, bn_est) * kh * kw
    min_chunk = 64 if conv_config.INTERPRET else 512
    target = 4 if conv_config.INTERPRET else 4 * _num_sms(dev)
    split = max(1, min(triton.cdiv(target, tiles), triton.cdiv(m_rows, min_chunk)))
    # chunks of whole K steps of every BLOCK_K (<= 256; the interpreter's 32): with M a
    # multiple of BLOCK_K too, no step needs a row mask (EVEN_R)
    step = 64 if conv_config.INTERPRET else 256
    chunk = triton.cdiv(triton.cdiv(m_rows, split), step) * step
    split = triton.cdiv(m_rows, chunk)

    pow2_out = _is_pow2(ho) and _is_pow2(wo)
    linear = pow2_out and _pixels_linear(grad_y, x, stride, ho, wo)
    tapgrid = conv_config.wgrad_tapgrid(x.dtype, cin, cout, kh, kw) if scale is None and linear else None
    taps = (conv_config.wgrad_taps(x.dtype, cin, cout, kh * kw) if scale is None and linear and tapgrid is None
            else None)
    with launch_device(x):
        part = torch.empty((split, cout, cin * kh * kw), device=dev, dtype=acc_dtype)
        if tapgrid is not None:  # narrow Cin and Cout, no prologue: taps over both sides (_wgrad_tapgrid_kernel)
            n_sw, block_c, block_co = tapgrid
            in_prec, upcast = conv_config._dot_modes(x.dtype, allow_tf32)
            grid = (triton.cdiv(kw, n_sw), triton.cdiv(cout, block_co), split)
            conv_config.launch_tapgrid(_wgrad_tapgrid_kernel, grid, (
                grad_y, x, part, cin, h, w, cout, m_rows, chunk, wo.bit_length() - 1,
                grad_y.stride(3), grad_y.stride(1), x.stride(3), x.stride(1),
            ), dict(KH=kh, KW=kw, PT=pt, PL=pl, SW=n_sw, OFFS_64=_needs_int64(grad_y, x),
                    IN_PREC=in_prec, UPCAST=upcast, BLOCK_C=block_c, BLOCK_CO=block_co))
            gw = part[0] if split == 1 else part.sum(0)
            return gw.view(cout, cin, kh, kw).to(out_dtype)
        if taps is not None:  # narrow Cin, no prologue: taps stacked along M (see _wgrad_taps_kernel)
            n_taps, block_c = taps
            in_prec, upcast = conv_config._dot_modes(x.dtype, allow_tf32)
            grid = lambda META: (triton.cdiv(kh * kw, n_taps), triton.cdiv(cout, META["BLOCK_N"]), split)  # noqa: E731
            conv_config.launch_taps(_wgrad_taps_kernel, grid, (
                grad_y, x, part, cin, h, w, cout, ho, wo, m_rows, chunk, wo.bit_length() - 1,
                grad_y.stride(3), grad_y.stride(1), x.stride(3), x.stride(1),
            ), dict(KH=kh, KW=kw, PT=pt, PL=pl, TAPS=n_taps, OFFS_64=_needs_int64(grad_y, x),
                    IN_PREC=in_prec, UPCAST=upcast, BLOCK_C=block_c), cout)
            gw = part[0] if split == 1 else part.sum(0)
            return gw.view(cout, cin, kh, kw).to(out_dtype)
        sc, sh, slope, p, inv_keep, bits, cw, in_prec, upcast = _prologue_args(
            x, scale, shift, negative_slope, dropout_p, seed, keep_bits, allow_tf32)
        flat_n = cin < 16  # the stem: (tap, channel) columns flattened
        grid = lambda META: (triton.cdiv(cout, META["BLOCK_M"]),  # noqa: E731
                             triton.cdiv(kh * kw * cin, META["BLOCK_N"]) if flat_n
                             else kh * kw * triton.cdiv(cin, META["BLOCK_N"]), split)
        conv_config.launch(_wgrad_kernel, grid, (
            grad_y, x, sc, sh, bits, part,
            nb, cin, h, w, cout, ho, wo, m_rows, chunk, cw, (ho * wo).bit_length() - 1, wo.bit_length() - 1,
            *grad_y.stride(), *x.stride(),
            slope, inv_keep, _keep_mul(act, inv_keep),
        ), dict(
            KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
            ACT=act_code, HAS_AFFINE=scale is not None, HAS_DROPOUT=p > 0, POW2_OUT=pow2_out,
            LINEAR=linear, FLAT_N=flat_n,
            OFFS_64=_needs_int64(grad_y, x),
            IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
        ), "wgrad", x.dtype, cin, cout, p > 0)
        gw = part[0] if split == 1 else part.sum(0)
        return gw.view(cout, cin, kh, kw).to(out_dtype)
