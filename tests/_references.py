"""The tests' op references: bench/references.py (float64 compositions of the fused ops, the
activations by name, batch statistics, the partial-statistics merge) and bench/philox.py (the
dropout keep mask), one implementation shared with the benchmarks' validation.

bench/ depends on torch and NumPy only, never on tests/; this module only puts the repo root on
sys.path for a pytest started from elsewhere, and re-exports.
"""
import os
import sys

try:
    import bench.references  # noqa: F401
except ImportError:  # pytest run from elsewhere: the repo root holds bench/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.philox import (PHILOX_KEY_A, PHILOX_KEY_B, PHILOX_ROUND_A, PHILOX_ROUND_B, keep_mask,  # noqa: E402,F401
                          philox4x32, rand, randint, uint_to_uniform_float)
from bench.references import (activation, batch_stats, combine_partials, reference_bn_act_conv,  # noqa: E402,F401
                              reference_bn_act_dropout)
