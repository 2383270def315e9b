"""Every Triton kernel compiles for Hopper (sm_90) and Ampere (sm_80), without a GPU.

The interpreter runs the kernels' semantics on CPU (the other test files); this
checks the other half: that Triton's real compiler accepts them for the GPUs we
target, down to a cubin (tests/_triton_aot.py: a stand-in driver reports the
target, launches become compile-only warm-ups, autotuners compile their configs).
fp32/bf16/fp16, stride 1/2, 1x1/3x3, TF-SAME padding, Cin = 3, dropout, residual,
stats; forward, dgrad, wgrad, the dropout bitmask and the elementwise kernels; each
launch's default config (`python tests/_triton_aot.py 90 --all-configs` compiles every
autotune config instead: too slow for CI). Also with the GPU machines' Triton 3.6 when
`make test` provides it (WRN_FAST_COMPAT_PYTHON).
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A Python whose Triton is the GPU machines' (3.6, beside torch 2.13 CPU): `make test`
# builds that venv and sets this, so CI compiles every kernel with both Tritons.
COMPAT_PYTHON = os.environ.get("WRN_FAST_COMPAT_PYTHON")

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(),
                                reason="a GPU is here: the kernels are compiled and run by the other tests")
SCRIPT = os.path.join(os.path.dirname(__file__), "_triton_aot.py")


@pytest.mark.parametrize("cap,extra", [(90, []), (80, [])])
def test_triton_kernels_compile_for_gpu_target(cap, extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, SCRIPT, str(cap), *extra], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"sm_{cap}: compiled" in proc.stdout
    _check_all_compiled(proc.stdout)


def _check_all_compiled(stdout):
    for name in ("_fwd_kernel", "_dgrad_kernel", "_wgrad_kernel", "_wgrad_taps_kernel", "_wgrad_tapgrid_kernel",
                 "dropout_bits_kernel", "_bn_act_dropout_fwd_kernel", "_bn_act_dropout_bwd_kernel"):
        assert name in stdout, stdout


def _source_tree_without_extension(tmp_path):
    """wrn_fast importable from the sources, kernels/ as wrn_fast.kernels, and no _C
    (the one built here is for another torch): symlinks in a scratch directory."""
    pkg = tmp_path / "wrn_fast"
    pkg.mkdir()
    src = os.path.join(ROOT, "wrn_fast")
    for name in os.listdir(src):
        if not name.startswith("_C") and name != "__pycache__":
            os.symlink(os.path.join(src, name), pkg / name)
    os.symlink(os.path.join(ROOT, "kernels"), pkg / "kernels")
    return tmp_path


@pytest.mark.skipif(not COMPAT_PYTHON, reason="WRN_FAST_COMPAT_PYTHON not set (`make test` sets it)")
def test_triton_kernels_compile_with_the_gpu_machines_triton(tmp_path):
    """The lent GPU machines run Triton 3.6; language rules differ between versions
    (3.6 asserts tl.dot's acc dtype equals out_dtype: fp64 needs out_dtype spelled out)."""
    probe = subprocess.run([COMPAT_PYTHON, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("3.6"), f"WRN_FAST_COMPAT_PYTHON has triton {probe.stdout.strip()}, expected 3.6"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(_source_tree_without_extension(tmp_path))
    proc = subprocess.run([COMPAT_PYTHON, SCRIPT, "90"], env=env, capture_output=True, text=True, timeout=1200,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "sm_90: compiled" in proc.stdout
    _check_all_compiled(proc.stdout)
