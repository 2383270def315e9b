"""The fast model on the inputs and settings users meet beyond the common path
(issue 16 items 3-4, issue 17 items 7-11): float64 exactness, half / bf16
parameters, the meta device, empty batches, thread-local backends and clear errors.

Each compares against the reference on the same weights. float64 tolerances are
1e-12 relative (both sides compute in fp64 in different orders: ~1e-15 per op);
an fp32 rounding anywhere (a slope or an affine passing through float) shows up as
~1e-8 or worse. fp16 / bf16: 2e-2 / 8e-2 relative on the logits (both sides round
activations to 10 / 7 mantissa bits in different places, statistics stay fp32).
"""
import copy
import threading

import pytest
import torch
import torch.nn.functional as F

import wrn_fast
from wrn_fast import reference
from wrn_fast.backend import get_backend, resolve, use_backend
from wrn_fast.model import WideResNet, WideResNetBottleneck

from _checks import assert_state_dicts_close, needs_ext, randomize_batch_norm_, rel_err

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _pair(dtype=torch.float32, **cfg):
    torch.manual_seed(0)
    ref = randomize_batch_norm_(reference.WideResNet(**cfg), running_stats=True)
    fast = WideResNet(**cfg)
    fast.load_state_dict(ref.state_dict())
    return fast.to(dtype), ref.to(dtype)


def _train_step(model, x, y, backend):
    model.train()
    model.zero_grad(set_to_none=True)
    with use_backend(backend):
        logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach(), grads


def _eval(model, x, backend):
    model.eval()
    with torch.no_grad(), use_backend(backend):
        return model(x)


def _compare(fast, ref, x, y, tol):
    lf, gf = _train_step(fast, x, y, "cpu")
    lr, gr = _train_step(ref, x, y, "reference")
    assert rel_err(lf, lr) < tol
    for n in gr:
        assert rel_err(gf[n], gr[n]) < tol, n
    assert_state_dicts_close(fast.state_dict(), ref.state_dict(), tol)
    assert rel_err(_eval(fast, x, "cpu"), _eval(ref, x, "reference")) < tol


# ------------------------------------------------------------------ float64 exactness
@needs_ext
def test_float64_with_input_normalisation_matches_reference():
    """Issue 16.3: the stem's normalisation affine was fp32 for fp64 data (a crash)."""
    fast, ref = _pair(torch.float64, depth=10, widen_factor=1, input_mean=[.5] * 3, input_std=[.25] * 3)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    _compare(fast, ref, x, torch.randint(0, 10, (4,)), 1e-12)


@pytest.mark.parametrize("slope", [0.1, 0.5, 1 / 3])
@needs_ext
def test_float64_leaky_relu_slope_is_not_rounded_to_fp32(slope):
    """Issue 16.4: the slope went through a C++ float (train error 3e-9 at slope 0.1)."""
    fast, ref = _pair(torch.float64, depth=10, widen_factor=1, activation="leaky_relu", negative_slope=slope)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    _compare(fast, ref, x, torch.randint(0, 10, (4,)), 1e-12)


# ------------------------------------------------------------------ half / bf16 parameters
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
@needs_ext
def test_half_and_bf16_models_train_and_eval_on_cpu(dtype, tol):
    """Issue 17.7: ``model.half().eval()`` failed in bn_finalize (half running stats)."""
    fast, ref = _pair(dtype, depth=10, widen_factor=1)
    x = torch.randn(8, 3, 8, 8).to(dtype)
    y = torch.randint(0, 10, (8,))
    lf, gf = _train_step(fast, x, y, "cpu")
    lr, gr = _train_step(ref, x, y, "reference")
    assert lf.dtype == dtype and rel_err(lf, lr) < tol
    assert rel_err(gf["fc.weight"], gr["fc.weight"]) < 2 * tol
    for n, b in fast.named_buffers():
        assert b.dtype == dict(ref.named_buffers())[n].dtype, n  # running stats stay in the model's dtype
    assert rel_err(fast.block1.layer[0].bn1.running_var, ref.block1.layer[0].bn1.running_var) < tol
    ef, er = _eval(fast, x, "cpu"), _eval(ref, x, "reference")
    assert ef.dtype == dtype and rel_err(ef, er) < tol


# ------------------------------------------------------------------ meta device
@pytest.mark.parametrize("how", ["to_meta", "device_context"])
def test_meta_device_model_sizes_like_reference(how):
    """Issue 17.8: meta tensors failed in the autocast query."""
    if how == "to_meta":
        model = WideResNet(depth=10, widen_factor=1, num_classes=7).to("meta")
    else:
        with torch.device("meta"):
            model = WideResNet(depth=10, widen_factor=1, num_classes=7)
    assert next(model.parameters()).is_meta
    x = torch.empty(5, 3, 8, 8, device="meta")
    assert model(x).shape == (5, 7) and model(x).is_meta
    model.eval()
    assert model(x).shape == (5, 7)
    assert resolve(torch.device("meta")) == "reference"
    bottleneck = WideResNetBottleneck(layers=(1, 1, 1, 1), num_classes=3).to("meta")
    assert bottleneck(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 3)


# ------------------------------------------------------------------ empty batch
@needs_ext
def test_empty_batch_returns_zero_rows_like_reference():
    """Issue 17.10: a batch of 0 raised; the reference returns [0, num_classes]."""
    fast, ref = _pair(depth=10, widen_factor=1, num_classes=6)
    x = torch.randn(0, 3, 8, 8)
    for train in (True, False):
        fast.train(train)
        ref.train(train)
        with use_backend("cpu"):
            of = fast(x)
        orr = ref(x)
        assert of.shape == orr.shape == (0, 6)
    for (n, bf), br in zip(fast.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(bf, br), n  # same buffer semantics (num_batches_tracked included)


# ------------------------------------------------------------------ thread-local backend
@needs_ext
def test_use_backend_is_thread_local_with_overlapping_contexts():
    """Issue 17.9: use_backend was process-global; overlapping contexts left it stuck."""
    default = get_backend()
    seen = {}
    errors = []
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def thread_a():
        try:
            with use_backend("reference"):
                a_in.set()
                b_in.wait(10)
                seen["a_inside"] = (get_backend(), resolve(torch.device("cpu")))
            a_out.set()
            seen["a_after"] = get_backend()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def thread_b():
        try:
            a_in.wait(10)
            seen["b_while_a"] = (get_backend(), resolve(torch.device("cpu")))
            with use_backend("cpu"):  # overlaps A's context; exits after A's
                b_in.set()
                a_out.wait(10)
                seen["b_inside_after_a_left"] = get_backend()
            seen["b_after"] = get_backend()
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert seen["a_inside"] == ("reference", "reference")
    assert seen["b_while_a"] == (default, resolve(torch.device("cpu"))) and seen["b_while_a"][1] != "reference"
    assert seen["b_inside_after_a_left"] == "cpu"
    assert seen["a_after"] == seen["b_after"] == get_backend() == default
    # set_backend stays the process-wide default
    wrn_fast.set_backend("reference")
    try:
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("b", get_backend()))
        t.start()
        t.join()
        assert out["b"] == "reference"
    finally:
        wrn_fast.set_backend(default)


@needs_ext
def test_model_forward_in_two_threads_uses_each_threads_backend():
    fast, _ = _pair(depth=10, widen_factor=1)
    fast.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with use_backend("cpu"):
            expected_cpu = fast(x)
        with use_backend("reference"):
            expected_ref = fast(x)
    assert not torch.equal(expected_cpu, expected_ref)  # the two paths round differently: tells them apart
    barrier = threading.Barrier(2)
    results = {}

    def run(name):
        with use_backend(name), torch.no_grad():
            barrier.wait(10)
            results[name] = [fast(x) for _ in range(3)]

    threads = [threading.Thread(target=run, args=(n,)) for n in ("cpu", "reference")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(torch.equal(o, expected_cpu) for o in results["cpu"])
    assert all(torch.equal(o, expected_ref) for o in results["reference"])


# ------------------------------------------------------------------ clear errors
@pytest.mark.parametrize("size", [15, 18])
@needs_ext
def test_tf_same_padding_rejects_sizes_not_divisible_by_4_like_reference(size):
    """Issue 17.11: the fast model failed with a shape mismatch deep inside a block."""
    fast, ref = _pair(depth=10, widen_factor=1, padding="tf_same")
    before = copy.deepcopy(fast.state_dict())
    x = torch.randn(2, 3, size, size)
    with pytest.raises(ValueError) as ref_error:
        ref(x)
    for train in (True, False):
        fast.train(train)
        with use_backend("cpu"), pytest.raises(ValueError) as fast_error:
            fast(x)
        assert str(fast_error.value) == str(ref_error.value)
    for k, v in fast.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("cls,kwargs", [(WideResNet, dict(depth=10, widen_factor=1)),
                                        (WideResNetBottleneck, dict(layers=(1, 1, 1, 1)))])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_sync_bn_must_be_a_bool(cls, kwargs, value):
    with pytest.raises(ValueError, match="sync_bn: expected True or False"):
        cls(**kwargs, sync_bn=value)


# ------------------------------------------------------------------ eval: BN folded into the conv
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "silu"])
@needs_ext
def test_eval_folds_bn2_into_conv1_with_onednn_and_matches_reference(act):
    """Issue 18: in eval (no_grad) each block's bn2 is folded into conv1 and run as oneDNN's
    conv + bias + act; the profile proves it ran, the logits match the reference (fp32)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN unavailable")
    fast, ref = _pair(depth=10, widen_factor=2, activation=act, negative_slope=0.2)
    fast.eval()
    ref.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad(), use_backend("cpu"), torch.profiler.profile() as prof:
        out = fast(x)
    names = [e.name for e in prof.events()]
    n_blocks = sum(len(g.layer) for g in (fast.block1, fast.block2, fast.block3))
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in fast.modules())
    n_bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    # every conv runs as oneDNN's inference op on packed weights: each block's conv2 with the
    # residual add as post-op (in-place overload), the others plain or with bn2 folded in;
    # no aten conv, and a BN-act kernel only for the BNs that are not folded
    assert names.count("mkldnn::_convolution_pointwise_") == n_blocks
    assert names.count("mkldnn::_convolution_pointwise") == n_convs - n_blocks
    assert "aten::convolution" not in names
    assert names.count("wrn_fast::bn_act_dropout") == n_bns - n_blocks
    with torch.no_grad():
        assert rel_err(out, ref(x)) < 1e-5
    assert "folded" in wrn_fast.explain(fast)


@needs_ext
def test_eval_input_gradient_is_not_folded_and_matches_reference():
    """An attack's eval-mode input gradient: oneDNN's fused op has no autograd, so no fold."""
    fast, ref = _pair(depth=10, widen_factor=1)
    fast.eval()
    ref.eval()
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for model, backend in ((fast, "cpu"), (ref, "reference")):
        xi = x.clone().requires_grad_()
        with use_backend(backend):
            model(xi).logsumexp(1).sum().backward()
        grads.append(xi.grad)
    assert rel_err(grads[0], grads[1]) < 1e-4


@needs_ext
def test_eval_fold_cache_follows_weight_and_running_stat_changes():
    """The folded conv weights are cached per conv; an in-place update (optimizer step,
    load_state_dict, a training step's running stats) must invalidate them."""
    fast, ref = _pair(depth=10, widen_factor=1)
    x = torch.randn(4, 3, 8, 8)
    for change in ("weight", "running_stats", "load_state_dict"):
        fast.eval()
        ref.eval()
        with torch.no_grad(), use_backend("cpu"):
            fast(x)  # fills the cache
        with torch.no_grad():
            if change == "weight":
                for m in (fast, ref):
                    m.block1.layer[0].conv1.weight.mul_(1.5)
            elif change == "running_stats":
                for m in (fast, ref):
                    m.block2.layer[0].bn2.running_var.mul_(3.0)
            else:
                other, _ = _pair(depth=10, widen_factor=1)
                with torch.no_grad():
                    for p in other.parameters():
                        p.add_(0.1)
                fast.load_state_dict(other.state_dict())
                ref.load_state_dict(other.state_dict())
            with use_backend("cpu"):
                assert rel_err(fast(x), ref(x)) < 1e-5, change
