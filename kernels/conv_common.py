"""Pieces shared by the three BN-act-dropout -> conv kernels (``kernels.bn_act_conv``).

  jit helpers   _first_part (a non-power-of-two tile side as two accumulators),
                _mma (tl.dot with the interpreter's bf16 workaround), _prologue
                (a = dropout(act(x*scale+shift)) with padding), _pixel_of_row
                (GEMM row -> (n, h, w)), _taps_inside / _tap_ok (per-row padding bits
                of every tap, and a step's test), _next_k_step (K-loop step over (tap,
                channel chunk))
  checks        _check_common (the arguments the launchers share), _check_grad_y,
                max_batch (the int32 index bound), _check_tensor
  launch args   dropout_bits (the keep bitmask), _prologue_args (the scalars, bitmask
                and dot modes every launch passes), stats_rows, _needs_int64, ...
"""
import typing

import torch
import triton
import triton.language as tl

from . import conv_config
from ._common import _f32, _scalars, apply_act, dropout_bits_kernel, launch_device
from .contract import (IndexRangeError, MAX_INDEX, check_activation, dropout_bits_shape, norm_padding, out_hw)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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


@triton.jit
def _pixel_of_row(r, HW, W):
    """(n, h, w) of GEMM rows ``r`` = (n*H + h)*W + w over an H x W image (HW = H*W)."""
    nb = r // HW
    rem = r - nb * HW
    h = rem // W
    w = rem - h * W
    return nb, h, w


@triton.constexpr_function
def _first_part(n):
    """The first of a tile side's two accumulators: ``n`` when it is a power of two (one
    accumulator), else ``n`` less its lowest set bit (160 -> 128 + 32, 320 -> 256 + 64);
    the kernels' configs only use sides that are a sum of two powers of two."""
    n = int(n)
    return n if n & (n - 1) == 0 else n - (n & -n)


@triton.jit
def _taps_inside(h0, w0, row_ok, H, W, KH: tl.constexpr, KW: tl.constexpr, SIGN: tl.constexpr):
    """Per row, a bitmask of the taps whose pixel (h0 + SIGN*kh, w0 + SIGN*kw) lies in the
    H x W image: bit kh*KW + kw, int32 up to 31 taps (3x3, 5x5), int64 up to 63 (7x7);
    0 where not ``row_ok``. Computed once before a K loop over taps, so that each step
    tests one bit per row instead of four bounds (the padding), see ``_tap_ok``. Over 63
    taps: zeros, unused (``_tap_ok`` tests the bounds)."""
    if KH * KW <= 31:
        bits = tl.zeros_like(h0)
        one = tl.full([], 1, tl.int32)
    else:
        bits = tl.zeros_like(h0).to(tl.int64)
        one = tl.full([], 1, tl.int64)
    if KH * KW <= 63:
        for kh in tl.static_range(KH):
            h = h0 + SIGN * kh
            h_ok = row_ok & (h >= 0) & (h < H)
            for kw in tl.static_range(KW):
                w = w0 + SIGN * kw
                ok = h_ok & (w >= 0) & (w < W)
                bits = bits | tl.where(ok, one << (kh * KW + kw), 0)
    return bits


@triton.jit
def _tap_ok(taps_in, tap, kh, kw, h0, w0, row_ok, H, W, KH: tl.constexpr, KW: tl.constexpr,
            SIGN: tl.constexpr):
    """Per row, whether tap (kh, kw) (= bit ``tap`` of ``_taps_inside``'s mask) reaches a
    pixel inside the image; over 63 taps, from the bounds."""
    if KH * KW <= 31:
        return (taps_in & (1 << tap)) != 0
    elif KH * KW <= 63:
        return ((taps_in >> tap.to(tl.int64)) & 1) != 0
    else:
        h = h0 + SIGN * kh
        w = w0 + SIGN * kw
        return row_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)


@triton.jit
def _k_step_start():
    """(c0, kh, kw) of the first K step: int32 zeros, carried through the loop."""
    return tl.full([], 0, tl.int32), tl.full([], 0, tl.int32), tl.full([], 0, tl.int32)


@triton.jit
def _k_step_channels(c0, kh, kw, rk, C, KW: tl.constexpr, EVEN_K: tl.constexpr):
    """The K step at (tap (kh, kw), first channel c0): (tap index, channels c0 + rk, their
    mask; all true when EVEN_K, C a multiple of BLOCK_K)."""
    c = c0 + rk
    c_ok = tl.full(rk.shape, 1, tl.int1) if EVEN_K else c < C
    return kh * KW + kw, c, c_ok


@triton.jit
def _next_k_step(c0, kh, kw, C, KW, BLOCK_K: tl.constexpr):
    """The K loops' step over (tap (kh, kw), channel chunk c0): the next chunk, else the
    next tap's first. Scalar, loop-carried (from ``_k_step_start``): no division by the
    chunk count per step. ``KW``: taps per row, a constant or (the strided dgrad's phases)
    a runtime count."""
    c0 = c0 + BLOCK_K
    wrap = c0 >= C
    c0 = tl.where(wrap, 0, c0)
    kw = tl.where(wrap, kw + 1, kw)
    row_end = kw == KW
    kw = tl.where(row_end, 0, kw)
    kh = tl.where(row_end, kh + 1, kh)
    return c0, kh, kw


# --------------------------------------------------------------------------- launcher helpers

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
    return triton.cdiv(n_rows, conv_config.STATS_M)


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
    if dev.type != "cuda" and not conv_config.INTERPRET:
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


def _check_with_weight(x, weight, scale, shift, stride, padding, act, dropout_p, seed, keep_bits):
    """``_check_common`` for a launcher given the weight tensor (fwd, dgrad); returns
    (KH, KW, pads, Ho, Wo, act_code, Cout)."""
    checked = _check_common(x, weight.shape if isinstance(weight, torch.Tensor) else (), scale, shift, stride,
                            padding, act, dropout_p, seed, keep_bits, weight=weight)
    return (*checked, int(weight.shape[0]))


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
    block_r = 64 if conv_config.INTERPRET else 128
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


def _check_grad_y(grad_y, x, cout, ho, wo):
    """grad_y of a backward launch: 4-D, x's dtype and device, the forward's output shape."""
    _check_tensor("grad_y", grad_y, dim=4, dtypes=(x.dtype,), device=x.device)
    if tuple(grad_y.shape) != (x.shape[0], cout, ho, wo):
        raise ValueError(f"grad_y shape must equal the output shape {(x.shape[0], cout, ho, wo)}, "
                         f"got {tuple(grad_y.shape)}")


class _PrologueArgs(typing.NamedTuple):
    """What every launch passes for the prologue and the dot (see ``_prologue_args``)."""
    scale: torch.Tensor      # [Cin] (x when there is no prologue: never read)
    shift: torch.Tensor
    slope: float             # fp32(negative_slope)
    p: float                 # fp32(dropout_p)
    inv_keep: float          # fp32(1 / (1 - p))
    bits: torch.Tensor       # int32 keep bitmask (x without dropout: never read)
    words: int               # bitmask words per pixel (CW)
    in_prec: str             # tl.dot input_precision
    upcast: bool             # interpreter bf16 dot in fp32


def _prologue_args(x, scale, shift, negative_slope, dropout_p, seed, keep_bits, allow_tf32):
    """The launch arguments shared by the three kernels; makes the dropout bitmask from
    ``seed`` when ``keep_bits`` is not given (call under ``launch_device(x)``)."""
    sc, sh = _affine_args(scale, shift, x)
    slope, p, inv_keep = _scalars(negative_slope, dropout_p)
    bits, cw = _bits_arg(keep_bits, seed, x, p)
    in_prec, upcast = conv_config._dot_modes(x.dtype, allow_tf32)
    return _PrologueArgs(sc, sh, slope, p, inv_keep, bits, cw, in_prec, upcast)
