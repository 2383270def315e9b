// Argument checks of the CPU kernels of bn_act_dropout / bn_act_dropout_backward.
#pragma once
#include <string>

#include "common.h"

namespace wrn_fast {

struct BnActDropoutArgs {
  at::Tensor x;             // dense (NCHW or channels-last)
  at::Tensor grad_y;        // x's strides (backward only)
  at::Tensor scale, shift;  // contiguous [C], stats dtype
  ChannelLayout layout;
  int act = kIdentity;
  double negative_slope = 0.0;  // cast to the compute type by the kernels (fp64 data keeps it exact)
  float p = 0.f;            // fp32, like the Triton kernels compare u >= p
  float inv_keep = 1.f;     // 1/(1-p), 0 when p == 1
  bool use_dropout = false;
};

inline BnActDropoutArgs prepare_bn_act_dropout_args(const char* op, const at::Tensor& x_in, const at::Tensor& scale,
                                                    const at::Tensor& shift, const std::string& act,
                                                    double negative_slope, double p,
                                                    const c10::optional<at::Tensor>& seed) {
  check_rank_and_dtype(x_in, op, "x", /*allow_double=*/true);
  BnActDropoutArgs args;
  args.x = dense_channel_tensor(x_in);
  args.layout = channel_layout(args.x);
  const auto coef_dtype = stats_dtype(x_in.scalar_type());
  check_channel_vector(scale, x_in.size(1), coef_dtype, x_in.device(), op, "scale");
  check_channel_vector(shift, x_in.size(1), coef_dtype, x_in.device(), op, "shift");
  args.scale = scale.contiguous();
  args.shift = shift.contiguous();
  args.act = act_code(act, op);
  args.negative_slope = negative_slope;
  check_dropout(p, seed, x_in.device(), op);
  args.p = static_cast<float>(p);
  args.use_dropout = p > 0.0;
  args.inv_keep = inverse_keep_probability(p);
  return args;
}

}  // namespace wrn_fast
