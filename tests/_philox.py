"""The tests' reference of Triton's ``tl.rand(seed, offset)`` (Philox4x32-10) and of wrn_fast's
dropout keep mask (keep = rand(seed, logical NCHW index) >= float32(p)).

The one implementation lives in bench/philox.py (NumPy arrays and torch tensors alike), shared
with the benchmarks' validation and re-exported by tests/_references.py; test_bn_act_dropout
checks it bitwise against ``tl.rand``. (Kept as a name for the tests that import it.)
"""
from _references import (PHILOX_KEY_A, PHILOX_KEY_B, PHILOX_ROUND_A, PHILOX_ROUND_B, keep_mask,  # noqa: F401
                         philox4x32, rand, randint, uint_to_uniform_float)
