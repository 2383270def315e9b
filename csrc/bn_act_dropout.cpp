// CPU kernels of the op bn_act_dropout (schemas: csrc/schemas.cpp)
//   bn_act_dropout:           y = dropout(act(x * scale[c] + shift[c]))
//   bn_act_dropout_backward:  grad_x = g_z * scale, grad_scale = sum g_z * x, grad_shift = sum g_z
//                             with g_z = grad_y * keep/(1-p) * act'(z), z recomputed.
// The dropout mask is the contract's Philox mask (csrc/philox.h), a function of
// (seed, logical NCHW index) only, bit-identical to the Triton kernels' tl.rand mask.
// CUDA kernels: the Triton ones (kernels/bn_act_dropout.py), registered for this op
// by wrn_fast/ops/bn_act.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bn_act_dropout.h"
#include "cpu_act.h"
#include "cpu_loops.h"

namespace wrn_fast {
namespace {

using cpu::act_fwd;
using cpu::grad_z;

constexpr int64_t kChunk = cpu::kMaskChunk;  // elements per dropout-mask chunk
constexpr int64_t kSubRows = 16;                // channels-last rows summed in acc_t before going to double

// y = dropout(act(x * scale + shift)), instantiated per (activation, dropout) so
// the inner loops are branch-free and vectorize.
template <typename scalar_t, int ACT, bool DROP>
void bn_act_dropout_fwd_kernel(const BnActDropoutArgs& args, uint64_t seed, at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict xp = args.x.const_data_ptr<scalar_t>();
  const acc_t* __restrict sc = args.scale.const_data_ptr<acc_t>();
  const acc_t* __restrict sh = args.shift.const_data_ptr<acc_t>();
  scalar_t* __restrict yp = y.mutable_data_ptr<scalar_t>();
  const acc_t slope = static_cast<acc_t>(args.negative_slope);
  const float p = args.p, inv_keep = args.inv_keep;
  const int64_t channels = args.layout.channels;
  cpu::for_each_run(
      args.layout,
      [&](int64_t base, int64_t ch, int64_t length) {
        const acc_t s = sc[ch], h = sh[ch];
        const scalar_t* __restrict xr = xp + base;
        scalar_t* __restrict yr = yp + base;
        if constexpr (!DROP) {
          for (int64_t i = 0; i < length; ++i)
            yr[i] = static_cast<scalar_t>(act_fwd<ACT, acc_t>(static_cast<acc_t>(xr[i]) * s + h, slope));
        } else {
          float mult[kChunk];
          for (int64_t off = 0; off < length; off += kChunk) {
            const int64_t count = std::min(kChunk, length - off);
            cpu::dropout_multipliers(seed, base + off, 1, count, p, inv_keep, mult);
            for (int64_t j = 0; j < count; ++j)
              yr[off + j] = static_cast<scalar_t>(
                  act_fwd<ACT, acc_t>(static_cast<acc_t>(xr[off + j]) * s + h, slope) *
                  static_cast<acc_t>(mult[j]));
          }
        }
      },
      [&](int64_t base, int64_t logical_first, int64_t logical_step) {
        const scalar_t* __restrict xr = xp + base;
        scalar_t* __restrict yr = yp + base;
        if constexpr (!DROP) {
          for (int64_t c = 0; c < channels; ++c)
            yr[c] = static_cast<scalar_t>(act_fwd<ACT, acc_t>(static_cast<acc_t>(xr[c]) * sc[c] + sh[c], slope));
        } else {
          float mult[kChunk];
          for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
            const int64_t count = std::min(kChunk, channels - c0);
            cpu::dropout_multipliers(seed, logical_first + c0 * logical_step, logical_step, count, p, inv_keep, mult);
            for (int64_t j = 0; j < count; ++j) {
              const int64_t c = c0 + j;
              yr[c] = static_cast<scalar_t>(
                  act_fwd<ACT, acc_t>(static_cast<acc_t>(xr[c]) * sc[c] + sh[c], slope) *
                  static_cast<acc_t>(mult[j]));
            }
          }
        }
      });
}

at::Tensor bn_act_dropout_fwd_cpu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                                  c10::string_view act, double negative_slope, double p,
                                  const c10::optional<at::Tensor>& seed) {
  const BnActDropoutArgs args = prepare_bn_act_dropout_args("bn_act_dropout", x_in, scale, shift,
                                                            std::string(act), negative_slope, p, seed);
  const uint64_t seed_value = args.use_dropout ? static_cast<uint64_t>(seed->item<int64_t>()) : 0;
  at::Tensor y = at::empty_like(args.x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_act_dropout_fwd_cpu", [&] {
    cpu::dispatch_act_dropout(args.act, args.use_dropout, [&](auto act_c, auto drop_c) {
      bn_act_dropout_fwd_kernel<scalar_t, decltype(act_c)::value, decltype(drop_c)::value>(args, seed_value, y);
    });
  });
  return y;
}

// Channels-last: g_z = grad_y * keep/(1-p) * act'(z) for `count` consecutive channels
// of one row (coefficients per element); writes grad_x = g_z * scale and g_z, x (acc_t).
template <typename scalar_t, typename acc_t, int ACT, bool DROP>
inline void bwd_chunk(const scalar_t* __restrict xr, const scalar_t* __restrict gr, const acc_t* __restrict sc,
                      const acc_t* __restrict sh, const float* __restrict mult, acc_t slope, int64_t count,
                      scalar_t* __restrict gxr, acc_t* __restrict gz_out, acc_t* __restrict x_out) {
  for (int64_t j = 0; j < count; ++j) {
    const acc_t xv = static_cast<acc_t>(xr[j]);
    const acc_t g_z = grad_z<ACT, DROP>(static_cast<acc_t>(gr[j]), xv, sc[j], sh[j], mult, j, slope);
    gxr[j] = static_cast<scalar_t>(g_z * sc[j]);
    gz_out[j] = g_z;
    x_out[j] = xv;
  }
}

// One NCHW run of `count` elements of one channel: writes grad_x = g_z * s and adds
// g_z * x and g_z to the run's sums. `omp simd reduction` lets the compiler vectorize
// the two float sums (a plain loop may not be reassociated without -ffast-math); the
// order is fixed by the binary, so results are reproducible.
template <typename scalar_t, typename acc_t, int ACT, bool DROP>
inline void bwd_run(const scalar_t* __restrict xr, const scalar_t* __restrict gr, acc_t s, acc_t h,
                    const float* __restrict mult, acc_t slope, int64_t count, scalar_t* __restrict gxr,
                    acc_t& sum_gx, acc_t& sum_g) {
  acc_t sgx = 0, sg = 0;
#pragma omp simd reduction(+ : sgx, sg)
  for (int64_t j = 0; j < count; ++j) {
    const acc_t xv = static_cast<acc_t>(xr[j]);
    const acc_t g_z = grad_z<ACT, DROP>(static_cast<acc_t>(gr[j]), xv, s, h, mult, j, slope);
    gxr[j] = static_cast<scalar_t>(g_z * s);
    sgx += g_z * xv;
    sg += g_z;
  }
  sum_gx += sgx;
  sum_g += sg;
}

template <typename scalar_t, int ACT, bool DROP>
void bn_act_dropout_bwd_kernel(const BnActDropoutArgs& args, const at::Tensor& grad, uint64_t seed,
                               at::Tensor& grad_x, at::Tensor& grad_scale, at::Tensor& grad_shift) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& layout = args.layout;
  const int64_t channels = layout.channels;
  const scalar_t* __restrict xp = args.x.const_data_ptr<scalar_t>();
  const scalar_t* __restrict gp = grad.const_data_ptr<scalar_t>();
  const acc_t* __restrict sc = args.scale.const_data_ptr<acc_t>();
  const acc_t* __restrict sh = args.shift.const_data_ptr<acc_t>();
  scalar_t* __restrict gx = grad_x.mutable_data_ptr<scalar_t>();
  acc_t* g_scale = grad_scale.mutable_data_ptr<acc_t>();
  acc_t* g_shift = grad_shift.mutable_data_ptr<acc_t>();
  const acc_t slope = static_cast<acc_t>(args.negative_slope);
  const float p = args.p, inv_keep = args.inv_keep;
  if (!layout.channels_last) {
    // One channel per task; each (n, c) plane is summed in acc_t (bwd_run), the
    // planes are added in double.
    const int64_t inner = layout.inner(), outer = layout.outer();
    at::parallel_for(0, channels, 1, cpu::isa_dispatched([&](int64_t begin, int64_t end) {
      float mult[kChunk];
      for (int64_t ch = begin; ch < end; ++ch) {
        const acc_t s = sc[ch], h = sh[ch];
        double sum_gx = 0, sum_g = 0;
        for (int64_t o = 0; o < outer; ++o) {
          const int64_t base = (o * channels + ch) * inner;
          acc_t plane_gx = 0, plane_g = 0;
          if constexpr (!DROP) {
            bwd_run<scalar_t, acc_t, ACT, false>(xp + base, gp + base, s, h, nullptr, slope, inner, gx + base,
                                                 plane_gx, plane_g);
          } else {
            for (int64_t off = 0; off < inner; off += kChunk) {
              const int64_t count = std::min(kChunk, inner - off);
              cpu::dropout_multipliers(seed, base + off, 1, count, p, inv_keep, mult);
              bwd_run<scalar_t, acc_t, ACT, true>(xp + base + off, gp + base + off, s, h, mult, slope, count,
                                                  gx + base + off, plane_gx, plane_g);
            }
          }
          sum_gx += static_cast<double>(plane_gx);
          sum_g += static_cast<double>(plane_g);
        }
        g_scale[ch] = static_cast<acc_t>(sum_gx);
        g_shift[ch] = static_cast<acc_t>(sum_g);
      }
    }));
    return;
  }
  // Channels-last rows of C: size-determined blocks of rows; within a block,
  // sub-blocks of kSubRows rows are summed per channel in acc_t, then in double.
  const int64_t rows = layout.outer(), spatial = layout.spatial;
  const int64_t block_rows = cpu::rows_per_block(rows);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  std::vector<double> block_gx(blocks * channels, 0.0), block_g(blocks * channels, 0.0);
  at::parallel_for(0, blocks, 1, cpu::isa_dispatched([&](int64_t begin, int64_t end) {
    std::vector<acc_t> part_gx_v(channels), part_g_v(channels);
    acc_t* __restrict part_gx = part_gx_v.data();
    acc_t* __restrict part_g = part_g_v.data();
    float mult[kChunk];
    acc_t gz[kChunk], xa[kChunk];
    for (int64_t b = begin; b < end; ++b) {
      double* __restrict acc_gx = block_gx.data() + b * channels;
      double* __restrict acc_g = block_g.data() + b * channels;
      const int64_t row_end = std::min(rows, (b + 1) * block_rows);
      for (int64_t r0 = b * block_rows; r0 < row_end; r0 += kSubRows) {
        const int64_t r1 = std::min(row_end, r0 + kSubRows);
        std::fill(part_gx, part_gx + channels, acc_t(0));
        std::fill(part_g, part_g + channels, acc_t(0));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / spatial, sp = r - n * spatial;
          const int64_t logical_first = n * channels * spatial + sp;
          const int64_t row = r * channels;
          for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
            const int64_t count = std::min(kChunk, channels - c0);
            if constexpr (DROP)
              cpu::dropout_multipliers(seed, logical_first + c0 * spatial, spatial, count, p, inv_keep, mult);
            bwd_chunk<scalar_t, acc_t, ACT, DROP>(xp + row + c0, gp + row + c0, sc + c0, sh + c0, mult, slope, count,
                                                  gx + row + c0, gz, xa);
            for (int64_t j = 0; j < count; ++j) {
              part_gx[c0 + j] += gz[j] * xa[j];
              part_g[c0 + j] += gz[j];
            }
          }
        }
        for (int64_t c = 0; c < channels; ++c) {
          acc_gx[c] += static_cast<double>(part_gx[c]);
          acc_g[c] += static_cast<double>(part_g[c]);
        }
      }
    }
  }));
  for (int64_t ch = 0; ch < channels; ++ch) {
    double sum_gx = 0, sum_g = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      sum_gx += block_gx[b * channels + ch];
      sum_g += block_g[b * channels + ch];
    }
    g_scale[ch] = static_cast<acc_t>(sum_gx);
    g_shift[ch] = static_cast<acc_t>(sum_g);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_dropout_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
    c10::string_view act, double negative_slope, double p, const c10::optional<at::Tensor>& seed) {
  const char* op = "bn_act_dropout_backward";
  BnActDropoutArgs args =
      prepare_bn_act_dropout_args(op, x_in, scale, shift, std::string(act), negative_slope, p, seed);
  check_same_shape(grad_y, x_in, op, "grad_y", "x");
  TORCH_CHECK(grad_y.scalar_type() == x_in.scalar_type(), "wrn_fast::", op, ": grad_y must have x's dtype ",
              x_in.scalar_type(), ", got ", grad_y.scalar_type());
  const at::Tensor grad = with_strides_of(grad_y, args.x);
  const uint64_t seed_value = args.use_dropout ? static_cast<uint64_t>(seed->item<int64_t>()) : 0;
  const int64_t channels = args.layout.channels;
  at::Tensor grad_x = at::empty_like(args.x);
  at::Tensor grad_scale = at::empty({channels}, args.scale.options());
  at::Tensor grad_shift = at::empty({channels}, args.scale.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "bn_act_dropout_bwd_cpu", [&] {
    cpu::dispatch_act_dropout(args.act, args.use_dropout, [&](auto act_c, auto drop_c) {
      bn_act_dropout_bwd_kernel<scalar_t, decltype(act_c)::value, decltype(drop_c)::value>(
          args, grad, seed_value, grad_x, grad_scale, grad_shift);
    });
  });
  return {grad_x, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrn_fast, CPU, m) {
  m.impl("bn_act_dropout", &bn_act_dropout_fwd_cpu);
  m.impl("bn_act_dropout_backward", &bn_act_dropout_bwd_cpu);
}

}  // namespace wrn_fast
