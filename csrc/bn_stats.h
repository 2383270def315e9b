// Argument checks of the BN statistics family, shared by the CPU (bn_stats.cpp)
// and CUDA (cuda/bn_stats.cu) kernels so both reject the same inputs the same way.
#pragma once
#include "common.h"

namespace wrn_fast {

inline void check_stats_vector_dtype(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "wrn_fast::", op, ": ", arg,
              " must be float32 (or float64), got ", t.scalar_type());
}

inline void check_merge_partial_stats_args(const at::Tensor& x, const at::Tensor& mean_p, const at::Tensor& m2_p,
                                           const at::Tensor& count_p) {
  const char* op = "merge_partial_stats";
  TORCH_CHECK(x.dim() >= 2, "wrn_fast::", op, ": x must have rank >= 2 (logical [N, C, *spatial]), got shape ",
              x.sizes());
  TORCH_CHECK(mean_p.dim() == 2 && mean_p.size(1) == x.size(1), "wrn_fast::", op,
              ": mean_p must have shape [P, C] with C = x.size(1) = ", x.size(1), ", got ", mean_p.sizes());
  TORCH_CHECK(m2_p.sizes() == mean_p.sizes(), "wrn_fast::", op, ": m2_p must have mean_p's shape ", mean_p.sizes(),
              ", got ", m2_p.sizes());
  TORCH_CHECK(count_p.dim() == 1 && count_p.size(0) == mean_p.size(0), "wrn_fast::", op,
              ": count_p must have shape [P] with P = ", mean_p.size(0), ", got ", count_p.sizes());
  check_stats_vector_dtype(mean_p, op, "mean_p");
  TORCH_CHECK(m2_p.scalar_type() == mean_p.scalar_type() && count_p.scalar_type() == mean_p.scalar_type(),
              "wrn_fast::", op, ": mean_p, m2_p and count_p must share one dtype, got ", mean_p.scalar_type(), ", ",
              m2_p.scalar_type(), ", ", count_p.scalar_type());
  TORCH_CHECK(mean_p.device() == x.device() && m2_p.device() == x.device() && count_p.device() == x.device(),
              "wrn_fast::", op, ": mean_p, m2_p and count_p must be on x's device ", x.device());
}

struct FinalizeArgs {
  at::Tensor mean, var, weight, bias;  // contiguous, mean's dtype; weight/bias undefined when None
};

inline FinalizeArgs prepare_bn_finalize_args(const at::Tensor& mean, const at::Tensor& var,
                                             const c10::optional<at::Tensor>& weight,
                                             const c10::optional<at::Tensor>& bias, double eps) {
  const char* op = "bn_finalize";
  TORCH_CHECK(mean.dim() == 1, "wrn_fast::", op, ": mean must have shape [C], got ", mean.sizes());
  check_stats_vector_dtype(mean, op, "mean");
  const int64_t channels = mean.size(0);
  check_channel_vector(var, channels, mean.scalar_type(), mean.device(), op, "var");
  TORCH_CHECK(eps >= 0.0, "wrn_fast::", op, ": eps must be >= 0, got ", eps);
  FinalizeArgs args{mean.contiguous(), var.contiguous(), at::Tensor(), at::Tensor()};
  // weight / bias may be in the model's dtype (model.to(torch.half)): read them in the stats dtype.
  const auto as_stats = [&](const c10::optional<at::Tensor>& t, const char* arg) {
    if (!t.has_value() || !t->defined()) return at::Tensor();
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), "wrn_fast::", op, ": ", arg,
                " must be a floating-point tensor, got ", t->scalar_type());
    check_channel_vector(*t, channels, t->scalar_type(), mean.device(), op, arg);
    return t->to(mean.scalar_type()).contiguous();
  };
  args.weight = as_stats(weight, "weight");
  args.bias = as_stats(bias, "bias");
  return args;
}

inline void check_bn_update_running_stats_args(const at::Tensor& running_mean, const at::Tensor& running_var,
                                               const at::Tensor& num_batches_tracked, const at::Tensor& mean,
                                               const at::Tensor& var, int64_t count,
                                               const c10::optional<double>& momentum) {
  const char* op = "bn_update_running_stats";
  TORCH_CHECK(count == 0 || count > 1, "wrn_fast::", op,
              ": Expected more than 1 value per channel when training, got ", count, " values per channel");
  TORCH_CHECK(mean.dim() == 1, "wrn_fast::", op, ": mean must have shape [C], got ", mean.sizes());
  check_stats_vector_dtype(mean, op, "mean");
  const int64_t channels = mean.size(0);
  const auto device = mean.device();
  check_channel_vector(var, channels, mean.scalar_type(), device, op, "var");
  TORCH_CHECK(at::isFloatingType(running_mean.scalar_type()), "wrn_fast::", op,
              ": running_mean must be a floating-point tensor, got ", running_mean.scalar_type());
  check_channel_vector(running_mean, channels, running_mean.scalar_type(), device, op, "running_mean");
  check_channel_vector(running_var, channels, running_mean.scalar_type(), device, op, "running_var");
  TORCH_CHECK(num_batches_tracked.scalar_type() == at::kLong && num_batches_tracked.numel() == 1, "wrn_fast::", op,
              ": num_batches_tracked must be an int64 tensor with one element, got ",
              num_batches_tracked.scalar_type(), " of shape ", num_batches_tracked.sizes());
  TORCH_CHECK(num_batches_tracked.device() == device, "wrn_fast::", op, ": num_batches_tracked must be on ", device,
              ", got ", num_batches_tracked.device());
  if (momentum.has_value())
    TORCH_CHECK(*momentum >= 0.0 && *momentum <= 1.0, "wrn_fast::", op, ": momentum must be in [0, 1] or None, got ",
                *momentum);
}

struct ApplyArgs {
  at::Tensor x;     // dense (NCHW or channels-last)
  at::Tensor a, b, c;  // contiguous [C]
  at::Tensor grad;  // x's strides, or undefined when grad is None
  ChannelLayout layout;
};

inline ApplyArgs prepare_bn_backward_apply_args(const c10::optional<at::Tensor>& grad, const at::Tensor& x_in,
                                                const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  const char* op = "bn_backward_apply";
  check_rank_and_dtype(x_in, op, "x", /*allow_double=*/true);
  ApplyArgs args;
  args.x = dense_channel_tensor(x_in);
  args.layout = channel_layout(args.x);
  const auto coef_dtype = stats_dtype(x_in.scalar_type());
  const int64_t channels = x_in.size(1);
  check_channel_vector(a, channels, coef_dtype, x_in.device(), op, "a");
  check_channel_vector(b, channels, coef_dtype, x_in.device(), op, "b");
  check_channel_vector(c, channels, coef_dtype, x_in.device(), op, "c");
  args.a = a.contiguous();
  args.b = b.contiguous();
  args.c = c.contiguous();
  if (grad.has_value() && grad->defined()) {
    check_same_shape(*grad, x_in, op, "grad", "x");
    TORCH_CHECK(grad->scalar_type() == x_in.scalar_type(), "wrn_fast::", op, ": grad must have x's dtype ",
                x_in.scalar_type(), ", got ", grad->scalar_type());
    args.grad = with_strides_of(*grad, args.x);
  }
  return args;
}

}  // namespace wrn_fast
