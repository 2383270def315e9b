"""The Triton kernels of the op bn_act_dropout (kernels/bn_act_dropout.py, the op's CUDA kernels)
against the reference composition, through their launchers and through the op's name.

Runs the Triton kernels on CPU tensors through the interpreter (TRITON_INTERPRET=1,
set by tests/conftest.py before triton is imported); on a CUDA machine the same tests run
there too (``DEVICE``). The reference is bench/references.py's float64 composition
dropout(act(x*scale + shift)) differentiated by torch autograd, with the dropout mask from
bench/philox.py, a NumPy Philox4x32-10 that is first checked bit for bit against ``tl.rand``.

The op ``torch.ops.wrn_fast.bn_act_dropout`` has one schema and one kernel per device: C++ on
CPU (tests/test_bn_act_dropout_cpu.py), these Triton kernels on CUDA. On a CPU-only machine
the op-level tests below reach the Triton kernels through the op's name all the same: the
``triton_kernels`` fixture registers the very functions registered for CUDA
(wrn_fast.ops.bn_act.triton_bn_act_dropout / _backward) as the op's CPU kernels for the
test's duration (a scoped override of the C++ kernels, undone afterwards), and the Triton
launch counters prove which kernel ran.

Error metric: ||out - ref|| / ||ref|| (tests/_checks.py rel_err), per dtype:
  fp32  1e-5   compute is fp32: each elementwise result is a few ulp (2**-24 = 6e-8)
               off; the per-channel sums (grad_scale/shift) add <= ~100 ulp more.
  fp64  2e-7   compute is fp64, but Triton passes float scalars as fp32, so
               negative_slope and 1/(1-p) carry a relative error <= 2**-24 = 6e-8 each.
  bf16 / fp16  the output is rounded to x's dtype: unit roundoff 2**-8 / 2**-11, and
               each element is checked against that bound too.
"""
import warnings

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import wrn_fast
from wrn_fast.kernels import bn_act_dropout as K
from wrn_fast.ops import empty_like_output, new_dropout_seed, output_memory_format
from wrn_fast.ops.bn_act import bn_act_dropout, bn_act_dropout_backward

from _checks import needs_ext, poison, poison_outputs, rel_err
from _references import keep_mask, rand as np_rand, randint as np_randint, reference_bn_act_dropout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: through the interpreter
TOL = {torch.float32: 1e-5, torch.float64: 2e-7}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
ACTS = [("identity", 0.0), ("relu", 0.0), ("leaky_relu", 0.1), ("leaky_relu", 0.2), ("silu", 0.0)]
LAYOUTS = ["nchw", "channels_last", "slice", "2d"]


# ----------------------------------------------------------------------------- helpers


def make_x(layout, dtype, shape=(2, 11, 5, 7), gen=None):
    """Fresh random x (never zeros) of logical ``shape`` in the given memory layout."""
    N, C, H, W = shape
    if layout == "2d":
        return torch.randn(N * H * 3 + 1, C, dtype=torch.float64, generator=gen).to(dtype)
    if layout == "slice":  # non-contiguous in c and w, h/w do not collapse: the SPLIT_HW path
        big = torch.randn(N, 2 * C, H, W + 3, dtype=torch.float64, generator=gen).to(dtype)
        return big[:, ::2, :, 1:W + 1]
    x = torch.randn(N, C, H, W, dtype=torch.float64, generator=gen).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def ref_keep(x, seed, p):
    """The dropout keep mask of logical NCHW index, from the NumPy Philox (bool tensor, x's shape)."""
    if p == 0:
        return torch.ones(x.shape, dtype=torch.bool)
    idx = np.arange(x.numel(), dtype=np.int64).reshape(tuple(x.shape))
    return torch.from_numpy(keep_mask(int(seed.item()), idx, p))


def reference(x, scale, shift, grad_y, act, slope, p, seed):
    """float64 forward and (grad_x, grad_scale, grad_shift) by torch autograd, same mask."""
    x64, s64, b64 = (t.detach().double().cpu().requires_grad_() for t in (x, scale, shift))
    y = reference_bn_act_dropout(x64, s64, b64, ref_keep(x, seed, p), p=p, rdt=torch.float64, act=act, slope=slope)
    y.backward(grad_y.detach().double().cpu())
    return y.detach(), x64.grad, s64.grad, b64.grad


def assert_close(name, out, ref, tol):
    err = rel_err(out, ref)  # NaN never passes
    assert err <= tol, f"{name}: ||out-ref||/||ref|| = {err:.3e} > {tol:.1e}"


def poisoned_like(x):
    """NaN-filled output buffer laid out as the op lays out x's outputs (every element must be written)."""
    return poison(empty_like_output(x))


def seed_tensor(v, device=DEVICE):
    return torch.tensor([v], dtype=torch.int64, device=device)


@pytest.fixture
def triton_kernels():
    """The op's Triton kernels behind ``torch.ops.wrn_fast.bn_act_dropout`` on DEVICE: on a GPU
    they are its CUDA kernels already; on CPU the same functions are registered as its CPU
    kernels for the test's duration (the library's destruction restores the C++ ones)."""
    from wrn_fast.ops import bn_act

    if DEVICE == "cuda":
        yield
        return
    with torch.library._scoped_library("wrn_fast", "IMPL") as lib, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel")
        lib.impl("bn_act_dropout", bn_act.triton_bn_act_dropout, "CPU")
        lib.impl("bn_act_dropout_backward", bn_act.triton_bn_act_dropout_backward, "CPU")
        yield


# ----------------------------------------------------------------------------- Philox reference


@triton.jit
def _rand_probe_kernel(seed_ptr, u_ptr, r_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    seed = tl.load(seed_ptr)
    tl.store(u_ptr + offs, tl.rand(seed, offs), mask=mask)
    tl.store(r_ptr + offs, tl.randint(seed, offs).to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def _rand_probe_offs_kernel(seed_ptr, idx_ptr, u_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.load(idx_ptr + offs, mask=mask, other=0)
    tl.store(u_ptr + offs, tl.rand(tl.load(seed_ptr), idx), mask=mask)


@pytest.mark.parametrize("seed", [0, 1, 123456789, 2**31 - 2, 2**40 + 12345, -7])
def test_philox_reference_matches_tl_rand_bitwise(seed):
    n = 3000
    u = torch.full((n,), float("nan"), dtype=torch.float32, device=DEVICE)
    r = torch.zeros(n, dtype=torch.int32, device=DEVICE)
    _rand_probe_kernel[(triton.cdiv(n, 1024),)](seed_tensor(seed), u, r, n, BLOCK=1024)
    idx = np.arange(n)
    assert np.array_equal(r.cpu().numpy().view(np.uint32), np_randint(seed, idx))
    # bit for bit: compare the float32 bit patterns
    assert np.array_equal(u.cpu().numpy().view(np.int32), np_rand(seed, idx).view(np.int32))
    # large int32 offsets, as in the dropout index of big tensors
    idx = np.array([2**31 - 1, 2**31 - 2, 2**30 + 17, 65536 * 1000 + 3, 999_999_937], dtype=np.int32)
    u = torch.full((idx.size,), float("nan"), dtype=torch.float32, device=DEVICE)
    _rand_probe_offs_kernel[(1,)](seed_tensor(seed), torch.from_numpy(idx).to(DEVICE), u, idx.size, BLOCK=8)
    assert np.array_equal(u.cpu().numpy().view(np.int32), np_rand(seed, idx.astype(np.int64)).view(np.int32))


# ----------------------------------------------------------------------------- forward + backward grid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("act,slope", ACTS)
def test_forward_backward_vs_reference(act, slope, p, layout, dtype):
    gen = torch.Generator().manual_seed(hash((act, slope, p, layout, str(dtype))) % 2**31)
    x = make_x(layout, dtype, gen=gen).to(DEVICE)
    C = x.shape[1]
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    scale = (torch.rand(C, generator=gen, dtype=torch.float64) * 1.5 + 0.25).to(pdt).to(DEVICE)
    scale[0] = -scale[0]  # a negative gamma too
    shift = torch.randn(C, generator=gen, dtype=torch.float64).to(pdt).to(DEVICE)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)
    seed = seed_tensor(int(torch.randint(0, 2**31 - 1, (1,), generator=gen))) if p > 0 else None

    y = K.bn_act_dropout_fwd(x, scale, shift, act=act, negative_slope=slope, dropout_p=p, seed=seed,
                             out=poisoned_like(x))
    gx, gs, gb = K.bn_act_dropout_bwd(grad_y, x, scale, shift, act=act, negative_slope=slope, dropout_p=p,
                                      seed=seed, grad_x_out=poisoned_like(x))
    y_ref, gx_ref, gs_ref, gb_ref = reference(x, scale, shift, grad_y, act, slope, p, seed)
    tol = TOL[dtype]
    assert_close("y", y, y_ref, tol)
    assert_close("grad_x", gx, gx_ref, tol)
    assert_close("grad_scale", gs, gs_ref, tol)
    assert_close("grad_shift", gb, gb_ref, tol)
    assert gs.dtype == scale.dtype and gb.dtype == scale.dtype and gs.shape == (C,)
    if p > 0:  # the very same mask: dropped exactly where the reference dropped
        keep = ref_keep(x, seed, p)
        assert torch.equal(y.cpu() == 0, ~keep | (y_ref == 0))
        assert (y.cpu()[~keep] == 0).all() and (gx.cpu()[~keep] == 0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_default_output_memory_format(layout):
    x = make_x(layout, torch.float32).to(DEVICE)
    C = x.shape[1]
    y = K.bn_act_dropout_fwd(x, torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE), act="identity")
    gx, _, _ = K.bn_act_dropout_bwd(torch.randn_like(y), x, torch.ones(C, device=DEVICE),
                                    torch.zeros(C, device=DEVICE), act="identity")
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)
    assert torch.equal(y, x)  # identity, scale 1, shift 0: exact copy, whatever the layouts
    # a channel slice of a channels_last tensor stays channels_last
    xs = make_x("channels_last", torch.float32, shape=(2, 12, 3, 5)).to(DEVICE)[:, 2:9]
    assert output_memory_format(xs) == torch.channels_last
    ys = K.bn_act_dropout_fwd(xs, torch.ones(7, device=DEVICE), torch.zeros(7, device=DEVICE), act="identity")
    assert ys.is_contiguous(memory_format=torch.channels_last)


def test_row_modes_cover_flat_per_image_and_split():
    """Each tiling mode of the kernels is exercised by the layouts above."""
    modes = {}
    for layout in LAYOUTS:
        x = make_x(layout, torch.float32)
        flat, split, _ = K._row_mode([x, torch.empty(x.shape, memory_format=output_memory_format(x))])
        modes[layout] = "flat" if flat else ("split" if split else "per_image")
    assert modes == {"nchw": "per_image", "channels_last": "flat", "slice": "split", "2d": "flat"}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_int64_offsets_path(monkeypatch, layout):
    """The OFFS_64 path (taken for views spanning >= 2**31 elements) computes the same results."""
    x = make_x(layout, torch.float32).to(DEVICE)
    C = x.shape[1]
    scale, shift, g = torch.rand(C, device=DEVICE) + 0.5, torch.randn(C, device=DEVICE), torch.randn_like(x)
    kw = dict(act="silu", dropout_p=0.3, seed=seed_tensor(77))
    y0 = K.bn_act_dropout_fwd(x, scale, shift, **kw)
    b0 = K.bn_act_dropout_bwd(g, x, scale, shift, **kw)
    monkeypatch.setattr(K, "_needs_int64", lambda tensors: True)
    y1 = K.bn_act_dropout_fwd(x, scale, shift, **kw)
    b1 = K.bn_act_dropout_bwd(g, x, scale, shift, **kw)
    assert torch.equal(y0, y1)
    for a, b in zip(b0, b1):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act,slope,p", [("relu", 0.0, 0.3), ("silu", 0.0, 0.0), ("leaky_relu", 0.2, 0.3)])
def test_half_precision(act, slope, p, layout, dtype):
    x = make_x(layout, dtype).to(DEVICE)
    C = x.shape[1]
    scale, shift = torch.rand(C, device=DEVICE) + 0.5, torch.randn(C, device=DEVICE)
    grad_y = torch.randn(x.shape, device=DEVICE).to(dtype)
    seed = seed_tensor(4242) if p > 0 else None
    y = K.bn_act_dropout_fwd(x, scale, shift, act=act, negative_slope=slope, dropout_p=p, seed=seed,
                             out=poisoned_like(x))
    gx, gs, gb = K.bn_act_dropout_bwd(grad_y, x, scale, shift, act=act, negative_slope=slope, dropout_p=p,
                                      seed=seed, grad_x_out=poisoned_like(x))
    assert y.dtype == dtype and gx.dtype == dtype and gs.dtype == torch.float32
    y_ref, gx_ref, gs_ref, gb_ref = reference(x, scale, shift, grad_y, act, slope, p, seed)
    u = UNIT_ROUNDOFF[dtype]
    if dtype == torch.bfloat16 and x.device.type == "cpu":
        # Triton's interpreter converts fp32 -> bf16 by truncation (runtime/interpreter.py,
        # _convert_float with no rounding mode), not round-to-nearest-even as the GPU does:
        # the error bound of one conversion doubles (2**-7).
        u = 2 * u
    # y and grad_x: fp32 results (rel. error ~1e-7) rounded once to x's dtype; 1e-7 absolute for fp16
    # subnormals (spacing 2**-24).
    for name, out, ref in (("y", y, y_ref), ("grad_x", gx, gx_ref)):
        assert torch.isfinite(out).all()
        bound = (u + 2e-6) * ref.abs() + 1e-7
        worst = ((out.double().cpu() - ref).abs() - bound).max().item()
        assert worst <= 0, f"{name}: an element is off by more than one rounding to {dtype}"
        assert_close(name, out, ref, u)
    # fp32 sums of exactly representable products: as for fp32
    assert_close("grad_scale", gs, gs_ref, TOL[torch.float32])
    assert_close("grad_shift", gb, gb_ref, TOL[torch.float32])


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_dropout_statistics_and_exact_scaling(p):
    torch.manual_seed(1)
    # ~1e5 elements; x > 0 so that y == 0 means "dropped"; identity, scale 1, shift 0: y = x * fp32(1/(1-p))
    x = (torch.rand(4, 16, 40, 40) + 0.5).contiguous(memory_format=torch.channels_last).to(DEVICE)
    C = x.shape[1]
    seed = new_dropout_seed(DEVICE)
    y = K.bn_act_dropout_fwd(x, torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE),
                             act="identity", dropout_p=p, seed=seed)
    kept = (y != 0).cpu()
    n = x.numel()
    rate = kept.double().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(rate - (1 - p)) <= 5 * sigma, f"keep rate {rate:.5f}, expected {1 - p} +- {5 * sigma:.5f}"
    assert torch.equal(kept, ref_keep(x, seed, p))  # the whole mask, element for element
    inv = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    assert torch.equal(y.cpu()[kept], x.cpu()[kept] * inv)  # scaled by exactly 1/(1-p) (fp32)
    # per-channel keep rates are sane too (no channel-correlated mask)
    per_c = kept.double().mean(dim=(0, 2, 3))
    sigma_c = (p * (1 - p) / (n // C)) ** 0.5
    assert ((per_c - (1 - p)).abs() <= 5 * sigma_c).all()


def test_same_seed_same_mask_different_seed_different_mask():
    x = (torch.rand(2, 9, 6, 6) + 0.5).to(DEVICE)
    C = x.shape[1]
    one, zero = torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE)

    def run(s):
        return K.bn_act_dropout_fwd(x, one, zero, act="identity", dropout_p=0.5, seed=seed_tensor(s))

    a, b, c = run(1234), run(1234), run(1235)
    assert torch.equal(a, b)
    assert not torch.equal(a != 0, c != 0)
    agree = ((a != 0) == (c != 0)).double().mean().item()
    assert 0.3 < agree < 0.7  # independent masks agree on ~half the elements at p = 0.5


@needs_ext
def test_reproducible_under_torch_manual_seed(triton_kernels):
    x = make_x("nchw", torch.float32).to(DEVICE)
    C = x.shape[1]
    scale, shift = torch.rand(C, device=DEVICE) + 0.5, torch.randn(C, device=DEVICE)
    outs = []
    for s in (7, 7, 8):
        torch.manual_seed(s)
        seed = new_dropout_seed(DEVICE)
        assert seed.dtype == torch.int64 and seed.shape == (1,) and 0 <= seed.item() < 2**31
        outs.append(torch.ops.wrn_fast.bn_act_dropout(x, scale, shift, "relu", 0.0, 0.3, seed))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_mask_independent_of_layout_and_forward_backward_agree():
    """Mask is a function of the logical index: every layout gives the same y, and a backward
    launched with other layouts (another tiling mode) zeroes exactly the dropped elements."""
    base = (torch.rand(2, 11, 5, 7, dtype=torch.float64) + 0.5).float()
    C = base.shape[1]
    scale, shift = torch.rand(C) + 0.5, torch.rand(C) * 0.1  # z > 0: y == 0 only where dropped
    seed = seed_tensor(99)
    kw = dict(act="leaky_relu", negative_slope=0.1, dropout_p=0.4, seed=seed)
    views = {
        "nchw": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
    }
    wide = torch.zeros(2, 11, 5, 10)
    wide[..., 2:9] = base
    views["split"] = wide[..., 2:9]
    ys = {k: K.bn_act_dropout_fwd(v.to(DEVICE), scale.to(DEVICE), shift.to(DEVICE), **kw) for k, v in views.items()}
    for k, y in ys.items():
        assert torch.equal(y.contiguous(), ys["nchw"].contiguous()), k
    dropped = ys["channels_last"].cpu() == 0
    assert dropped.any() and not dropped.all()
    # backward with NCHW x (per-image tiling) and an expanded grad_y (stride 0)
    g = torch.ones(1, 1, 1, 1, device=DEVICE).expand(base.shape)
    gx, _, _ = K.bn_act_dropout_bwd(g, views["nchw"].to(DEVICE), scale.to(DEVICE), shift.to(DEVICE), **kw)
    assert torch.equal(gx.cpu() == 0, dropped)


def test_p_one_drops_everything():
    x = make_x("nchw", torch.float32).to(DEVICE)
    C = x.shape[1]
    scale, shift = torch.rand(C, device=DEVICE) + 0.5, torch.randn(C, device=DEVICE)
    kw = dict(act="silu", dropout_p=1.0, seed=seed_tensor(5))
    y = K.bn_act_dropout_fwd(x, scale, shift, out=poisoned_like(x), **kw)
    gx, gs, gb = K.bn_act_dropout_bwd(torch.randn_like(x), x, scale, shift, grad_x_out=poisoned_like(x), **kw)
    assert (y == 0).all() and (gx == 0).all() and (gs == 0).all() and (gb == 0).all()


# ----------------------------------------------------------------------------- the op: autograd, opcheck


@needs_ext
@poison_outputs
@pytest.mark.parametrize("layout,p", [("channels_last", 0.3), ("slice", 0.0), ("2d", 0.3)])
def test_op_autograd(triton_kernels, layout, p):
    x = make_x(layout, torch.float32).to(DEVICE).requires_grad_()
    C = x.shape[1]
    scale = (torch.rand(C, device=DEVICE) + 0.5).requires_grad_()
    shift = torch.randn(C, device=DEVICE).requires_grad_()
    seed = new_dropout_seed(DEVICE) if p > 0 else None
    wrn_fast.reset_counters()
    y = bn_act_dropout(x, scale, shift, "leaky_relu", 0.2, p, seed)
    (y * 2).sum().backward()  # grad_y = 2, expanded (stride 0)
    cnt = wrn_fast.counters()
    assert cnt.get("bn_act_dropout_fwd") == 1 and cnt.get("bn_act_dropout_bwd") == 1
    y_ref, gx_ref, gs_ref, gb_ref = reference(x, scale, shift, torch.full(x.shape, 2.0), "leaky_relu", 0.2, p,
                                              seed)
    assert_close("y", y, y_ref, TOL[torch.float32])
    assert_close("grad_x", x.grad, gx_ref, TOL[torch.float32])
    assert_close("grad_scale", scale.grad, gs_ref, TOL[torch.float32])
    assert_close("grad_shift", shift.grad, gb_ref, TOL[torch.float32])


def test_launches_enter_the_tensors_device(monkeypatch):
    """Both launchers launch inside launch_device(x) (torch.cuda.device(x.device) on a GPU)."""
    entered = []
    real = K.launch_device
    monkeypatch.setattr(K, "launch_device", lambda t: entered.append(t.device) or real(t))
    x = make_x("nchw", torch.float32).to(DEVICE)
    s, b = torch.ones(x.shape[1], device=DEVICE), torch.zeros(x.shape[1], device=DEVICE)
    K.bn_act_dropout_fwd(x, s, b)
    K.bn_act_dropout_bwd(x, x, s, b)
    assert entered == [x.device, x.device]


@needs_ext
def test_counters_bumped_once_per_launch(triton_kernels):
    x = make_x("nchw", torch.float32).to(DEVICE)
    C = x.shape[1]
    s, b = torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE)
    wrn_fast.reset_counters()
    bn_act_dropout(x, s, b, "relu", 0.0)  # the op's kernel counts (kernels/ imports nothing from wrn_fast)
    bn_act_dropout(x, s, b, "relu", 0.0)
    bn_act_dropout_backward(x, x, s, b, "relu", 0.0)
    assert wrn_fast.counters() == {"bn_act_dropout_fwd": 2, "bn_act_dropout_bwd": 1}


@needs_ext
def test_fake_kernels_match_real(triton_kernels):
    from torch._subclasses.fake_tensor import FakeTensorMode

    for layout in LAYOUTS:
        x = make_x(layout, torch.float32)
        C = x.shape[1]
        s, b = torch.rand(C), torch.randn(C)
        real = bn_act_dropout(x, s, b, "relu", 0.0)
        real_b = bn_act_dropout_backward(torch.randn_like(x), x, s, b, "relu", 0.0)
        with FakeTensorMode() as mode:
            fx, fs, fb = mode.from_tensor(x), mode.from_tensor(s), mode.from_tensor(b)
            fake = bn_act_dropout(fx, fs, fb, "relu", 0.0)
            fake_b = bn_act_dropout_backward(torch.empty_like(fx), fx, fs, fb, "relu", 0.0)
        assert fake.shape == real.shape and fake.dtype == real.dtype and fake.stride() == real.stride(), layout
        for f, r in zip(fake_b, real_b):
            assert f.shape == r.shape and f.dtype == r.dtype and f.stride() == r.stride(), layout


@needs_ext
@poison_outputs
@pytest.mark.parametrize("act,slope,p", [("relu", 0.0, 0.3), ("leaky_relu", 0.2, 0.5), ("silu", 0.0, 0.0)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice", "channels_last_slice"])
def test_triton_and_cpp_kernels_of_the_op_agree(act, slope, p, layout):
    """One op, two kernels: the C++ CPU kernel and the Triton kernel (the CUDA kernel; on a
    CPU-only machine the registered function itself, under the interpreter) give the same
    dropout mask element for element (both are Philox4x32-10 of (seed, logical NCHW index):
    csrc/philox.h is tl.rand) and the same values and gradients to fp32 rounding, in the
    same memory format."""
    from wrn_fast.ops import bn_act

    gen = torch.Generator().manual_seed(31)
    if layout == "channels_last_slice":  # not dense: both kernels give channels-last outputs
        x = make_x("channels_last", torch.float32, shape=(2, 14, 5, 7), gen=gen)[:, 3:12]
    else:
        x = make_x(layout, torch.float32, gen=gen)
    C = x.shape[1]
    scale = torch.rand(C, generator=gen) + 0.5
    shift = torch.randn(C, generator=gen)
    grad_y = torch.randn(x.shape, generator=gen)
    seed = seed_tensor(2024, "cpu") if p > 0 else None
    y_cpp = torch.ops.wrn_fast.bn_act_dropout(x, scale, shift, act, slope, p, seed)
    g_cpp = torch.ops.wrn_fast.bn_act_dropout_backward(grad_y, x, scale, shift, act, slope, p, seed)
    wrn_fast.reset_counters()
    to = (lambda t: None if t is None else t.to(DEVICE))
    if DEVICE == "cuda":  # through the op's name: its CUDA kernel is the Triton one
        y_tri = torch.ops.wrn_fast.bn_act_dropout(to(x), to(scale), to(shift), act, slope, p, to(seed))
        g_tri = torch.ops.wrn_fast.bn_act_dropout_backward(to(grad_y), to(x), to(scale), to(shift), act, slope, p,
                                                           to(seed))
    else:  # the function registered as the op's CUDA kernel
        y_tri = bn_act.triton_bn_act_dropout(x, scale, shift, act, slope, p, seed)
        g_tri = bn_act.triton_bn_act_dropout_backward(grad_y, x, scale, shift, act, slope, p, seed)
    assert wrn_fast.counters() == {"bn_act_dropout_fwd": 1, "bn_act_dropout_bwd": 1}  # the Triton kernels ran
    assert y_tri.stride() == y_cpp.stride() and g_tri[0].stride() == g_cpp[0].stride()
    assert y_cpp.stride() == empty_like_output(x).stride()  # = the fake kernel's
    if p > 0:
        keep = ref_keep(x, seed, p)
        assert torch.equal(y_cpp == 0, (y_tri == 0).cpu()) and (y_cpp[~keep] == 0).all()
    assert_close("y", y_tri, y_cpp, 1e-6)
    for name, a, b in zip(("grad_x", "grad_scale", "grad_shift"), g_tri, g_cpp):
        assert_close(name, a, b, 1e-5)


# opcheck: all four default utils run under the interpreter for the forward op: test_schema,
# test_autograd_registration, test_faketensor, and test_aot_dispatch_dynamic (it traces with fake
# tensors, then runs the real op and its backward on the CPU tensors, which the interpreter
# handles). The backward op has no autograd formula of its own (no double backward), so it is
# checked without test_autograd_registration, on inputs that do not require grad.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@needs_ext
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_opcheck(triton_kernels, p):
    x = make_x("channels_last", torch.float32, shape=(2, 5, 3, 4)).to(DEVICE).requires_grad_()
    C = x.shape[1]
    scale = (torch.rand(C, device=DEVICE) + 0.5).requires_grad_()
    shift = torch.randn(C, device=DEVICE).requires_grad_()
    seed = seed_tensor(3) if p > 0 else None
    conf = ("silu", 0.0, p, seed)
    torch.library.opcheck(torch.ops.wrn_fast.bn_act_dropout.default, (x, scale, shift, *conf),
                          test_utils=OPCHECK_UTILS)
    g = torch.randn(x.shape, device=DEVICE)
    torch.library.opcheck(torch.ops.wrn_fast.bn_act_dropout_backward.default,
                          (g, x.detach(), scale.detach(), shift.detach(), *conf),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
    x = make_x("nchw", torch.float32).to(DEVICE)
    C = x.shape[1]
    s, b = torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE)
    seed = seed_tensor(1)
    fwd = K.bn_act_dropout_fwd
    cases = [
        (lambda: fwd(x[0], s, b), r"x must be \[N, C, H, W\] or \[N, C\], got shape \(11, 5, 7\)"),
        (lambda: fwd(x.to(torch.int32), s, b), r"x dtype .* got torch.int32"),
        (lambda: fwd(x, s[:-1], b), r"scale must have shape \[C\] = \[11\].*got \(10,\)"),
        (lambda: fwd(x, s, b.view(1, C)), r"shift must have shape \[C\]"),
        (lambda: fwd(x, s.half(), b), r"scale dtype must be float32 or float64, got torch.float16"),
        (lambda: fwd(x, s, b.double()), r"scale and shift must have the same dtype"),
        # the statistics dtype, as the C++ kernel: float32 for float32 x, float64 only for float64 x
        (lambda: fwd(x, s.double(), b.double()), r"scale and shift must be torch.float32 for torch.float32 x"),
        (lambda: fwd(x.double(), s, b), r"scale and shift must be torch.float64 for torch.float64 x"),
        (lambda: fwd(x, s.to("meta"), b), r"scale must be on x's device"),
        (lambda: fwd(x, s, b, act="gelu"), r"act must be one of .* got 'gelu'"),
        (lambda: fwd(x, s, b, act="leaky_relu", negative_slope=float("nan")), r"negative_slope must be a finite"),
        (lambda: fwd(x, s, b, dropout_p=1.5, seed=seed), r"dropout_p must be a float in \[0, 1\], got 1.5"),
        (lambda: fwd(x, s, b, dropout_p=-0.1, seed=seed), r"dropout_p must be .* got -0.1"),
        (lambda: fwd(x, s, b, dropout_p=0.3), r"needs seed, an int64 tensor of shape \[1\]"),
        (lambda: fwd(x, s, b, dropout_p=0.3, seed=seed.int()), r"seed must be an int64 tensor with 1 element"),
        (lambda: fwd(x, s, b, dropout_p=0.3, seed=torch.tensor([1, 2])), r"seed must be an int64 tensor"),
        (lambda: fwd(x, s, b, out=torch.empty(3)), r"out must match x"),
        (lambda: K.bn_act_dropout_bwd(x[:1], x, s, b), r"grad_y must have x's shape \(2, 11, 5, 7\)"),
        (lambda: K.bn_act_dropout_bwd(x, x, s, b, grad_x_out=x.double()), r"grad_x_out must match x"),
        # numel >= 2**31 (an expanded view: nothing is allocated before the check)
        (lambda: fwd(torch.ones(1, 1, 1, 1, device=DEVICE).expand(2**16, 2, 2**14, 1), torch.ones(2), torch.ones(2)),
         r"numel must be < 2\*\*31"),
    ]
    wrn_fast.reset_counters()
    for fn, pattern in cases:
        with pytest.raises((ValueError, TypeError), match=pattern):
            fn()
    assert wrn_fast.counters() == {}  # nothing was launched


@needs_ext
def test_cpp_kernel_has_the_same_scale_dtype_rule():
    """The op's C++ kernel (CPU tensors) rejects what the Triton launcher rejects: scale /
    shift must be the statistics dtype of x (float64 for float64 x, else float32)."""
    x = make_x("nchw", torch.float32)
    s, b = torch.ones(x.shape[1]), torch.zeros(x.shape[1])
    for x_dtype, wrong, expected in ((torch.float32, torch.float64, "Float"), (torch.float64, torch.float32, "Double")):
        with pytest.raises(RuntimeError, match=rf"bn_act_dropout: scale must be {expected}, got"):
            torch.ops.wrn_fast.bn_act_dropout(x.to(x_dtype), s.to(wrong), b.to(wrong), "relu", 0.0, 0.0, None)



@needs_ext
def test_op_reports_the_launchers_errors(triton_kernels):
    x = make_x("nchw", torch.float32).to(DEVICE)
    s, b = torch.ones(x.shape[1], device=DEVICE), torch.zeros(x.shape[1], device=DEVICE)
    with pytest.raises(ValueError, match="needs seed"):
        bn_act_dropout(x, s, b, "relu", 0.0, 0.5, None)


def test_empty_input():
    x = torch.empty(0, 4, 3, 3, device=DEVICE)
    s, b = torch.ones(4, device=DEVICE), torch.zeros(4, device=DEVICE)
    assert K.bn_act_dropout_fwd(x, s, b).shape == x.shape
    gx, gs, gb = K.bn_act_dropout_bwd(x, x, s, b)
    assert gx.shape == x.shape and torch.equal(gs, torch.zeros(4)) and torch.equal(gb, torch.zeros(4))


def test_gpu_configs_are_sane(monkeypatch):
    """The GPU tile choices (not run here): powers of two, <= 4096-element tiles, and column
    blocks that divide the WRN widths 160/320/640 for channels_last."""
    monkeypatch.setattr(K, "_INTERPRET", False)
    for C in (3, 16, 160, 320, 640, 2048):
        for HW in (1, 49, 64, 256, 1024):
            for flat, cf in ((True, True), (False, False)):
                br, bc, nw = K._config(C, HW, 128 * HW, flat, cf)
                assert br & (br - 1) == 0 and bc & (bc - 1) == 0 and br >= 16 and nw in (4, 8)
                assert br * bc <= 2 * 4096
                if cf and C in (160, 320, 640):
                    assert C % bc == 0
