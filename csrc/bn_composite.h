// Building blocks of the composite BatchNorm ops (batch_norm_act,
// bn_finalize_partials): calls of the wrn_fast ops through the dispatcher (so a
// composite runs on every device that has the pieces, fake tensors included) and
// the chain rule of bn_finalize + the batch statistics, shared by their C++ autograd.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <optional>
#include <tuple>

#include "bn_backward_formula.h"

namespace wrn_fast {
namespace composite {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

template <typename Sig>
c10::TypedOperatorHandle<Sig> wrn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline std::tuple<Tensor, Tensor> channel_stats(const Tensor& x) {
  static const auto op = wrn_op<std::tuple<Tensor, Tensor>(const Tensor&)>("wrn_fast::channel_stats");
  return op.call(x);
}

inline std::tuple<Tensor, Tensor> merge_partial_stats(const Tensor& x, const Tensor& mean_p, const Tensor& m2_p,
                                                      const Tensor& count_p) {
  static const auto op =
      wrn_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
          "wrn_fast::merge_partial_stats");
  return op.call(x, mean_p, m2_p, count_p);
}

inline std::tuple<Tensor, Tensor> bn_finalize(const Tensor& mean, const Tensor& var, const OptTensor& weight,
                                              const OptTensor& bias, double eps) {
  static const auto op =
      wrn_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, double)>(
          "wrn_fast::bn_finalize");
  return op.call(mean, var, weight, bias, eps);
}

inline Tensor bn_act_dropout(const Tensor& x, const Tensor& scale, const Tensor& shift, c10::string_view act,
                                 double slope, double p, const OptTensor& seed) {
  static const auto op = wrn_op<Tensor(const Tensor&, const Tensor&, const Tensor&, c10::string_view, double, double,
                                       const OptTensor&)>("wrn_fast::bn_act_dropout");
  return op.call(x, scale, shift, act, slope, p, seed);
}

inline std::tuple<Tensor, Tensor, Tensor> bn_act_dropout_backward(const Tensor& grad_y, const Tensor& x,
                                                                  const Tensor& scale, const Tensor& shift,
                                                                  c10::string_view act, double slope, double p,
                                                                  const OptTensor& seed) {
  static const auto op =
      wrn_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                c10::string_view, double, double, const OptTensor&)>(
          "wrn_fast::bn_act_dropout_backward");
  return op.call(grad_y, x, scale, shift, act, slope, p, seed);
}

inline Tensor bn_backward_apply(const OptTensor& grad, const Tensor& x, const Tensor& a, const Tensor& b,
                                const Tensor& c) {
  static const auto op =
      wrn_op<Tensor(const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
          "wrn_fast::bn_backward_apply");
  return op.call(grad, x, a, b, c);
}

// BN weight / bias: None, or a floating-point [C] vector on x's device (any float dtype:
// bn_finalize reads them in the statistics dtype).
inline void check_affine_vector(const OptTensor& t, int64_t channels, const at::Device& device, const char* op,
                                const char* arg) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "wrn_fast::", op, ": ", arg,
              " must be a floating-point tensor, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == channels, "wrn_fast::", op, ": ", arg,
              " must be a per-channel vector of shape [", channels, "], got shape ", t->sizes());
  TORCH_CHECK(t->device() == device, "wrn_fast::", op, ": ", arg, " must be on ", device, ", got ", t->device());
}

// AutogradContext::needs_input_grad counts edges: only the tensor arguments that were
// given. An optional tensor argument's edge is its position among those.
inline bool needs_grad(torch::autograd::AutogradContext* ctx, const Tensor& arg, size_t edge) {
  return arg.defined() && ctx->needs_input_grad(edge);
}

inline bool has_symbolic_sizes(const Tensor& t) { return t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); }

// The arguments every composite BN op takes: x of rank >= 2, eps >= 0, weight / bias.
// Returns false when x has symbolic sizes (torch.compile with dynamic shapes traces the
// autograd kernel with fake tensors): no concrete size to check; the sub-ops' fake
// kernels run instead, and the caller skips its own size checks too.
inline bool check_bn_args(const Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps,
                          const char* op) {
  TORCH_CHECK(x.dim() >= 2, "wrn_fast::", op, ": x must have rank >= 2 (logical [N, C, *spatial]), got rank ",
              x.dim());
  TORCH_CHECK(eps >= 0.0, "wrn_fast::", op, ": eps must be >= 0, got ", eps);
  if (has_symbolic_sizes(x)) return false;
  check_affine_vector(weight, x.size(1), x.device(), op, "weight");
  check_affine_vector(bias, x.size(1), x.device(), op, "bias");
  return true;
}

inline Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

inline OptTensor optional_if_defined(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The BatchNorm backward formula lives in bn_backward_formula.h (templates, once);
// these are its [C]-tensor instances. Every autograd of the statistics and of
// bn_finalize (the C++ composite ops here, the Python registrations in
// wrn_fast/ops/ext.py through the ops of csrc/bn_backward.cpp) calls them.

struct FinalizeGrads {
  Tensor grad_mean, grad_var, grad_weight;  // grad_weight in the statistics dtype
};

// Backward of bn_finalize given grad_scale / grad_shift (undefined = zero).
inline FinalizeGrads bn_finalize_backward(const Tensor& grad_scale, const Tensor& grad_shift, const Tensor& mean,
                                          const Tensor& var, const Tensor& weight, const Tensor& scale, double eps) {
  const Tensor g_scale = grad_scale.defined() ? grad_scale.to(mean.scalar_type()) : at::zeros_like(mean);
  const Tensor g_shift = grad_shift.defined() ? grad_shift.to(mean.scalar_type()) : at::zeros_like(mean);
  const Tensor w = weight.defined() ? weight.to(mean.scalar_type()) : at::ones_like(mean);
  const auto f = formula::bn_finalize_backward<Tensor>(g_scale, g_shift, mean, var, w, scale, eps);
  return {f.grad_mean, f.grad_var, f.grad_weight};
}

// Backward of (mean, var) = statistics of x, plus (optionally) a gradient grad_direct
// of x from elsewhere, in one pass over x: grad_x = grad_direct + b[c] * x + c[c].
// n is symbolic under torch.compile with dynamic shapes. Undefined grads stand for zero.
inline Tensor channel_stats_backward(const Tensor& x, const Tensor& grad_direct, const Tensor& mean,
                                     const Tensor& grad_mean_in, const Tensor& grad_var_in) {
  const Tensor grad_mean = grad_mean_in.defined() ? grad_mean_in : at::zeros_like(mean);
  const Tensor grad_var = grad_var_in.defined() ? grad_var_in : at::zeros_like(mean);
  c10::SymInt n = x.sym_size(0);
  for (int64_t d = 2; d < x.dim(); ++d) n = n * x.sym_size(d);
  if (!n.is_symbolic() && n.expect_int() == 0) n = 1;  // an empty x: empty gradient, no 0/0
  const auto k = formula::stats_backward<Tensor, c10::Scalar>(grad_mean, grad_var, mean, c10::Scalar(n));
  const Tensor a_coef = grad_direct.defined() ? at::ones_like(mean) : at::zeros_like(mean);
  return bn_backward_apply(optional_if_defined(grad_direct), x, a_coef, k.b, k.c);
}

struct AffineGrads {
  Tensor grad_x, grad_weight, grad_bias;
};

// Backward of   mean, var = stats(x);  scale, shift = bn_finalize(mean, var, weight, bias, eps)
// given grad_scale / grad_shift (from whoever applied x*scale + shift) and, optionally,
// gradients of mean / var used directly. grad_direct (optional) is the consumer's own
// gradient w.r.t. x, added in the same pass.
inline AffineGrads bn_affine_backward(const Tensor& x, const Tensor& grad_direct, const Tensor& grad_scale,
                                      const Tensor& grad_shift, const Tensor& grad_mean_in,
                                      const Tensor& grad_var_in, const Tensor& weight, const Tensor& bias,
                                      const Tensor& mean, const Tensor& var, const Tensor& scale, double eps,
                                      bool need_x, bool need_weight, bool need_bias) {
  const FinalizeGrads f = bn_finalize_backward(grad_scale, grad_shift, mean, var, weight, scale, eps);
  AffineGrads out;
  if (need_x) {
    const Tensor grad_mean = grad_mean_in.defined() ? f.grad_mean + grad_mean_in : f.grad_mean;
    const Tensor grad_var = grad_var_in.defined() ? f.grad_var + grad_var_in : f.grad_var;
    out.grad_x = channel_stats_backward(x, grad_direct, mean, grad_mean, grad_var);
  }
  if (weight.defined() && need_weight) out.grad_weight = f.grad_weight.to(weight.scalar_type());
  if (bias.defined() && need_bias)
    out.grad_bias = grad_shift.defined() ? grad_shift.to(bias.scalar_type()) : at::zeros_like(bias);
  return out;
}

}  // namespace composite
}  // namespace wrn_fast
