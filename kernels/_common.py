"""Helpers shared by the Triton kernels: activations and the dropout mask.

The dropout mask is a pure function of (seed, logical element index) so that the
forward, dgrad and wgrad kernels (and the C++ ops, which implement the same
Philox4x32-10 as ``tl.rand``) regenerate identical masks under any tiling:

    idx  = ((n * C + c) * H + h) * W + w          (logical NCHW index, int32)
    keep = tl.rand(seed, idx) >= p                 (P(keep) = 1 - p)
    y    = keep ? a / (1 - p) : 0

``seed`` is an int64 scalar in [0, 2**31) read from a 1-element device tensor
(drawn from torch's generator, so it is reproducible under torch.manual_seed
and changes on every replay of a captured CUDA graph).
"""
import triton
import triton.language as tl

# Activation codes (constexpr in kernels). Keep in sync with wrn_fast.ops.ACT_CODES.
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_LEAKY_RELU = 2
ACT_SILU = 3
ACT_CODES = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY_RELU, "silu": ACT_SILU}


@triton.jit
def apply_act(z, ACT: tl.constexpr, slope):
    """act(z) in fp32."""
    # tl.where(z < 0, ...) rather than tl.maximum: NaN must propagate as in torch.relu
    if ACT == 1:
        return tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        return tl.where(z < 0, z * slope, z)
    elif ACT == 3:
        return z * tl.sigmoid(z)
    else:
        return z


@triton.jit
def act_grad(z, ACT: tl.constexpr, slope):
    """d act / dz at z, matching PyTorch's backward (relu'(0) = 0, leaky'(0) = slope)."""
    if ACT == 1:
        return tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        return tl.where(z > 0, 1.0, slope)
    elif ACT == 3:
        s = tl.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    else:
        return tl.full(z.shape, 1.0, tl.float32)


@triton.jit
def dropout_keep(seed, idx, p):
    """Boolean keep mask for logical element indices ``idx`` (int32 block)."""
    return tl.rand(seed, idx) >= p
