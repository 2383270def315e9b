// Every schema of the wrn_fast namespace, in one place. The kernels are registered
// next to their code with TORCH_LIBRARY_IMPL (CPU: csrc/*.cpp, CUDA: csrc/cuda/*.cu);
// bn_act_dropout's CUDA kernels are the Triton ones, registered from Python
// (wrn_fast/ops/bn_act.py). The fake kernels and most autograd formulas are Python
// (wrn_fast/ops/ext.py, wrn_fast/ops/bn_act.py); batch_norm_act and
// bn_finalize_partials have C++ autograd.
//
// Argument names, one per concept: x (data), act (activation name), negative_slope
// (leaky_relu's slope; no default: callers pass it), dropout_p (dropout probability),
// seed (int64 [1], required when dropout_p > 0); backward ops end in _backward.
//
// Ops defined in Python with torch.library.custom_op, because they have one
// implementation and no C++ kernel: bn_act_conv, bn_act_conv_backward,
// bn_act_conv_two_pass, conv_dropout_bits (wrn_fast/ops/conv.py: Triton) and
// all_gather_stats (wrn_fast/ops/sync_bn.py: torch.distributed).
#include <torch/library.h>

TORCH_LIBRARY(wrn_fast, m) {
  // batch statistics and BN finalize (bn_stats.cpp, cuda/bn_stats.cu)
  m.def("channel_stats(Tensor x) -> (Tensor mean, Tensor var)");
  m.def("merge_partial_stats(Tensor x, Tensor mean_p, Tensor m2_p, Tensor count_p) -> (Tensor mean, Tensor var)");
  m.def("bn_finalize(Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps) -> (Tensor scale, Tensor shift)");
  m.def(
      "bn_update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!) num_batches_tracked, "
      "Tensor mean, Tensor var, int count, float? momentum) -> ()");
  m.def("bn_backward_apply(Tensor? grad, Tensor x, Tensor a, Tensor b, Tensor c) -> Tensor");

  // the BN backward formula (bn_backward.cpp)
  m.def(
      "bn_finalize_backward(Tensor? grad_scale, Tensor? grad_shift, Tensor mean, Tensor var, Tensor? weight, "
      "Tensor scale, float eps) -> (Tensor grad_mean, Tensor grad_var, Tensor grad_weight)");
  m.def(
      "channel_stats_backward(Tensor x, Tensor mean, Tensor? grad_mean, Tensor? grad_var, Tensor? grad=None) "
      "-> Tensor");

  // y = dropout(act(x * scale[c] + shift[c])) (CPU: bn_act_dropout.cpp; CUDA: Triton)
  m.def(
      "bn_act_dropout(Tensor x, Tensor scale, Tensor shift, str act, float negative_slope, float dropout_p, "
      "Tensor? seed) -> Tensor");
  m.def(
      "bn_act_dropout_backward(Tensor grad_y, Tensor x, Tensor scale, Tensor shift, str act, "
      "float negative_slope, float dropout_p, Tensor? seed) -> (Tensor grad_x, Tensor grad_scale, Tensor grad_shift)");

  // composites with C++ autograd (batch_norm_act.cpp, bn_finalize_partials.cpp)
  m.def(
      "batch_norm_act(Tensor x, Tensor? weight, Tensor? bias, float eps, str act, float negative_slope, "
      "float dropout_p, Tensor? seed) -> (Tensor y, Tensor mean, Tensor var)");
  m.def(
      "batch_norm_act_backward(Tensor grad_y, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor var, "
      "Tensor scale, Tensor shift, Tensor? grad_mean, Tensor? grad_var, float eps, str act, float negative_slope, "
      "float dropout_p, Tensor? seed) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "bn_finalize_partials(Tensor x, Tensor mean_p, Tensor m2_p, Tensor count_p, Tensor? weight, Tensor? bias, "
      "float eps) -> (Tensor scale, Tensor shift, Tensor mean, Tensor var)");

  // dropout masks and bit packing (bitmask.cpp, cuda/bitmask.cu)
  m.def("pack_mask(Tensor mask) -> Tensor");
  m.def("unpack_mask(Tensor packed, int numel) -> Tensor");
  m.def("dropout_mask(Tensor seed, int[] size, float dropout_p) -> Tensor");
}
