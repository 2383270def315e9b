"""Every Triton kernel compiles for Hopper (sm_90) and Ampere (sm_80), without a GPU.

The interpreter runs the kernels' semantics on CPU (the other test files); this
checks the other half: that Triton's real compiler accepts them for the GPUs we
target, down to a cubin (tests/_triton_aot.py: a stand-in driver reports the
target, launches become compile-only warm-ups, autotuners compile their configs).
fp32/bf16/fp16, stride 1/2, 1x1/3x3, TF-SAME padding, Cin = 3, dropout, residual,
stats; forward, dgrad, wgrad and the elementwise kernels; the first autotune
config of each (`python tests/_triton_aot.py 90 --all-configs` compiles them all:
~5 min on 2 cores, too slow for CI).
"""
import os
import subprocess
import sys

import pytest

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
    for name in ("_fwd_kernel", "_dgrad_kernel", "_wgrad_kernel", "_bn_act_dropout_fwd_kernel",
                 "_bn_act_dropout_bwd_kernel"):
        assert name in proc.stdout, proc.stdout
