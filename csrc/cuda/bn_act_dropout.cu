// CUDA kernels of bn_act_dropout_fwd / _bwd (schemas and CPU kernels: csrc/bn_act_dropout.cpp).
//   fwd: one grid-stride elementwise kernel.
//   bwd: one kernel writes grad_x and per-split channel sums [P, C] (no atomics),
//        a tiny second kernel sums the P splits into grad_scale / grad_shift.
// The seed is read on the device (no host sync; CUDA-graph safe).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../bn_act_dropout.h"
#include "cuda_utils.cuh"

namespace wrn_fast {
namespace cuda {
namespace {

struct DropoutParams {
  const int64_t* seed;  // device pointer, nullptr when p == 0
  float p;
  float inv_keep;
};

__device__ __forceinline__ float dropout_factor(const DropoutParams& dropout, uint64_t seed, int64_t logical) {
  return dropout_multiplier(dropout.seed != nullptr, seed, logical, dropout.p, dropout.inv_keep);
}

__device__ __forceinline__ uint64_t load_seed(const DropoutParams& dropout) {
  return dropout.seed ? static_cast<uint64_t>(*dropout.seed) : 0;
}

template <typename scalar_t, typename acc_t>
__global__ void bn_act_dropout_fwd_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ scale,
                                          const acc_t* __restrict__ shift, int64_t numel, int64_t channels,
                                          int64_t spatial, bool channels_last, int act, acc_t negative_slope,
                                          DropoutParams dropout, scalar_t* __restrict__ y) {
  const uint64_t seed = load_seed(dropout);
  const int64_t inner = channels_last ? 1 : spatial;
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < numel; m += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ch = channel_of(m, channels, inner, channels_last);
    const acc_t a = act_forward<acc_t>(act, static_cast<acc_t>(x[m]) * scale[ch] + shift[ch], negative_slope);
    const float keep = dropout_factor(dropout, seed, logical_index(m, channels, spatial, channels_last));
    y[m] = static_cast<scalar_t>(a * static_cast<acc_t>(keep));
  }
}

// g_z of one element, writing grad_x; shared by both reduction layouts.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t backward_element(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                                                  acc_t scale, acc_t shift, int64_t m, int64_t logical, int act,
                                                  acc_t negative_slope, const DropoutParams& dropout, uint64_t seed,
                                                  scalar_t* __restrict__ grad_x, acc_t& x_value) {
  x_value = static_cast<acc_t>(x[m]);
  const acc_t z = x_value * scale + shift;
  const acc_t g_z = static_cast<acc_t>(grad_y[m]) * static_cast<acc_t>(dropout_factor(dropout, seed, logical)) *
                    act_derivative<acc_t>(act, z, negative_slope);
  grad_x[m] = static_cast<scalar_t>(g_z * scale);
  return g_z;
}

template <typename scalar_t, typename acc_t>
__global__ void bn_act_dropout_bwd_planes_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                                                 const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                                                 int64_t channels, int64_t spatial, int64_t per_channel,
                                                 int64_t splits, int act, acc_t negative_slope, DropoutParams dropout,
                                                 scalar_t* __restrict__ grad_x,
                                                 acc_t* __restrict__ sum_gx_p,   // [P, C]
                                                 acc_t* __restrict__ sum_g_p) {  // [P, C]
  const uint64_t seed = load_seed(dropout);
  const int64_t c = blockIdx.x, p = blockIdx.y;
  const int64_t begin = per_channel * p / splits, end = per_channel * (p + 1) / splits;
  const acc_t sc = scale[c], sh = shift[c];
  acc_t sum_gx = 0, sum_g = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const int64_t n = k / spatial, s = k - n * spatial;
    const int64_t m = (n * channels + c) * spatial + s;  // NCHW: memory index == logical index
    acc_t x_value;
    const acc_t g_z = backward_element(grad_y, x, sc, sh, m, m, act, negative_slope, dropout, seed, grad_x, x_value);
    sum_gx += g_z * x_value;
    sum_g += g_z;
  }
  sum_gx = block_sum(sum_gx);
  __syncthreads();  // block_sum's shared buffer is reused
  sum_g = block_sum(sum_g);
  if (threadIdx.x == 0) {
    sum_gx_p[p * channels + c] = sum_gx;
    sum_g_p[p * channels + c] = sum_g;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void bn_act_dropout_bwd_rows_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                                               const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                                               int64_t channels, int64_t spatial, int64_t rows, int64_t splits,
                                               int act, acc_t negative_slope, DropoutParams dropout,
                                               scalar_t* __restrict__ grad_x, acc_t* __restrict__ sum_gx_p,
                                               acc_t* __restrict__ sum_g_p) {
  __shared__ acc_t s_gx[kRowLanes][kChannelTile], s_g[kRowLanes][kChannelTile];
  const uint64_t seed = load_seed(dropout);
  const int64_t c = int64_t(blockIdx.x) * kChannelTile + threadIdx.x, p = blockIdx.y;
  const int64_t begin = rows * p / splits, end = rows * (p + 1) / splits;
  acc_t sum_gx = 0, sum_g = 0;
  if (c < channels) {
    const acc_t sc = scale[c], sh = shift[c];
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) {
      const int64_t n = r / spatial, s = r - n * spatial;
      acc_t x_value;
      const acc_t g_z = backward_element(grad_y, x, sc, sh, r * channels + c, (n * channels + c) * spatial + s, act,
                                         negative_slope, dropout, seed, grad_x, x_value);
      sum_gx += g_z * x_value;
      sum_g += g_z;
    }
  }
  s_gx[threadIdx.y][threadIdx.x] = sum_gx;
  s_g[threadIdx.y][threadIdx.x] = sum_g;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int lane = 1; lane < kRowLanes; ++lane) {
      sum_gx += s_gx[lane][threadIdx.x];
      sum_g += s_g[lane][threadIdx.x];
    }
    sum_gx_p[p * channels + c] = sum_gx;
    sum_g_p[p * channels + c] = sum_g;
  }
}

// Sums [P, C] partials over P. Block: 32 channels x 16 split lanes.
constexpr int kSplitLanes = 16;
template <typename acc_t>
__global__ void sum_splits_kernel(const acc_t* __restrict__ sum_gx_p, const acc_t* __restrict__ sum_g_p,
                                  int64_t splits, int64_t channels, acc_t* __restrict__ grad_scale,
                                  acc_t* __restrict__ grad_shift) {
  __shared__ acc_t s_gx[kSplitLanes][kChannelTile], s_g[kSplitLanes][kChannelTile];
  const int64_t c = int64_t(blockIdx.x) * kChannelTile + threadIdx.x;
  acc_t sum_gx = 0, sum_g = 0;
  if (c < channels)
    for (int64_t p = threadIdx.y; p < splits; p += kSplitLanes) {
      sum_gx += sum_gx_p[p * channels + c];
      sum_g += sum_g_p[p * channels + c];
    }
  s_gx[threadIdx.y][threadIdx.x] = sum_gx;
  s_g[threadIdx.y][threadIdx.x] = sum_g;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int lane = 1; lane < kSplitLanes; ++lane) {
      sum_gx += s_gx[lane][threadIdx.x];
      sum_g += s_g[lane][threadIdx.x];
    }
    grad_scale[c] = sum_gx;
    grad_shift[c] = sum_g;
  }
}

DropoutParams dropout_params(const BnActDropoutArgs& args, const c10::optional<at::Tensor>& seed) {
  return {args.use_dropout ? seed->const_data_ptr<int64_t>() : nullptr, args.p, args.inv_keep};
}

at::Tensor bn_act_dropout_fwd_cuda(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                                   c10::string_view act, double negative_slope, double p,
                                   const c10::optional<at::Tensor>& seed) {
  const BnActDropoutArgs args = prepare_bn_act_dropout_args("bn_act_dropout_fwd", x_in, scale, shift,
                                                            std::string(act), negative_slope, p, seed);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor y = at::empty_like(args.x);
  const int64_t numel = args.x.numel();
  if (numel == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_act_dropout_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    bn_act_dropout_fwd_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreads, 0,
                                                 at::cuda::getCurrentCUDAStream()>>>(
        args.x.const_data_ptr<scalar_t>(), args.scale.const_data_ptr<acc_t>(), args.shift.const_data_ptr<acc_t>(),
        numel, args.layout.channels, args.layout.spatial, args.layout.channels_last, args.act,
        static_cast<acc_t>(args.negative_slope), dropout_params(args, seed), y.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_dropout_bwd_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
    c10::string_view act, double negative_slope, double p, const c10::optional<at::Tensor>& seed) {
  const char* op = "bn_act_dropout_bwd";
  const BnActDropoutArgs args =
      prepare_bn_act_dropout_args(op, x_in, scale, shift, std::string(act), negative_slope, p, seed);
  check_same_shape(grad_y, x_in, op, "grad_y", "x");
  TORCH_CHECK(grad_y.scalar_type() == x_in.scalar_type(), "wrn_fast::", op, ": grad_y must have x's dtype ",
              x_in.scalar_type(), ", got ", grad_y.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad = with_strides_of(grad_y, args.x);
  const ChannelLayout& layout = args.layout;
  const int64_t channels = layout.channels;
  at::Tensor grad_x = at::empty_like(args.x);
  at::Tensor grad_scale = at::zeros({channels}, args.scale.options());
  at::Tensor grad_shift = at::zeros({channels}, args.scale.options());
  if (channels == 0 || layout.per_channel() == 0) return {grad_x, grad_scale, grad_shift};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const DropoutParams dropout = dropout_params(args, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_act_dropout_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t slope = static_cast<acc_t>(args.negative_slope);
    int64_t splits;
    at::Tensor sum_gx_p, sum_g_p;
    if (!layout.channels_last) {
      splits = reduction_splits(channels, layout.per_channel(), 4 * kThreads);
      sum_gx_p = at::empty({splits, channels}, args.scale.options());
      sum_g_p = at::empty_like(sum_gx_p);
      const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(splits));
      bn_act_dropout_bwd_planes_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), args.x.const_data_ptr<scalar_t>(), args.scale.const_data_ptr<acc_t>(),
          args.shift.const_data_ptr<acc_t>(), channels, layout.spatial, layout.per_channel(), splits, args.act, slope,
          dropout, grad_x.mutable_data_ptr<scalar_t>(), sum_gx_p.mutable_data_ptr<acc_t>(),
          sum_g_p.mutable_data_ptr<acc_t>());
    } else {
      const int64_t rows = layout.outer(), channel_tiles = ceil_div(channels, kChannelTile);
      splits = reduction_splits(channel_tiles, rows, 8 * kRowLanes);
      sum_gx_p = at::empty({splits, channels}, args.scale.options());
      sum_g_p = at::empty_like(sum_gx_p);
      const dim3 grid(static_cast<unsigned>(channel_tiles), static_cast<unsigned>(splits));
      bn_act_dropout_bwd_rows_kernel<scalar_t, acc_t><<<grid, dim3(kChannelTile, kRowLanes), 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), args.x.const_data_ptr<scalar_t>(), args.scale.const_data_ptr<acc_t>(),
          args.shift.const_data_ptr<acc_t>(), channels, layout.spatial, rows, splits, args.act, slope, dropout,
          grad_x.mutable_data_ptr<scalar_t>(), sum_gx_p.mutable_data_ptr<acc_t>(), sum_g_p.mutable_data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_splits_kernel<acc_t><<<static_cast<unsigned>(ceil_div(channels, kChannelTile)),
                               dim3(kChannelTile, kSplitLanes), 0, stream>>>(
        sum_gx_p.const_data_ptr<acc_t>(), sum_g_p.const_data_ptr<acc_t>(), splits, channels,
        grad_scale.mutable_data_ptr<acc_t>(), grad_shift.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_scale, grad_shift};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(wrn_fast, CUDA, m) {
  m.impl("bn_act_dropout_fwd", &cuda::bn_act_dropout_fwd_cuda);
  m.impl("bn_act_dropout_bwd", &cuda::bn_act_dropout_bwd_cuda);
}

}  // namespace wrn_fast
