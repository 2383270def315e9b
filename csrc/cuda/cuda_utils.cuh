// Launch helpers and block-level Welford merges shared by the CUDA kernels.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../common.h"

namespace wrn_fast {
namespace cuda {

constexpr int kThreads = 256;       // 1-D kernels
constexpr int kChannelTile = 32;    // channels-last kernels: one warp spans 32 channels ...
constexpr int kRowLanes = 8;        // ... and 8 warps walk rows

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// Grid of a grid-stride elementwise kernel: enough blocks to fill the GPU, no more.
inline unsigned elementwise_blocks(int64_t numel) {
  const int64_t wanted = ceil_div(numel, kThreads);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t(sm_count()) * 32)));
}

// Number of splits P of a per-channel reduction run by `groups` blocks per split,
// so that about 4 blocks per SM are busy while each split keeps >= `min_work` items.
inline int64_t reduction_splits(int64_t groups, int64_t work, int64_t min_work) {
  const int64_t target = int64_t(sm_count()) * 4;
  const int64_t by_occupancy = ceil_div(target, std::max<int64_t>(groups, 1));
  const int64_t by_work = std::max<int64_t>(1, work / min_work);
  return std::max<int64_t>(1, std::min<int64_t>({by_occupancy, by_work, 65535}));
}

// Chan et al.'s merge of (count, mean, M2) summaries.
template <typename T>
__device__ __forceinline__ void chan_merge(T& count, T& mean, T& m2, T count_b, T mean_b, T m2_b) {
  if (count_b <= T(0)) return;
  const T total = count + count_b;
  const T delta = mean_b - mean;
  const T ratio = count_b / total;
  mean += delta * ratio;
  m2 += m2_b + delta * delta * count * ratio;
  count = total;
}

template <typename T>
__device__ __forceinline__ void welford_add(T& count, T& mean, T& m2, T value) {
  count += T(1);
  const T delta = value - mean;
  mean += delta / count;
  m2 += delta * (value - mean);
}

// Merges the summaries of all threads of a 1-D block; thread 0 gets the result.
template <typename T>
__device__ void block_chan_merge(T& count, T& mean, T& m2) {
  __shared__ T s_count[32], s_mean[32], s_m2[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) {
    const T c = __shfl_down_sync(0xffffffffu, count, offset);
    const T m = __shfl_down_sync(0xffffffffu, mean, offset);
    const T q = __shfl_down_sync(0xffffffffu, m2, offset);
    chan_merge(count, mean, m2, c, m, q);
  }
  if (lane == 0) {
    s_count[warp] = count;
    s_mean[warp] = mean;
    s_m2[warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) chan_merge(count, mean, m2, s_count[w], s_mean[w], s_m2[w]);
  }
}

template <typename T>
__device__ T block_sum(T value) {
  __shared__ T s_sum[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  if (lane == 0) s_sum[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) value += s_sum[w];
  return value;
}

// Logical NCHW index of the element at memory index `m`.
__device__ __forceinline__ int64_t logical_index(int64_t m, int64_t channels, int64_t spatial, bool channels_last) {
  if (!channels_last) return m;
  const int64_t row = m / channels, c = m - row * channels;
  const int64_t n = row / spatial, s = row - n * spatial;
  return (n * channels + c) * spatial + s;
}

__device__ __forceinline__ int64_t channel_of(int64_t m, int64_t channels, int64_t inner, bool channels_last) {
  return channels_last ? m % channels : (m / inner) % channels;
}

}  // namespace cuda
}  // namespace wrn_fast
