// bn_finalize_partials: a training-mode BatchNorm's affine from the partial
// statistics that a Triton conv epilogue emitted for its output x,
//   mean, var    = merge_partial_stats(x, mean_p, m2_p, count_p)
//   scale, shift = bn_finalize(mean, var, weight, bias, eps)
// as ONE autograd node with a C++ backward (instead of two with Python backward
// formulas: ~85 us of Python per BN and step, measured on the CPU). The consumer
// applies x*scale + shift in its prologue and returns grad_scale = sum(g_z x),
// grad_shift = sum(g_z); this node turns them into grad_weight, grad_bias and the
// statistics' term of grad_x (b[c] * x + c[c], one pass).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "bn_composite.h"
#include "common.h"

namespace wrn_fast {
namespace {

using namespace composite;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kOp = "bn_finalize_partials";

// CompositeExplicitAutograd: every backend whose sub-ops have kernels (CPU, CUDA, Meta).
std::tuple<Tensor, Tensor, Tensor, Tensor> bn_finalize_partials(const Tensor& x, const Tensor& mean_p,
                                                                const Tensor& m2_p, const Tensor& count_p,
                                                                const OptTensor& weight, const OptTensor& bias,
                                                                double eps) {
  check_bn_args(x, weight, bias, eps, kOp);  // merge_partial_stats checks the partials, before it runs
  auto [mean, var] = merge_partial_stats(x, mean_p, m2_p, count_p);
  auto [scale, shift] = bn_finalize(mean, var, weight, bias, eps);
  return {scale, shift, mean, var};
}

struct BnFinalizePartialsFunction : public torch::autograd::Function<BnFinalizePartialsFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& mean_p, const Tensor& m2_p,
                               const Tensor& count_p, const OptTensor& weight, const OptTensor& bias, double eps) {
    Tensor scale, shift, mean, var;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(scale, shift, mean, var) = bn_finalize_partials(x, mean_p, m2_p, count_p, weight, bias, eps);
    }
    ctx->saved_data["eps"] = eps;
    ctx->save_for_backward({x, value_or_undefined(weight), value_or_undefined(bias), mean, var, scale});
    ctx->set_materialize_grads(false);
    return {scale, shift, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &var = saved[4],
                 &scale = saved[5];
    const AffineGrads g = bn_affine_backward(x, Tensor(), grads[0], grads[1], grads[2], grads[3], weight, bias,
                                             mean, var, scale, ctx->saved_data["eps"].toDouble(),
                                             ctx->needs_input_grad(0), needs_grad(ctx, weight, 4),
                                             needs_grad(ctx, bias, 4 + weight.defined()));
    // the partials summarise x: they get no gradient of their own
    return {g.grad_x, Tensor(), Tensor(), Tensor(), g.grad_weight, g.grad_bias, Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_finalize_partials_autograd(const Tensor& x, const Tensor& mean_p,
                                                                         const Tensor& m2_p, const Tensor& count_p,
                                                                         const OptTensor& weight,
                                                                         const OptTensor& bias, double eps) {
  auto out = BnFinalizePartialsFunction::apply(x, mean_p, m2_p, count_p, weight, bias, eps);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrn_fast, CompositeExplicitAutograd, m) {
  m.impl("bn_finalize_partials", &bn_finalize_partials);
}

TORCH_LIBRARY_IMPL(wrn_fast, Autograd, m) { m.impl("bn_finalize_partials", &bn_finalize_partials_autograd); }

}  // namespace wrn_fast
