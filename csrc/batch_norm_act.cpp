// batch_norm_act: a training-mode BatchNorm followed by activation and dropout,
//   (y, mean, var) = dropout(act(bn(x))), batch statistics of x,
// as ONE autograd node whose forward and backward run in C++.
//
// Why it exists: the model's decomposition (channel_stats -> bn_finalize ->
// bn_act_dropout_fwd) is three autograd nodes with Python backward formulas;
// on the CPU backend their Python overhead (~150 us per BN per step) cost more
// than the kernels saved. This op composes the same kernels (so it is bit-for-bit
// the decomposition's forward, on every device that has them) and does the
// chain rule of all three in C++:
//
//   forward   mean, var   = channel_stats(x)
//             scale, shift = bn_finalize(mean, var, weight, bias, eps)
//             y            = bn_act_dropout_fwd(x, scale, shift, act, slope, p, seed)
//   backward  g_x', g_scale, g_shift = bn_act_dropout_bwd(g_y, ...)     (one pass)
//             [C]-vector algebra of bn_finalize's and the statistics' derivatives
//             g_x = g_x' + b[c] * x + c[c]   = bn_backward_apply          (one pass)
//
// Double backward is not supported (the kernels' derivatives are not registered).
// The model keeps the decomposition where the statistics come from elsewhere: the
// Triton conv epilogue (GPU) and the all-gathered statistics of sync-BN.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common.h"

namespace wrn_fast {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kOp = "batch_norm_act";

// ------------------------------------------------------- the composed ops
template <typename Sig>
c10::TypedOperatorHandle<Sig> wrn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

std::tuple<Tensor, Tensor> channel_stats(const Tensor& x) {
  static const auto op = wrn_op<std::tuple<Tensor, Tensor>(const Tensor&)>("wrn_fast::channel_stats");
  return op.call(x);
}

std::tuple<Tensor, Tensor> bn_finalize(const Tensor& mean, const Tensor& var, const OptTensor& weight,
                                       const OptTensor& bias, double eps) {
  static const auto op =
      wrn_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, double)>(
          "wrn_fast::bn_finalize");
  return op.call(mean, var, weight, bias, eps);
}

Tensor bn_act_dropout_fwd(const Tensor& x, const Tensor& scale, const Tensor& shift, c10::string_view act,
                          double slope, double p, const OptTensor& seed) {
  static const auto op = wrn_op<Tensor(const Tensor&, const Tensor&, const Tensor&, c10::string_view, double, double,
                                       const OptTensor&)>("wrn_fast::bn_act_dropout_fwd");
  return op.call(x, scale, shift, act, slope, p, seed);
}

std::tuple<Tensor, Tensor, Tensor> bn_act_dropout_bwd(const Tensor& grad_y, const Tensor& x, const Tensor& scale,
                                                      const Tensor& shift, c10::string_view act, double slope,
                                                      double p, const OptTensor& seed) {
  static const auto op =
      wrn_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                c10::string_view, double, double, const OptTensor&)>(
          "wrn_fast::bn_act_dropout_bwd");
  return op.call(grad_y, x, scale, shift, act, slope, p, seed);
}

Tensor bn_backward_apply(const OptTensor& grad, const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& c) {
  static const auto op =
      wrn_op<Tensor(const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
          "wrn_fast::bn_backward_apply");
  return op.call(grad, x, a, b, c);
}

// ------------------------------------------------------- forward
// Fake tensors with symbolic sizes (torch.compile with dynamic shapes trace this
// autograd kernel): no concrete size exists; the sub-ops' fake kernels run instead.
bool has_symbolic_sizes(const Tensor& t) { return t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); }

// Every argument is checked here, before the first kernel runs.
void check_args(const Tensor& x, const OptTensor& weight, const OptTensor& bias, double eps, c10::string_view act,
                double p, const OptTensor& seed) {
  TORCH_CHECK(x.dim() >= 2, "wrn_fast::", kOp, ": x must have rank >= 2 (logical [N, C, *spatial]), got rank ",
              x.dim());
  TORCH_CHECK(eps >= 0.0, "wrn_fast::", kOp, ": eps must be >= 0, got ", eps);
  act_code(std::string(act), kOp);
  if (has_symbolic_sizes(x)) return;
  check_rank_and_dtype(x, kOp, "x", /*allow_double=*/true);
  const int64_t channels = x.size(1);
  const auto check_affine = [&](const OptTensor& t, const char* arg) {
    if (!t.has_value() || !t->defined()) return;
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), "wrn_fast::", kOp, ": ", arg,
                " must be a floating-point tensor, got ", t->scalar_type());
    check_channel_vector(*t, channels, t->scalar_type(), x.device(), kOp, arg);
  };
  check_affine(weight, "weight");
  check_affine(bias, "bias");
  check_dropout(p, seed, x.device(), kOp);
  const int64_t per_channel = channels > 0 ? x.numel() / channels : 0;
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
  f.y = bn_act_dropout_fwd(x, f.scale, f.shift, act, slope, p, seed);
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
    ctx->saved_data["has_weight"] = weight.has_value() && weight->defined();
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    const Tensor w = weight.has_value() ? *weight : Tensor();
    const Tensor b = bias.has_value() ? *bias : Tensor();
    const Tensor s = seed.has_value() ? *seed : Tensor();
    // bias is saved only for its dtype; x, not y, is what the backward recomputes from.
    ctx->save_for_backward({x, w, b, f.mean, f.var, f.scale, f.shift, s});
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
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const Tensor &grad_y = grads[0], &grad_mean_in = grads[1], &grad_var_in = grads[2];

    // Direct term through the prologue: grad_x' = g_z * scale, g_scale = sum(g_z x), g_shift = sum(g_z).
    Tensor grad_direct, grad_scale, grad_shift;
    if (grad_y.defined()) {
      std::tie(grad_direct, grad_scale, grad_shift) =
          bn_act_dropout_bwd(grad_y, x, scale, shift, act, slope, p, seed.defined() ? OptTensor(seed) : c10::nullopt);
    } else {
      grad_scale = at::zeros_like(mean);
      grad_shift = at::zeros_like(mean);
    }
    // bn_finalize: scale = w * invstd, shift = bias - mean * scale.
    const Tensor invstd = (var + eps).rsqrt();
    const Tensor grad_scale_total = grad_scale - grad_shift * mean;
    const Tensor w = has_weight ? weight.to(mean.scalar_type()) : at::ones_like(mean);
    Tensor grad_mean = -grad_shift * scale;
    Tensor grad_var = grad_scale_total * w * invstd.pow(3) * (-0.5);
    if (grad_mean_in.defined()) grad_mean = grad_mean + grad_mean_in;
    if (grad_var_in.defined()) grad_var = grad_var + grad_var_in;

    Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      // Statistics: d mean/dx = 1/n, d var/dx = 2 (x - mean) / n (n symbolic under dynamic shapes).
      c10::SymInt n = x.sym_size(0);
      for (int64_t d = 2; d < x.dim(); ++d) n = n * x.sym_size(d);
      if (!n.is_symbolic() && n.expect_int() == 0) n = 1;  // an empty x: empty gradient, no 0/0
      const c10::Scalar n_scalar(n);
      const Tensor b_coef = (grad_var * 2.0) / n_scalar;
      const Tensor c_coef = grad_mean / n_scalar - b_coef * mean;
      const Tensor a_coef = at::ones_like(mean);
      grad_x = bn_backward_apply(grad_direct.defined() ? OptTensor(grad_direct) : c10::nullopt, x, a_coef, b_coef,
                                 c_coef);
    }
    Tensor grad_weight, grad_bias;
    if (has_weight && ctx->needs_input_grad(1)) grad_weight = (grad_scale_total * invstd).to(weight.scalar_type());
    if (has_bias && ctx->needs_input_grad(2)) grad_bias = grad_shift.to(bias.scalar_type());
    return {grad_x, grad_weight, grad_bias, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_autograd(const Tensor& x, const OptTensor& weight,
                                                           const OptTensor& bias, double eps, c10::string_view act,
                                                           double negative_slope, double p, const OptTensor& seed) {
  auto out = BatchNormActFunction::apply(x, weight, bias, eps, act, negative_slope, p, seed);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(wrn_fast, m) {
  m.def(
      "batch_norm_act(Tensor x, Tensor? weight, Tensor? bias, float eps, str act, float negative_slope, float p, "
      "Tensor? seed) -> (Tensor y, Tensor mean, Tensor var)");
}

TORCH_LIBRARY_IMPL(wrn_fast, CompositeExplicitAutograd, m) { m.impl("batch_norm_act", &batch_norm_act); }

TORCH_LIBRARY_IMPL(wrn_fast, Autograd, m) { m.impl("batch_norm_act", &batch_norm_act_autograd); }

}  // namespace wrn_fast
