"""Shared test setup.

Without a GPU the Triton kernels run in Triton's interpreter, which must be
switched on before triton is first imported: do it here, before any test module
imports wrn_fast.kernels. (`import torch` does not import triton.) With a GPU,
autotuning is switched off the same way (WRN_FAST_AUTOTUNE=0).
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
