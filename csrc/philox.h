// Philox4x32-10, bit-identical to Triton's `tl.rand(seed, offset)` with a 32-bit
// offset (triton/language/random.py): key = (seed_lo, seed_hi), counter =
// (offset, 0, 0, 0), ten rounds, the first output word, then
// uint_to_uniform_float. The dropout masks of the C++/CUDA ops and of the Triton
// kernels must agree element for element, so nothing here may be "improved".
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define WRN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define WRN_HOST_DEVICE inline
#endif

namespace wrn_fast {

WRN_HOST_DEVICE uint32_t umulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// First 32-bit output word of Philox4x32-10 for counter (offset, 0, 0, 0).
WRN_HOST_DEVICE uint32_t philox_first_word(uint64_t seed, uint32_t offset) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  uint32_t k0 = static_cast<uint32_t>(seed & 0xffffffffu);
  uint32_t k1 = static_cast<uint32_t>((seed >> 32) & 0xffffffffu);
  uint32_t c0 = offset, c1 = 0, c2 = 0, c3 = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t old_c0 = c0, old_c2 = c2;
    c0 = umulhi32(kRoundB, old_c2) ^ c1 ^ k0;
    c2 = umulhi32(kRoundA, old_c0) ^ c3 ^ k1;
    c1 = kRoundB * old_c2;
    c3 = kRoundA * old_c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c0;
}

// Triton's uint_to_uniform_float for 32-bit words: reinterpret as int32, fold
// negatives with ~x, scale by the largest float with INT32_MAX * scale < 1.
WRN_HOST_DEVICE float uint_to_uniform_float(uint32_t word) {
  int32_t as_int = static_cast<int32_t>(word);
  if (as_int < 0) as_int = ~as_int;
  return static_cast<float>(as_int) * 4.6566127342e-10f;
}

// U[0, 1) for logical element `index` (the NCHW linear index, taken as uint32
// like a 32-bit Triton offset).
WRN_HOST_DEVICE float philox_uniform(uint64_t seed, int64_t index) {
  return uint_to_uniform_float(philox_first_word(seed, static_cast<uint32_t>(index)));
}

// Keep decision of inverted dropout: the comparison is done in fp32 like Triton.
WRN_HOST_DEVICE bool dropout_keep(uint64_t seed, int64_t index, float p) {
  return philox_uniform(seed, index) >= p;
}

}  // namespace wrn_fast
