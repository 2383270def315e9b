"""The op bn_act_dropout (torch.ops.wrn_fast.bn_act_dropout / _backward; CPU kernel: C++)
against bench/references.py's composition ``act(x * scale + shift) * keep / (1 - p)`` with
``keep = dropout_mask(seed, shape, p)``, differentiated by autograd in float64; plus mask
statistics, Triton bit-equality of the mask, and the op's one schema.

Named _cpu because CI runs it on CPU; it runs on CUDA too when a GPU is present (there the
op's kernel is the Triton one: tests/test_bn_act_dropout.py).
Tolerances (relative error vs float64): fp32 1e-6 forward / 1e-5 for the grad_scale,
grad_shift reductions (sums of ~1e3 fp32 products); fp16 / bf16 outputs: one rounding
(2**-11 / 2**-8) -> 1e-3 / 8e-3, reductions 1e-5 (inputs are exact in fp32, sums in fp32).
"""
import glob
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import wrn_fast
from wrn_fast.ops import ext
from wrn_fast.ops.bn_act import bn_act_dropout

from _checks import needs_ext, poison_outputs, rel_err
from _references import reference_bn_act_dropout

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
OUT_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
ACTS = ["identity", "relu", "leaky_relu", "silu"]
pytestmark = [needs_ext, poison_outputs]


def seed_tensor(value, device):
    return torch.tensor([value], dtype=torch.int64, device=device)


def make_case(shape, dtype, device, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    x.view(-1)[:3] = 0.0  # exact zeros hit relu'(0) / leaky'(0) when shift is 0 below
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    scale = torch.randn(shape[1], generator=g) + 0.5
    shift = torch.randn(shape[1], generator=g) * 0.5
    shift[0] = 0.0
    coef = torch.float64 if dtype == torch.float64 else torch.float32
    return x.to(device), scale.to(coef).to(device), shift.to(coef).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 6, 7), False), ((3, 5, 6, 7), True), ((33, 4), False),
                                                 ((1, 3, 9, 9), True)])
def test_forward_and_backward_match_composition(device, act, p, dtype, shape, channels_last):
    slope = 0.2
    x, scale, shift = make_case(shape, dtype, device, channels_last)
    seed = seed_tensor(1234, device) if p > 0 else None
    xs, ss, hs = (t.clone().requires_grad_() for t in (x, scale, shift))
    y = bn_act_dropout(xs, ss, hs, act, slope, p, seed)
    grad_y = torch.randn(shape, generator=torch.Generator().manual_seed(9)).to(dtype).to(device)
    y.backward(grad_y)

    keep = ext.dropout_mask(seed, shape, p).cpu() if p > 0 else torch.ones(shape, dtype=torch.bool)
    xr, sr, hr = (t.detach().double().cpu().requires_grad_() for t in (x, scale, shift))
    y_ref = reference_bn_act_dropout(xr, sr, hr, keep, p=p, rdt=torch.float64, act=act, slope=slope)
    y_ref.backward(grad_y.double().cpu())

    assert y.dtype == dtype and y.stride() == x.stride() and xs.grad.stride() == x.stride()
    assert rel_err(y, y_ref) < OUT_TOL[dtype]
    assert rel_err(xs.grad, xr.grad) < OUT_TOL[dtype]
    assert ss.grad.dtype == torch.float32 and rel_err(ss.grad, sr.grad) < 1e-5
    assert rel_err(hs.grad, hr.grad) < 1e-5


def test_gradcheck_float64():
    for act in ACTS:
        for p in (0.0, 0.3):
            x, scale, shift = make_case((2, 3, 3, 4), torch.float64, "cpu", False)
            x = x + 0.05  # keep away from relu's kink, where finite differences are meaningless
            seed = seed_tensor(77, "cpu") if p > 0 else None
            inputs = tuple(t.clone().requires_grad_() for t in (x, scale, shift))
            assert torch.autograd.gradcheck(lambda a, b, c: bn_act_dropout(a, b, c, act, 0.1, p, seed), inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_keep_rate_within_binomial_bound(device):
    n, p = 200_000, 0.3
    keep = ext.dropout_mask(seed_tensor(5, device), [n], p)
    kept = keep.sum().item()
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(kept - n * (1 - p)) < 6 * sigma  # false failure probability ~2e-9


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_mask_different_seed_different_mask(device):
    a = ext.dropout_mask(seed_tensor(11, device), [4, 3, 8, 8], 0.5)
    b = ext.dropout_mask(seed_tensor(11, device), [4, 3, 8, 8], 0.5)
    c = ext.dropout_mask(seed_tensor(12, device), [4, 3, 8, 8], 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ext.dropout_mask(seed_tensor(11, device), [7], 0.0).all()  # p = 0 keeps everything


@pytest.mark.parametrize("device", DEVICES)
def test_mask_is_a_function_of_the_logical_index_only(device):
    """Channels-last memory must give the same dropped elements as NCHW memory."""
    x, scale, shift = make_case((2, 4, 5, 3), torch.float32, device, False)
    seed = seed_tensor(99, device)
    y_nchw = bn_act_dropout(x, scale, shift, "identity", 0.0, 0.5, seed)
    y_cl = bn_act_dropout(x.to(memory_format=torch.channels_last), scale, shift, "identity", 0.0, 0.5, seed)
    assert torch.equal(y_nchw, y_cl.contiguous())


def test_p_one_drops_everything_and_bad_args_raise():
    x, scale, shift = make_case((2, 3, 2, 2), torch.float32, "cpu", False)
    assert (bn_act_dropout(x, scale, shift, "relu", 0.0, 1.0, seed_tensor(1, "cpu")) == 0).all()
    with pytest.raises(RuntimeError, match=r"wrn_fast::bn_act_dropout: seed is required when dropout_p > 0"):
        torch.ops.wrn_fast.bn_act_dropout(x, scale, shift, "relu", 0.0, 0.5, None)
    with pytest.raises(RuntimeError, match=r"act must be one of"):
        torch.ops.wrn_fast.bn_act_dropout(x, scale, shift, "gelu", 0.0, 0.0, None)
    with pytest.raises(ValueError, match=r"activation must be one of"):
        bn_act_dropout(x, scale, shift, "gelu", 0.0)
    with pytest.raises(RuntimeError, match=r"scale must be a per-channel vector of shape \[3\]"):
        bn_act_dropout(x, scale[:2], shift, "relu", 0.0)
    with pytest.raises(RuntimeError, match=r"seed must be an int64 tensor with one element"):
        ext.dropout_mask(torch.tensor([1, 2]), [3], 0.5)


TRITON_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def rand_kernel(seed_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        seed = tl.load(seed_ptr)
        tl.store(out_ptr + offsets, tl.rand(seed, offsets), mask=offsets < n)

    seeds, n = [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
    results = []
    for s in seeds:
        out = torch.empty(n, dtype=torch.float32)
        rand_kernel[(triton.cdiv(n, 256),)](torch.tensor([s], dtype=torch.int64), out, n, BLOCK=256)
        results.append(out)
    torch.save(torch.stack(results), sys.argv[1])
""")


def test_mask_equals_triton_tl_rand_bit_for_bit(tmp_path):
    pytest.importorskip("triton")
    seeds, n = [0, 1, 123456789, 2**31 - 2, 2**40 + 17], 3000  # 2**40+17 exercises the high key word
    script = tmp_path / "triton_rand.py"
    script.write_text(TRITON_SCRIPT)
    env = dict(os.environ, TRITON_INTERPRET="1")  # must be set before triton is imported: a fresh process
    subprocess.run([sys.executable, str(script), str(tmp_path / "u.pt"), ",".join(map(str, seeds)), str(n)],
                   check=True, env=env, timeout=600)
    uniforms = torch.load(tmp_path / "u.pt")
    for s, u in zip(seeds, uniforms):
        for p in (0.1, 0.3, 0.5, 0.9):
            assert torch.equal(ext.dropout_mask(seed_tensor(s, "cpu"), [n], p), u >= torch.tensor(p).float())
        # thresholds equal to drawn values test the exact bits: u_i >= u_i must keep element i,
        # and the next float below must not flip anything that Triton would not flip
        for i in (0, 17, 2999):
            threshold = u[i].item()
            mask = ext.dropout_mask(seed_tensor(s, "cpu"), [n], threshold)
            assert mask[i] and torch.equal(mask, u >= u[i])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_bn_act_dropout(device):
    x, scale, shift = make_case((2, 3, 4, 4), torch.float32, device, False)
    seed = seed_tensor(3, device)
    xs, ss, hs = (t.clone().requires_grad_() for t in (x, scale, shift))
    fwd, bwd = torch.ops.wrn_fast.bn_act_dropout.default, torch.ops.wrn_fast.bn_act_dropout_backward.default
    torch.library.opcheck(fwd, (xs, ss, hs, "silu", 0.0, 0.3, seed))
    torch.library.opcheck(fwd, (xs.detach().to(memory_format=torch.channels_last).requires_grad_(), ss, hs,
                                "leaky_relu", 0.1, 0.0, None))
    torch.library.opcheck(bwd, (torch.randn_like(x), x, scale, shift, "relu", 0.0, 0.3, seed))


# ----------------------------------------------------------------------------- one op, one schema
CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def test_the_op_has_one_schema_and_a_kernel_per_device():
    assert str(torch.ops.wrn_fast.bn_act_dropout.default._schema) == (
        "wrn_fast::bn_act_dropout(Tensor x, Tensor scale, Tensor shift, str act, float negative_slope, "
        "float dropout_p, Tensor? seed) -> Tensor")
    assert str(torch.ops.wrn_fast.bn_act_dropout_backward.default._schema) == (
        "wrn_fast::bn_act_dropout_backward(Tensor grad_y, Tensor x, Tensor scale, Tensor shift, str act, "
        "float negative_slope, float dropout_p, Tensor? seed) -> (Tensor grad_x, Tensor grad_scale, "
        "Tensor grad_shift)")
    ops = set(wrn_fast._ext._registered_ops())
    assert {"bn_act_dropout", "bn_act_dropout_backward"} <= ops
    assert not ops & {"bn_act_dropout_fwd", "bn_act_dropout_bwd", "triton_bn_act_dropout",
                      "triton_bn_act_dropout_backward"}  # the old second op is gone
    for name in ("bn_act_dropout", "bn_act_dropout_backward"):
        has = lambda key: torch._C._dispatch_has_kernel_for_dispatch_key(f"wrn_fast::{name}", key)  # noqa: E731
        assert has("CPU") and has("Meta")
        if importlib.util.find_spec("triton") is not None:
            assert has("CUDA")  # the Triton kernel, registered by wrn_fast.ops.bn_act


def test_every_schema_is_in_the_one_torch_library_block():
    sources = {path: open(path).read() for path in glob.glob(os.path.join(CSRC, "**", "*.c*"), recursive=True)}
    assert not [p for p, text in sources.items() if "TORCH_LIBRARY_FRAGMENT" in text]
    blocks = [p for p, text in sources.items() if re.search(r"^TORCH_LIBRARY\(", text, re.M)]
    assert blocks == [os.path.join(CSRC, "schemas.cpp")], blocks
    defined = re.findall(r'm\.def\(\s*"(\w+)\(', sources[blocks[0]])
    assert len(defined) == len(set(defined))
    # every op of the namespace is defined there, but for the Python custom ops (Triton- or
    # torch.distributed-only ops with one implementation: wrn_fast/ops/conv.py, sync_bn.py)
    import wrn_fast.ops.conv  # noqa: F401
    import wrn_fast.ops.sync_bn  # noqa: F401
    from torch._library.custom_ops import OPDEFS

    python_ops = {name.split("::")[1] for name in OPDEFS if name.startswith("wrn_fast::")}
    assert python_ops and not python_ops & set(defined)
    assert set(wrn_fast._ext._registered_ops()) - python_ops == set(defined)
