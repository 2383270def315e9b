// BatchNorm statistics family: CPU kernels of
//   channel_stats, merge_partial_stats, bn_finalize, bn_update_running_stats,
//   bn_backward_apply.
// Schemas: csrc/schemas.cpp. CUDA kernels: csrc/cuda/bn_stats.cu. Fake kernels and autograd: wrn_fast/ops/ext.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "bn_stats.h"
#include "cpu_loops.h"

namespace wrn_fast {
namespace {

constexpr int64_t kPlaneChunk = 4096;  // two-pass chunk: stays in L1/L2 between the passes

// Mean and M2 of one contiguous run: the corrected two-pass algorithm in double
// (second pass around the first-pass mean plus the sum of the residuals), so a
// large mean with a small spread loses nothing to cancellation. `omp simd
// reduction` vectorizes the sums (a plain loop may not be reassociated); the order
// is fixed by the binary, so results are reproducible.
template <typename scalar_t>
void run_moments(const scalar_t* data, int64_t length, double& mean, double& m2) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < length; ++i) sum += static_cast<double>(data[i]);
  const double first_mean = sum / static_cast<double>(length);
  double sum_sq = 0, sum_res = 0;
#pragma omp simd reduction(+ : sum_sq, sum_res)
  for (int64_t i = 0; i < length; ++i) {
    const double d = static_cast<double>(data[i]) - first_mean;
    sum_sq += d * d;
    sum_res += d;
  }
  mean = first_mean + sum_res / static_cast<double>(length);
  m2 = std::max(0.0, sum_sq - sum_res * sum_res / static_cast<double>(length));
}

template <typename scalar_t>
void channel_stats_cpu_kernel(const at::Tensor& x, const ChannelLayout& layout, at::Tensor& mean_out,
                              at::Tensor& var_out) {
  using acc_t = at::opmath_type<scalar_t>;
  using out_t = acc_t;  // stats dtype: float, or double for double data
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  out_t* mean_ptr = mean_out.mutable_data_ptr<out_t>();
  out_t* var_ptr = var_out.mutable_data_ptr<out_t>();
  const int64_t channels = layout.channels;
  const int64_t n = layout.per_channel();
  const auto write = [&](int64_t c, double count, double mean, double m2) {
    const bool empty = count <= 0;
    mean_ptr[c] = empty ? std::numeric_limits<out_t>::quiet_NaN() : static_cast<out_t>(mean);
    var_ptr[c] = empty ? std::numeric_limits<out_t>::quiet_NaN() : static_cast<out_t>(m2 / count);
  };
  if (n == 0) {
    for (int64_t c = 0; c < channels; ++c) write(c, 0, 0, 0);
    return;
  }
  if (!layout.channels_last) {
    const int64_t inner = layout.inner(), outer = layout.outer();
    at::parallel_for(0, channels, 1, cpu::isa_dispatched([&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double count = 0, mean = 0, m2 = 0;
        for (int64_t o = 0; o < outer; ++o) {
          const scalar_t* plane = data + (o * channels + c) * inner;
          for (int64_t start = 0; start < inner; start += kPlaneChunk) {
            const int64_t length = std::min(kPlaneChunk, inner - start);
            double run_mean, run_m2;
            run_moments<scalar_t>(plane + start, length, run_mean, run_m2);
            cpu::chan_merge(count, mean, m2, static_cast<double>(length), run_mean, run_m2);
          }
        }
        write(c, count, mean, m2);
      }
    }));
    return;
  }
  // Channels-last rows of C, one pass: each block of rows (sized by the shape only)
  // sums d = x - k and d * d per channel, k being the block's first row (a shift that
  // keeps a large mean from cancelling); acc_t sums over sub-blocks of kSubRows rows,
  // double across them. The inner loop runs along the channels: it vectorises. The
  // blocks are Chan-merged in double, in block order.
  constexpr int64_t kSubRows = 32;
  const int64_t rows = layout.outer();
  const int64_t block_rows = cpu::rows_per_block(rows);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  std::vector<double> block_mean(blocks * channels), block_m2(blocks * channels), block_count(blocks);
  at::parallel_for(0, blocks, 1, cpu::isa_dispatched([&](int64_t begin, int64_t end) {
    std::vector<acc_t> shift_v(channels), s1_v(channels), s2_v(channels);
    std::vector<double> d1_v(channels), d2_v(channels);
    acc_t* __restrict shift = shift_v.data();
    acc_t* __restrict s1 = s1_v.data();
    acc_t* __restrict s2 = s2_v.data();
    double* __restrict d1 = d1_v.data();
    double* __restrict d2 = d2_v.data();
    for (int64_t b = begin; b < end; ++b) {
      const int64_t row_begin = b * block_rows, row_end = std::min(rows, row_begin + block_rows);
      const scalar_t* first = data + row_begin * channels;
      for (int64_t c = 0; c < channels; ++c) shift[c] = static_cast<acc_t>(first[c]);
      std::fill(d1, d1 + channels, 0.0);
      std::fill(d2, d2 + channels, 0.0);
      for (int64_t r0 = row_begin; r0 < row_end; r0 += kSubRows) {
        const int64_t r1 = std::min(row_end, r0 + kSubRows);
        std::fill(s1, s1 + channels, acc_t(0));
        std::fill(s2, s2 + channels, acc_t(0));
        int64_t c_scalar = 0;  // fp32: the first channels register-blocked, the rest below
        if constexpr (std::is_same_v<scalar_t, float>) {
          cpu::shifted_sums_blocked(data + r0 * channels, r1 - r0, channels, shift, s1, s2);
          c_scalar = cpu::blocked_channels(channels);
        }
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* __restrict row = data + r * channels;
#pragma omp simd
          for (int64_t c = c_scalar; c < channels; ++c) {
            const acc_t d = static_cast<acc_t>(row[c]) - shift[c];
            s1[c] += d;
            s2[c] += d * d;
          }
        }
        for (int64_t c = 0; c < channels; ++c) {
          d1[c] += static_cast<double>(s1[c]);
          d2[c] += static_cast<double>(s2[c]);
        }
      }
      const double length = static_cast<double>(row_end - row_begin);
      for (int64_t c = 0; c < channels; ++c) {
        block_mean[b * channels + c] = static_cast<double>(shift[c]) + d1[c] / length;
        block_m2[b * channels + c] = std::max(0.0, d2[c] - d1[c] * d1[c] / length);
      }
      block_count[b] = length;
    }
  }));
  // serial unless there is much to merge: a second parallel region costs more than it saves
  const int64_t merge_grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(blocks, 1));
  at::parallel_for(0, channels, merge_grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double count = 0, mean = 0, m2 = 0;
      for (int64_t b = 0; b < blocks; ++b)
        cpu::chan_merge(count, mean, m2, block_count[b], block_mean[b * channels + c], block_m2[b * channels + c]);
      write(c, count, mean, m2);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& x_in) {
  check_rank_and_dtype(x_in, "channel_stats", "x", /*allow_double=*/true);
  const at::Tensor x = dense_channel_tensor(x_in);
  const ChannelLayout layout = channel_layout(x);
  const auto options = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({layout.channels}, options);
  at::Tensor var = at::empty({layout.channels}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_stats_cpu", [&] {
    channel_stats_cpu_kernel<scalar_t>(x, layout, mean, var);
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> merge_partial_stats_cpu(const at::Tensor& x, const at::Tensor& mean_p,
                                                           const at::Tensor& m2_p, const at::Tensor& count_p) {
  check_merge_partial_stats_args(x, mean_p, m2_p, count_p);
  const at::Tensor mean_c = mean_p.contiguous(), m2_c = m2_p.contiguous(), count_c = count_p.contiguous();
  const int64_t tiles = mean_p.size(0), channels = mean_p.size(1);
  at::Tensor mean = at::empty({channels}, mean_p.options());
  at::Tensor var = at::empty({channels}, mean_p.options());
  AT_DISPATCH_FLOATING_TYPES(mean_p.scalar_type(), "merge_partial_stats_cpu", [&] {
    const scalar_t* tile_mean = mean_c.const_data_ptr<scalar_t>();
    const scalar_t* tile_m2 = m2_c.const_data_ptr<scalar_t>();
    const scalar_t* tile_count = count_c.const_data_ptr<scalar_t>();
    scalar_t* mean_out = mean.mutable_data_ptr<scalar_t>();
    scalar_t* var_out = var.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, channels, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double count = 0, m = 0, m2 = 0;
        for (int64_t t = 0; t < tiles; ++t)
          cpu::chan_merge(count, m, m2, tile_count[t], tile_mean[t * channels + c], tile_m2[t * channels + c]);
        const bool empty = count <= 0;
        mean_out[c] = empty ? std::numeric_limits<scalar_t>::quiet_NaN() : static_cast<scalar_t>(m);
        var_out[c] = empty ? std::numeric_limits<scalar_t>::quiet_NaN() : static_cast<scalar_t>(m2 / count);
      }
    });
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> bn_finalize_cpu(const at::Tensor& mean, const at::Tensor& var,
                                                   const c10::optional<at::Tensor>& weight,
                                                   const c10::optional<at::Tensor>& bias, double eps) {
  const FinalizeArgs args = prepare_bn_finalize_args(mean, var, weight, bias, eps);
  const int64_t channels = mean.size(0);
  at::Tensor scale = at::empty_like(args.mean);
  at::Tensor shift = at::empty_like(args.mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "bn_finalize_cpu", [&] {
    const scalar_t* m = args.mean.const_data_ptr<scalar_t>();
    const scalar_t* v = args.var.const_data_ptr<scalar_t>();
    const scalar_t* w = args.weight.defined() ? args.weight.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* b = args.bias.defined() ? args.bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* scale_out = scale.mutable_data_ptr<scalar_t>();
    scalar_t* shift_out = shift.mutable_data_ptr<scalar_t>();
    const scalar_t eps_t = static_cast<scalar_t>(eps);
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t invstd = scalar_t(1) / std::sqrt(v[c] + eps_t);
      const scalar_t s = (w ? w[c] : scalar_t(1)) * invstd;
      scale_out[c] = s;
      shift_out[c] = (b ? b[c] : scalar_t(0)) - m[c] * s;
    }
  });
  return {scale, shift};
}

void bn_update_running_stats_cpu(at::Tensor running_mean, at::Tensor running_var, at::Tensor num_batches_tracked,
                                 const at::Tensor& mean, const at::Tensor& var, int64_t count,
                                 c10::optional<double> momentum) {
  check_bn_update_running_stats_args(running_mean, running_var, num_batches_tracked, mean, var, count, momentum);
  int64_t* tracked = num_batches_tracked.mutable_data_ptr<int64_t>();
  const int64_t batches = *tracked + 1;
  *tracked = batches;
  if (count == 0) return;  // like nn.BatchNorm2d on an empty batch: only the counter moves
  const double factor = momentum.has_value() ? *momentum : 1.0 / static_cast<double>(batches);
  const double bessel = static_cast<double>(count) / static_cast<double>(count - 1);
  const std::vector<double> mean_d = cpu::as_doubles(mean, mean.size(0), 0.0);
  const std::vector<double> var_d = cpu::as_doubles(var, mean.size(0), 0.0);
  const double* m = mean_d.data();
  const double* v = var_d.data();
  // The buffers may be strided views; index them through their own strides.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "bn_update_running_stats", [&] {
    scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
    scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
    const int64_t rm_stride = running_mean.stride(0), rv_stride = running_var.stride(0);
    for (int64_t c = 0; c < mean.size(0); ++c) {
      // Same order of operations as ATen's CPU batch_norm update (in double).
      rm[c * rm_stride] = static_cast<scalar_t>(factor * m[c] + (1.0 - factor) * static_cast<double>(rm[c * rm_stride]));
      rv[c * rv_stride] =
          static_cast<scalar_t>(factor * (v[c] * bessel) + (1.0 - factor) * static_cast<double>(rv[c * rv_stride]));
    }
  });
}

at::Tensor bn_backward_apply_cpu(const c10::optional<at::Tensor>& grad, const at::Tensor& x_in, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& c) {
  const ApplyArgs args = prepare_bn_backward_apply_args(grad, x_in, a, b, c);
  const at::Tensor& x = args.x;
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_backward_apply_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = args.grad.defined() ? args.grad.const_data_ptr<scalar_t>() : nullptr;
    const acc_t* ap = args.a.const_data_ptr<acc_t>();
    const acc_t* bp = args.b.const_data_ptr<acc_t>();
    const acc_t* cp = args.c.const_data_ptr<acc_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t channels = args.layout.channels;
    cpu::for_each_run(
        args.layout,
        [&](int64_t base, int64_t ch, int64_t length) {
          const acc_t ac = ap[ch], bc = bp[ch], cc = cp[ch];
          if (gp) {
            for (int64_t i = base; i < base + length; ++i)
              op[i] = static_cast<scalar_t>(ac * static_cast<acc_t>(gp[i]) + bc * static_cast<acc_t>(xp[i]) + cc);
          } else {
            for (int64_t i = base; i < base + length; ++i)
              op[i] = static_cast<scalar_t>(bc * static_cast<acc_t>(xp[i]) + cc);
          }
        },
        [&](int64_t base, int64_t /*logical_first*/, int64_t /*logical_step*/) {
          const scalar_t* __restrict xr = xp + base;
          scalar_t* __restrict orow = op + base;
          if (gp) {
            const scalar_t* __restrict gr = gp + base;
            for (int64_t ch = 0; ch < channels; ++ch)
              orow[ch] = static_cast<scalar_t>(ap[ch] * static_cast<acc_t>(gr[ch]) +
                                               bp[ch] * static_cast<acc_t>(xr[ch]) + cp[ch]);
          } else {
            // acc_t(0) + b*x + c, like the grad-less plane path's (b*x + c) up to the sign of zero
            for (int64_t ch = 0; ch < channels; ++ch)
              orow[ch] = static_cast<scalar_t>(acc_t(0) + bp[ch] * static_cast<acc_t>(xr[ch]) + cp[ch]);
          }
        });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrn_fast, CPU, m) {
  m.impl("channel_stats", &channel_stats_cpu);
  m.impl("merge_partial_stats", &merge_partial_stats_cpu);
  m.impl("bn_finalize", &bn_finalize_cpu);
  m.impl("bn_update_running_stats", &bn_update_running_stats_cpu);
  m.impl("bn_backward_apply", &bn_backward_apply_cpu);
}

}  // namespace wrn_fast
