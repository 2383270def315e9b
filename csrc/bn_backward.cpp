// The BatchNorm backward formula (csrc/bn_composite.h) as ops, so that the Python
// autograd registrations of channel_stats / merge_partial_stats / bn_finalize
// (wrn_fast/ops/ext.py) and bn_batch_act_conv (wrn_fast/ops/conv.py) call the one C++
// implementation instead of restating it:
//   bn_finalize_backward:   (grad_scale, grad_shift) -> (grad_mean, grad_var, grad_weight)
//   channel_stats_backward: (x, mean, grad_mean, grad_var, grad) -> grad_x = grad + b[c] * x + c[c]
//                           (grad: x's gradient from elsewhere, added in the same pass; None = 0)
// CompositeExplicitAutograd: tensor algebra plus bn_backward_apply, so every device
// (and fake tensors) that has bn_backward_apply runs them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "bn_composite.h"

namespace wrn_fast {
namespace {

using namespace composite;

std::tuple<Tensor, Tensor, Tensor> bn_finalize_backward_op(const OptTensor& grad_scale, const OptTensor& grad_shift,
                                                           const Tensor& mean, const Tensor& var,
                                                           const OptTensor& weight, const Tensor& scale, double eps) {
  const FinalizeGrads g = bn_finalize_backward(value_or_undefined(grad_scale), value_or_undefined(grad_shift), mean,
                                               var, value_or_undefined(weight), scale, eps);
  return {g.grad_mean, g.grad_var, g.grad_weight};
}

Tensor channel_stats_backward_op(const Tensor& x, const Tensor& mean, const OptTensor& grad_mean,
                                 const OptTensor& grad_var, const OptTensor& grad) {
  return channel_stats_backward(x, value_or_undefined(grad), mean, value_or_undefined(grad_mean),
                                value_or_undefined(grad_var));
}

}  // namespace

TORCH_LIBRARY_IMPL(wrn_fast, CompositeExplicitAutograd, m) {
  m.impl("bn_finalize_backward", &bn_finalize_backward_op);
  m.impl("channel_stats_backward", &channel_stats_backward_op);
}

}  // namespace wrn_fast
