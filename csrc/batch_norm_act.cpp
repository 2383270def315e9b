// batch_norm_act: a training-mode BatchNorm followed by activation and dropout,
//   (y, mean, var) = dropout(act(bn(x))), batch statistics of x,
// as ONE autograd node whose forward and backward run in C++.
//
// Why it exists: the model's decomposition (channel_stats -> bn_finalize ->
// bn_act_dropout) is three autograd nodes with Python backward formulas;
// on the CPU backend their Python overhead (~150 us per BN per step) cost more
// than the kernels saved. This op composes the same kernels (so it is bit-for-bit
// the decomposition's forward, on every device that has them) and does the
// chain rule of all three in C++:
//
//   forward   mean, var   = channel_stats(x)
//             scale, shift = bn_finalize(mean, var, weight, bias, eps)
//             y            = bn_act_dropout(x, scale, shift, act, slope, p, seed)
//   backward  g_x', g_scale, g_shift = bn_act_dropout_backward(g_y, ...)     (one pass)
//             [C]-vector algebra of bn_finalize's and the statistics' derivatives
//             g_x = g_x' + b[c] * x + c[c]   = bn_backward_apply          (one pass)
//             On the CPU the same chain rule runs as one routine, the per-channel
//             algebra in a loop between two passes (csrc/batch_norm_act_cpu.cpp).
//
// Double backward is not supported (the kernels' derivatives are not registered).
// The model keeps the decomposition where the statistics come from elsewhere: the
// Triton conv epilogue (GPU) and the all-gathered statistics of sync-BN.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "batch_norm_act_cpu.h"
#include "bn_composite.h"
#include "common.h"

namespace wrn_fast {
namespace {

using namespace composite;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kOp = "batch_norm_act";

// ------------------------------------------------------- forward
// Every argument is checked here, before the first kernel runs.
void check_args(const Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps, c10::string_view act,
                double p, const OptTensor& seed) {
  act_code(std::string(act), kOp);
  if (!check_bn_args(x, weight, bias, eps, kOp)) return;
  check_rank_and_dtype(x, kOp, "x", /*allow_double=*/true);
  check_dropout(p, seed, x.device(), kOp);
  const int64_t per_channel = x.size(1) > 0 ? x.numel() / x.size(1) : 0;
  TORCH_CHECK_VALUE(per_channel != 1, "Expected more than 1 value per channel when training, got input size ",
                    x.sizes());
}

struct Forward {
  Tensor y, mean, var, scale, shift;
};

Forward forward_impl(const Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps,
                     c10::string_view act, double slope, double p, const OptTensor& seed) {
  check_args(x, weight, bias, eps, act, p, seed);
  Forward f;
  std::tie(f.mean, f.var) = channel_stats(x);
  std::tie(f.scale, f.shift) = bn_finalize(f.mean, f.var, weight, bias, eps);
  f.y = bn_act_dropout(x, f.scale, f.shift, act, slope, p, seed);
  return f;
}

// CompositeExplicitAutograd: every backend whose sub-ops have kernels (CPU, CUDA, Meta).
std::tuple<Tensor, Tensor, Tensor> batch_norm_act(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                                  double eps, c10::string_view act, double negative_slope, double p,
                                                  const OptTensor& seed) {
  Forward f = forward_impl(x, weight, bias, eps, act, negative_slope, p, seed);
  return {f.y, f.mean, f.var};
}

// ------------------------------------------------------- autograd
struct BatchNormActFunction : public torch::autograd::Function<BatchNormActFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                               double eps, c10::string_view act, double negative_slope, double p,
                               const OptTensor& seed) {
    Forward f;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      f = forward_impl(x, weight, bias, eps, act, negative_slope, p, seed);
    }
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["negative_slope"] = negative_slope;
    ctx->saved_data["p"] = p;
    // bias is saved only for its dtype; x, not y, is what the backward recomputes from.
    ctx->save_for_backward({x, value_or_undefined(weight), value_or_undefined(bias), f.mean, f.var, f.scale,
                            f.shift, value_or_undefined(seed)});
    ctx->set_materialize_grads(false);
    return {f.y, f.mean, f.var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &var = saved[4],
                 &scale = saved[5], &shift = saved[6], &seed = saved[7];
    const double eps = ctx->saved_data["eps"].toDouble();
    const std::string act = ctx->saved_data["act"].toStringRef();
    const double slope = ctx->saved_data["negative_slope"].toDouble();
    const double p = ctx->saved_data["p"].toDouble();
    const Tensor &grad_y = grads[0], &grad_mean = grads[1], &grad_var = grads[2];

    const bool need_weight = needs_grad(ctx, weight, 1), need_bias = needs_grad(ctx, bias, 1 + weight.defined());
    if (grad_y.defined()) {  // the usual case: one op (a fused routine on the CPU)
      static const auto op =
          wrn_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                                    const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const OptTensor&, const OptTensor&, double, c10::string_view,
                                                    double, double, const OptTensor&)>(
              "wrn_fast::batch_norm_act_backward");
      auto [grad_x, grad_weight, grad_bias] =
          op.call(grad_y, x, optional_if_defined(weight), optional_if_defined(bias), mean, var, scale, shift,
                  optional_if_defined(grad_mean), optional_if_defined(grad_var), eps, act, slope, p,
                  optional_if_defined(seed));
      return {ctx->needs_input_grad(0) ? grad_x : Tensor(), need_weight ? grad_weight : Tensor(),
              need_bias ? grad_bias : Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    }
    // Only mean / var were used: the statistics' term alone.
    const AffineGrads g = bn_affine_backward(x, Tensor(), Tensor(), Tensor(), grad_mean, grad_var, weight, bias, mean,
                                             var, scale, eps, ctx->needs_input_grad(0), need_weight, need_bias);
    return {g.grad_x, g.grad_weight, g.grad_bias, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ------------------------------------------------------- backward op
// Gradients of (y, mean, var) w.r.t. (x, weight, bias) given grad_y and optional
// grad_mean / grad_var. Every output is defined: a missing weight / bias gets zeros
// of the statistics dtype. The CPU kernel is one routine (batch_norm_act_cpu.cpp);
// every other backend (and fake tensors) runs the composition below.
std::tuple<Tensor, Tensor, Tensor> complete(const AffineGrads& g, const Tensor& weight, const Tensor& bias,
                                            const Tensor& mean) {
  return {g.grad_x, weight.defined() ? g.grad_weight : at::zeros_like(mean),
          bias.defined() ? g.grad_bias : at::zeros_like(mean)};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward(
    const Tensor& grad_y, const Tensor& x, const OptTensor& weight_opt, const OptTensor& bias_opt, const Tensor& mean,
    const Tensor& var, const Tensor& scale, const Tensor& shift, const OptTensor& grad_mean,
    const OptTensor& grad_var, double eps, c10::string_view act, double slope, double p, const OptTensor& seed) {
  const Tensor weight = value_or_undefined(weight_opt), bias = value_or_undefined(bias_opt);
  // Through the act-dropout: grad_x' = g_z * scale, g_scale = sum(g_z x), g_shift = sum(g_z).
  auto [grad_direct, grad_scale, grad_shift] = bn_act_dropout_backward(grad_y, x, scale, shift, act, slope, p, seed);
  // Through bn_finalize and the statistics, added to grad_x' in one pass.
  const AffineGrads g = bn_affine_backward(x, grad_direct, grad_scale, grad_shift, value_or_undefined(grad_mean),
                                           value_or_undefined(grad_var), weight, bias, mean, var, scale, eps, true,
                                           true, true);
  return complete(g, weight, bias, mean);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const OptTensor& weight_opt, const OptTensor& bias_opt, const Tensor& mean,
    const Tensor& var, const Tensor& scale, const Tensor& shift, const OptTensor& grad_mean,
    const OptTensor& grad_var, double eps, c10::string_view act, double slope, double p, const OptTensor& seed) {
  const Tensor weight = value_or_undefined(weight_opt), bias = value_or_undefined(bias_opt);
  const AffineGrads g = cpu::batch_norm_act_backward(grad_y, x, weight, bias, mean, var, scale, shift,
                                                     value_or_undefined(grad_mean), value_or_undefined(grad_var), eps,
                                                     act, slope, p, value_or_undefined(seed), true, true, true);
  return complete(g, weight, bias, mean);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_autograd(const Tensor& x, const OptTensor& weight,
                                                           const OptTensor& bias, double eps, c10::string_view act,
                                                           double negative_slope, double p, const OptTensor& seed) {
  auto out = BatchNormActFunction::apply(x, weight, bias, eps, act, negative_slope, p, seed);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrn_fast, CompositeExplicitAutograd, m) {
  m.impl("batch_norm_act", &batch_norm_act);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward);
}

TORCH_LIBRARY_IMPL(wrn_fast, CPU, m) { m.impl("batch_norm_act_backward", &batch_norm_act_backward_cpu); }

TORCH_LIBRARY_IMPL(wrn_fast, Autograd, m) { m.impl("batch_norm_act", &batch_norm_act_autograd); }

}  // namespace wrn_fast
