"""Triton's ``tl.rand`` / ``tl.randint`` (Philox4x32-10) and wrn_fast's dropout keep mask,
the one reference of the op contract's mask, for NumPy arrays and torch tensors alike
(the tests' NumPy oracle, tests/_philox.py, and the benchmarks' validation both use it).

Mirrors triton/language/random.py for an int32 offset block:

  key     (k0, k1) = (seed & 0xffffffff, (seed >> 32) & 0xffffffff)   seed as uint64
  counter (c0, c1, c2, c3) = (offset as uint32, 0, 0, 0)
  10 rounds:  c0' = umulhi(B, c2) ^ c1 ^ k0     c2' = umulhi(A, c0) ^ c3 ^ k1
              c1' = lo32(B * c2)                c3' = lo32(A * c0)
              k0 += 0x9E3779B9;  k1 += 0xBB67AE85            (all mod 2**32)
  rand    = uint_to_uniform_float(c0): bitcast to int32, x < 0 -> ~x,
            then float32(x) * float32(4.6566127342e-10)

and the dropout mask of wrn_fast (kernels/_common.py): keep = rand >= float32(p), at the
logical NCHW index of each element.

All arithmetic is int64 on values below 2**32 (torch has no uint32 multiply): the high word
of a 32x32-bit product by a 16-bit split (no overflow), the low word as the product's low 32
bits (exact in two's complement even when the int64 product wraps).
"""
import math
from typing import Sequence

import numpy as np
import torch

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
_M32 = 0xFFFFFFFF
_UNIFORM_SCALE = 4.6566127342e-10  # float32 in Triton


def _umulhi(a: int, x):
    """High 32 bits of a * x for a < 2**32 and x an int64 array of values < 2**32."""
    return (a * (x >> 16) + ((a * (x & 0xFFFF)) >> 16)) >> 16


def _int64(v, like=None):
    if isinstance(v, torch.Tensor):
        return v.to(torch.int64)
    if isinstance(like, torch.Tensor):
        return torch.full_like(like, int(v))
    arr = np.asarray(v, dtype=np.int64)
    return np.broadcast_to(arr, np.shape(like)).copy() if like is not None else arr


def philox4x32(seed: int, c0, c1=0, c2=0, c3=0, n_rounds: int = 10):
    """Philox4x32 with ``n_rounds`` rounds. Counters: NumPy arrays / sequences or torch tensors
    (taken mod 2**32); returns the four words as uint32 NumPy arrays, or int64 tensors."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0 = _int64(c0) & _M32
    c1, c2, c3 = (_int64(c, like=c0) & _M32 for c in (c1, c2, c3))
    with np.errstate(over="ignore"):
        for _ in range(n_rounds):
            n0 = _umulhi(PHILOX_ROUND_B, c2) ^ c1 ^ k0
            n2 = _umulhi(PHILOX_ROUND_A, c0) ^ c3 ^ k1
            c1 = (PHILOX_ROUND_B * c2) & _M32
            c3 = (PHILOX_ROUND_A * c0) & _M32
            c0, c2 = n0, n2
            k0, k1 = (k0 + PHILOX_KEY_A) & _M32, (k1 + PHILOX_KEY_B) & _M32
    if isinstance(c0, torch.Tensor):
        return c0, c1, c2, c3
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def uint_to_uniform_float(u):
    """Triton's uint32 -> float32 in [0, 1) (random.py: uint_to_uniform_float)."""
    if isinstance(u, torch.Tensor):
        x = u.to(torch.int64)
        x = torch.where(x >= 2 ** 31, x - 2 ** 32, x)  # bitcast to int32
        x = torch.where(x < 0, -x - 1, x)
        return x.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=x.device)
    x = np.asarray(u).astype(np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(_UNIFORM_SCALE)


def randint(seed: int, offset):
    """``tl.randint(seed, offset)`` (the first Philox word): uint32 NumPy array or int64 tensor."""
    return philox4x32(seed, offset)[0]


def rand(seed: int, offset):
    """``tl.rand(seed, offset)`` for int32 offsets, float32."""
    return uint_to_uniform_float(randint(seed, offset))


def keep_mask(seed: int, offset, p: float):
    """wrn_fast's dropout keep mask at the given logical indices: rand(seed, idx) >= p (p compared
    as float32). NumPy in, NumPy out; a tensor in, a tensor out."""
    r = rand(seed, offset)
    if isinstance(r, torch.Tensor):
        return r >= torch.tensor(p, dtype=torch.float32, device=r.device)
    return r >= np.float32(p)


def keep_mask_nchw(seed: int, shape: Sequence[int], p: float, device, chunk: int = 1 << 24) -> torch.Tensor:
    """The keep mask of a logical NCHW tensor of ``shape`` (index ((n*C + c)*H + h)*W + w), as a
    bool tensor on ``device``, computed there in chunks of ``chunk`` elements."""
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.bool, device=device)
    for s in range(0, numel, chunk):
        idx = torch.arange(s, min(numel, s + chunk), device=device, dtype=torch.int64)
        out[s:s + idx.numel()] = keep_mask(seed, idx, p)
    return out.view(*shape)
