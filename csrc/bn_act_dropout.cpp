// bn_act_dropout family: schemas and CPU kernels of
//   bn_act_dropout_fwd:  y = dropout(act(x * scale[c] + shift[c]))
//   bn_act_dropout_bwd:  grad_x = g_z * scale, grad_scale = sum g_z * x, grad_shift = sum g_z
//                        with g_z = grad_y * keep/(1-p) * act'(z), z recomputed.
// The dropout mask is the contract's Philox mask (csrc/philox.h), a function of
// (seed, logical NCHW index) only. CUDA: csrc/cuda/bn_act_dropout.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "bn_act_dropout.h"
#include "cpu_loops.h"

namespace wrn_fast {
namespace {

at::Tensor bn_act_dropout_fwd_cpu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                                  c10::string_view act, double negative_slope, double p,
                                  const c10::optional<at::Tensor>& seed) {
  const BnActDropoutArgs args = prepare_bn_act_dropout_args("bn_act_dropout_fwd", x_in, scale, shift,
                                                            std::string(act), negative_slope, p, seed);
  const uint64_t seed_value = args.use_dropout ? static_cast<uint64_t>(seed->item<int64_t>()) : 0;
  at::Tensor y = at::empty_like(args.x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_act_dropout_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = args.x.const_data_ptr<scalar_t>();
    const acc_t* sc = args.scale.const_data_ptr<acc_t>();
    const acc_t* sh = args.shift.const_data_ptr<acc_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int act_id = args.act;
    const acc_t slope = static_cast<acc_t>(args.negative_slope);
    const int64_t channels = args.layout.channels;
    const auto value = [&](acc_t xv, int64_t ch, int64_t logical) {
      const acc_t a = act_forward<acc_t>(act_id, xv * sc[ch] + sh[ch], slope);
      return static_cast<scalar_t>(
          a * static_cast<acc_t>(dropout_multiplier(args.use_dropout, seed_value, logical, args.p, args.inv_keep)));
    };
    cpu::for_each_run(
        args.layout,
        [&](int64_t base, int64_t ch, int64_t length) {
          for (int64_t i = base; i < base + length; ++i) yp[i] = value(static_cast<acc_t>(xp[i]), ch, i);
        },
        [&](int64_t base, int64_t logical_first, int64_t logical_step) {
          for (int64_t ch = 0; ch < channels; ++ch)
            yp[base + ch] = value(static_cast<acc_t>(xp[base + ch]), ch, logical_first + ch * logical_step);
        });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_dropout_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
    c10::string_view act, double negative_slope, double p, const c10::optional<at::Tensor>& seed) {
  const char* op = "bn_act_dropout_bwd";
  BnActDropoutArgs args =
      prepare_bn_act_dropout_args(op, x_in, scale, shift, std::string(act), negative_slope, p, seed);
  check_same_shape(grad_y, x_in, op, "grad_y", "x");
  TORCH_CHECK(grad_y.scalar_type() == x_in.scalar_type(), "wrn_fast::", op, ": grad_y must have x's dtype ",
              x_in.scalar_type(), ", got ", grad_y.scalar_type());
  const at::Tensor grad = with_strides_of(grad_y, args.x);
  const uint64_t seed_value = args.use_dropout ? static_cast<uint64_t>(seed->item<int64_t>()) : 0;
  const ChannelLayout& layout = args.layout;
  const int64_t channels = layout.channels;
  at::Tensor grad_x = at::empty_like(args.x);
  at::Tensor grad_scale = at::empty({channels}, args.scale.options());
  at::Tensor grad_shift = at::empty({channels}, args.scale.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_act_dropout_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = args.x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const acc_t* sc = args.scale.const_data_ptr<acc_t>();
    const acc_t* sh = args.shift.const_data_ptr<acc_t>();
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    acc_t* g_scale = grad_scale.mutable_data_ptr<acc_t>();
    acc_t* g_shift = grad_shift.mutable_data_ptr<acc_t>();
    const int act_id = args.act;
    const acc_t slope = static_cast<acc_t>(args.negative_slope);
    // g_z of one element; writes grad_x and returns g_z for the reductions.
    const auto element = [&](int64_t i, int64_t ch, int64_t logical) {
      const acc_t xv = static_cast<acc_t>(xp[i]);
      const acc_t z = xv * sc[ch] + sh[ch];
      const acc_t g_z = static_cast<acc_t>(gp[i]) *
                        static_cast<acc_t>(dropout_multiplier(args.use_dropout, seed_value, logical, args.p,
                                                              args.inv_keep)) *
                        act_derivative<acc_t>(act_id, z, slope);
      gx[i] = static_cast<scalar_t>(g_z * sc[ch]);
      return g_z;
    };
    if (!layout.channels_last) {
      const int64_t inner = layout.inner(), outer = layout.outer();
      at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t ch = begin; ch < end; ++ch) {
          double sum_gx = 0, sum_g = 0;  // double across planes, acc_t within one
          for (int64_t o = 0; o < outer; ++o) {
            const int64_t base = (o * channels + ch) * inner;
            acc_t plane_gx = 0, plane_g = 0;
            for (int64_t i = base; i < base + inner; ++i) {
              const acc_t g_z = element(i, ch, i);
              plane_gx += g_z * static_cast<acc_t>(xp[i]);
              plane_g += g_z;
            }
            sum_gx += plane_gx;
            sum_g += plane_g;
          }
          g_scale[ch] = static_cast<acc_t>(sum_gx);
          g_shift[ch] = static_cast<acc_t>(sum_g);
        }
      });
      return;
    }
    const int64_t rows = layout.outer(), spatial = layout.spatial;
    const int64_t block_rows = cpu::rows_per_block(rows);
    const int64_t blocks = (rows + block_rows - 1) / block_rows;
    std::vector<double> block_gx(blocks * channels, 0.0), block_g(blocks * channels, 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double* acc_gx = block_gx.data() + b * channels;
        double* acc_g = block_g.data() + b * channels;
        for (int64_t r = b * block_rows; r < std::min(rows, (b + 1) * block_rows); ++r) {
          const int64_t n = r / spatial, s = r - n * spatial;
          const int64_t logical_first = n * channels * spatial + s;
          for (int64_t ch = 0; ch < channels; ++ch) {
            const int64_t i = r * channels + ch;
            const acc_t g_z = element(i, ch, logical_first + ch * spatial);
            acc_gx[ch] += static_cast<double>(g_z * static_cast<acc_t>(xp[i]));
            acc_g[ch] += static_cast<double>(g_z);
          }
        }
      }
    });
    for (int64_t ch = 0; ch < channels; ++ch) {
      double sum_gx = 0, sum_g = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        sum_gx += block_gx[b * channels + ch];
        sum_g += block_g[b * channels + ch];
      }
      g_scale[ch] = static_cast<acc_t>(sum_gx);
      g_shift[ch] = static_cast<acc_t>(sum_g);
    }
  });
  return {grad_x, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(wrn_fast, m) {
  m.def(
      "bn_act_dropout_fwd(Tensor x, Tensor scale, Tensor shift, str act, float negative_slope, float p, "
      "Tensor? seed) -> Tensor");
  m.def(
      "bn_act_dropout_bwd(Tensor grad_y, Tensor x, Tensor scale, Tensor shift, str act, float negative_slope, "
      "float p, Tensor? seed) -> (Tensor grad_x, Tensor grad_scale, Tensor grad_shift)");
}

TORCH_LIBRARY_IMPL(wrn_fast, CPU, m) {
  m.impl("bn_act_dropout_fwd", &bn_act_dropout_fwd_cpu);
  m.impl("bn_act_dropout_bwd", &bn_act_dropout_bwd_cpu);
}

}  // namespace wrn_fast
