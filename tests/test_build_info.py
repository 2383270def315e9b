"""build_info() and the behaviour without the compiled extension."""
import subprocess
import sys
import textwrap

import torch

import wrn_fast


def test_build_info_reports_versions_ops_and_dispatch_keys():
    info = wrn_fast.build_info()
    for key in ("torch", "torch_cuda", "triton", "extension_loaded", "extension_error", "extension_cuda_kernels",
                "ops", "gpu_available"):
        assert key in info
    if info["extension_loaded"]:
        assert info["extension_error"] is None
        for op in ("channel_stats", "merge_partial_stats", "bn_finalize", "bn_update_running_stats",
                   "bn_backward_apply", "bn_act_dropout", "bn_act_dropout_backward", "pack_mask", "unpack_mask"):
            assert "CPU" in info["ops"][op], (op, info["ops"][op])
            assert "Meta" in info["ops"][op], (op, info["ops"][op])
            # bn_act_dropout's CUDA kernels are Triton (registered when triton is installed)
            cuda = info["triton"]["version"] is not None if op.startswith("bn_act_dropout") else \
                info["extension_cuda_kernels"]
            if cuda:
                assert "CUDA" in info["ops"][op], (op, info["ops"][op])


def test_without_the_extension_import_works_warns_once_and_runs_the_reference():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["wrn_fast._C"] = None          # as if the build were missing
        import torch, wrn_fast
        info = wrn_fast.build_info()
        assert not info["extension_loaded"] and "wrn_fast._C" in info["extension_error"], info
        m = wrn_fast.WideResNet(depth=10, widen_factor=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                y = m(torch.randn(2, 3, 8, 8))
        msgs = [str(w.message) for w in caught if "extension" in str(w.message)]
        assert len(msgs) == 1, msgs                  # said once, not on every call
        assert y.shape == (2, 10)
        assert "reference" in wrn_fast.explain(m)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


def test_cuda_without_triton_runs_the_reference(monkeypatch):
    """bn_act_dropout's CUDA kernel is Triton (the only one): without triton, CUDA tensors take
    the reference ops, never the C++ engine (which would reach the op with no CUDA kernel)."""
    from wrn_fast import _ext, backend

    if not _ext.ext_available():
        import pytest
        pytest.skip("the C++ engine needs the extension")
    monkeypatch.setattr(backend, "triton_usable", lambda device: False)
    monkeypatch.setattr(backend, "_said", set(backend._said) | {"auto-notriton", "cpu-notriton"})  # no warning
    for name in ("auto", "cpu"):
        with backend.use_backend(name):
            assert backend.resolve(torch.device("cuda")) == "reference", name
    with backend.use_backend("cpu"):
        assert backend.resolve(torch.device("cpu")) == "cpu"
