// batch_norm_act's backward on the CPU as one C++ routine: two passes over
// (x, grad_y) with the per-channel algebra between them, instead of the
// composite's kernel + ~13 [C]-vector tensor ops + a second kernel:
//   pass 1   per channel: sum g_z and sum g_z * x,
//            g_z = grad_y * keep/(1-p) * act'(x * scale + shift)        (z recomputed)
//   per channel, in double (csrc/bn_backward_formula.h): grad_weight, grad_bias and
//            the statistics term b[c], c[c]
//   pass 2   grad_x = g_z * scale + b * x + c                             (g_z recomputed)
// Sums: acc_t over sub-blocks of rows, double across them; blocks are sized by the
// shape only (never by the thread count), so results are reproducible.
#include "batch_norm_act_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "bn_backward_formula.h"
#include "cpu_act.h"
#include "cpu_loops.h"

namespace wrn_fast {
namespace cpu {
namespace {

constexpr int64_t kSubRows = 16;  // channels-last rows summed in acc_t before going to double

template <typename scalar_t>
struct Pointers {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict x;
  const scalar_t* __restrict g;
  const acc_t* __restrict scale;
  const acc_t* __restrict shift;
  acc_t slope;
  uint64_t seed;
  float p, inv_keep;
};

// Pass 1: sum_gz[c], sum_gzx[c] (double).
template <typename scalar_t, int ACT, bool DROP>
void reduce_pass(const Pointers<scalar_t>& P, const ChannelLayout& layout, double* sum_gz, double* sum_gzx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = layout.channels;
  if (!layout.channels_last) {
    const int64_t inner = layout.inner(), outer = layout.outer();
    at::parallel_for(0, channels, 1, isa_dispatched([&](int64_t begin, int64_t end) {
      float mult[kMaskChunk];
      for (int64_t ch = begin; ch < end; ++ch) {
        const acc_t s = P.scale[ch], h = P.shift[ch];
        double total_gz = 0, total_gzx = 0;
        for (int64_t o = 0; o < outer; ++o) {
          const int64_t base = (o * channels + ch) * inner;
          for (int64_t off = 0; off < inner; off += kMaskChunk) {
            const int64_t count = std::min(kMaskChunk, inner - off);
            if constexpr (DROP) dropout_multipliers(P.seed, base + off, 1, count, P.p, P.inv_keep, mult);
            const scalar_t* __restrict xr = P.x + base + off;
            const scalar_t* __restrict gr = P.g + base + off;
            acc_t sgz = 0, sgzx = 0;
#pragma omp simd reduction(+ : sgz, sgzx)
            for (int64_t j = 0; j < count; ++j) {
              const acc_t xv = static_cast<acc_t>(xr[j]);
              const acc_t gz = grad_z<ACT, DROP>(static_cast<acc_t>(gr[j]), xv, s, h, mult, j, P.slope);
              sgz += gz;
              sgzx += gz * xv;
            }
            total_gz += static_cast<double>(sgz);
            total_gzx += static_cast<double>(sgzx);
          }
        }
        sum_gz[ch] = total_gz;
        sum_gzx[ch] = total_gzx;
      }
    }));
    return;
  }
  const int64_t rows = layout.outer(), spatial = layout.spatial;
  const int64_t block_rows = rows_per_block(rows);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  std::vector<double> block_sums(blocks * 2 * channels, 0.0);
  at::parallel_for(0, blocks, 1, isa_dispatched([&](int64_t begin, int64_t end) {
    std::vector<acc_t> sub(2 * channels);
    acc_t* __restrict sgz = sub.data();
    acc_t* __restrict sgzx = sub.data() + channels;
    float mult[kMaskChunk];
    for (int64_t b = begin; b < end; ++b) {
      double* __restrict out_gz = block_sums.data() + b * 2 * channels;
      double* __restrict out_gzx = out_gz + channels;
      const int64_t row_end = std::min(rows, (b + 1) * block_rows);
      for (int64_t r0 = b * block_rows; r0 < row_end; r0 += kSubRows) {
        const int64_t r1 = std::min(row_end, r0 + kSubRows);
        std::fill(sub.begin(), sub.end(), acc_t(0));
        int64_t c_scalar = 0;  // fp32 identity / relu: the first channels register-blocked, the rest below
        if constexpr (std::is_same_v<scalar_t, float> && !DROP && (ACT == kIdentity || ACT == kRelu)) {
          grad_sums_blocked<ACT == kRelu>(P.x + r0 * channels, P.g + r0 * channels, r1 - r0, channels, P.scale,
                                          P.shift, sgz, sgzx);
          c_scalar = blocked_channels(channels);
        }
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* __restrict xr = P.x + r * channels;
          const scalar_t* __restrict gr = P.g + r * channels;
          if constexpr (!DROP) {
#pragma omp simd
            for (int64_t c = c_scalar; c < channels; ++c) {
              const acc_t xv = static_cast<acc_t>(xr[c]);
              const acc_t gz = grad_z<ACT, false>(static_cast<acc_t>(gr[c]), xv, P.scale[c], P.shift[c], nullptr, c,
                                                  P.slope);
              sgz[c] += gz;
              sgzx[c] += gz * xv;
            }
          } else {
            const int64_t n = r / spatial, sp = r - n * spatial;
            const int64_t logical_first = n * channels * spatial + sp;
            for (int64_t c0 = 0; c0 < channels; c0 += kMaskChunk) {
              const int64_t count = std::min(kMaskChunk, channels - c0);
              dropout_multipliers(P.seed, logical_first + c0 * spatial, spatial, count, P.p, P.inv_keep, mult);
              for (int64_t j = 0; j < count; ++j) {
                const int64_t c = c0 + j;
                const acc_t xv = static_cast<acc_t>(xr[c]);
                const acc_t gz = grad_z<ACT, true>(static_cast<acc_t>(gr[c]), xv, P.scale[c], P.shift[c], mult, j,
                                                   P.slope);
                sgz[c] += gz;
                sgzx[c] += gz * xv;
              }
            }
          }
        }
        for (int64_t c = 0; c < channels; ++c) {
          out_gz[c] += static_cast<double>(sgz[c]);
          out_gzx[c] += static_cast<double>(sgzx[c]);
        }
      }
    }
  }));
  std::fill(sum_gz, sum_gz + channels, 0.0);
  std::fill(sum_gzx, sum_gzx + channels, 0.0);
  for (int64_t b = 0; b < blocks; ++b) {  // block order: reproducible
    const double* in_gz = block_sums.data() + b * 2 * channels;
    for (int64_t c = 0; c < channels; ++c) {
      sum_gz[c] += in_gz[c];
      sum_gzx[c] += in_gz[channels + c];
    }
  }
}

// Pass 2: grad_x = g_z * scale + b * x + c.
template <typename scalar_t, int ACT, bool DROP>
void apply_pass(const Pointers<scalar_t>& P, const ChannelLayout& layout, const at::opmath_type<scalar_t>* coef_b,
                const at::opmath_type<scalar_t>* coef_c, scalar_t* grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = layout.channels;
  for_each_run(
      layout,
      [&](int64_t base, int64_t ch, int64_t length) {
        const acc_t s = P.scale[ch], h = P.shift[ch], bc = coef_b[ch], cc = coef_c[ch];
        float mult[kMaskChunk];
        for (int64_t off = 0; off < length; off += kMaskChunk) {
          const int64_t count = std::min(kMaskChunk, length - off);
          if constexpr (DROP) dropout_multipliers(P.seed, base + off, 1, count, P.p, P.inv_keep, mult);
          const scalar_t* __restrict xr = P.x + base + off;
          const scalar_t* __restrict gr = P.g + base + off;
          scalar_t* __restrict out = grad_x + base + off;
#pragma omp simd
          for (int64_t j = 0; j < count; ++j) {
            const acc_t xv = static_cast<acc_t>(xr[j]);
            const acc_t gz = grad_z<ACT, DROP>(static_cast<acc_t>(gr[j]), xv, s, h, mult, j, P.slope);
            out[j] = static_cast<scalar_t>(gz * s + bc * xv + cc);
          }
        }
      },
      [&](int64_t base, int64_t logical_first, int64_t logical_step) {
        const scalar_t* __restrict xr = P.x + base;
        const scalar_t* __restrict gr = P.g + base;
        scalar_t* __restrict out = grad_x + base;
        if constexpr (!DROP) {
#pragma omp simd
          for (int64_t c = 0; c < channels; ++c) {
            const acc_t xv = static_cast<acc_t>(xr[c]);
            const acc_t gz = grad_z<ACT, false>(static_cast<acc_t>(gr[c]), xv, P.scale[c], P.shift[c], nullptr, c,
                                                P.slope);
            out[c] = static_cast<scalar_t>(gz * P.scale[c] + coef_b[c] * xv + coef_c[c]);
          }
        } else {
          float mult[kMaskChunk];
          for (int64_t c0 = 0; c0 < channels; c0 += kMaskChunk) {
            const int64_t count = std::min(kMaskChunk, channels - c0);
            dropout_multipliers(P.seed, logical_first + c0 * logical_step, logical_step, count, P.p, P.inv_keep,
                                mult);
            for (int64_t j = 0; j < count; ++j) {
              const int64_t c = c0 + j;
              const acc_t xv = static_cast<acc_t>(xr[c]);
              const acc_t gz = grad_z<ACT, true>(static_cast<acc_t>(gr[c]), xv, P.scale[c], P.shift[c], mult, j,
                                                 P.slope);
              out[c] = static_cast<scalar_t>(gz * P.scale[c] + coef_b[c] * xv + coef_c[c]);
            }
          }
        }
      });
}

}  // namespace

composite::AffineGrads batch_norm_act_backward(const at::Tensor& grad_y, const at::Tensor& x_in,
                                               const at::Tensor& weight, const at::Tensor& bias,
                                               const at::Tensor& mean, const at::Tensor& var,
                                               const at::Tensor& scale, const at::Tensor& shift,
                                               const at::Tensor& grad_mean, const at::Tensor& grad_var, double eps,
                                               c10::string_view act, double slope, double p, const at::Tensor& seed,
                                               bool need_x, bool need_weight, bool need_bias) {
  const at::Tensor x = dense_channel_tensor(x_in);
  const ChannelLayout layout = channel_layout(x);
  const at::Tensor grad = with_strides_of(grad_y.scalar_type() == x.scalar_type() ? grad_y : grad_y.to(x.scalar_type()),
                                          x);
  const int64_t channels = layout.channels;
  const int act_id = act_code(std::string(act), "batch_norm_act");
  const bool use_dropout = p > 0.0;
  const uint64_t seed_value = use_dropout ? static_cast<uint64_t>(seed.item<int64_t>()) : 0;
  const at::Tensor scale_c = scale.contiguous(), shift_c = shift.contiguous();
  const double n = static_cast<double>(std::max<int64_t>(layout.per_channel(), 1));  // empty x: no 0/0

  std::vector<double> sum_gz(channels), sum_gzx(channels);
  at::Tensor grad_x = need_x ? at::empty_like(x) : at::Tensor();
  composite::AffineGrads out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Pointers<scalar_t> P{x.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                         scale_c.const_data_ptr<acc_t>(), shift_c.const_data_ptr<acc_t>(), static_cast<acc_t>(slope),
                         seed_value, static_cast<float>(p), inverse_keep_probability(p)};
    dispatch_act_dropout(act_id, use_dropout, [&](auto act_c, auto drop_c) {
      reduce_pass<scalar_t, decltype(act_c)::value, decltype(drop_c)::value>(P, layout, sum_gz.data(),
                                                                              sum_gzx.data());
    });
    // per channel, in double: the one formula (bn_backward_formula.h)
    const std::vector<double> m = as_doubles(mean, channels, 0), v = as_doubles(var, channels, 0),
                              w = as_doubles(weight, channels, 1), s = as_doubles(scale_c, channels, 0),
                              gm = as_doubles(grad_mean, channels, 0), gv = as_doubles(grad_var, channels, 0);
    std::vector<double> gw(channels);
    std::vector<acc_t> coef_b(channels), coef_c(channels);
    for (int64_t c = 0; c < channels; ++c) {
      const auto f = formula::bn_finalize_backward<double>(sum_gzx[c], sum_gz[c], m[c], v[c], w[c], s[c], eps);
      const auto k = formula::stats_backward<double, double>(f.grad_mean + gm[c], f.grad_var + gv[c], m[c], n);
      gw[c] = f.grad_weight;
      coef_b[c] = static_cast<acc_t>(k.b);
      coef_c[c] = static_cast<acc_t>(k.c);
    }
    if (need_x) {
      dispatch_act_dropout(act_id, use_dropout, [&](auto act_c, auto drop_c) {
        apply_pass<scalar_t, decltype(act_c)::value, decltype(drop_c)::value>(
            P, layout, coef_b.data(), coef_c.data(), grad_x.mutable_data_ptr<scalar_t>());
      });
    }
    if (weight.defined() && need_weight) out.grad_weight = doubles_as_tensor(gw.data(), channels, weight.options());
  });
  if (bias.defined() && need_bias) out.grad_bias = doubles_as_tensor(sum_gz.data(), channels, bias.options());
  out.grad_x = grad_x;
  return out;
}

}  // namespace cpu
}  // namespace wrn_fast
