// The CPU backward of batch_norm_act as one routine (csrc/batch_norm_act_cpu.cpp).
#pragma once
#include <ATen/ATen.h>

#include "bn_composite.h"

namespace wrn_fast {
namespace cpu {

// Gradients of (y, mean, var) = batch_norm_act(x, weight, bias, eps, act, slope, p, seed)
// given grad_y (defined) and optional grad_mean / grad_var; x on the CPU with concrete sizes.
// grad_weight / grad_bias in the parameters' dtypes.
composite::AffineGrads batch_norm_act_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                               const at::Tensor& weight, const at::Tensor& bias,
                                               const at::Tensor& mean, const at::Tensor& var,
                                               const at::Tensor& scale, const at::Tensor& shift,
                                               const at::Tensor& grad_mean, const at::Tensor& grad_var, double eps,
                                               c10::string_view act, double slope, double p, const at::Tensor& seed,
                                               bool need_x, bool need_weight, bool need_bias);

}  // namespace cpu
}  // namespace wrn_fast
