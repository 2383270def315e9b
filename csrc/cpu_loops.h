// CPU loop skeletons over a ChannelLayout, shared by the CPU kernels. Work is
// split by sizes only (never by thread count) so results are reproducible.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"

namespace wrn_fast {
namespace cpu {

constexpr int64_t kGrainElements = 32768;  // elements per parallel task, roughly

// Runtime ISA dispatch of the vectorised loops. The extension is built for the
// baseline x86-64 (SSE2: 4 floats a vector); `with_isa(body)` runs `body` compiled
// for AVX2 (8 floats) on CPUs that have it. `flatten` inlines the body (a lambda)
// and everything it calls into the AVX2 copy, where the vectoriser then uses ymm
// registers; the baseline copy is the same code. No FMA: the elementwise results
// are bit-identical on both paths; reductions (`omp simd reduction`) may sum in a
// different order (lane count), fixed per machine, so results stay reproducible.
// Call it inside a parallel region around a whole block of work (one check per block).
namespace detail {
template <typename Body>
__attribute__((flatten)) void run_baseline(const Body& body) {
  body();
}
#if defined(__GNUC__) && defined(__x86_64__)
#define WRN_FAST_HAVE_AVX2_LOOPS 1
template <typename Body>
__attribute__((target("avx2"), flatten)) void run_avx2(const Body& body) {
  body();
}
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif
}  // namespace detail

template <typename Body>
inline void with_isa(const Body& body) {
#ifdef WRN_FAST_HAVE_AVX2_LOOPS
  if (detail::cpu_has_avx2()) {
    detail::run_avx2(body);
    return;
  }
#endif
  detail::run_baseline(body);
}

// A parallel_for body `f(begin, end)` run through with_isa:
//   at::parallel_for(0, n, grain, isa_dispatched([&](int64_t begin, int64_t end) { ... }));
template <typename RangeBody>
inline auto isa_dispatched(const RangeBody& f) {
  return [&f](int64_t begin, int64_t end) { with_isa([&] { f(begin, end); }); };
}

// Elementwise walk: `body(memory_index, channel, logical_index, count)` is called
// for each contiguous run of `count` elements; within a run the memory index and
// the channel (channels-last) or the logical index (NCHW) advance by one.
// NCHW runs are one (n, c) plane: fixed channel, consecutive logical indices.
// Channels-last runs are one row of C channels at a fixed (n, s).
template <typename PlaneBody, typename RowBody>
void for_each_run(const ChannelLayout& layout, const PlaneBody& plane_body, const RowBody& row_body) {
  const int64_t channels = layout.channels;
  if (layout.numel() == 0) return;
  if (!layout.channels_last) {
    const int64_t inner = layout.inner();
    const int64_t grain = std::max<int64_t>(1, kGrainElements / inner);
    at::parallel_for(0, layout.outer() * channels, grain, isa_dispatched([&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        // memory index == logical index for NCHW
        plane_body(plane * inner, plane % channels, inner);
      }
    }));
  } else {
    const int64_t spatial = layout.spatial;
    const int64_t grain = std::max<int64_t>(1, kGrainElements / channels);
    at::parallel_for(0, layout.outer(), grain, isa_dispatched([&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / spatial, s = row - n * spatial;
        // logical index of channel c in this row: (n*C + c)*S + s = first + c*S
        row_body(row * channels, n * channels * spatial + s, spatial);
      }
    }));
  }
}

// Chan et al.'s pairwise merge of (count, mean, M2) summaries, in double.
inline void chan_merge(double& count, double& mean, double& m2, double count_b, double mean_b, double m2_b) {
  if (count_b <= 0) return;  // empty pieces carry no information
  const double total = count + count_b;
  const double delta = mean_b - mean;
  mean += delta * (count_b / total);
  m2 += m2_b + delta * delta * (count * count_b / total);
  count = total;
}

// Dropout multipliers of `count` (<= kMaskChunk) logical indices first, first +
// step, ...: inv_keep where the contract's Philox mask keeps the element, else 0.
// The Philox words are integer-only, so the AVX2 build of the loop (picked at
// run time) gives the same bits as the portable one; SSE2 has no 64-bit lane
// multiply, so only the AVX2 / AVX-512 versions vectorize the ten rounds.
constexpr int64_t kMaskChunk = 64;

namespace detail {
inline void philox_words_portable(uint64_t seed, uint32_t first, uint32_t step, int64_t count,
                                  uint32_t* __restrict words) {
  for (int64_t j = 0; j < count; ++j) words[j] = philox_first_word(seed, first + static_cast<uint32_t>(j) * step);
}
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define WRN_FAST_HAVE_AVX2_PATH 1
__attribute__((target("avx2"))) inline void philox_words_avx2(uint64_t seed, uint32_t first, uint32_t step,
                                                              int64_t count, uint32_t* __restrict words) {
  for (int64_t j = 0; j < count; ++j) words[j] = philox_first_word(seed, first + static_cast<uint32_t>(j) * step);
}
__attribute__((target("avx512f"))) inline void philox_words_avx512(uint64_t seed, uint32_t first, uint32_t step,
                                                                   int64_t count, uint32_t* __restrict words) {
  for (int64_t j = 0; j < count; ++j) words[j] = philox_first_word(seed, first + static_cast<uint32_t>(j) * step);
}
// 0: portable, 1: AVX2, 2: AVX-512F
inline int cpu_philox_level() {
  static const int level = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
  return level;
}
#endif
}  // namespace detail

inline void dropout_multipliers(uint64_t seed, int64_t first, int64_t step, int64_t count, float p, float inv_keep,
                                float* __restrict mult) {
  uint32_t words[kMaskChunk];
  // the index is taken as uint32 like a 32-bit Triton offset: wrap-around arithmetic
  const uint32_t first32 = static_cast<uint32_t>(first), step32 = static_cast<uint32_t>(step);
#ifdef WRN_FAST_HAVE_AVX2_PATH
  const int level = detail::cpu_philox_level();
  if (level == 2)
    detail::philox_words_avx512(seed, first32, step32, count, words);
  else if (level == 1)
    detail::philox_words_avx2(seed, first32, step32, count, words);
  else
#endif
    detail::philox_words_portable(seed, first32, step32, count, words);
  for (int64_t j = 0; j < count; ++j) mult[j] = uint_to_uniform_float(words[j]) >= p ? inv_keep : 0.0f;
}

// Calls f(std::integral_constant<int, act>, std::integral_constant<bool, dropout>)
// so kernels are instantiated per activation and dropout: branch-free inner loops.
template <typename F>
void dispatch_act_dropout(int act, bool use_dropout, const F& f) {
  const auto with_act = [&](auto act_c) {
    if (use_dropout)
      f(act_c, std::integral_constant<bool, true>());
    else
      f(act_c, std::integral_constant<bool, false>());
  };
  switch (act) {
    case kRelu: with_act(std::integral_constant<int, kRelu>()); break;
    case kLeakyRelu: with_act(std::integral_constant<int, kLeakyRelu>()); break;
    case kSilu: with_act(std::integral_constant<int, kSilu>()); break;
    default: with_act(std::integral_constant<int, kIdentity>()); break;
  }
}

// Register-blocked per-channel sums over channels-last fp32 rows. The scalar loops
// keep one accumulator per channel in memory (a load and a store per element and
// sum); these keep 16 channels' accumulators in registers while walking the rows
// (two AVX2 registers per sum; the vector type is GCC's generic vector, which the
// baseline copy lowers to SSE pairs). Each channel is summed from 0 in row order,
// as the scalar loops do, and without FMA, so the sums are bit-identical to theirs.
// Both handle the first `blocked_channels(channels)` channels; the caller's scalar
// loop does the rest.
constexpr int64_t kBlockChannels = 16;
inline int64_t blocked_channels(int64_t channels) { return channels - channels % kBlockChannels; }

// -Wpsabi: GCC notes that a 32-byte vector passed by value has another ABI without
// AVX; these helpers are always inlined, so no call passes one.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
namespace detail {
typedef float f32x8 __attribute__((vector_size(32)));
__attribute__((always_inline)) inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void store8(float* p, const f32x8& v) { std::memcpy(p, &v, sizeof v); }
// one 16-channel block's two sums (lo: channels 0-7, hi: 8-15) to a[0:16] and b[0:16]
__attribute__((always_inline)) inline void store_block(float* a, const f32x8& a_lo, const f32x8& a_hi, float* b,
                                                       const f32x8& b_lo, const f32x8& b_hi) {
  store8(a, a_lo);
  store8(a + 8, a_hi);
  store8(b, b_lo);
  store8(b + 8, b_hi);
}
}  // namespace detail

// s1[c] = sum_r (x[r][c] - shift[c]), s2[c] = sum_r (x[r][c] - shift[c])^2 over `rows` rows of
// `channels` floats starting at x.
__attribute__((always_inline)) inline void shifted_sums_blocked(const float* __restrict x, int64_t rows,
                                                                int64_t channels, const float* __restrict shift,
                                                                float* __restrict s1, float* __restrict s2) {
  using detail::f32x8;
  for (int64_t c0 = 0; c0 < blocked_channels(channels); c0 += kBlockChannels) {
    const f32x8 ha = detail::load8(shift + c0), hb = detail::load8(shift + c0 + 8);
    f32x8 s1a = {}, s1b = {}, s2a = {}, s2b = {};
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * channels + c0;
      const f32x8 da = detail::load8(row) - ha, db = detail::load8(row + 8) - hb;
      s1a += da;
      s1b += db;
      s2a += da * da;
      s2b += db * db;
    }
    detail::store_block(s1 + c0, s1a, s1b, s2 + c0, s2a, s2b);
  }
}

// sgz[c] = sum_r g_z, sgzx[c] = sum_r g_z * x with g_z = g * act'(x * scale[c] + shift[c]),
// act identity or relu (RELU), over `rows` rows of `channels` floats.
template <bool RELU>
__attribute__((always_inline)) inline void grad_sums_blocked(const float* __restrict x, const float* __restrict g,
                                                             int64_t rows, int64_t channels,
                                                             const float* __restrict scale,
                                                             const float* __restrict shift, float* __restrict sgz,
                                                             float* __restrict sgzx) {
  using detail::f32x8;
  const f32x8 zero = {}, one = zero + 1.0f;
  for (int64_t c0 = 0; c0 < blocked_channels(channels); c0 += kBlockChannels) {
    const f32x8 sa = detail::load8(scale + c0), sb = detail::load8(scale + c0 + 8);
    const f32x8 ha = detail::load8(shift + c0), hb = detail::load8(shift + c0 + 8);
    f32x8 gza = {}, gzb = {}, gzxa = {}, gzxb = {};
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t at = r * channels + c0;
      const f32x8 xa = detail::load8(x + at), xb = detail::load8(x + at + 8);
      f32x8 ga = detail::load8(g + at), gb = detail::load8(g + at + 8);
      if constexpr (RELU) {  // g * (z > 0 ? 1 : 0), as times_act_derivative (NaN z: g * 0)
        ga = ga * (xa * sa + ha > zero ? one : zero);
        gb = gb * (xb * sb + hb > zero ? one : zero);
      }
      gza += ga;
      gzb += gb;
      gzxa += ga * xa;
      gzxb += gb * xb;
    }
    detail::store_block(sgz + c0, gza, gzb, sgzx + c0, gzxa, gzxb);
  }
}

#pragma GCC diagnostic pop

// A [C] vector (any floating dtype, any stride; undefined = `fill`) as doubles, read
// in place: no tensor copy or dtype conversion op on the per-BN path.
inline std::vector<double> as_doubles(const at::Tensor& t, int64_t channels, double fill) {
  std::vector<double> out(channels, fill);
  if (!t.defined()) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "as_doubles", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    const int64_t stride = t.stride(0);
    for (int64_t i = 0; i < channels; ++i) out[i] = static_cast<double>(p[i * stride]);
  });
  return out;
}

// `values` (double) as a new [C] tensor with `options` (its dtype): one allocation, no .to().
inline at::Tensor doubles_as_tensor(const double* values, int64_t channels, const at::TensorOptions& options) {
  at::Tensor out = at::empty({channels}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "doubles_as_tensor", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < channels; ++i) p[i] = static_cast<scalar_t>(values[i]);
  });
  return out;
}

// Splits `rows` into blocks for a per-channel reduction over channels-last rows:
// a size-determined number of blocks (<= 64) so partial results are reproducible.
inline int64_t rows_per_block(int64_t rows) { return std::max<int64_t>(64, (rows + 63) / 64); }

}  // namespace cpu
}  // namespace wrn_fast
