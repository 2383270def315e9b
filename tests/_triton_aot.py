"""Compile (not run) every Triton kernel for a CUDA target on a machine without a GPU.

Run as a script in a process where TRITON_INTERPRET is NOT set:
    python tests/_triton_aot.py CAPABILITY [--all-configs]
Triton's JIT is pointed at a stand-in driver that reports ``cuda:CAPABILITY``;
launches become ``warmup`` (compile only, down to a cubin with Triton's ptxas),
and the autotuners compile their configs instead of benchmarking them. The
launchers run for real on CPU tensors (their checks, grids and specialisations),
with the device check relaxed. Prints one line per compiled kernel and a summary;
exits non-zero on the first compile error.
"""
import importlib.util
import os
import sys
import time

import torch

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import triton.runtime.autotuner as autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

CAP = int(sys.argv[1])
ALL_CONFIGS = "--all-configs" in sys.argv

# The stand-in driver and the relaxed device checks are bench/compile_harness.py's (one
# copy). Loaded from its file: putting the repo root on sys.path would shadow the wrn_fast
# this script must import (an installed one, or the extension-free source tree the
# Triton 3.6 check builds).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("_wrn_fast_compile_harness",
                                               os.path.join(_ROOT, "bench", "compile_harness.py"))
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
_harness.install_stand_in_driver(CAP)
compiled = []
_run = JITFunction.run


def _compile_only(self, *args, grid, warmup, **kwargs):
    kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
    cubin = kernel.asm.get("cubin", b"")
    assert len(cubin) > 0, f"{self.fn.__name__}: no cubin produced"
    compiled.append(self.fn.__name__)
    return kernel


def _compile_configs(self, *args, **kwargs):
    configs = self.configs
    if self.early_config_prune:
        configs = self.early_config_prune(configs, dict(zip(self.arg_names, args)), **kwargs)
    kernel = None
    for cfg in configs:
        kw = dict(kwargs)
        kw.update(cfg.all_kwargs())
        kernel = self.fn.run(*args, **kw)
    return kernel


JITFunction.run = _compile_only
autotuner.Autotuner.run = _compile_configs

from wrn_fast.kernels import bn_act_conv as conv  # noqa: E402
from wrn_fast.kernels import bn_act_dropout as bad  # noqa: E402
from wrn_fast.kernels import conv_config  # noqa: E402 - the launchers' flags live here

# Relax the launchers' CUDA-tensor check (GPU tile configs were chosen at import);
# keep the GPU's dot modes (no interpreter bf16 upcast) and elementwise tile sizes.
# --all-configs: through the autotuners (every config); else each launch's default
# config (default_config).
_harness.relax_device_checks(conv, bad)
conv_config.AUTOTUNE = ALL_CONFIGS

t0 = time.time()
seed = torch.tensor([7])
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for cin, cout, k, stride, pad, act, p, res in (
        (16, 32, 3, 1, (1, 1, 1, 1), "relu", 0.3, True),      # conv2 of a block: dropout + residual
        (16, 32, 3, 2, (0, 1, 0, 1), "silu", 0.0, False),     # stride 2, TF-SAME
        (16, 32, 1, 2, (0, 0, 0, 0), "leaky_relu", 0.0, False),  # projection shortcut
        (3, 16, 3, 1, (1, 1, 1, 1), None, 0.0, False),        # stem: Cin = 3, no prologue
        # narrow 16-bit layers (WRN-28-2): the plain K loops' 256-row tiles (two-pass fwd,
        # dgrad with its epilogue) and the two-pass wgrad under a wide Cout
        (64, 32, 3, 1, (1, 1, 1, 1), "relu", 0.3, False),     # dgrad 256x64x32 + dropout epilogue
        (32, 64, 3, 1, (1, 1, 1, 1), None, 0.0, False),       # fwd 256x64x32, dgrad 256x32, no prologue
        (32, 32, 3, 1, (1, 1, 1, 1), None, 0.0, False),       # fwd, dgrad 256x32x32; wgrad: the tap grid
        (16, 128, 3, 1, (1, 1, 1, 1), None, 0.0, False),      # wgrad: taps stacked (4 x 16 rows), no prologue
    ):
        if dtype == torch.float32 and (cin, cout) in ((64, 32), (32, 64), (32, 32), (16, 128)):
            continue  # the narrow cases exercise 16-bit tiles (fp32's list is covered above)
        x = torch.randn(2, cin, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, k, k).to(dtype)
        sc, sh = (torch.rand(cin), torch.randn(cin)) if act else (None, None)
        kw = dict(stride=stride, padding=pad, act=act or "identity", negative_slope=0.1 if act else 0.0,
                  dropout_p=p, seed=seed if p else None)
        y, _ = conv.bn_act_conv_fwd(x, w, sc, sh, residual=None, compute_stats=True, **kw)
        if res:
            conv.bn_act_conv_fwd(x, w, sc, sh, residual=torch.randn_like(y), compute_stats=True, **kw)
        g = torch.randn_like(y)
        conv.bn_act_conv_dgrad(g, w, x, sc, sh, **kw)
        conv.bn_act_conv_wgrad(g, x, sc, sh, weight_shape=tuple(w.shape), **kw)
    for layout in ("cl", "nchw"):
        x = torch.randn(2, 32, 8, 8).to(dtype)
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
        sc, sh = torch.rand(32), torch.randn(32)
        for act, p in (("relu", 0.3), ("silu", 0.0)):
            y = bad.bn_act_dropout_fwd(x, sc, sh, act=act, dropout_p=p, seed=seed if p else None)
            bad.bn_act_dropout_bwd(torch.randn_like(x), x, sc, sh, act=act, dropout_p=p, seed=seed if p else None)
# float64: the op accepts it on CUDA (the fp64 test grid runs there), the model does not.
x = torch.randn(2, 16, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
w = torch.randn(32, 16, 3, 3, dtype=torch.float64)
sc, sh = torch.rand(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
kw = dict(stride=1, padding=(1, 1, 1, 1), act="relu", negative_slope=0.0, dropout_p=0.3, seed=seed)
y, _ = conv.bn_act_conv_fwd(x, w, sc, sh, residual=None, compute_stats=False, **kw)
g = torch.randn_like(y)
conv.bn_act_conv_dgrad(g, w, x, sc, sh, **kw)
conv.bn_act_conv_wgrad(g, x, sc, sh, weight_shape=tuple(w.shape), **kw)
names = sorted(set(compiled))
print(f"sm_{CAP}: compiled {len(compiled)} kernels ({', '.join(names)}) in {time.time() - t0:.0f} s")
