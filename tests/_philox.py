"""NumPy reference of Triton's ``tl.rand(seed, offset)`` (Philox4x32-10), test-only.

Mirrors triton/language/random.py for an int32 offset block:

  key     (k0, k1) = (seed & 0xffffffff, (seed >> 32) & 0xffffffff)   seed as uint64
  counter (c0, c1, c2, c3) = (offset as uint32, 0, 0, 0)
  10 rounds:  c0' = umulhi(B, c2) ^ c1 ^ k0     c2' = umulhi(A, c0) ^ c3 ^ k1
              c1' = lo32(B * c2)                c3' = lo32(A * c0)
              k0 += 0x9E3779B9;  k1 += 0xBB67AE85            (all mod 2**32)
  rand    = uint_to_uniform_float(c0): bitcast to int32, x < 0 -> ~x,
            then float32(x) * float32(4.6566127342e-10)

and the dropout mask of wrn_fast (kernels/_common.py): keep = rand >= float32(p).
"""
import numpy as np

PHILOX_KEY_A = np.uint32(0x9E3779B9)
PHILOX_KEY_B = np.uint32(0xBB67AE85)
PHILOX_ROUND_A = np.uint64(0xD2511F53)
PHILOX_ROUND_B = np.uint64(0xCD9E8D57)
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32(seed: int, c0, c1=0, c2=0, c3=0, n_rounds: int = 10):
    """Philox4x32 with ``n_rounds`` rounds; counters are int arrays (taken mod 2**32)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0 = np.uint32(seed & 0xFFFFFFFF)
    k1 = np.uint32(seed >> 32)
    shape = np.shape(c0)

    def u32(v):
        return (np.broadcast_to(np.asarray(v, dtype=np.int64), shape) & 0xFFFFFFFF).astype(np.uint32)

    c0, c1, c2, c3 = u32(c0), u32(c1), u32(c2), u32(c3)
    with np.errstate(over="ignore"):
        for _ in range(n_rounds):
            prod_b = PHILOX_ROUND_B * c2.astype(np.uint64)  # < 2**64: exact
            prod_a = PHILOX_ROUND_A * c0.astype(np.uint64)
            new_c0 = (prod_b >> _SHIFT32).astype(np.uint32) ^ c1 ^ k0
            new_c2 = (prod_a >> _SHIFT32).astype(np.uint32) ^ c3 ^ k1
            c1 = (prod_b & _LO32).astype(np.uint32)
            c3 = (prod_a & _LO32).astype(np.uint32)
            c0, c2 = new_c0, new_c2
            k0 = np.uint32(k0 + PHILOX_KEY_A)
            k1 = np.uint32(k1 + PHILOX_KEY_B)
    return c0, c1, c2, c3


def uint_to_uniform_float(u: np.ndarray) -> np.ndarray:
    """Triton's uint32 -> float32 in [0, 1) (random.py: uint_to_uniform_float)."""
    x = u.astype(np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def randint(seed: int, offset) -> np.ndarray:
    """``tl.randint(seed, offset)`` as uint32 (first Philox word)."""
    return philox4x32(seed, offset)[0]


def rand(seed: int, offset) -> np.ndarray:
    """``tl.rand(seed, offset)`` for int32 offsets, float32."""
    return uint_to_uniform_float(randint(seed, offset))


def keep_mask(seed: int, offset, p: float) -> np.ndarray:
    """wrn_fast's dropout keep mask: rand(seed, idx) >= p (p compared as float32)."""
    return rand(seed, offset) >= np.float32(p)
