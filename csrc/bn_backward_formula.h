// The BatchNorm backward formula, written once as templates over the value type:
// instantiated with at::Tensor ([C] vectors: the composite ops on any device, fake
// tensors included, and the Python autograd of bn_finalize / channel_stats through
// the ops of csrc/bn_backward.cpp) and with double (per channel, inside the fused
// CPU backward of batch_norm_act, csrc/batch_norm_act_cpu.cpp).
//
// Forward being differentiated:
//   mean, var    = biased per-channel statistics of x (n values per channel)
//   invstd       = rsqrt(var + eps)
//   scale, shift = w * invstd, bias - mean * scale                      (bn_finalize)
//   consumer     uses x * scale + shift and returns grad_scale, grad_shift
#pragma once
#include <ATen/ATen.h>

#include <cmath>

namespace wrn_fast {
namespace formula {

inline double rsqrt_of(double v) { return 1.0 / std::sqrt(v); }
inline at::Tensor rsqrt_of(const at::Tensor& v) { return v.rsqrt(); }

template <typename T>
struct FinalizeGrads {
  T grad_mean, grad_var, grad_weight;
};

// Backward of bn_finalize: grad_bias is grad_shift itself.
template <typename T>
FinalizeGrads<T> bn_finalize_backward(const T& grad_scale, const T& grad_shift, const T& mean, const T& var,
                                      const T& weight, const T& scale, double eps) {
  const T invstd = rsqrt_of(var + eps);
  const T grad_scale_total = grad_scale - grad_shift * mean;  // shift depends on scale too
  return {grad_shift * scale * -1.0, grad_scale_total * weight * (invstd * invstd * invstd) * -0.5,
          grad_scale_total * invstd};
}

template <typename T>
struct StatsCoefficients {
  T b, c;  // grad_x += b * x + c
};

// Backward of the statistics: d mean/dx = 1/n, d var/dx = 2 (x - mean) / n, so
// grad_x += b * x + c with b = 2 grad_var / n, c = grad_mean / n - b * mean.
// N: double, or c10::Scalar (symbolic under torch.compile with dynamic shapes).
template <typename T, typename N>
StatsCoefficients<T> stats_backward(const T& grad_mean, const T& grad_var, const T& mean, const N& n) {
  const T b = grad_var * 2.0 / n;
  return {b, grad_mean / n - b * mean};
}

}  // namespace formula
}  // namespace wrn_fast
