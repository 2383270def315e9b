"""Smoke test of the benchmark harness (bench/): a --quick CPU run, in-process, into tmp_path.

Checks the recorded environment, that validated entries were timed, that a wrong
implementation is recorded as INVALID (and not timed), the markdown and a PNG, and that
the kernel shape list derived from the architecture matches the reference model's convs.
"""
import json
import os

import pytest
import torch

ENV_FIELDS = ("device_name", "device_type", "torch", "triton", "python", "cpu_model", "git_commit", "git_dirty",
              "command", "timestamp", "gpu_memory_bytes", "driver", "cudnn", "torch_cuda")


def _load(paths):
    with open(paths["json"]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from bench import run

    out = tmp_path_factory.mktemp("bench")
    paths = run.main(["--quick", "--device", "cpu", "--out", str(out), "--quiet",
                      "--no-triton"])  # conftest sets TRITON_INTERPRET=1: interpreted kernels take minutes
    return paths, _load(paths)


def test_quick_run_records_environment_and_figures(quick_run):
    paths, data = quick_run
    env = data["environment"]
    for k in ENV_FIELDS:
        assert k in env, k
    assert "--quick" in env["command"]
    assert "NOT the product's GPU" in data["disclaimer"]
    assert data["peaks"]["matmul_tflops"] and data["peaks"]["copy_gbs"] > 0
    recs = data["records"]
    kern = [r for r in recs if r["section"] == "kernel"]
    timed = [r for r in kern if r["status"] == "OK"]
    assert timed, [(r["impl"], r["status"], r.get("reason")) for r in kern]
    for r in timed:  # validated before timing, within tolerance
        assert r["median_ms"] > 0 and r["max_rel_err"] is not None and r["max_rel_err"] <= r["tol"]
        assert r["gbs"] > 0 and r["speedup_vs_eager"] is not None
    conv_eager = [r for r in timed if r["op"] == "bn_act_conv" and r["impl"] == "eager"]
    assert conv_eager and all(r["tflops"] > 0 and r["pct_peak"] is not None for r in conv_eager)
    for r in kern:  # never a number without a status that allows it
        if r["status"] != "OK":
            assert r.get("median_ms") is None and r.get("reason")
    models = [r for r in recs if r["section"] == "model"]
    assert any(r["status"] == "OK" and r["images_per_s"] > 0 for r in models), models
    assert os.path.exists(paths["markdown"]) and "## Kernels" in open(paths["markdown"]).read()
    assert paths["pngs"] and all(p.endswith(".png") and os.path.getsize(p) > 0 for p in paths["pngs"])
    with open(paths["table"]) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == len(recs) and rows[0]["git_commit"] == env["git_commit"] and rows[0]["command"]


def test_wrong_kernel_is_recorded_invalid_not_timed(tmp_path, monkeypatch):
    from bench import kernels, run

    def garbage(x, scale, shift, *, p, return_mask=False):
        y = torch.full_like(x, 3.0)
        keep = torch.ones_like(x, dtype=torch.bool) if return_mask and p > 0 else None
        return y, keep, keep

    monkeypatch.setattr(kernels, "eager_bn_act_dropout", garbage)
    paths = run.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--only", "kernels",
                      "--ops", "bn_act_dropout", "--passes", "fwd", "--no-plots", "--quiet", "--no-triton"])
    recs = _load(paths)["records"]
    eager = [r for r in recs if r["impl"] == "eager"]
    assert eager and all(r["status"] == "INVALID" for r in eager)
    assert all(r["median_ms"] is None and "validation failed" in r["reason"] for r in eager)
    assert "INVALID" in open(paths["markdown"]).read()


def test_shape_list_matches_reference_model():
    from bench.shapes import wrn_cifar_convs
    from wrn_fast import reference

    model = reference.WideResNet(10, 2, 0.0, 10)
    seen = set()

    def hook(mod, inp, out):
        x = inp[0]
        seen.add((x.shape[1], out.shape[1], mod.kernel_size[0], mod.stride[0], x.shape[2]))

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    derived = {(s.Cin, s.Cout, s.k, s.stride, s.H) for s in wrn_cifar_convs(10, 2, 2, 16)}
    assert derived == seen


def test_nchw_mask_is_the_contract_mask_at_the_logical_index():
    """bench.philox.keep_mask_nchw (torch, chunked; what the benchmarks validate against) is
    keep_mask (the NumPy path the kernel tests check bitwise against tl.rand) at the logical
    NCHW index, across chunk boundaries."""
    import numpy as np

    from bench.philox import keep_mask, keep_mask_nchw

    shape = (4, 5, 6, 7)
    got = keep_mask_nchw(12345, shape, 0.3, "cpu", chunk=97).numpy()
    want = keep_mask(12345, np.arange(4 * 5 * 6 * 7), 0.3).reshape(shape)
    assert got.dtype == np.bool_ and (got == want).all() and 0.6 < want.mean() < 0.8


def test_max_batch_search_takes_the_int32_bound_as_a_bound():
    """The kernels' IndexRangeError ends the largest-batch search like out-of-memory does: the
    row is OK, bounded by the index limit, not an ERROR."""
    from bench import models
    from wrn_fast.kernels.contract import IndexRangeError

    assert models.is_index_limit(IndexRangeError("x is too large for the kernels' int32 indices", 900))
    assert not models.is_index_limit(ValueError("weight must be 4-D"))
    calls = []

    def fits(b):  # memory would allow 5000, the index bound is 900
        calls.append(b)
        return models.INDEX_LIMIT if b > 900 else models.FITS

    lo, hi, limit = models.search_max_batch(fits, cap=16384)
    assert limit == models.INDEX_LIMIT and 900 - max(8, 900 // 32) <= lo <= 900 < hi, (lo, hi, calls)
    lo, hi, limit = models.search_max_batch(lambda b: models.OOM if b > 5000 else models.FITS, cap=16384)
    assert limit == models.OOM and 5000 - 5000 // 32 <= lo <= 5000 < hi
    lo, hi, limit = models.search_max_batch(lambda b: models.FITS, cap=1024)
    assert (lo, limit) == (1024, "cap")


def test_sigterm_writes_the_partial_run(tmp_path):
    """`timeout` sends SIGTERM: bench.run writes the JSON of what it measured (marked terminated)
    and exits 143; the streamed rows are all there."""
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, WRN_FAST_BENCH_STALL_AFTER="2")
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--quick", "--device", "cpu", "--only", "kernels",
                             "--no-triton", "--no-plots", "--ops", "bn_act_dropout", "--out", str(tmp_path)],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [p for p in os.listdir(tmp_path) if p.endswith(".rows.jsonl")]
            if rows and len(open(tmp_path / rows[0]).read().splitlines()) >= 2:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-2000:]
    run_json = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    data = json.loads((tmp_path / run_json[0]).read_text())
    assert "SIGTERM" in data["terminated"] and len(data["records"]) == 2
    assert "Partial run" in (tmp_path / run_json[0].replace(".json", ".md")).read_text()


def test_roofline_predictions_join_the_layer_rows(tmp_path):
    """bench.gpu_table reads bench/roofline.py's JSON: the fused kernels of each named layer map to
    the (pass, shape) of the table's layer rows; eager kernels and other layers are ignored."""
    from bench import gpu_table
    from bench.shapes import wrn_cifar_named_convs

    assert gpu_table.load_roofline(str(tmp_path)) == ({}, None)
    kernels = [{"impl": "fused", "phase": "fwd", "layer": "g1.b0.conv2", "what": "bn_act_conv fwd", "time_s": 1e-3},
               {"impl": "fused", "phase": "bwd", "layer": "g1.b0.conv2", "what": "bn_act_conv wgrad (split-K 2)",
                "time_s": 2e-3},
               {"impl": "eager", "phase": "fwd", "layer": "g1.b0.conv2", "what": "cuDNN conv fwd", "time_s": 9.0},
               {"impl": "fused", "phase": "fwd", "layer": "final.bn_act", "what": "BN finalize", "time_s": 9.0}]
    (tmp_path / "roofline_x_bf16.json").write_text(json.dumps({"models": {"wrn-28-10": {"h200": {"kernels": kernels}}}}))
    got, src = gpu_table.load_roofline(str(tmp_path))
    spec = dict(wrn_cifar_named_convs(28, 10, 128, 32))["g1.b0.conv2"]
    assert (spec.role, spec.Cin, spec.Cout, spec.H) == ("conv2", 160, 160, 32)
    assert got == {("fwd", spec): 1.0, ("wgrad", spec): 2.0} and src.endswith("roofline_x_bf16.json")
    # a layer on a pass route: its elementwise pass counts with the forward, the pass written
    # again in backward with wgrad, the dropout bits with neither; the first layer of a shape wins
    route = "pass-fwd-wgrad: "
    kernels = [dict(k, layer="g1.b1.conv2") for k in kernels[:2]] + kernels
    kernels[:0] = [
        {"impl": "fused", "phase": "fwd", "layer": "g1.b1.conv2", "what": route + "bn_act_dropout fwd (read x)",
         "time_s": 0.5e-3},
        {"impl": "fused", "phase": "bwd", "layer": "g1.b1.conv2",
         "what": route + "bn_act_dropout fwd again for wgrad (read x, write a)", "time_s": 0.25e-3},
        {"impl": "fused", "phase": "bwd", "layer": "g1.b1.conv2", "what": route + "dropout keep bits in backward",
         "time_s": 9.0}]
    models = {"wrn-28-10": {"h200": {"kernels": kernels}}}
    (tmp_path / "roofline_x_bf16.json").write_text(json.dumps({"models": models}))
    got, _ = gpu_table.load_roofline(str(tmp_path))
    assert got == {("fwd", spec): 1.5, ("wgrad", spec): 2.25}


@pytest.mark.parametrize("route", ["fused", "two_pass", "pass_fwd", "pass_fwd_wgrad"])
def test_layer_rows_time_the_route_the_model_runs(route, monkeypatch):
    """bench.gpu_layers times each layer on the route kernels.bn_act_conv.conv_route gives it (on
    a pass route: the elementwise pass + the prologue-free GEMM; wgrad on the activation where
    the route says so), and those kernels give the reference's results (interpreter, toy shape
    with dropout and residual); the counters of the elementwise kernel show the pass ran."""
    from bench import gpu_layers
    from bench.shapes import wrn_cifar_named_convs
    from wrn_fast.kernels import bn_act_conv as K
    from wrn_fast.kernels import bn_act_dropout as KB

    monkeypatch.setattr(K, "conv_route", lambda dtype, cin, cout, taps, stride, dropout=False: route)
    calls = []
    real = KB.bn_act_dropout_fwd
    monkeypatch.setattr(KB, "bn_act_dropout_fwd", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    spec = dict(wrn_cifar_named_convs(10, 1, 2, 8))["g1.b0.conv2"]
    dt, p = torch.float32, 0.3
    assert gpu_layers.layer_route(K, spec, dt, p) == route
    s = gpu_layers._layer_sets(K, spec, dt, torch.device("cpu"), torch.channels_last, p, 1)[0]
    fns = gpu_layers._layer_fns(K, spec, p, route)
    refs = gpu_layers._layer_refs(spec, s, p, torch.device("cpu"))
    for q, (fused, _) in fns.items():
        out = fused(s)
        err = ((out.double() - refs["wrn_fast"][q].double()).norm() / refs["wrn_fast"][q].double().norm()).item()
        assert err < 1e-5, (route, q, err)  # fp32 vs the float64 reference
    # passes: the forward's on every pass route, wgrad's own on pass_fwd_wgrad, the kept one
    # (made once, outside wgrad's time) on two_pass
    assert len(calls) == {"fused": 0, "two_pass": 2, "pass_fwd": 1, "pass_fwd_wgrad": 2}[route]
