"""bn_act_conv (Triton implicit GEMM: BN-act-dropout prologue, bias/residual/stats epilogue).

Every case is compared with the PyTorch composition in float64
    a = dropout(act(x*scale + shift))  (same mask)  ->  F.pad  ->  F.conv2d (+bias) (+residual)
forward and every gradient (x, weight, scale, shift, bias, residual), errors
measured as ||out - ref|| / ||ref||. Without a GPU the kernels run in Triton's
interpreter (TRITON_INTERPRET=1, set below before triton is imported), so shapes
are small.

Scalars reach the kernels as fp32 (Triton passes Python floats as fp32 on the
GPU; the launcher rounds them so the interpreter sees the same): the dropout
threshold is fp32(p), the kept-value scale fp32(1/(1-fp32(p))) and the leaky
slope fp32(slope). The float64 reference uses the same fp32-rounded scalars so
that the float64 comparison can be held to 1e-10.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import wrn_fast  # noqa: E402
from _checks import needs_ext, poison_outputs, rel_err  # noqa: E402
from _references import combine_partials, keep_mask as philox_keep_mask, reference_bn_act_conv  # noqa: E402
from wrn_fast.kernels import bn_act_conv as K  # noqa: E402
from wrn_fast.kernels import conv_common, conv_config, conv_dgrad, conv_fwd, conv_wgrad  # noqa: E402
from wrn_fast.kernels._common import keep_from_bits  # noqa: E402
from wrn_fast.ops.conv import bn_act_conv  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# Tolerances on ||out - ref|| / ||ref|| (reference in float64 from the same inputs):
#  float32: products exact ("ieee" dot), fp32 accumulation over K <= 9*20 terms:
#           ~sqrt(K) * 2^-24 ~ 1e-6 worst case, measured ~1e-7.
#  float64: everything in fp64, measured ~1e-16.
#  bf16/fp16: the prologue output a is rounded to 8 (bf16) / 11 (fp16) mantissa bits
#           before the MMA and y is rounded again on store: ~2 * 2^-9.
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def f32(v: float) -> float:
    return float(np.float32(v))


def keep_mask(seed, shape, p):
    """The dropout keep mask of a logical NCHW tensor of ``shape`` (bench.philox: an
    independent Philox, index ((n*C + c)*H + h)*W + w), on the seed tensor's device."""
    idx = torch.arange(int(np.prod(shape)), device=seed.device, dtype=torch.int64)
    return philox_keep_mask(int(seed.item()), idx, p).view(*shape)


def make(shape, dtype, layout, *, scale=1.0):
    """Fresh random tensor of logical ``shape`` in the given memory layout."""
    n, c, h, w = shape

    def rnd(s):
        return (torch.randn(s, dtype=torch.float64, device=DEV) * scale).to(dtype)

    if layout == "nchw":
        t = rnd(shape)
    elif layout == "cl":
        t = rnd(shape).to(memory_format=torch.channels_last)
    elif layout == "nc":  # non-contiguous view: every other channel, cropped width
        t = rnd((n, 2 * c, h, w + 3))[:, ::2, :, 1:w + 1]
    else:
        raise AssertionError(layout)
    if layout == "nc":
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    return t


def reference(x, w, scale, shift, bias, residual, *, stride, pads, act, slope, p, keep):
    """The specification (bench.references, pads = (top, bottom, left, right)) plus bias;
    kept values scaled by fp32(1/(1-fp32(p))) as the kernels do (p given to the reference
    so that its 1/(1-p) is that value)."""
    p_ref = 1.0 - 1.0 / f32(1.0 / (1.0 - f32(p))) if p > 0 else 0.0
    y = reference_bn_act_conv(x, w, scale, shift, residual, keep, stride=stride, pad=pads, p=p_ref,
                              rdt=x.dtype, act=act, slope=slope)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def merged_stats(mean_p, m2_p, cnt):
    """(mean, biased var, count) of the conv's partial statistics (Chan merge, float64)."""
    return combine_partials(mean_p, m2_p, cnt, mean_p.shape[1])


# ----------------------------------------------------------------------------- the grid

# (N, Cin, Cout, H, W, k, stride, pads(top,bottom,left,right), act, layout, p, bias, residual)
CASES = {
    "plain3x3-s1-bias-nchw": (2, 5, 12, 9, 9, 3, 1, (1, 1, 1, 1), "identity", "nchw", 0.0, True, False),
    "relu3x3-s1-res-cl": (2, 12, 20, 9, 7, 3, 1, (1, 1, 1, 1), "relu", "cl", 0.0, False, True),
    "leaky3x3-s2-tfsame-drop-n1-cl": (1, 20, 12, 9, 9, 3, 2, (0, 1, 0, 1), "leaky_relu", "cl", 0.3, False, False),
    "silu3x3-s2-sym-bias-noncontig": (2, 12, 20, 8, 8, 3, 2, (1, 1, 1, 1), "silu", "nc", 0.0, True, False),
    "relu1x1-s1-drop-res-nchw": (2, 20, 12, 7, 9, 1, 1, (0, 0, 0, 0), "relu", "nchw", 0.3, False, True),
    "silu1x1-s2-cl": (2, 12, 20, 9, 9, 1, 2, (0, 0, 0, 0), "silu", "cl", 0.0, False, False),
    "stem-cin3-plain-bias-cl": (1, 3, 16, 9, 9, 3, 1, (1, 1, 1, 1), "identity", "cl", 0.0, True, False),
    "stem-cin3-relu-s2-tfsame-drop": (2, 3, 12, 7, 7, 3, 2, (0, 1, 0, 1), "relu", "nchw", 0.3, False, False),
    "plain1x1-s2-res-noncontig": (2, 5, 5, 7, 7, 1, 2, (0, 0, 0, 0), "identity", "nc", 0.0, False, True),
    "all-silu3x3-drop-bias-res-cl": (1, 20, 20, 9, 9, 3, 1, (1, 1, 1, 1), "silu", "cl", 0.3, True, True),
    # Cin > 32: a second dropout-bitmask word per pixel (K chunks and wgrad tiles at c0 = 32)
    "relu3x3-cin40-drop-res-cl": (1, 40, 36, 5, 5, 3, 1, (1, 1, 1, 1), "relu", "cl", 0.3, False, True),
    # channels a multiple of BLOCK_K (fwd / dgrad EVEN_K: no channel mask) and power-of-two
    # spatial sizes at stride 1 in channels_last (wgrad's LINEAR pixel offsets, EVEN_R rows)
    "relu3x3-c32-pow2-drop-res-cl": (2, 32, 32, 8, 4, 3, 1, (1, 1, 1, 1), "relu", "cl", 0.3, False, True),
    # the strided dgrad's phases: stride 3 (9 phases of unequal sizes: H = 10, W = 8) with
    # asymmetric padding; 5x5 at stride 2 (phases with 3 or 2 taps per axis)
    "relu3x3-s3-asym-drop-cl": (2, 12, 20, 10, 8, 3, 3, (2, 0, 1, 1), "relu", "cl", 0.3, False, False),
    "leaky5x5-s2-res-nchw": (1, 12, 12, 9, 8, 5, 2, (2, 2, 2, 2), "leaky_relu", "nchw", 0.0, False, True),
    # more taps than an int32 padding bitmask holds: 7x7 (int64 bits), 9x9 (bounds per step)
    "relu7x7-s1-cin16-drop-cl": (1, 16, 12, 8, 9, 7, 1, (3, 3, 3, 3), "relu", "cl", 0.3, False, False),
    "plain9x9-s1-cin16-cl": (1, 16, 8, 6, 7, 9, 1, (4, 4, 4, 4), "identity", "cl", 0.0, False, False),
}
FP64_CASES = ["relu3x3-s1-res-cl", "leaky3x3-s2-tfsame-drop-n1-cl", "stem-cin3-relu-s2-tfsame-drop",
              "all-silu3x3-drop-bias-res-cl", "plain1x1-s2-res-noncontig"]


def run_case(case, dtype, *, backward=True, compute_stats=True):
    n, cin, cout, h, w, k, stride, pads, act, layout, p, has_bias, has_res = case
    slope = 0.1
    x = make((n, cin, h, w), dtype, layout).requires_grad_()
    weight = (torch.randn(cout, cin, k, k, dtype=torch.float64, device=DEV) / (cin * k * k) ** 0.5).to(dtype)
    weight.requires_grad_()
    bn = act != "identity" or p > 0
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    scale = (torch.rand(cin, dtype=sdt, device=DEV) + 0.5).requires_grad_() if bn else None
    shift = (torch.randn(cin, dtype=sdt, device=DEV) * 0.5).requires_grad_() if bn else None
    bias = (torch.randn(cout, dtype=torch.float64, device=DEV).to(dtype)).requires_grad_() if has_bias else None
    ho, wo = K.out_hw(h, w, k, k, stride, pads)
    residual = make((n, cout, ho, wo), dtype, layout).requires_grad_() if has_res else None
    seed = wrn_fast.ops.new_dropout_seed(DEV) if p > 0 else None

    y, mean_p, m2_p, cnt_p = bn_act_conv(x, weight, scale, shift, bias, residual, seed, stride=stride,
                                         padding=pads, act=act, negative_slope=slope, dropout_p=p,
                                         compute_stats=compute_stats, allow_tf32=False)  # exact fp32: TOL
    keep = keep_mask(seed, (n, cin, h, w), f32(p)) if p > 0 else None

    def leaf(t):
        return None if t is None else t.detach().double().requires_grad_()

    rx, rw, rsc, rsh, rb, rr = map(leaf, (x, weight, scale, shift, bias, residual))
    ref = reference(rx, rw, rsc, rsh, rb, rr, stride=stride, pads=pads, act=act, slope=f32(slope), p=p,
                    keep=keep)
    out = dict(y=y, ref=ref, mean_p=mean_p, m2_p=m2_p, cnt_p=cnt_p, x=x)
    if backward:
        gy = make(tuple(y.shape), dtype, layout)
        y.backward(gy)
        ref.backward(gy.double())
        out["grads"] = {name: (t.grad, r.grad) for name, t, r in
                        (("x", x, rx), ("weight", weight, rw), ("scale", scale, rsc), ("shift", shift, rsh),
                         ("bias", bias, rb), ("residual", residual, rr)) if t is not None}
    return out


def check_case(out, dtype):
    tol = TOL[dtype]
    y, ref, x = out["y"], out["ref"], out["x"]
    assert y.dtype == x.dtype and y.shape == ref.shape
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert rel_err(y, ref) < tol, f"forward rel err {rel_err(y, ref):.3g}"
    for name, (g, r) in out.get("grads", {}).items():
        assert g is not None, f"no gradient for {name}"
        assert g.shape == r.shape
        e = rel_err(g, r)
        assert e < tol, f"grad {name}: rel err {e:.3g} (tol {tol})"


@pytest.mark.parametrize("name", list(CASES))
@poison_outputs
def test_grid_fp32(name):
    out = run_case(CASES[name], torch.float32)
    check_case(out, torch.float32)
    # partial statistics of the stored output, merged here, vs torch.var_mean in float64
    y = out["y"].detach().double()
    var_ref, mean_ref = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
    mean_p, m2_p, cnt = out["mean_p"], out["m2_p"], out["cnt_p"]
    assert mean_p.dtype == m2_p.dtype == cnt.dtype == torch.float32
    assert mean_p.shape == m2_p.shape == (K.stats_rows(y.shape[0] * y.shape[2] * y.shape[3]), y.shape[1])
    mean, var, count = merged_stats(mean_p, m2_p, cnt)
    assert (count == y.shape[0] * y.shape[2] * y.shape[3]).all()
    assert (cnt > 0).all() and (cnt <= K.STATS_M).all()
    # mean error relative to the spread (the mean itself can be ~0): fp32 sums of <= 64 values
    assert ((mean - mean_ref).norm() / var_ref.sqrt().norm()).item() < 1e-5
    assert rel_err(var, var_ref) < 1e-5


@pytest.mark.skipif(DEV != "cuda", reason="the interpreter has one config; GPU configs are compiled by "
                    "test_triton_gpu_compile.py --all-configs")
@pytest.mark.parametrize("kernel", ["fwd", "dgrad", "wgrad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@poison_outputs
def test_every_gpu_tile_config(kernel, dtype):
    """Each autotune config of each kernel, forced alone, gives the right answer
    (the suite otherwise runs one config: WRN_FAST_AUTOTUNE=0 in conftest)."""
    tuner = {"fwd": K._fwd_kernel, "dgrad": K._dgrad_kernel, "wgrad": K._wgrad_kernel}[kernel]
    saved = tuner.configs
    try:
        for cfg in K.ALL_CONFIGS[kernel]:
            tuner.configs = [cfg]
            tuner.cache.clear()
            for name in ("all-silu3x3-drop-bias-res-cl", "leaky3x3-s2-tfsame-drop-n1-cl"):
                out = run_case(CASES[name], dtype)
                try:
                    check_case(out, dtype)
                except AssertionError as e:
                    raise AssertionError(f"{kernel} config {cfg}: {name}: {e}") from e
    finally:
        tuner.configs = saved
        tuner.cache.clear()


@pytest.mark.skipif(DEV != "cuda", reason="the interpreter has one config; GPU configs are compiled by "
                    "test_triton_gpu_compile.py --all-configs")
@pytest.mark.parametrize("cin,cout,kernel", [(32, 32, "_wgrad_tapgrid_kernel"), (16, 32, "_wgrad_tapgrid_kernel"),
                                             (32, 64, "_wgrad_taps_kernel")])
def test_every_gpu_tile_config_of_the_narrow_wgrads(cin, cout, kernel, monkeypatch):
    """Each autotune config of the narrow prologue-free wgrads (tap grid at Cout <= 32, taps
    stacked at Cout = 64), forced alone, gives conv2d_weight's result in bf16 (the suite
    otherwise runs their default config)."""
    monkeypatch.setattr(conv_config, "AUTOTUNE", True)
    tuner = getattr(conv_wgrad, kernel)
    saved = tuner.configs
    torch.manual_seed(0)
    x = torch.randn(4, cin, 16, 16, device=DEV).to(torch.bfloat16, memory_format=torch.channels_last)
    gy = torch.randn(4, cout, 16, 16, device=DEV).to(torch.bfloat16, memory_format=torch.channels_last)
    ref = torch.nn.grad.conv2d_weight(x.double(), (cout, cin, 3, 3), gy.double(), padding=1)
    try:
        for cfg in list(saved):
            tuner.configs = [cfg]
            tuner.cache.clear()
            gw = K.bn_act_conv_wgrad(gy, x, weight_shape=(cout, cin, 3, 3), padding=(1, 1, 1, 1))
            # bf16 products exact in fp32, fp32 sums over 1024 pixels, one bf16 rounding of the result
            assert rel_err(gw, ref) < 1e-2, (kernel, cfg)
    finally:
        tuner.configs = saved
        tuner.cache.clear()


@pytest.mark.parametrize("name", FP64_CASES)
@poison_outputs
def test_grid_fp64(name):
    check_case(run_case(CASES[name], torch.float64, compute_stats=False), torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["relu3x3-s1-res-cl", "leaky3x3-s2-tfsame-drop-n1-cl"])
@poison_outputs
def test_half_precision(name, dtype):
    # forward and backward; the bf16 dot runs upcast in the interpreter (its bf16 dot is broken)
    check_case(run_case(CASES[name], dtype, compute_stats=False), dtype)


@poison_outputs
def test_stats_chunks_smaller_than_block(monkeypatch):
    """BLOCK_M spanning several stats chunks (the GPU configs with BLOCK_M = 128)."""
    monkeypatch.setattr(conv_config, "STATS_M", 16)
    x = make((2, 12, 9, 7), torch.float32, "cl")
    w = torch.randn(20, 12, 3, 3)
    sc, sh = torch.rand(12) + 0.5, torch.randn(12)
    y, (mean_p, m2_p, cnt) = K.bn_act_conv_fwd(x, w, sc, sh, act="relu", compute_stats=True)
    assert mean_p.shape[0] == triton.cdiv(2 * 9 * 7, 16)
    mean, var, count = merged_stats(mean_p, m2_p, cnt)
    var_ref, mean_ref = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    assert (count == 2 * 9 * 7).all()
    assert ((mean - mean_ref).norm() / var_ref.sqrt().norm()).item() < 1e-5
    assert rel_err(var, var_ref) < 1e-5


# ----------------------------------------------------------------------------- dropout mask

def test_mask_matches_helper_and_seed():
    """With a 1x1 identity weight, scale=1, shift=0, act=identity, y = keep * x / (1-p):
    the forward kernel uses exactly the helper's mask at the logical NCHW index."""
    n, c, h, w = 2, 5, 7, 9
    p = 0.3
    x = make((n, c, h, w), torch.float32, "cl") + 3.0  # nonzero everywhere
    eye = torch.eye(c).view(c, c, 1, 1)
    one, zero = torch.ones(c), torch.zeros(c)
    seed = torch.tensor([12345], dtype=torch.int64)
    y, _ = K.bn_act_conv_fwd(x, eye, one, zero, padding=0, dropout_p=p, seed=seed)
    keep = keep_mask(seed, (n, c, h, w), f32(p))
    assert torch.equal(y != 0, keep)
    assert 0.5 < keep.float().mean().item() < 0.9
    y2, _ = K.bn_act_conv_fwd(x, eye, one, zero, padding=0, dropout_p=p, seed=seed)
    assert torch.equal(y, y2), "same seed must give the same output"
    y3, _ = K.bn_act_conv_fwd(x, eye, one, zero, padding=0, dropout_p=p, seed=seed + 1)
    assert not torch.equal(y != 0, y3 != 0), "different seeds must give different masks"


def test_different_seeds_differ_through_op():
    x = make((1, 12, 7, 7), torch.float32, "cl")
    w = torch.randn(12, 12, 3, 3)
    sc, sh = torch.rand(12) + 0.5, torch.randn(12)
    ys = [bn_act_conv(x, w, sc, sh, seed=torch.tensor([s]), act="relu", dropout_p=0.3)[0] for s in (1, 2, 1)]
    assert not torch.allclose(ys[0], ys[1])
    assert torch.equal(ys[0], ys[2])


@triton.jit
def _keep_from_bits_kernel(bits_ptr, out_ptr, R, C, CW, BLOCK_R: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c0 = tl.program_id(1) * BLOCK
    cols = tl.arange(0, BLOCK)
    r_ok = r < R
    keep = keep_from_bits(bits_ptr, r * CW, r_ok, c0, cols, CW, BLOCK)
    c = c0 + cols
    tl.store(out_ptr + r[:, None] * C + c[None, :], keep.to(tl.int8), mask=r_ok[:, None] & (c < C)[None, :])


@pytest.mark.parametrize("c", [5, 40, 70])
def test_dropout_bits_match_the_mask(c):
    """The bitmask the kernels test (one int32 word per pixel and 32 channels) holds the
    reference mask bit for bit, and keep_from_bits reads it back under every tile width
    the kernels use (16: interpreter, 32: one word, 64/128: several words per tile)."""
    n, h, w, p = 2, 3, 5, 0.3
    seed = torch.tensor([4242], dtype=torch.int64, device=DEV)
    bits = K.dropout_bits(seed, (n, c, h, w), p)
    assert bits.dtype == torch.int32 and tuple(bits.shape) == (n * h * w, triton.cdiv(c, 32))
    keep = keep_mask(seed, (n, c, h, w), f32(p))                       # [n, c, h, w]
    ref = keep.permute(0, 2, 3, 1).reshape(n * h * w, c)               # [pixel, channel]
    words = bits.long() & 0xFFFFFFFF
    unpacked = torch.stack([(words[:, j // 32] >> (j % 32)) & 1 for j in range(bits.shape[1] * 32)], 1)
    assert torch.equal(unpacked[:, :c].bool(), ref)
    assert not unpacked[:, c:].any(), "bits past C must be 0"
    for block in (16, 32, 64, 128):
        out = torch.full((n * h * w, c), -1, dtype=torch.int8, device=DEV)
        grid = (triton.cdiv(n * h * w, 16), triton.cdiv(c, block))
        _keep_from_bits_kernel[grid](bits, out, n * h * w, c, bits.shape[1], BLOCK_R=16, BLOCK=block)
        assert torch.equal(out.bool(), ref), f"BLOCK={block}"


def test_op_makes_the_bitmask_once_per_forward():
    """Forward, dgrad and wgrad share one bitmask (saved for backward), not three Philox passes."""
    x = make((2, 40, 5, 5), torch.float32, "cl").requires_grad_()
    w = torch.randn(8, 40, 3, 3, requires_grad=True)
    sc, sh = (torch.rand(40) + 0.5).requires_grad_(), torch.randn(40).requires_grad_()
    wrn_fast.reset_counters()
    y, *_ = bn_act_conv(x, w, sc, sh, seed=torch.tensor([3]), act="relu", dropout_p=0.3)
    y.sum().backward()
    c = wrn_fast.counters()
    assert c.get("conv_dropout_bits") == 1
    assert c.get("bn_act_conv_fwd") == 1 and c.get("bn_act_conv_dgrad") == 1 and c.get("bn_act_conv_wgrad") == 1


# ----------------------------------------------------------------------------- wiring

def test_counters_and_needs_input_grad():
    x = make((1, 5, 7, 7), torch.float32, "cl")
    w = torch.randn(12, 5, 3, 3, requires_grad=True)
    wrn_fast.reset_counters()
    y, *_ = bn_act_conv(x, w)  # x needs no grad, no BN: the backward must skip dgrad
    y.sum().backward()
    c = wrn_fast.counters()
    assert c.get("bn_act_conv_fwd") == 1 and c.get("bn_act_conv_wgrad") == 1
    assert c.get("bn_act_conv_dgrad", 0) == 0
    assert w.grad is not None

    wrn_fast.reset_counters()
    xr = x.detach().requires_grad_()
    sc = (torch.rand(5) + 0.5).requires_grad_()
    sh = torch.randn(5).requires_grad_()
    y, *_ = bn_act_conv(xr, w.detach(), sc, sh, act="relu")  # weight needs no grad: no wgrad
    y.sum().backward()
    c = wrn_fast.counters()
    assert c.get("bn_act_conv_fwd") == 1 and c.get("bn_act_conv_dgrad") == 1
    assert c.get("bn_act_conv_wgrad", 0) == 0
    assert xr.grad is not None and sc.grad is not None and sh.grad is not None


def test_stats_partials_not_differentiable():
    x = make((1, 5, 7, 7), torch.float32, "cl").requires_grad_()
    w = torch.randn(12, 5, 3, 3, requires_grad=True)
    y, mean_p, m2_p, cnt = bn_act_conv(x, w, compute_stats=True)
    assert y.requires_grad
    assert not (mean_p.requires_grad or m2_p.requires_grad or cnt.requires_grad)


def test_no_conv2d_inside(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("fused op called F.conv2d")

    monkeypatch.setattr(F, "conv2d", boom)
    monkeypatch.setattr(torch, "conv2d", boom)
    x = make((1, 5, 7, 7), torch.float32, "cl").requires_grad_()
    w = torch.randn(12, 5, 3, 3, requires_grad=True)
    sc, sh = (torch.rand(5) + 0.5).requires_grad_(), torch.randn(5).requires_grad_()
    y, *_ = bn_act_conv(x, w, sc, sh, act="relu", compute_stats=True)
    y.sum().backward()


def test_fake_kernel_matches():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = make((2, 5, 9, 7), torch.float32, "cl")
    w = torch.randn(12, 5, 3, 3)
    real = bn_act_conv(x, w, stride=2, padding=(0, 1, 0, 1), compute_stats=True)
    with FakeTensorMode() as mode:
        fx, fw = mode.from_tensor(x), mode.from_tensor(w)
        fake = bn_act_conv(fx, fw, stride=2, padding=(0, 1, 0, 1), compute_stats=True)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype and r.stride() == f.stride()


def test_torch_compile_traces():
    """fullgraph tracing through the fake kernels + autograd (aot_eager: no inductor
    codegen, which would only add minutes of CPU compile time here)."""
    x = make((1, 5, 7, 7), torch.float32, "cl")
    w = torch.randn(8, 5, 3, 3)
    sc, sh = torch.rand(5) + 0.5, torch.randn(5)
    seed = torch.tensor([3])

    def f(x, w, sc, sh):
        y, mean_p, m2_p, cnt = bn_act_conv(x, w, sc, sh, seed=seed, act="relu", dropout_p=0.3,
                                           compute_stats=True)
        return (y * y).sum(), mean_p

    leaves = [t.detach().requires_grad_() for t in (x, w, sc, sh)]
    leaves_c = [t.detach().requires_grad_() for t in (x, w, sc, sh)]
    loss, mean_p = f(*leaves)
    loss.backward()
    loss_c, mean_p_c = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves_c)
    loss_c.backward()
    assert torch.equal(loss, loss_c) and torch.equal(mean_p, mean_p_c)
    for a, b in zip(leaves, leaves_c):
        assert torch.equal(a.grad, b.grad)


def test_opcheck():
    x = make((1, 5, 5, 5), torch.float32, "cl").requires_grad_()
    w = (torch.randn(6, 5, 3, 3) * 0.3).requires_grad_()
    sc, sh = (torch.rand(5) + 0.5).requires_grad_(), torch.randn(5).requires_grad_()
    b = torch.randn(6).requires_grad_()
    res = torch.randn(1, 6, 2, 2).requires_grad_()
    seed = torch.tensor([7], dtype=torch.int64)
    bits = torch.ops.wrn_fast.conv_dropout_bits(seed, list(x.shape), 0.3)
    torch.library.opcheck(torch.ops.wrn_fast.conv_dropout_bits.default, (seed, list(x.shape), 0.3),
                          test_utils=["test_schema", "test_faketensor"])
    args = (x, w, sc, sh, b, res, seed, bits, 2, [0, 1, 0, 1], "silu", 0.0, 0.3, True, False)
    # all four utils (aot_dispatch_dynamic re-runs forward + backward under tracing: ~10 s interpreted)
    utils = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    torch.library.opcheck(torch.ops.wrn_fast.bn_act_conv.default, args, test_utils=utils)
    gy = torch.randn(1, 6, 2, 2)
    bargs = (gy, x.detach(), w.detach(), sc.detach(), sh.detach(), seed, bits, 2, [0, 1, 0, 1], "silu", 0.0,
             0.3, False, True, True, True)
    torch.library.opcheck(torch.ops.wrn_fast.bn_act_conv_backward.default, bargs,
                          test_utils=["test_schema", "test_faketensor"])



# ----------------------------------------------------------------------------- two-pass path (narrow layers)

BN_CASES = [name for name, c in CASES.items() if c[8] != "identity" or c[10] > 0]


PASS_ROUTES = ("two_pass", "pass_fwd", "pass_fwd_wgrad")  # the routes with the elementwise pass


def _force_route(monkeypatch, route):
    monkeypatch.setattr(K, "conv_route", lambda dtype, cin, cout, taps, stride, dropout=False: route)


def _force_two_pass(monkeypatch, on=True):
    _force_route(monkeypatch, "two_pass" if on else "fused")


@pytest.mark.parametrize("route", PASS_ROUTES)
@pytest.mark.parametrize("name", BN_CASES)
@poison_outputs
def test_two_pass_grid_fp32(name, route, monkeypatch):
    """BN-act-dropout as its own kernel, then the conv without a prologue (route two_pass:
    wgrad on the saved activation; pass_fwd: the activation freed, wgrad fused on x;
    pass_fwd_wgrad: the backward writes the activation again for wgrad; dgrad fused on x
    in all): forward, every gradient and the statistics vs the float64 reference (same
    mask: the reference uses the kernels' mask function); the counters prove which kernels
    ran."""
    _force_route(monkeypatch, route)
    wrn_fast.reset_counters()
    case = CASES[name]
    out = run_case(case, torch.float32)
    check_case(out, torch.float32)
    c = wrn_fast.counters()
    assert c.get("bn_act_conv_fwd") == 1
    assert c.get("bn_act_conv_dgrad") == 1 and c.get("bn_act_conv_wgrad") == 1
    assert c.get("bn_act_dropout_fwd") == (2 if route == "pass_fwd_wgrad" else 1)
    # the elementwise kernel evaluates the mask itself; pass_fwd's backward makes the
    # bitmask once for its fused dgrad and wgrad
    assert c.get("conv_dropout_bits", 0) == (1 if route == "pass_fwd" and case[10] > 0 else 0)
    y = out["y"].detach().double()
    var_ref, mean_ref = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
    mean, var, count = merged_stats(out["mean_p"], out["m2_p"], out["cnt_p"])
    assert (count == y.shape[0] * y.shape[2] * y.shape[3]).all()
    assert ((mean - mean_ref).norm() / var_ref.sqrt().norm()).item() < 1e-5
    assert rel_err(var, var_ref) < 1e-5


@pytest.mark.parametrize("route", PASS_ROUTES)
def test_pass_routes_keep_the_activation_only_on_two_pass(route, monkeypatch):
    """What autograd saves: route two_pass keeps the activation a (a second tensor of x's
    shape beside x); pass_fwd / pass_fwd_wgrad free it after the forward GEMM (activation
    memory as the one-kernel route's)."""
    _force_route(monkeypatch, route)
    x = make((2, 6, 5, 5), torch.float32, "cl").requires_grad_()
    w = torch.randn(4, 6, 3, 3).requires_grad_()
    sc, sh = torch.rand(6) + 0.5, torch.randn(6)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y, *_ = bn_act_conv(x, w, sc, sh, act="relu")
    x_shaped = [t for t in saved if tuple(t.shape) == tuple(x.shape)]
    assert len(x_shaped) == (2 if route == "two_pass" else 1), [tuple(t.shape) for t in saved]
    y.sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.parametrize("name", ["leaky3x3-s2-tfsame-drop-n1-cl", "all-silu3x3-drop-bias-res-cl"])
@poison_outputs
def test_two_pass_fp64_and_bf16(name, monkeypatch):
    _force_two_pass(monkeypatch)
    check_case(run_case(CASES[name], torch.float64, compute_stats=False), torch.float64)
    check_case(run_case(CASES[name], torch.bfloat16, compute_stats=False), torch.bfloat16)


def test_two_pass_equals_one_kernel_path(monkeypatch):
    """Same inputs, same seed: every route gives the same output and gradients (fp64: to
    rounding), i.e. the elementwise kernel's dropout mask is the conv's bitmask."""
    x = make((2, 20, 7, 7), torch.float64, "cl")
    w = torch.randn(12, 20, 3, 3, dtype=torch.float64, device=DEV)
    sc = torch.rand(20, dtype=torch.float64, device=DEV) + 0.5
    sh = torch.randn(20, dtype=torch.float64, device=DEV)
    seed = torch.tensor([99], dtype=torch.int64, device=DEV)
    gy = make((2, 12, 7, 7), torch.float64, "cl")
    results = []
    for route in K.ROUTES:
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, sc, sh)]
        y, *_ = bn_act_conv(*leaves, seed=seed, act="relu", dropout_p=0.4, route=route)
        y.backward(gy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for other in results[1:]:
        for one, two in zip(results[0], other):
            assert rel_err(two, one) < 1e-12
    assert (results[0][0] != 0).any()


def test_two_pass_layer_decision(monkeypatch):
    assert not K.two_pass_layer(torch.bfloat16, 32, 32)  # interpreter: tests choose explicitly
    monkeypatch.setattr(conv_config, "_GPU_TILES", True)
    for w in (32, 64, 128):
        assert K.two_pass_layer(torch.bfloat16, w, w) and K.two_pass_layer(torch.float16, w, w)
    assert not K.two_pass_layer(torch.bfloat16, 160, 160)
    assert K.two_pass_layer(torch.bfloat16, 16, 160)           # WRN-28-10 g1.b0.conv1
    assert not K.two_pass_layer(torch.float32, 32, 32)
    assert not K.two_pass_layer(torch.bfloat16, 32, 64, 1, 2)  # 1x1 / stride-2 shortcuts: the pass costs more
    assert not K.two_pass_layer(torch.bfloat16, 32, 64, 9, 2)
    assert K.two_pass_layer(torch.bfloat16, 16, 32, 9, 1)    # WRN-28-2 g1.b0.conv1 (Cin = 16)


def test_conv_route_decision(monkeypatch):
    """conv_route: the pass takes the prologue off the forward (and wgrad) where the SASS
    ceilings say the prologue costs the GEMM more than the pass costs (see conv_config)."""
    assert K.conv_route(torch.bfloat16, 160, 160) == "fused"  # interpreter: tests choose explicitly
    monkeypatch.setattr(conv_config, "_GPU_TILES", True)
    for dt in (torch.bfloat16, torch.float16):
        for drop in (False, True):
            assert K.conv_route(dt, 160, 160, dropout=drop) == "pass_fwd_wgrad"  # fwd 0.68 -> 1.0, wgrad 0.62 -> 0.79
            assert K.conv_route(dt, 320, 320, dropout=drop) == "pass_fwd"   # fwd 0.79 -> 1.0; wgrad 1.0 either way
            assert K.conv_route(dt, 640, 640, dropout=drop) == "pass_fwd"   # fwd 0.83 (128x256) -> 1.0 (128x128)
            for wide in (256, 512, 1024):  # WRN-70-16: 128x256 fills them with the prologue at 1.0
                assert K.conv_route(dt, wide, wide, dropout=drop) == "fused"
            assert K.conv_route(dt, 32, 32, dropout=drop) == "two_pass"
            assert K.conv_route(dt, 16, 160, dropout=drop) == "two_pass"
    assert K.conv_route(torch.float32, 160, 160) == "fused"
    assert K.conv_route(torch.bfloat16, 160, 320, 9, 2) == "fused"  # stride 2: a quarter of the FLOPs per element
    assert K.conv_route(torch.bfloat16, 160, 320, 1, 1) == "fused"  # 1x1: a ninth
    # the forward without the prologue gets its own tile: 128x160x32 over 160 (1.0), the
    # wgrad 192 rows over Cout = 160 (0.95 x 83%; with the prologue 256x32x128)
    assert K.default_config("fwd", torch.bfloat16, 160, 160, prologue=False)[:3] == (128, 160, 32)
    assert K.default_config("fwd", torch.bfloat16, 640, 640, prologue=False)[:2] == (128, 128)
    assert K.default_config("wgrad", torch.bfloat16, 160, 160, prologue=False)[:3] == (192, 32, 128)
    assert K.default_config("wgrad", torch.bfloat16, 160, 160)[:3] == (256, 32, 128)


def test_narrow_wgrad_kernel_choice(monkeypatch):
    """Prologue-free wgrads at narrow widths on the GPU: taps over both GEMM sides where
    Cout <= 32 (3x3), taps stacked on M where Cout is wider; neither in fp32 or the interpreter."""
    assert conv_config.wgrad_tapgrid(torch.bfloat16, 32, 32, 3, 3) is None  # interpreter
    monkeypatch.setattr(conv_config, "_GPU_TILES", True)
    for dt in (torch.bfloat16, torch.float16):
        assert conv_config.wgrad_tapgrid(dt, 32, 32, 3, 3) == (2, 32, 32)   # WRN-28-2 width 32
        assert conv_config.wgrad_tapgrid(dt, 16, 32, 3, 3) == (4, 16, 32)   # WRN-28-2 g1.b0.conv1
        assert conv_config.wgrad_tapgrid(dt, 16, 16, 3, 3) == (4, 16, 16)
        assert conv_config.wgrad_tapgrid(dt, 32, 64, 3, 3) is None          # taps stacked: N = 64 wide
        assert conv_config.wgrad_taps(dt, 32, 64, 9) == (2, 32)
    assert conv_config.wgrad_tapgrid(torch.float32, 32, 32, 3, 3) is None
    assert conv_config.wgrad_tapgrid(torch.bfloat16, 64, 32, 3, 3) is None
    assert conv_config.wgrad_tapgrid(torch.bfloat16, 32, 32, 1, 1) is None


def test_bad_route_before_any_launch():
    wrn_fast.reset_counters()
    x, w, sc, sh = torch.randn(1, 5, 7, 7), torch.randn(8, 5, 3, 3), torch.ones(5), torch.zeros(5)
    with pytest.raises(ValueError, match="route must be one of"):
        bn_act_conv(x, w, sc, sh, act="relu", route="pass")
    with pytest.raises(ValueError, match="contradicts route"):
        bn_act_conv(x, w, sc, sh, act="relu", two_pass=True, route="pass_fwd")
    assert not wrn_fast.counters()


def test_two_pass_fake_and_opcheck(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    _force_two_pass(monkeypatch)
    x = make((1, 5, 5, 5), torch.float32, "cl").requires_grad_()
    w = (torch.randn(6, 5, 3, 3) * 0.3).requires_grad_()
    sc, sh = (torch.rand(5) + 0.5).requires_grad_(), torch.randn(5).requires_grad_()
    seed = torch.tensor([7], dtype=torch.int64)
    real = bn_act_conv(x, w, sc, sh, seed=seed, stride=2, padding=(0, 1, 0, 1), act="relu", dropout_p=0.3,
                       compute_stats=True)
    with FakeTensorMode() as mode:
        fake = bn_act_conv(*(mode.from_tensor(t) for t in (x, w, sc, sh)), seed=mode.from_tensor(seed), stride=2,
                           padding=(0, 1, 0, 1), act="relu", dropout_p=0.3, compute_stats=True)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype and r.stride() == f.stride()
    for route in PASS_ROUTES:
        args = (x, w, sc, sh, None, None, seed, 2, [0, 1, 0, 1], "silu", 0.0, 0.3, True, False, route)
        torch.library.opcheck(torch.ops.wrn_fast.bn_act_conv_two_pass.default, args,
                              test_utils=["test_schema", "test_autograd_registration", "test_faketensor",
                                          "test_aot_dispatch_dynamic"])


def test_two_pass_bad_input_before_any_launch(monkeypatch):
    _force_two_pass(monkeypatch)
    wrn_fast.reset_counters()
    with pytest.raises(ValueError, match="weight Cin"):
        bn_act_conv(torch.randn(1, 5, 7, 7), torch.randn(8, 4, 3, 3), torch.ones(5), torch.zeros(5), act="relu")
    assert not wrn_fast.counters()


# ----------------------------------------------------------------------------- bad inputs

def _good():
    return dict(x=torch.randn(1, 5, 7, 7), weight=torch.randn(8, 5, 3, 3), scale=torch.ones(5),
                shift=torch.zeros(5))


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(x=torch.randn(5, 7, 7)), r"x must be 4-D"),
    (lambda a: a.update(weight=torch.randn(8, 4, 3, 3)), r"weight Cin .*4.* x channels .*5"),
    (lambda a: a.update(weight=torch.randn(8, 5, 3)), r"weight must be 4-D"),
    (lambda a: a.update(scale=torch.ones(4)), r"scale must have shape \[Cin\] = \[5\]"),
    (lambda a: a.update(shift=torch.zeros(5, dtype=torch.bfloat16)), r"shift dtype"),
    (lambda a: a.update(scale=None), r"scale and shift must be given together"),
    (lambda a: a.update(x=torch.randn(1, 5, 7, 7).to(torch.bfloat16)), r"weight dtype must match x"),
    (lambda a: a.update(x=torch.randint(0, 3, (1, 5, 7, 7))), r"x dtype"),
    (lambda a: a.update(residual=torch.randn(1, 8, 6, 7)), r"residual shape must equal the output shape"),
    (lambda a: a.update(bias=torch.randn(7)), r"bias must have shape \[Cout\] = \[8\]"),
    (lambda a: a.update(act="gelu"), r"act must be one of"),
    (lambda a: a.update(dropout_p=1.0, seed=torch.tensor([1])), r"dropout_p must be in \[0, 1\)"),
    (lambda a: a.update(dropout_p=0.3), r"seed .* is required when dropout_p > 0"),
    (lambda a: a.update(dropout_p=0.3, seed=torch.tensor([1.0])), r"seed dtype"),
    (lambda a: a.update(scale=None, shift=None, act="relu"), r"needs the BN prologue"),
    (lambda a: a.update(weight=torch.randn(8, 5, 3, 3, device="meta")), r"weight must be on"),
    (lambda a: a.update(stride=0), r"stride must be a positive int"),
    (lambda a: a.update(padding=(1, 1, 1)), r"padding must be"),
    (lambda a: a.update(x=torch.randn(1, 5, 1, 1), padding=0), r"output would be empty"),
])
def test_bad_inputs(mutate, match):
    a = _good()
    mutate(a)
    x, w = a.pop("x"), a.pop("weight")
    wrn_fast.reset_counters()
    with pytest.raises(ValueError, match=match):
        K.bn_act_conv_fwd(x, w, a.pop("scale"), a.pop("shift"), **a)
    assert wrn_fast.counters().get("bn_act_conv_fwd", 0) == 0  # raised before launching


def test_bad_grad_y_shape():
    x, w = torch.randn(1, 5, 7, 7), torch.randn(8, 5, 3, 3)
    with pytest.raises(ValueError, match=r"grad_y shape must equal the output shape"):
        K.bn_act_conv_dgrad(torch.randn(1, 8, 6, 7), w, x)
    with pytest.raises(ValueError, match=r"grad_y shape must equal the output shape"):
        K.bn_act_conv_wgrad(torch.randn(1, 8, 6, 7), x, weight_shape=w.shape)


# ----------------------------------------------------------------------------- configs, device, layering

WRN_WIDTHS = [16, 32, 64, 128, 160, 256, 320, 512, 640, 1024]


@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_default_config_heuristic(kind, dtype, monkeypatch):
    """The per-shape default (WRN_FAST_AUTOTUNE=0) is one of the GPU configs (so the GPU
    test of every config covers it); 16-bit operands take BLOCK_K = 64 and, from 128
    channels on, one of the wide 8-warp tiles; fp32 tiles use at least 80% of the GEMM's N side."""
    monkeypatch.setattr(conv_config, "_GPU_TILES", True)
    gpu = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages, c.num_warps)
           for c in K.ALL_CONFIGS[kind]}
    for cin in WRN_WIDTHS:
        for cout in (cin, 2 * cin):
            cfg = K.default_config(kind, dtype, cin, cout, dropout=True)
            assert cfg in gpu, (cin, cout, cfg)
            n = cout if kind == "fwd" else cin
            bn = cfg[1]
            if dtype == torch.float32:
                if n >= 64:
                    assert n / (triton.cdiv(n, bn) * bn) >= 0.8, (n, cfg)
            else:
                k_side = cin if kind == "fwd" else cout
                short_k = ((kind == "dgrad" and (n >= 32 and k_side <= 32 or n <= 16))
                           or (kind == "fwd" and n >= 32 and k_side <= 32))  # 32-deep steps
                long_k = kind == "wgrad" and n < 64  # 16 / 32-wide wgrad: 128 pixels per step
                k16 = kind != "wgrad" and k_side <= 16  # 16 channels per tap: 16-deep steps
                # BLOCK_K 32 or 64, whichever fills the channels per tap (dgrad: Cout; fwd: Cin)
                wide_k = kind in ("dgrad", "fwd") and n >= 128 and k_side > 16
                if not wide_k:
                    assert cfg[2] == (16 if k16 else 32 if short_k else 128 if long_k else 64), (kind, cin, cout, cfg)
                if n >= 128 and cout >= 128:
                    assert cfg in [c for c, _ in K._WIDE_16[kind]], (n, cfg)
    assert K.default_config("fwd", torch.float32, 160, 160)[1] == 64
    # the score: issue ceiling (without / with dropout) x share of the tile inside the GEMM
    assert K.default_config("fwd", torch.bfloat16, 320, 320)[:3] == (64, 320, 32)  # 0.84 x 100% > 1.0 x 62.5%
    assert K.default_config("fwd", torch.bfloat16, 160, 320, stride=2)[:3] == (64, 320, 32)  # (0.79: 128x160)
    assert K.default_config("fwd", torch.bfloat16, 160, 160)[:3] == (128, 160, 32)  # 0.68 x 100% > 1.0 x 52%
    assert K.default_config("fwd", torch.bfloat16, 640, 640)[:2] == (64, 320)   # 0.84 x 100% > 1.0 x 83%
    assert K.default_config("fwd", torch.bfloat16, 512, 512)[:2] == (128, 256)   # 1.0 x 100%
    assert K.default_config("fwd", torch.bfloat16, 128, 128)[:2] == (128, 128)   # 0.65 x 100% > 1.0 x 50%
    assert K.default_config("wgrad", torch.bfloat16, 640, 640)[:2] == (320, 64)  # 1.0 x 100% > 1.0 x 83%
    assert K.default_config("wgrad", torch.bfloat16, 320, 320)[:2] == (320, 64)
    assert K.default_config("wgrad", torch.bfloat16, 160, 160)[:3] == (256, 32, 128)  # 1.0 x 62.5% > 1.0 x 52%
    assert K.default_config("wgrad", torch.bfloat16, 160, 160, dropout=True)[:3] == (256, 64, 64)  # 0.94 x 52%
    assert K.default_config("dgrad", torch.bfloat16, 160, 160) == (128, 160, 32, 4, 8)  # 1.0 x 100%
    assert K.default_config("dgrad", torch.bfloat16, 160, 160, dropout=True) == (128, 160, 32, 4, 8)
    # plain K loops (dgrad; fwd / wgrad without the prologue, the two-pass path): 256 rows
    assert K.default_config("fwd", torch.bfloat16, 64, 64, prologue=False) == (256, 64, 64, 3, 8)
    assert K.default_config("fwd", torch.bfloat16, 32, 32, prologue=False) == (256, 32, 32, 4, 4)
    assert K.default_config("fwd", torch.bfloat16, 64, 32, prologue=False) == (256, 32, 64, 3, 8)
    assert K.default_config("dgrad", torch.bfloat16, 32, 32) == (256, 32, 32, 4, 4)
    assert K.default_config("dgrad", torch.bfloat16, 16, 160) == (512, 16, 32, 3, 4)   # 16-wide for Cin = 16
    # dgrad by ceiling x fill of Cin (N) and of Cout per tap (K)
    assert K.default_config("dgrad", torch.bfloat16, 320, 320) == (256, 64, 64, 3, 8)
    assert K.default_config("dgrad", torch.bfloat16, 640, 640) == (256, 64, 64, 3, 8)  # (ties: 256x64)
    # strided dgrads run per phase, as hoisted as at stride 1: the same tiles
    assert K.default_config("dgrad", torch.bfloat16, 160, 320, stride=2) == (128, 160, 64, 3, 8)  # 1.0 x 100%
    assert K.default_config("dgrad", torch.float16, 256, 512, stride=2) == (256, 64, 64, 3, 8)  # 128x128 spills 8 B
    assert K.default_config("dgrad", torch.bfloat16, 32, 64, stride=2) == (256, 32, 64, 3, 4)  # 0.98 (8 warps 0.77)
    # narrow layers with the prologue (WRN-28-2's downsampling convs): 256 rows 32 deep over Cin = 32,
    # the wgrad one M tile over Cout = 128 (the prologue once per element)
    assert K.default_config("fwd", torch.bfloat16, 32, 32) == (256, 32, 32, 4, 4)
    assert K.default_config("fwd", torch.bfloat16, 32, 64, stride=2) == (256, 64, 32, 4, 8)
    assert K.default_config("fwd", torch.bfloat16, 16, 32) == (256, 32, 16, 4, 4)
    assert K.default_config("wgrad", torch.bfloat16, 64, 128, stride=2) == (128, 64, 64, 3, 4)
    assert K.default_config("wgrad", torch.bfloat16, 32, 64, stride=2) == (64, 32, 128, 3, 4)
    assert K.default_config("fwd", torch.bfloat16, 3, 16) == (512, 16, 16, 3, 4)  # the stem: 27 = 2 x 16 deep
    assert K.default_config("dgrad", torch.float16, 64, 64) == (256, 64, 64, 3, 8)
    assert K.default_config("wgrad", torch.bfloat16, 16, 160, prologue=False) == (128, 16, 128, 3, 4)
    assert K.default_config("wgrad", torch.bfloat16, 32, 32, prologue=False) == (64, 32, 128, 3, 4)
    assert K.default_config("wgrad", torch.bfloat16, 16, 160) == (128, 16, 128, 3, 4)
    assert K.default_config("fwd", torch.bfloat16, 16, 160, prologue=False) == (128, 160, 16, 3, 8)  # 0.91 x 100%
    assert K.default_config("fwd", torch.bfloat16, 16, 160) == (128, 256, 16, 3, 8)  # 0.96 x 62.5% > 0.50 x 100%
    assert K.default_config("fwd", torch.bfloat16, 3, 16, prologue=False) == (512, 16, 16, 3, 4)  # the stem: K = 27
    with pytest.raises(ValueError, match="kind must be"):
        K.default_config("bwd", torch.bfloat16, 16, 16)


def test_launches_enter_the_tensors_device(monkeypatch):
    """Every launcher launches inside launch_device(x) (torch.cuda.device(x.device) on a
    GPU: Triton launches on the current device, which need not be the tensors')."""
    entered = []
    real = K.launch_device

    def recording(t):
        entered.append(t.device)
        return real(t)

    for module in (conv_common, conv_fwd, conv_dgrad, conv_wgrad):  # the bitmask launch and the 3 kernels'
        monkeypatch.setattr(module, "launch_device", recording)
    x = make((1, 5, 6, 6), torch.float32, "cl")
    w = torch.randn(4, 5, 3, 3)
    sc, sh, seed = torch.rand(5) + 0.5, torch.randn(5), torch.tensor([1])
    y, _ = K.bn_act_conv_fwd(x, w, sc, sh, act="relu", dropout_p=0.2, seed=seed)  # + the bitmask launch
    K.bn_act_conv_dgrad(torch.randn_like(y), w, x, sc, sh, act="relu")
    K.bn_act_conv_wgrad(torch.randn_like(y), x, sc, sh, weight_shape=w.shape, act="relu")
    assert entered == [x.device] * 4

    # on a CUDA tensor launch_device is torch.cuda.device(that tensor's device)
    used = []

    class FakeCudaTensor:
        is_cuda = True
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", lambda d: used.append(d) or __import__("contextlib").nullcontext())
    with real(FakeCudaTensor()):
        pass
    assert used == [torch.device("cuda", 1)]


def test_allow_tf32_follows_cudnn_flag(monkeypatch):
    """fp32 convs follow PyTorch: allow_tf32=None reads torch.backends.cudnn.allow_tf32."""
    seen = []
    real = K.bn_act_conv_fwd

    def recording(*args, **kwargs):
        seen.append(kwargs["allow_tf32"])
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "bn_act_conv_fwd", recording)
    x, w = make((1, 5, 5, 5), torch.float32, "cl"), torch.randn(4, 5, 3, 3)
    for flag in (True, False):
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=flag):
            bn_act_conv(x, w)
    bn_act_conv(x, w, allow_tf32=False)
    assert seen == [True, False, False]
    assert K._dot_modes(torch.float32, True)[0] == "tf32" and K._dot_modes(torch.float32, False)[0] == "ieee"


@poison_outputs
def test_wide_tiles_in_interpreter(monkeypatch):
    """The GPU's tile shapes where the dropout bits span several words per tile (fwd
    BLOCK_K = 64, dgrad epilogue BLOCK_N = 64, wgrad BLOCK_N = 64), run for their
    semantics: Cin = 40 puts two bitmask words in one tile."""
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "fwd", K._cfg(32, 64, 64, 1, 4))
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "dgrad", K._cfg(32, 64, 64, 1, 4))
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "wgrad", K._cfg(32, 64, 64, 1, 4))
    check_case(run_case(CASES["relu3x3-cin40-drop-res-cl"], torch.float32, compute_stats=False), torch.float32)


@poison_outputs
def test_split_accumulators_in_interpreter(monkeypatch):
    """BLOCK_N = 256 with statistics and no dropout runs as two 128-column accumulators
    (the GPU default at Cout >= 160): Cout = 136 puts columns in both halves."""
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "fwd", K._cfg(64, 256, 32, 1, 4))
    case = (1, 12, 136, 5, 5, 3, 1, (1, 1, 1, 1), "relu", "cl", 0.0, True, True)
    out = run_case(case, torch.float32, backward=False, compute_stats=True)
    check_case(out, torch.float32)
    y = out["y"].detach().double()
    var_ref, mean_ref = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
    mean, var, count = merged_stats(out["mean_p"], out["m2_p"], out["cnt_p"])
    assert (count == 25).all()
    assert ((mean - mean_ref).norm() / var_ref.sqrt().norm()).item() < 1e-5
    assert rel_err(var, var_ref) < 1e-5


@pytest.mark.parametrize("pow2_out", [True, False])
@poison_outputs
def test_two_power_tile_sides_in_interpreter(monkeypatch, pow2_out):
    """Tile sides that are a sum of two powers of two run as two accumulators sharing the
    other operand: the forward's BLOCK_N = 16 + 8 (the GPU's 128 + 32 over Cout = 160 /
    320), the wgrad's BLOCK_M = 32 + 16 (the GPU's 256 + 64 over Cout = 320 / 640), the
    dgrad's BLOCK_N = 64 + 32 (the GPU's 128 + 32 over Cin = 160; parts start at multiples
    of 32 columns, as its dropout words need). Cout = 44 and Cin = 100: two tiles along
    each split side, the last with both parts partly masked; dropout, residual and
    statistics (each part's columns, merged); both wgrad pixel paths (LINEAR at
    power-of-two sizes, the gather otherwise)."""
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "fwd", K._cfg(64, 24, 32, 1, 4))
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "wgrad", K._cfg(48, 32, 32, 1, 4))
    monkeypatch.setitem(K._INTERPRET_CONFIGS, "dgrad", K._cfg(64, 96, 32, 1, 4))
    h, w = (8, 4) if pow2_out else (5, 6)
    case = (2, 100, 44, h, w, 3, 1, (1, 1, 1, 1), "relu", "cl", 0.3, False, True)
    out = run_case(case, torch.float32, compute_stats=True)
    check_case(out, torch.float32)
    y = out["y"].detach().double()
    var_ref, mean_ref = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
    mean, var, count = merged_stats(out["mean_p"], out["m2_p"], out["cnt_p"])
    assert (count == 2 * h * w).all()
    assert ((mean - mean_ref).norm() / var_ref.sqrt().norm()).item() < 1e-5
    assert rel_err(var, var_ref) < 1e-5


@pytest.mark.parametrize("offs_64", [False, True])
@poison_outputs
def test_int64_offsets_path(offs_64, monkeypatch):
    """Element offsets are int32 unless a tensor spans 2**31 elements (too big to test
    here): force the int64 path on a small case and compare both with the reference."""
    for module in (conv_fwd, conv_dgrad, conv_wgrad):
        monkeypatch.setattr(module, "_needs_int64", lambda *tensors: offs_64)
    check_case(run_case(CASES["relu3x3-cin40-drop-res-cl"], torch.float32, compute_stats=False), torch.float32)


def test_int32_bound_is_a_batch_limit():
    """Too large for int32 indexing: IndexRangeError (a ValueError) that carries the largest
    batch that fits, raised before any allocation or launch."""
    limit = K.max_batch((1, 640, 32, 32), dropout_p=0.3)
    assert limit == (2**31 - 1) // (640 * 32 * 32)
    assert K.max_batch((1, 640, 32, 32)) > limit  # without dropout only the row/word indices bound it
    x = torch.ones(1, 640, 32, 32, dtype=torch.bfloat16).expand(limit + 1, -1, -1, -1)
    w = torch.ones(640, 640, 3, 3, dtype=torch.bfloat16)
    wrn_fast.reset_counters()
    with pytest.raises(wrn_fast.ops.IndexRangeError, match=rf"batch must be <= {limit}") as info:
        K.bn_act_conv_fwd(x, w, torch.ones(640), torch.zeros(640), act="relu", dropout_p=0.3,
                          seed=torch.tensor([1]))
    assert info.value.max_batch == limit
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- BN statistics backward fused

@needs_ext
def test_bn_statistics_backward_fused_into_the_conv_node():
    """Training, dropout and residual (WRN-10-1, 0.3 dropout before each block's conv2): every
    conv fed by a training BN runs the conv and the BN statistics' backward as one autograd
    node (wrn_fast::bn_batch_act_conv: dgrad, bn_finalize_backward, one bn_backward_apply
    pass), and the output, the gradients of the input, every weight, BN weight and bias, and
    the running statistics match the reference given the same dropout masks."""
    from _checks import randomize_batch_norm_
    from wrn_fast import reference as spec
    from wrn_fast.model import WideResNet
    from wrn_fast.ops import ext

    torch.manual_seed(0)
    cfg = dict(depth=10, widen_factor=1, dropout_rate=0.3, num_classes=5)
    ref = randomize_batch_norm_(spec.WideResNet(**cfg), conv_bias=True).train()
    fast = WideResNet(**cfg).train()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8)
    seeds, draw = [], wrn_fast.ops.new_dropout_seed

    def recording_seed(device):
        seeds.append(draw(device))
        return seeds[-1]

    wrn_fast.reset_counters()
    xf = x.clone().requires_grad_()
    with pytest.MonkeyPatch.context() as mp, wrn_fast.use_backend("triton"):
        mp.setattr(wrn_fast.ops, "new_dropout_seed", recording_seed)
        out_f = fast(xf)
        out_f.square().sum().backward()
    c = wrn_fast.counters()
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in fast.modules())
    # every conv but the stem reads a training BN: each ran the fused backward, once
    assert c.get("bn_batch_act_conv_backward", 0) == n_convs - 1, c
    assert len(seeds) == 3  # one dropout per block

    masks = iter(seeds)

    def same_dropout(inp, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return inp
        return inp * ext.dropout_mask(next(masks), list(inp.shape), p).to(inp.dtype) / (1 - p)

    xr = x.clone().requires_grad_()
    with pytest.MonkeyPatch.context() as mp, wrn_fast.use_backend("reference"):
        mp.setattr(F, "dropout", same_dropout)
        out_r = ref(xr)
        out_r.square().sum().backward()
    # fp32 (test_model's tolerances): sums of <= 9*16 products and batch statistics over
    # 2*8*8 values, each op rounding once, measured ~1e-6
    tol_out, tol_grad = 1e-4, 2e-4
    assert rel_err(out_f, out_r) < tol_out
    assert rel_err(xf.grad, xr.grad) < tol_grad
    for (name, pf), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        assert rel_err(pf.grad, pr.grad) < tol_grad, name
    for (name, bf), (_, br) in zip(fast.named_buffers(), ref.named_buffers()):
        if bf.is_floating_point():
            assert rel_err(bf, br) < tol_out, name
        else:
            assert torch.equal(bf, br), name


@pytest.mark.parametrize("route", ("fused",) + PASS_ROUTES)
def test_bn_batch_act_conv_opcheck(route):
    """wrn_fast::bn_batch_act_conv: schema and fake kernel (torch.compile traces it)."""
    x = make((2, 5, 6, 6), torch.float32, "cl")
    w = torch.randn(4, 5, 3, 3)
    sc, sh, mean, var = torch.rand(5) + 0.5, torch.randn(5), torch.randn(5), torch.rand(5) + 0.5
    args = (x, w, sc, sh, mean, var, torch.rand(5) + 0.5, torch.randn(5), 1e-5, None, None, None, None, 1,
            [1, 1, 1, 1], "relu", 0.0, 0.0, True, False, route)
    torch.library.opcheck(torch.ops.wrn_fast.bn_batch_act_conv.default, args,
                          test_utils=["test_schema", "test_faketensor"])


@needs_ext
@pytest.mark.parametrize("route", ("fused",) + PASS_ROUTES)
def test_bn_batch_act_conv_gradients_match_the_separate_nodes(route):
    """batch_bn=: the conv with the BN statistics' backward in its own node gives the same
    output and gradients (x, conv weight, BN weight / bias, bias, residual) as the separate
    autograd nodes (bn_finalize_partials' differentiable scale / shift into the plain op),
    on every route, with dropout and residual."""
    from wrn_fast.ops import ext
    from wrn_fast.ops.conv import BatchBN

    torch.manual_seed(3)
    x0 = make((2, 12, 5, 5), torch.float32, "cl")
    cin, cout, eps = 12, 20, 1e-5
    v, m = torch.var_mean(x0.double(), dim=(0, 2, 3), correction=0)  # one partials row (N*H*W <= STATS_M)
    partials = (m.float()[None], (v * 50).float()[None], torch.tensor([50.0]))
    w0 = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
    bn_w0, bn_b0, b0 = torch.rand(cin) + 0.5, torch.randn(cin) * 0.3, torch.randn(cout)
    res0, seed = make((2, cout, 5, 5), torch.float32, "cl"), torch.tensor([11])
    gy = make((2, cout, 5, 5), torch.float32, "cl")
    kw = dict(stride=1, padding=1, act="relu", dropout_p=0.3, compute_stats=True, allow_tf32=False,
              route=route)
    results = []
    for fused in (False, True):
        x, w, bn_w, bn_b, b, res = (t.clone().requires_grad_() for t in (x0, w0, bn_w0, bn_b0, b0, res0))
        wrn_fast.reset_counters()
        if fused:
            with torch.no_grad():
                sc, sh, mean, var = ext.bn_finalize_partials(x, *partials, bn_w, bn_b, eps)
            y, *_ = bn_act_conv(x, w, sc, sh, b, res, seed, batch_bn=BatchBN(mean, var, bn_w, bn_b, eps), **kw)
        else:
            sc, sh, _, _ = ext.bn_finalize_partials(x, *partials, bn_w, bn_b, eps)
            y, *_ = bn_act_conv(x, w, sc, sh, b, res, seed, **kw)
        y.backward(gy)
        assert wrn_fast.counters().get("bn_batch_act_conv_backward", 0) == int(fused)
        results.append([y.detach()] + [t.grad for t in (x, w, bn_w, bn_b, b, res)])
    for name, one, two in zip(["y", "x", "weight", "bn_weight", "bn_bias", "bias", "residual"], *results):
        assert rel_err(two, one) < 1e-5, name  # fp32: the same terms summed in another order
    assert (results[0][0] != 0).any()


@needs_ext
def test_torch_compile_fullgraph_with_the_fused_bn_backward():
    """The Triton-backend model under torch.compile(fullgraph=True) traces the fused BN
    backward (wrn_fast::bn_batch_act_conv, its fake kernel and autograd) with no graph break
    and gives the eager step's output, gradients and running statistics."""
    from wrn_fast.model import WideResNet

    torch.manual_seed(0)
    cfg = dict(depth=10, widen_factor=1, num_classes=5)
    eager, compiled = WideResNet(**cfg).train(), WideResNet(**cfg).train()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch._dynamo.reset()
    with wrn_fast.use_backend("triton"):
        wrn_fast.reset_counters()
        out_c = torch.compile(compiled, backend="aot_eager", fullgraph=True)(x)
        out_c.square().sum().backward()
        assert wrn_fast.counters().get("bn_batch_act_conv_backward", 0) == 8  # the 8 convs fed by a BN
        out_e = eager(x)
        out_e.square().sum().backward()
    assert rel_err(out_c, out_e) < 1e-6
    for (name, pc), (_, pe) in zip(compiled.named_parameters(), eager.named_parameters()):
        assert rel_err(pc.grad, pe.grad) < 1e-5, name
    for (name, bc), (_, be) in zip(compiled.named_buffers(), eager.named_buffers()):
        assert torch.equal(bc, be) if not bc.is_floating_point() else rel_err(bc, be) < 1e-6, name


def _record_launches(monkeypatch, tuner, const):
    """The list that each launch of the autotuned ``tuner``'s jit function appends its
    constexpr ``const`` to (proof of which kernel ran, with what)."""
    ran = []
    real = tuner.fn.run

    def spy(*args, **kwargs):
        ran.append(kwargs[const])
        return real(*args, **kwargs)
    monkeypatch.setattr(tuner.fn, "run", spy)
    return ran


@pytest.mark.parametrize("cin,taps,block_c", [(20, 2, 32), (16, 4, 16)])
@poison_outputs
def test_wgrad_taps_stacked_in_interpreter(monkeypatch, cin, taps, block_c):
    """The prologue-free wgrad with taps stacked along M (the two-pass path's wgrad at Cin <=
    32 on the GPU): 2 taps x 32 channels or 4 x 16, the last group of the 9 taps partly
    past KH*KW, Cin short of BLOCK_C, every padding case of a 3x3 conv (8x4 image); against
    the reference, and the kernel is proven to be the one that ran."""
    monkeypatch.setattr(conv_config, "wgrad_taps", lambda dtype, ci, co, kk: (taps, block_c))
    ran = _record_launches(monkeypatch, conv_wgrad._wgrad_taps_kernel, "TAPS")
    torch.manual_seed(0)
    x = torch.randn(2, cin, 8, 4, device=DEV).to(memory_format=torch.channels_last)
    w = torch.randn(12, cin, 3, 3, device=DEV)
    gy = torch.randn(2, 12, 8, 4, device=DEV).to(memory_format=torch.channels_last)
    gw = K.bn_act_conv_wgrad(gy, x, weight_shape=w.shape, padding=(1, 1, 1, 1))
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, gy.double(), padding=1)
    assert ran == [taps]
    assert rel_err(gw, ref) < 1e-5  # fp32 products exact ("ieee"), fp32 sums over 64 pixels


@pytest.mark.parametrize("cin,cout,sw,block_c,block_co", [(12, 12, 2, 16, 16), (20, 20, 4, 32, 16),
                                                           (16, 40, 1, 16, 32)])
@pytest.mark.parametrize("padding", [(1, 1, 1, 1), (0, 2, 2, 0)])
def test_wgrad_tapgrid_in_interpreter(monkeypatch, cin, cout, sw, block_c, block_co, padding):
    """The prologue-free wgrad with the taps factored over both sides of the GEMM (the
    two-pass path's wgrad at narrow Cin and Cout on the GPU): rows (kw, c) of the activation
    shifted along w, columns (kh, co) of grad_y shifted along h; w-shift groups partly past
    KW, Cin short of BLOCK_C, Cout over one or two BLOCK_CO tiles, columns as one accumulator
    (KH x 16 = 48: 32 + 16) or two (3 x 32 = 96: 64 + 32), both paddings that keep a 3x3
    conv's size (8x4 image: every border case); against the reference, and the kernel is
    proven to be the one that ran."""
    monkeypatch.setattr(conv_config, "wgrad_tapgrid", lambda dtype, ci, co, kh, kw: (sw, block_c, block_co))
    ran = _record_launches(monkeypatch, conv_wgrad._wgrad_tapgrid_kernel, "SW")
    torch.manual_seed(0)
    x = torch.randn(2, cin, 8, 4, device=DEV).to(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, device=DEV)
    gy = torch.randn(2, cout, 8, 4, device=DEV).to(memory_format=torch.channels_last)
    gw = K.bn_act_conv_wgrad(gy, x, weight_shape=w.shape, padding=padding)
    pt, pb, pl, pr = padding
    ref = torch.nn.grad.conv2d_weight(F.pad(x.double(), (pl, pr, pt, pb)), w.shape, gy.double())
    assert ran == [sw]
    assert rel_err(gw, ref) < 1e-5  # fp32 products exact ("ieee"), fp32 sums over 64 pixels
