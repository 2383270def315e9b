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
    from bench.kernels import wrn_cifar_convs
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


def test_philox_mask_matches_contract():
    from _philox import keep_mask  # tests/_philox.py: NumPy mirror of Triton's tl.rand
    from bench.kernels import philox_keep

    got = philox_keep(12345, (4, 5, 6, 7), 0.3, "cpu").flatten().numpy()
    assert (got == keep_mask(12345, range(4 * 5 * 6 * 7), 0.3)).all()
