"""Gradient w.r.t. x of BN-act-dropout -> conv2d, through the prologue.

  g_a[n,c,ih,iw] = sum_{co,kh,kw} gy[n,co,oh,ow] * w[co,c,kh,kw], oh = (ih + pt - kh) / s
                   when divisible and in range (gather form);
  GEMM M = N*H*W, N = Cin, K = kh*kw*Cout; at stride s > 1 one GEMM per phase
  (ih % s, iw % s), whose K holds only the taps that divide (ceil(kh/s)*ceil(kw/s) at most). Epilogue with BN: g_z = g_a * keep/(1-p) *
  act'(z), z = x*scale+shift recomputed, grad_x = g_z*scale, per-(M tile, channel)
  partial sums of g_z and g_z*x (grad_shift, grad_scale).
"""
import torch
import triton
import triton.language as tl

from . import conv_config
from ._common import act_grad, keep_from_bits, launch_device
from .contract import output_memory_format
from .conv_common import (_check_grad_y, _check_with_weight, _first_part, _k_step_channels, _k_step_start, _mma,
                          _needs_int64, _next_k_step, _pixel_of_row, _prologue_args, _tap_ok,
                          _taps_inside)


@triton.autotune(configs=conv_config.ALL_CONFIGS["dgrad"], key=conv_config.AUTOTUNE_KEY,
                 prune_configs_by=conv_config.prune_by("Cin"), reset_to_zero=["psc_ptr", "psh_ptr"],
                 cache_results=not conv_config.INTERPRET)
@triton.heuristics({"EVEN_K": conv_config.even_k("Cout")})
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
                    # (stride > 1: per phase and M-tile of the largest phase)
    Nb, Cin, H, W, Cout, Ho, Wo, M, CW,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    slope, inv_keep,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr, OFFS_64: tl.constexpr,
    GX_LIKE_X: tl.constexpr, IS_FP64: tl.constexpr, IN_PREC: tl.constexpr, UPCAST: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # BLOCK_N columns (Cin) as one accumulator, or, when BLOCK_N is not a power of two, as
    # two (BN0 + BN1, e.g. 160 = 128 + 32: two wgmma chains sharing the grad_y operand),
    # so that Cin = 160 fills the tile; both parts start at multiples of 32 columns
    # (BLOCK_N and BN1 multiples of 32: the epilogue's dropout words).
    BN0: tl.constexpr = _first_part(BLOCK_N)
    BN1: tl.constexpr = BLOCK_N - BN0 if BN0 < BLOCK_N else BLOCK_N  # (unused when BN0 == BLOCK_N)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BN0)       # input channels c
    rn1 = pid_n * BLOCK_N + BN0 + tl.arange(0, BN1)
    rk = tl.arange(0, BLOCK_K)                     # output channels co (within a tap)
    n_ok = rn < Cin
    n_ok1 = rn1 < Cin
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if STRIDE == 1:
        # rows: every input pixel (n, ih, iw); every tap reaches every row (but the padding)
        m_ok = rm < M
        rmc = tl.where(m_ok, rm, 0)
        nb, ih, iw = _pixel_of_row(rmc, H * W, W)
        pix = rmc
        prow = pid_m
        oh0 = ih + PT  # output pixel of tap (0, 0); tap (a, b) reaches (oh0 - a, ow0 - b)
        ow0 = iw + PL
        kh0 = 0
        kw0 = 0
        NA = KH
        NB = KW
    else:
        # Strided: the input pixels of one phase (ih % STRIDE, iw % STRIDE) = (ph, pw) per
        # program (grid axis 2), so that its K loop runs only the taps that reach them:
        # kh = kh0 + STRIDE*a with kh0 = (ph + PT) % STRIDE, whose output row is
        # (ih + PT - kh) / STRIDE = oh0 - a exactly. A loop over every tap would mask the
        # other taps' rows: 3/4 of the tensor work at stride 2 (a 3x3 tap reaches a
        # quarter of the pixels), as a 1x1 stride-2 conv's 3 of 4 empty phases now do none.
        phase = tl.program_id(2)
        ph = phase // STRIDE
        pw = phase - ph * STRIDE
        hp = (H - ph + STRIDE - 1) // STRIDE  # this phase's rows and columns per image
        wp = (W - pw + STRIDE - 1) // STRIDE
        m_ok = rm < Nb * hp * wp
        rmc = tl.where(m_ok, rm, 0)
        nb, i, j = _pixel_of_row(rmc, hp * wp, wp)
        ih = ph + STRIDE * i
        iw = pw + STRIDE * j
        pix = (nb * H + ih) * W + iw
        # partial-sums rows: phase-major, tiles of the largest phase (phase 0) per phase
        prow = phase * tl.cdiv(Nb * tl.cdiv(H, STRIDE) * tl.cdiv(W, STRIDE), BLOCK_M) + pid_m
        kh0 = (ph + PT) % STRIDE
        kw0 = (pw + PL) % STRIDE
        oh0 = i + (ph + PT) // STRIDE
        ow0 = j + (pw + PL) // STRIDE
        NA = (KH - kh0 + STRIDE - 1) // STRIDE  # this phase's taps along h, w (0 if kh0 >= KH)
        NB = (KW - kw0 + STRIDE - 1) // STRIDE
    nb64 = (nb.to(tl.int64) if OFFS_64 else nb)
    g_row = nb64 * sgn
    # Per row, once: the offset of the phase's first tap's output pixel and which taps'
    # pixels lie in the output (bit a*KWS + b); a step subtracts the tap's (uniform)
    # offset and tests one bit per row.
    KHS: tl.constexpr = (KH + STRIDE - 1) // STRIDE
    KWS: tl.constexpr = (KW + STRIDE - 1) // STRIDE
    g_base = g_row + oh0 * sgh + ow0 * sgw
    taps_in = _taps_inside(oh0, ow0, m_ok, Ho, Wo, KHS, KWS, -1)
    if IS_FP64:
        acc = tl.zeros((BLOCK_M, BN0), dtype=tl.float64)
        acc1 = tl.zeros((BLOCK_M, BN1), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BN0), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_M, BN1), dtype=tl.float32)

    c0, a, b = _k_step_start()
    for ks in range(0, NA * NB * tl.cdiv(Cout, BLOCK_K)):
        bit, co, co_ok = _k_step_channels(c0, a, b, rk, Cout, KWS, EVEN_K)
        r_ok = _tap_ok(taps_in, bit, a, b, oh0, ow0, m_ok, Ho, Wo, KHS, KWS, -1)
        g_off = g_base - (a * sgh + b * sgw - c0 * sgc)
        g = tl.load(gy_ptr + g_off[:, None] + rk[None, :] * sgc, mask=r_ok[:, None] & co_ok[None, :], other=0.0)
        tap = (kh0 + STRIDE * a) * KW + kw0 + STRIDE * b
        w_rows = (tap * Cout + co)[:, None] * Cin
        w = tl.load(w_ptr + w_rows + rn[None, :], mask=co_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(g, w, acc, IN_PREC, UPCAST)
        if BN0 < BLOCK_N:
            w1 = tl.load(w_ptr + w_rows + rn1[None, :], mask=co_ok[:, None] & n_ok1[None, :], other=0.0)
            acc1 = _mma(g, w1, acc1, IN_PREC, UPCAST)
        c0, a, b = _next_k_step(c0, a, b, Cout, NB, BLOCK_K)

    col0 = pid_n * BLOCK_N
    # the narrow part first: its epilogue's registers next to the wide accumulator stay few
    # (sm_90a, 128 + 32 with dropout: 20 B of spills the other way round, none this way)
    if BN0 < BLOCK_N:
        _dgrad_epilogue(acc1, rn1, n_ok1, col0 + BN0, m_ok, pix, nb64, ih, iw, prow, x_ptr, scale_ptr, shift_ptr,
                        bits_ptr, gx_ptr, psc_ptr, psh_ptr, Cin, CW, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, slope,
                        inv_keep, ACT, HAS_AFFINE, HAS_DROPOUT, GX_LIKE_X, BN1)
    _dgrad_epilogue(acc, rn, n_ok, col0, m_ok, pix, nb64, ih, iw, prow, x_ptr, scale_ptr, shift_ptr, bits_ptr,
                    gx_ptr, psc_ptr, psh_ptr, Cin, CW, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, slope, inv_keep,
                    ACT, HAS_AFFINE, HAS_DROPOUT, GX_LIKE_X, BN0)


@triton.jit
def _dgrad_epilogue(acc, rn, n_ok, col0, m_ok, pix, nb64, ih, iw, prow, x_ptr, scale_ptr, shift_ptr, bits_ptr,
                    gx_ptr, psc_ptr, psh_ptr, Cin, CW, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, slope, inv_keep,
                    ACT: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                    GX_LIKE_X: tl.constexpr, BLOCK_N: tl.constexpr):
    """grad_x (through the BN-act-dropout when HAS_AFFINE) and the per-M-tile partial sums
    of the BLOCK_N columns rn = col0 + [0, BLOCK_N) (col0 a multiple of min(BLOCK_N, 32))."""
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
                    wj = tl.load(bits_ptr + pix * CW + (col0 // 32 + j), mask=m_ok & (col0 // 32 + j < CW), other=0)
                    gz = tl.where((cols // 32 == j)[None, :] & ((wj[:, None] & sel[None, :]) == 0), 0.0, gz)
                gz = gz * inv_keep
            else:
                keep = keep_from_bits(bits_ptr, pix * CW, m_ok, col0, tl.arange(0, BLOCK_N), CW, BLOCK_N)
                gz = tl.where(keep, gz * inv_keep, 0.0)
        # Out-of-range rows / channels need no select: acc is 0 there (masked operand
        # loads) and act'(z) is finite for the zero-loaded x, scale, shift (a non-finite
        # shift makes the whole column non-finite anyway); under dropout they have no bits.
        tl.store(gx_ptrs, (gz * sc[None, :]).to(gx_ptr.dtype.element_ty), mask=out_mask)
        tl.store(psh_ptr + prow * Cin + rn, tl.sum(gz, axis=0), mask=n_ok)
        tl.store(psc_ptr + prow * Cin + rn, tl.sum(gz * xv, axis=0), mask=n_ok)
    else:
        tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=out_mask)


def bn_act_conv_dgrad(grad_y, weight, x, scale=None, shift=None, *, stride=1, padding=(1, 1, 1, 1),
                      act="identity", negative_slope=0.0, dropout_p=0.0, seed=None, keep_bits=None,
                      allow_tf32=False):
    """Gradient w.r.t. x (through the BN-act-dropout prologue when scale is given).

    Returns ``(grad_x, grad_scale, grad_shift)``; the last two are None without scale,
    else in scale's dtype. grad_x has x's dtype and memory format.
    """
    kh, kw, (pt, pb, pl, pr), ho, wo, act_code, cout = _check_with_weight(
        x, weight, scale, shift, stride, padding, act, dropout_p, seed, keep_bits)
    nb, cin, h, w = x.shape
    dev = x.device
    _check_grad_y(grad_y, x, cout, ho, wo)

    fmt = output_memory_format(x)
    grad_x = torch.empty((nb, cin, h, w), device=dev, dtype=x.dtype, memory_format=fmt)
    has_affine = scale is not None
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    m_rows = nb * h * w
    p_on = float(dropout_p) > 0
    # rows per grid row: every input pixel, or at stride > 1 those of the largest phase
    # (one phase per grid layer, see the kernel); partial sums: one row per M tile
    phases = stride * stride
    m_grid = m_rows if stride == 1 else nb * triton.cdiv(h, stride) * triton.cdiv(w, stride)
    pm = (phases * triton.cdiv(m_grid, conv_config.min_block_m("dgrad", x.dtype, cin, cout, p_on, stride))
          if has_affine else 0)
    if grad_x.numel() == 0:
        z = torch.zeros(cin, device=dev, dtype=scale.dtype) if has_affine else None
        return grad_x, z, (z.clone() if has_affine else None)

    with launch_device(x):
        psc = torch.zeros((pm, cin), device=dev, dtype=acc_dtype) if has_affine else grad_x
        psh = torch.zeros((pm, cin), device=dev, dtype=acc_dtype) if has_affine else grad_x
        w_d = weight.permute(2, 3, 0, 1).reshape(kh * kw * cout, cin).contiguous()
        sc, sh, slope, p, inv_keep, bits, cw, in_prec, upcast = _prologue_args(
            x, scale, shift, negative_slope, dropout_p, seed, keep_bits, allow_tf32)
        grid = lambda META: (triton.cdiv(m_grid, META["BLOCK_M"]), triton.cdiv(cin, META["BLOCK_N"]),  # noqa: E731
                             phases)
        conv_config.launch(_dgrad_kernel, grid, (
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
