// CUDA kernels of the BN statistics family (schemas and CPU kernels: csrc/bn_stats.cpp).
//   channel_stats:        per-split Welford partials [P, C] (one kernel) + the Chan merge
//                         of merge_partial_stats (a second, tiny kernel)
//   merge_partial_stats:  the Chan merge kernel
//   bn_finalize, bn_update_running_stats: one small kernel each over [C]
//   bn_backward_apply:    one elementwise kernel
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "../bn_stats.h"
#include "cuda_utils.cuh"

namespace wrn_fast {
namespace cuda {
namespace {

// NCHW: block (channel c, split p) walks the flattened (n, s) range of its split.
template <typename scalar_t, typename acc_t>
__global__ void channel_partials_planes_kernel(const scalar_t* __restrict__ x,  // [outer, C, inner]
                                               int64_t channels, int64_t inner, int64_t per_channel,
                                               int64_t splits,
                                               acc_t* __restrict__ mean_p,    // [P, C]
                                               acc_t* __restrict__ m2_p,      // [P, C]
                                               acc_t* __restrict__ count_p,    // [P, C]
                                               acc_t* __restrict__ channel_shift) {  // [C]
  const int64_t c = blockIdx.x, p = blockIdx.y;
  const int64_t begin = per_channel * p / splits, end = per_channel * (p + 1) / splits;
  // Shift by the channel's first element: Welford then works on values of the
  // size of the spread, not of the mean (large mean, small variance stays exact).
  const acc_t shift = static_cast<acc_t>(x[c * inner]);
  acc_t count = 0, mean = 0, m2 = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const int64_t o = k / inner, i = k - o * inner;
    welford_add(count, mean, m2, static_cast<acc_t>(x[(o * channels + c) * inner + i]) - shift);
  }
  block_chan_merge(count, mean, m2);
  if (threadIdx.x == 0) {
    if (p == 0) channel_shift[c] = shift;
    mean_p[p * channels + c] = mean;
    m2_p[p * channels + c] = m2;
    count_p[p * channels + c] = count;
  }
}

// Channels-last: a warp reads 32 consecutive channels of one row (coalesced);
// the block's 8 warps take every 8th row of the split.
template <typename scalar_t, typename acc_t>
__global__ void channel_partials_rows_kernel(const scalar_t* __restrict__ x,  // [rows, C]
                                             int64_t channels, int64_t rows, int64_t splits,
                                             acc_t* __restrict__ mean_p, acc_t* __restrict__ m2_p,
                                             acc_t* __restrict__ count_p, acc_t* __restrict__ channel_shift) {
  __shared__ acc_t s_count[kRowLanes][kChannelTile], s_mean[kRowLanes][kChannelTile], s_m2[kRowLanes][kChannelTile];
  const int64_t c = int64_t(blockIdx.x) * kChannelTile + threadIdx.x, p = blockIdx.y;
  const int64_t begin = rows * p / splits, end = rows * (p + 1) / splits;
  acc_t count = 0, mean = 0, m2 = 0;
  if (c < channels) {
    const acc_t shift = static_cast<acc_t>(x[c]);  // the channel's first element, as in the planes kernel
    if (p == 0 && threadIdx.y == 0) channel_shift[c] = shift;
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes)
      welford_add(count, mean, m2, static_cast<acc_t>(x[r * channels + c]) - shift);
  }
  s_count[threadIdx.y][threadIdx.x] = count;
  s_mean[threadIdx.y][threadIdx.x] = mean;
  s_m2[threadIdx.y][threadIdx.x] = m2;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int lane = 1; lane < kRowLanes; ++lane)
      chan_merge(count, mean, m2, s_count[lane][threadIdx.x], s_mean[lane][threadIdx.x], s_m2[lane][threadIdx.x]);
    mean_p[p * channels + c] = mean;
    m2_p[p * channels + c] = m2;
    count_p[p * channels + c] = count;
  }
}

// Chan merge of [P, C] partials; partial means are relative to shift[c] (the
// channel_stats partials) or absolute (shift == nullptr). count_stride is 0 for per-tile counts [P] and C
// for per-(tile, channel) counts [P, C]. Block: 32 channels x 16 tile lanes.
constexpr int kTileLanes = 16;
template <typename acc_t>
__global__ void merge_partials_kernel(const acc_t* __restrict__ mean_p, const acc_t* __restrict__ m2_p,
                                      const acc_t* __restrict__ count_p, int64_t count_stride,
                                      const acc_t* __restrict__ shift, int64_t tiles,
                                      int64_t channels, acc_t* __restrict__ mean_out, acc_t* __restrict__ var_out) {
  __shared__ acc_t s_count[kTileLanes][kChannelTile], s_mean[kTileLanes][kChannelTile], s_m2[kTileLanes][kChannelTile];
  const int64_t c = int64_t(blockIdx.x) * kChannelTile + threadIdx.x;
  acc_t count = 0, mean = 0, m2 = 0;
  if (c < channels) {
#pragma unroll 4
    for (int64_t t = threadIdx.y; t < tiles; t += kTileLanes) {
      const int64_t count_index = count_stride == 0 ? t : t * count_stride + c;
      chan_merge(count, mean, m2, count_p[count_index], mean_p[t * channels + c], m2_p[t * channels + c]);
    }
  }
  s_count[threadIdx.y][threadIdx.x] = count;
  s_mean[threadIdx.y][threadIdx.x] = mean;
  s_m2[threadIdx.y][threadIdx.x] = m2;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int lane = 1; lane < kTileLanes; ++lane)
      chan_merge(count, mean, m2, s_count[lane][threadIdx.x], s_mean[lane][threadIdx.x], s_m2[lane][threadIdx.x]);
    const bool empty = count <= acc_t(0);
    mean_out[c] = empty ? std::numeric_limits<acc_t>::quiet_NaN() : (shift ? shift[c] + mean : mean);
    var_out[c] = empty ? std::numeric_limits<acc_t>::quiet_NaN() : m2 / count;
  }
}

template <typename acc_t>
void launch_merge(const at::Tensor& mean_p, const at::Tensor& m2_p, const at::Tensor& count_p, int64_t count_stride,
                  const acc_t* shift, at::Tensor& mean, at::Tensor& var) {
  const int64_t tiles = mean_p.size(0), channels = mean_p.size(1);
  if (channels == 0) return;
  const dim3 block(kChannelTile, kTileLanes);
  const dim3 grid(static_cast<unsigned>(ceil_div(channels, kChannelTile)));
  merge_partials_kernel<acc_t><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
      mean_p.const_data_ptr<acc_t>(), m2_p.const_data_ptr<acc_t>(), count_p.const_data_ptr<acc_t>(), count_stride,
      shift, tiles, channels, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> channel_stats_cuda(const at::Tensor& x_in) {
  check_rank_and_dtype(x_in, "channel_stats", "x", /*allow_double=*/true);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense_channel_tensor(x_in);
  const ChannelLayout layout = channel_layout(x);
  const int64_t channels = layout.channels;
  const auto options = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({channels}, options);
  at::Tensor var = at::empty({channels}, options);
  if (channels == 0) return {mean, var};
  if (layout.per_channel() == 0) return {mean.fill_(std::numeric_limits<double>::quiet_NaN()), var.fill_(std::numeric_limits<double>::quiet_NaN())};  // like var_mean of nothing
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor channel_shift = at::empty({channels}, options);  // partial means are relative to it
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (!layout.channels_last) {
      const int64_t splits = reduction_splits(channels, layout.per_channel(), 4 * kThreads);
      at::Tensor mean_p = at::empty({splits, channels}, options), m2_p = at::empty_like(mean_p),
                 count_p = at::empty_like(mean_p);
      const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(splits));
      channel_partials_planes_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), channels, layout.inner(), layout.per_channel(), splits,
          mean_p.mutable_data_ptr<acc_t>(), m2_p.mutable_data_ptr<acc_t>(), count_p.mutable_data_ptr<acc_t>(),
          channel_shift.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      launch_merge<acc_t>(mean_p, m2_p, count_p, channels, channel_shift.const_data_ptr<acc_t>(), mean, var);
    } else {
      const int64_t rows = layout.outer();
      const int64_t channel_tiles = ceil_div(channels, kChannelTile);
      const int64_t splits = reduction_splits(channel_tiles, rows, 8 * kRowLanes);
      at::Tensor mean_p = at::empty({splits, channels}, options), m2_p = at::empty_like(mean_p),
                 count_p = at::empty_like(mean_p);
      const dim3 grid(static_cast<unsigned>(channel_tiles), static_cast<unsigned>(splits));
      channel_partials_rows_kernel<scalar_t, acc_t><<<grid, dim3(kChannelTile, kRowLanes), 0, stream>>>(
          x.const_data_ptr<scalar_t>(), channels, rows, splits, mean_p.mutable_data_ptr<acc_t>(),
          m2_p.mutable_data_ptr<acc_t>(), count_p.mutable_data_ptr<acc_t>(), channel_shift.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      launch_merge<acc_t>(mean_p, m2_p, count_p, channels, channel_shift.const_data_ptr<acc_t>(), mean, var);
    }
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> merge_partial_stats_cuda(const at::Tensor& x, const at::Tensor& mean_p,
                                                            const at::Tensor& m2_p, const at::Tensor& count_p) {
  check_merge_partial_stats_args(x, mean_p, m2_p, count_p);
  const c10::cuda::CUDAGuard guard(mean_p.device());
  const int64_t channels = mean_p.size(1);
  at::Tensor mean = at::empty({channels}, mean_p.options());
  at::Tensor var = at::empty({channels}, mean_p.options());
  AT_DISPATCH_FLOATING_TYPES(mean_p.scalar_type(), "merge_partial_stats_cuda", [&] {
    launch_merge<scalar_t>(mean_p.contiguous(), m2_p.contiguous(), count_p.contiguous(), /*count_stride=*/0,
                           /*shift=*/nullptr, mean, var);
  });
  return {mean, var};
}

template <typename acc_t>
__global__ void bn_finalize_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ var,
                                   const acc_t* __restrict__ weight, const acc_t* __restrict__ bias, acc_t eps,
                                   int64_t channels, acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const acc_t invstd = acc_t(1) / sqrt(var[c] + eps);
  const acc_t s = (weight ? weight[c] : acc_t(1)) * invstd;
  scale[c] = s;
  shift[c] = (bias ? bias[c] : acc_t(0)) - mean[c] * s;
}

std::tuple<at::Tensor, at::Tensor> bn_finalize_cuda(const at::Tensor& mean, const at::Tensor& var,
                                                    const c10::optional<at::Tensor>& weight,
                                                    const c10::optional<at::Tensor>& bias, double eps) {
  const FinalizeArgs args = prepare_bn_finalize_args(mean, var, weight, bias, eps);
  const c10::cuda::CUDAGuard guard(mean.device());
  const int64_t channels = mean.size(0);
  at::Tensor scale = at::empty_like(args.mean), shift = at::empty_like(args.mean);
  if (channels == 0) return {scale, shift};
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "bn_finalize_cuda", [&] {
    bn_finalize_kernel<scalar_t><<<static_cast<unsigned>(ceil_div(channels, kThreads)), kThreads, 0,
                                   at::cuda::getCurrentCUDAStream()>>>(
        args.mean.const_data_ptr<scalar_t>(), args.var.const_data_ptr<scalar_t>(),
        args.weight.defined() ? args.weight.const_data_ptr<scalar_t>() : nullptr,
        args.bias.defined() ? args.bias.const_data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(eps), channels,
        scale.mutable_data_ptr<scalar_t>(), shift.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {scale, shift};
}

// One block: every thread reads num_batches_tracked before thread 0 bumps it, so
// the cumulative-average factor is computed on the device (no host sync).
template <typename buffer_t, typename stats_t>
__global__ void bn_update_running_stats_kernel(buffer_t* __restrict__ running_mean, int64_t rm_stride,
                                               buffer_t* __restrict__ running_var, int64_t rv_stride,
                                               int64_t* __restrict__ num_batches_tracked,
                                               const stats_t* __restrict__ mean, const stats_t* __restrict__ var,
                                               int64_t channels, int64_t count, bool has_momentum, double momentum) {
  const int64_t batches = *num_batches_tracked + 1;
  __syncthreads();
  if (threadIdx.x == 0) *num_batches_tracked = batches;
  if (count == 0) return;  // an empty batch only moves the counter, like nn.BatchNorm2d
  const double factor = has_momentum ? momentum : 1.0 / static_cast<double>(batches);
  const double bessel = static_cast<double>(count) / static_cast<double>(count - 1);
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    const double old_mean = static_cast<double>(running_mean[c * rm_stride]);
    const double old_var = static_cast<double>(running_var[c * rv_stride]);
    running_mean[c * rm_stride] = static_cast<buffer_t>(factor * static_cast<double>(mean[c]) + (1.0 - factor) * old_mean);
    running_var[c * rv_stride] =
        static_cast<buffer_t>(factor * (static_cast<double>(var[c]) * bessel) + (1.0 - factor) * old_var);
  }
}

void bn_update_running_stats_cuda(at::Tensor running_mean, at::Tensor running_var, at::Tensor num_batches_tracked,
                                  const at::Tensor& mean, const at::Tensor& var, int64_t count,
                                  c10::optional<double> momentum) {
  check_bn_update_running_stats_args(running_mean, running_var, num_batches_tracked, mean, var, count, momentum);
  const c10::cuda::CUDAGuard guard(mean.device());
  const at::Tensor mean_c = mean.contiguous(), var_c = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "bn_update_running_stats_cuda", [&] {
    using buffer_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "bn_update_running_stats_cuda_stats", [&] {
      bn_update_running_stats_kernel<buffer_t, scalar_t><<<1, 1024, 0, at::cuda::getCurrentCUDAStream()>>>(
          running_mean.mutable_data_ptr<buffer_t>(), running_mean.stride(0), running_var.mutable_data_ptr<buffer_t>(),
          running_var.stride(0), num_batches_tracked.mutable_data_ptr<int64_t>(), mean_c.const_data_ptr<scalar_t>(),
          var_c.const_data_ptr<scalar_t>(), mean.size(0), count, momentum.has_value(),
          momentum.has_value() ? *momentum : 0.0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

template <typename scalar_t, typename acc_t>
__global__ void bn_backward_apply_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                         const acc_t* __restrict__ a, const acc_t* __restrict__ b,
                                         const acc_t* __restrict__ c, int64_t numel, int64_t channels, int64_t inner,
                                         bool channels_last, scalar_t* __restrict__ out) {
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < numel; m += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ch = channel_of(m, channels, inner, channels_last);
    acc_t value = b[ch] * static_cast<acc_t>(x[m]) + c[ch];
    if (grad) value += a[ch] * static_cast<acc_t>(grad[m]);
    out[m] = static_cast<scalar_t>(value);
  }
}

at::Tensor bn_backward_apply_cuda(const c10::optional<at::Tensor>& grad, const at::Tensor& x_in, const at::Tensor& a,
                                  const at::Tensor& b, const at::Tensor& c) {
  const ApplyArgs args = prepare_bn_backward_apply_args(grad, x_in, a, b, c);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::empty_like(args.x);
  const int64_t numel = args.x.numel();
  if (numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_backward_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    bn_backward_apply_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreads, 0,
                                                at::cuda::getCurrentCUDAStream()>>>(
        args.grad.defined() ? args.grad.const_data_ptr<scalar_t>() : nullptr, args.x.const_data_ptr<scalar_t>(),
        args.a.const_data_ptr<acc_t>(), args.b.const_data_ptr<acc_t>(), args.c.const_data_ptr<acc_t>(), numel,
        args.layout.channels, args.layout.inner(), args.layout.channels_last, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(wrn_fast, CUDA, m) {
  m.impl("channel_stats", &cuda::channel_stats_cuda);
  m.impl("merge_partial_stats", &cuda::merge_partial_stats_cuda);
  m.impl("bn_finalize", &cuda::bn_finalize_cuda);
  m.impl("bn_update_running_stats", &cuda::bn_update_running_stats_cuda);
  m.impl("bn_backward_apply", &cuda::bn_backward_apply_cuda);
}

}  // namespace wrn_fast
