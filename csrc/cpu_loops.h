// CPU loop skeletons over a ChannelLayout, shared by the CPU kernels. Work is
// split by sizes only (never by thread count) so results are reproducible.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"

namespace wrn_fast {
namespace cpu {

constexpr int64_t kGrainElements = 32768;  // elements per parallel task, roughly

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
    at::parallel_for(0, layout.outer() * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        // memory index == logical index for NCHW
        plane_body(plane * inner, plane % channels, inner);
      }
    });
  } else {
    const int64_t spatial = layout.spatial;
    const int64_t grain = std::max<int64_t>(1, kGrainElements / channels);
    at::parallel_for(0, layout.outer(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / spatial, s = row - n * spatial;
        // logical index of channel c in this row: (n*C + c)*S + s = first + c*S
        row_body(row * channels, n * channels * spatial + s, spatial);
      }
    });
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

// Splits `rows` into blocks for a per-channel reduction over channels-last rows:
// a size-determined number of blocks (<= 64) so partial results are reproducible.
inline int64_t rows_per_block(int64_t rows) { return std::max<int64_t>(64, (rows + 63) / 64); }

}  // namespace cpu
}  // namespace wrn_fast
