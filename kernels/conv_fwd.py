"""Forward of BN-act-dropout -> conv2d (+ bias + residual, + partial BN statistics).

  y[n,co,oh,ow] = sum_{c,kh,kw} a[n,c,oh*s-pt+kh,ow*s-pl+kw] * w[co,c,kh,kw]
                  (+ bias[co]) (+ residual[n,co,oh,ow]),   a = dropout(act(x*scale+shift))
  GEMM M = N*Ho*Wo, N = Cout, K = kh*kw*Cin; ``a`` is made in the K loop's prologue and
  never stored; the epilogue emits per-(chunk of STATS_M rows, channel) partial mean /
  M2 / count of the stored y (merged by Chan's formula downstream).
"""
import torch
import triton
import triton.language as tl

from . import conv_config
from ._common import apply_act, keep_from_bits, launch_device
from .contract import output_memory_format, stats_dtype
from .conv_common import (_check_tensor, _check_with_weight, _first_part, _k_step_channels, _k_step_start,
                          _keep_mul, _mma, _needs_int64, _next_k_step, _pixel_of_row, _prologue, _prologue_args,
                          _tap_ok, _taps_inside, stats_rows)


@triton.autotune(configs=conv_config.ALL_CONFIGS["fwd"],
                 key=conv_config.AUTOTUNE_KEY + ["HAS_BIAS", "HAS_RES", "STATS"],
                 prune_configs_by=conv_config.prune_by("Cout"), cache_results=not conv_config.INTERPRET)
@triton.heuristics({"EVEN_K": conv_config.even_k("Cin")})
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
    mean_ptr,       # [P, Cout] (STATS), the statistics dtype: fp32, fp64 for fp64 y
    m2_ptr,         # [P, Cout] (STATS), the statistics dtype
    cnt_ptr,        # [P] (STATS), the statistics dtype
    Nb, Cin, H, W, Cout, Ho, Wo, M, P, CW,
    sxn, sxc, sxh, sxw,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    slope, inv_keep, keep_mul,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr, STATS: tl.constexpr, STATS_ROWS: tl.constexpr, FLAT_K: tl.constexpr,
    OFFS_64: tl.constexpr, IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # The tile's BLOCK_N columns run as one accumulator, or as two (BN0 + BN1, two wgmma
    # chains sharing the prologue's A operand): a BLOCK_N that is not a power of two is
    # a sum of two (160 = 128 + 32, 96 = 64 + 32), so that Cout = 160 / 320 / 640 fill
    # their tiles (a 256-wide tile over 160 channels is 62.5% useful work); a power of two
    # >= 256 with statistics and no dropout splits in halves, so that the epilogue holds
    # half a tile at a time: its per-column statistics spill next to a 128x256 fp32 tile
    # (sm_90a: 19 spill stores). With dropout the whole 256 fits (and the split's extra
    # loop instructions would cost more: 526 -> 570 per iteration).
    BN0: tl.constexpr = (BLOCK_N // 2 if (_first_part(BLOCK_N) == BLOCK_N and BLOCK_N >= 256 and STATS
                                          and not HAS_DROPOUT) else _first_part(BLOCK_N))
    BN1: tl.constexpr = BLOCK_N - BN0 if BN0 < BLOCK_N else BLOCK_N  # (unused when BN0 == BLOCK_N)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn0 = pid_n * BLOCK_N + tl.arange(0, BN0)
    rn1 = pid_n * BLOCK_N + BN0 + tl.arange(0, BN1)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok0 = rn0 < Cout
    n_ok1 = rn1 < Cout
    rmc = tl.where(m_ok, rm, 0)
    nb, oh, ow = _pixel_of_row(rmc, Ho * Wo, Wo)
    # element offsets in int64 only when a tensor of the launch spans 2**31 elements
    # (OFFS_64, see _needs_int64): int32 address math is half the instructions
    x_row = (nb.to(tl.int64) if OFFS_64 else nb) * sxn
    if IS_FP64:
        acc0 = tl.zeros((BLOCK_M, BN0), dtype=tl.float64)
        acc1 = tl.zeros((BLOCK_M, BN1), dtype=tl.float64)
    else:
        acc0 = tl.zeros((BLOCK_M, BN0), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_M, BN1), dtype=tl.float32)

    # Per row, once: the offset of tap (0, 0)'s pixel and which taps fall inside the image;
    # a step adds the tap's offset and tests one bit per row (or element)
    ih0 = oh * STRIDE - PT
    iw0 = ow * STRIDE - PL
    x_base = x_row + ih0 * sxh + iw0 * sxw
    taps_in = _taps_inside(ih0, iw0, m_ok, H, W, KH, KW, 1)
    if HAS_DROPOUT:
        bits_base = ((nb * H + ih0) * W + iw0) * CW
    if FLAT_K:
        # Small Cin (stem, Cin=3): K = (tap, c) flattened, one column per (tap, c); FLAT_K
        # is Cin as a compile-time constant, so the per-column (tap, c) split divides by a
        # constant. Per element: the row's base + the column's offset, one tap bit (sm_90a,
        # bf16 3->16 64x32x32: 434 -> 248 instructions per iteration, with the four bounds
        # and three multiplies per element before).
        KTOT = KH * KW * Cin  # (= KH * KW * FLAT_K; a runtime bound keeps the K loop a loop)
        for k0 in range(0, KTOT, BLOCK_K):
            k = k0 + rk
            k_ok = k < KTOT
            tap = k // FLAT_K
            c = k - tap * FLAT_K
            kh = tap // KW
            kw = tap - kh * KW
            inb = _tap_ok(taps_in[:, None], tap[None, :], kh[None, :], kw[None, :], ih0[:, None], iw0[:, None],
                          m_ok[:, None], H, W, KH, KW, 1) & k_ok[None, :]
            xv = tl.load(x_ptr + x_base[:, None] + (kh * sxh + kw * sxw + c * sxc)[None, :], mask=inb, other=0.0)
            w0 = tl.load(w_ptr + k[:, None] * Cout + rn0[None, :], mask=k_ok[:, None] & n_ok0[None, :], other=0.0)
            if HAS_AFFINE:
                sc = tl.load(scale_ptr + c, mask=k_ok, other=0.0).to(acc0.dtype)
                sh = tl.load(shift_ptr + c, mask=k_ok, other=0.0).to(acc0.dtype)
                a = apply_act(xv.to(acc0.dtype) * sc[None, :] + sh[None, :], ACT, slope)
                if HAS_DROPOUT:  # a word per element: only the stem takes this path
                    wd = tl.load(bits_ptr + bits_base[:, None] + ((kh * W + kw) * CW + c // 32)[None, :],
                                 mask=inb, other=0)
                    a = tl.where(((wd >> (c[None, :] % 32)) & 1) != 0, a * inv_keep, 0.0)
                a = tl.where(inb, a, 0.0).to(w0.dtype)
            else:
                a = xv
            acc0 = _mma(a, w0, acc0, IN_PREC, UPCAST)
            if BN0 < BLOCK_N:
                w1 = tl.load(w_ptr + k[:, None] * Cout + rn1[None, :], mask=k_ok[:, None] & n_ok1[None, :],
                             other=0.0)
                acc1 = _mma(a, w1, acc1, IN_PREC, UPCAST)
    else:
        # one tap per step: its offset is uniform, one bit per row (sm_90a, bf16 32->32
        # 256x32x32 on 8 warps: 177 -> 110 instructions per iteration against the bounds)
        c0, kh, kw = _k_step_start()
        for ks in range(0, KH * KW * tl.cdiv(Cin, BLOCK_K)):
            tap, c, c_ok = _k_step_channels(c0, kh, kw, rk, Cin, KW, EVEN_K)
            r_ok = _tap_ok(taps_in, tap, kh, kw, ih0, iw0, m_ok, H, W, KH, KW, 1)
            # the step's uniform offset (tap, first channel) added per row, the lanes' rk*sxc after
            xv = tl.load(x_ptr + (x_base + (kh * sxh + kw * sxw + c0 * sxc))[:, None] + rk[None, :] * sxc,
                         mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            w_rows = (tap * Cin + c)[:, None] * Cout
            w0 = tl.load(w_ptr + w_rows + rn0[None, :], mask=c_ok[:, None] & n_ok0[None, :], other=0.0)
            if HAS_AFFINE:
                sc = tl.load(scale_ptr + c, mask=c_ok, other=0.0).to(acc0.dtype)
                sh = tl.load(shift_ptr + c, mask=c_ok, other=0.0).to(acc0.dtype)
                if HAS_DROPOUT:
                    keep = keep_from_bits(bits_ptr, bits_base + (kh * W + kw) * CW, r_ok, c0, rk, CW, BLOCK_K)
                    m = tl.where(keep, keep_mul, 0.0)
                else:
                    m = tl.where(r_ok, 1.0, 0.0)[:, None]
                a = _prologue(xv.to(acc0.dtype), sc[None, :], sh[None, :], m, slope, inv_keep, ACT, HAS_DROPOUT)
                a = a.to(w0.dtype)
            else:
                a = xv
            acc0 = _mma(a, w0, acc0, IN_PREC, UPCAST)
            if BN0 < BLOCK_N:
                w1 = tl.load(w_ptr + w_rows + rn1[None, :], mask=c_ok[:, None] & n_ok1[None, :], other=0.0)
                acc1 = _mma(a, w1, acc1, IN_PREC, UPCAST)
            c0, kh, kw = _next_k_step(c0, kh, kw, Cin, KW, BLOCK_K)

    nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
    _fwd_epilogue(acc0, rn0, n_ok0, m_ok, nb64, oh, ow, pid_m, pid_n == 0, bias_ptr, res_ptr, y_ptr,
                  mean_ptr, m2_ptr, cnt_ptr, Cout, P, srn, src, srh, srw, syn, syc, syh, syw,
                  HAS_BIAS, HAS_RES, STATS, STATS_ROWS, BLOCK_M)
    if BN0 < BLOCK_N:
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
        v = yv.to(mean_ptr.dtype.element_ty)  # the statistics dtype
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


def bn_act_conv_fwd(x, weight, scale=None, shift=None, *, stride=1, padding=(1, 1, 1, 1), act="identity",
                    negative_slope=0.0, dropout_p=0.0, seed=None, keep_bits=None, bias=None, residual=None,
                    compute_stats=False, allow_tf32=False):
    """y = conv2d(pad(dropout(act(x*scale + shift))), weight) (+ bias) (+ residual).

    The dropout mask is ``keep_bits`` (``dropout_bits(seed, x.shape, dropout_p)``, made
    here from ``seed`` when not given). Returns ``(y, stats)``; ``stats = (mean_p [P, Cout],
    m2_p [P, Cout], count_p [P])`` (``stats_dtype(x.dtype)``: fp32, fp64 for fp64 x;
    P = stats_rows(N*Ho*Wo)) when ``compute_stats`` else None: per chunk of STATS_M output
    pixels, mean and sum of squared deviations of the stored y.
    """
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code, cout = _check_with_weight(
        x, weight, scale, shift, stride, padding, act, dropout_p, seed, keep_bits)
    nb, cin, h, w = x.shape
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
        sd = stats_dtype(x.dtype)
        mean_p = torch.empty((P, cout), device=dev, dtype=sd)
        m2_p = torch.empty((P, cout), device=dev, dtype=sd)
        cnt_p = torch.empty((P,), device=dev, dtype=sd)
    else:
        mean_p = m2_p = cnt_p = y  # never written (STATS=False)
    if y.numel() == 0:
        return y, ((mean_p, m2_p, cnt_p) if compute_stats else None)

    with launch_device(x):
        w_t = weight.permute(2, 3, 1, 0).reshape(kh * kw * cin, cout).contiguous()
        res = residual if residual is not None else y
        sc, sh, slope, p, inv_keep, bits, cw, in_prec, upcast = _prologue_args(
            x, scale, shift, negative_slope, dropout_p, seed, keep_bits, allow_tf32)
        grid = lambda META: (triton.cdiv(m_rows, META["BLOCK_M"]), triton.cdiv(cout, META["BLOCK_N"]))  # noqa: E731
        conv_config.launch(_fwd_kernel, grid, (
            x, w_t, sc, sh, bias if bias is not None else y, res, y, bits,
            mean_p, m2_p, cnt_p,
            nb, cin, h, w, cout, ho, wo, m_rows, P, cw,
            *x.stride(), *res.stride(), *y.stride(),
            slope, inv_keep, _keep_mul(act, inv_keep),
        ), dict(
            KH=kh, KW=kw, STRIDE=stride, PT=pt, PL=pl,
            ACT=act_code, HAS_AFFINE=scale is not None, HAS_DROPOUT=p > 0, HAS_BIAS=bias is not None,
            HAS_RES=residual is not None, STATS=bool(compute_stats), STATS_ROWS=conv_config.STATS_M,
            FLAT_K=cin if cin < 16 else 0,
            OFFS_64=_needs_int64(x, y, res),
            IS_FP64=x.dtype == torch.float64, IN_PREC=in_prec, UPCAST=upcast,
        ), "fwd", x.dtype, cin, cout, p > 0)
    return y, ((mean_p, m2_p, cnt_p) if compute_stats else None)
