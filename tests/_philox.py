"""The tests' reference of Triton's ``tl.rand(seed, offset)`` (Philox4x32-10) and of wrn_fast's
dropout keep mask (keep = rand(seed, logical NCHW index) >= float32(p)).

The one implementation lives in bench/philox.py (NumPy arrays and torch tensors alike), shared
with the benchmarks' validation; test_bn_act_dropout checks it bitwise against ``tl.rand``.
"""
import os
import sys

try:
    import bench.philox  # noqa: F401
except ImportError:  # pytest run from elsewhere: the repo root holds bench/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.philox import (PHILOX_KEY_A, PHILOX_KEY_B, PHILOX_ROUND_A, PHILOX_ROUND_B, keep_mask,  # noqa: E402,F401
                          philox4x32, rand, randint, uint_to_uniform_float)
