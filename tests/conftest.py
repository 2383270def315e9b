"""Shared test setup.

Without a GPU the Triton kernels run in Triton's interpreter, which must be
switched on before triton is first imported: do it here, before any test module
imports wrn_fast.kernels. (`import torch` does not import triton.) With a GPU,
autotuning is switched off the same way (WRN_FAST_AUTOTUNE=0).

WRN_FAST_GPU_QUICK=1 (bench/gpu_session.sh on a lent GPU) keeps a covering subset
of the parametrized tests: per test function, the parameter sets needed for every
value of every parameter to run at least once (each op, dtype, activation, layout,
model config...), in collection order, minus the ``device="cpu"`` sets (CI runs
those). Each Triton specialization is a compile of seconds on the GPU machine;
the full cross product is hundreds of them and does not fit a 10-minute call.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # One tile config per kernel: autotuning would compile and time every config for
    # every test shape (minutes). test_bn_act_conv runs each config once on its own.
    os.environ.setdefault("WRN_FAST_AUTOTUNE", "0")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model training tests: a second thread buys
    nothing there and, on a loaded 2-core machine, OpenMP spin-waiting makes each step ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poison_uninitialized_outputs():
    """Every torch.empty (the ops' own included) is filled with NaN: an output element a
    kernel fails to write shows up as NaN. Use with pytest.mark.usefixtures."""
    old = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0])
    torch.utils.deterministic.fill_uninitialized_memory = old[1]


GPU_QUICK_ENV = "WRN_FAST_GPU_QUICK"


def _param_key(value):
    try:
        return repr(value)
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__} {id(value)}>"


def covering_selection(items):
    """(kept, dropped): per test function, keep an item when it brings a (parameter, value)
    pair no kept item of that function has; items without parameters are kept; parameter
    sets with device == "cpu" are dropped (the CPU runs are CI's)."""
    seen = {}
    kept, dropped = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None:
            kept.append(item)
            continue
        params = dict(spec.params)
        if any(k.lower() in ("device", "dev") and str(v) == "cpu" for k, v in params.items()):
            dropped.append(item)
            continue
        group = (str(getattr(item, "path", item.fspath)), getattr(item, "originalname", item.name))
        have = seen.setdefault(group, set())
        pairs = {(k, _param_key(v)) for k, v in params.items()}
        if pairs - have:
            have |= pairs
            kept.append(item)
        else:
            dropped.append(item)
    return kept, dropped


def pytest_collection_modifyitems(config, items):
    if os.environ.get(GPU_QUICK_ENV) != "1":
        return
    kept, dropped = covering_selection(items)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
