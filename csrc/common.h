// Shared by the CPU (.cpp) and CUDA (.cu) kernels of wrn_fast: how a logical
// [N, C, *spatial] tensor is laid out in memory, argument checks with messages
// that name the op and the argument, and the activations with their derivatives.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "philox.h"

namespace wrn_fast {

// A logical [N, C, *spatial] tensor whose memory is dense in one of two orders.
// Kernels see it as [outer, C, inner]: NCHW is [N, C, S], channels-last is
// [N*S, C, 1]; `spatial` is kept separately for the logical (NCHW) index that
// the dropout mask is a function of.
struct ChannelLayout {
  int64_t batch = 0;           // N
  int64_t channels = 0;        // C
  int64_t spatial = 1;         // prod(sizes[2:]); 1 for [N, C]
  bool channels_last = false;  // memory order [N, *spatial, C] (else [N, C, *spatial])

  int64_t numel() const { return batch * channels * spatial; }
  int64_t outer() const { return channels_last ? batch * spatial : batch; }
  int64_t inner() const { return channels_last ? 1 : spatial; }
  int64_t per_channel() const { return batch * spatial; }  // n of the BN statistics
};

// Dense in memory order [N, *spatial, C], read from the strides (no view is built:
// this runs for every tensor of every op). Like is_contiguous, size-1 dims' strides
// do not matter and an empty tensor is dense.
inline bool is_channels_last_dense(const at::Tensor& x) {
  const int64_t dims = x.dim();
  if (dims < 3) return false;
  if (x.numel() == 0) return true;
  int64_t expected = 1;
  const auto dense_dim = [&](int64_t d) {
    const int64_t size = x.size(d);
    if (size != 1 && x.stride(d) != expected) return false;
    expected *= size;
    return true;
  };
  if (!dense_dim(1)) return false;
  for (int64_t d = dims - 1; d >= 2; --d)
    if (!dense_dim(d)) return false;
  return dense_dim(0);
}

inline void check_rank_and_dtype(const at::Tensor& x, const char* op, const char* arg, bool allow_double) {
  TORCH_CHECK(x.dim() >= 2, "wrn_fast::", op, ": ", arg,
              " must have rank >= 2 (logical [N, C, *spatial]), got shape ", x.sizes());
  const auto dt = x.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || (allow_double && dt == at::kDouble);
  TORCH_CHECK(ok, "wrn_fast::", op, ": ", arg, " must be float32, float16 or bfloat16",
              allow_double ? " (or float64)" : "", ", got ", dt);
}

// x itself when its memory is contiguous NCHW or channels-last, else a dense copy
// (general strided views are rare; a copy keeps kernels simple) in the memory format
// the contract gives outputs (wrn_fast/kernels/contract.py output_memory_format, which
// the Triton kernels and the fake kernels follow too): channels-last for a 4-D view
// whose channel axis varies fastest (a channel slice of a channels-last tensor), else
// NCHW. Outputs are allocated like the result, so they keep this format.
inline at::Tensor dense_channel_tensor(const at::Tensor& x) {
  if (x.is_contiguous() || is_channels_last_dense(x)) return x;
  if (x.dim() == 4 && x.size(1) > 1) {
    int64_t other = -1;  // the smallest stride of h, w among those of size > 1
    for (int64_t d = 2; d < 4; ++d)
      if (x.size(d) > 1 && (other < 0 || x.stride(d) < other)) other = x.stride(d);
    if (other >= 0 && x.stride(1) < other) return x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return x.contiguous();
}

inline ChannelLayout channel_layout(const at::Tensor& dense) {
  ChannelLayout layout;
  layout.batch = dense.size(0);
  layout.channels = dense.size(1);
  layout.spatial = 1;
  for (int64_t d = 2; d < dense.dim(); ++d) layout.spatial *= dense.size(d);
  layout.channels_last = !dense.is_contiguous();  // dense_channel_tensor made it one of the two
  return layout;
}

// `t` (same shape as `like`) with exactly the strides of `like`, copying only when needed.
inline at::Tensor with_strides_of(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_like(like, t.options());
  out.copy_(t);
  return out;
}

// Statistics, scale/shift and BN coefficients are float32, or float64 for float64 data.
inline at::ScalarType stats_dtype(at::ScalarType x_dtype) {
  return x_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg,
                             const char* x_arg) {
  TORCH_CHECK(t.sizes() == x.sizes(), "wrn_fast::", op, ": ", arg, " must have the shape of ", x_arg, " ",
              x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "wrn_fast::", op, ": ", arg, " must be on ", x_arg, "'s device ",
              x.device(), ", got ", t.device());
}

// A per-channel [C] vector of dtype `dtype` on `device`.
inline void check_channel_vector(const at::Tensor& v, int64_t channels, at::ScalarType dtype,
                                 const at::Device& device, const char* op, const char* arg) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == channels, "wrn_fast::", op, ": ", arg,
              " must be a per-channel vector of shape [", channels, "], got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == dtype, "wrn_fast::", op, ": ", arg, " must be ", dtype, ", got ",
              v.scalar_type());
  TORCH_CHECK(v.device() == device, "wrn_fast::", op, ": ", arg, " must be on ", device, ", got ", v.device());
}

// Dropout seed: int64 [1] on the data's device; required when p > 0.
inline void check_dropout(double p, const c10::optional<at::Tensor>& seed, const at::Device& device,
                          const char* op) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "wrn_fast::", op, ": dropout_p must be in [0, 1], got ", p);
  if (p == 0.0) return;
  TORCH_CHECK(seed.has_value(), "wrn_fast::", op, ": seed is required when dropout_p > 0 (got dropout_p = ", p,
              " and seed = None)");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 1, "wrn_fast::", op,
              ": seed must be an int64 tensor with one element, got ", seed->scalar_type(), " of shape ",
              seed->sizes());
  TORCH_CHECK(seed->device() == device, "wrn_fast::", op, ": seed must be on the data's device ", device,
              ", got ", seed->device());
}

// ---------------------------------------------------------------- activations
enum ActCode : int { kIdentity = 0, kRelu = 1, kLeakyRelu = 2, kSilu = 3 };

inline int act_code(const std::string& act, const char* op) {
  if (act == "identity") return kIdentity;
  if (act == "relu") return kRelu;
  if (act == "leaky_relu") return kLeakyRelu;
  if (act == "silu") return kSilu;
  TORCH_CHECK(false, "wrn_fast::", op, ": act must be one of 'identity', 'relu', 'leaky_relu', 'silu', got '",
              act, "'");
  return -1;
}

template <typename T>
WRN_HOST_DEVICE T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

// Forward of the activation; NaN propagates like PyTorch's.
template <typename T>
WRN_HOST_DEVICE T act_forward(int act, T z, T negative_slope) {
  switch (act) {
    case kRelu: return z < T(0) ? T(0) : z;
    case kLeakyRelu: return z > T(0) ? z : z * negative_slope;
    case kSilu: return z * sigmoid(z);
    default: return z;
  }
}

// d act / dz as PyTorch's backward: relu'(0) = 0, leaky_relu'(0) = slope.
template <typename T>
WRN_HOST_DEVICE T act_derivative(int act, T z, T negative_slope) {
  switch (act) {
    case kRelu: return z > T(0) ? T(1) : T(0);
    case kLeakyRelu: return z > T(0) ? T(1) : negative_slope;
    case kSilu: {
      const T s = sigmoid(z);
      return s * (T(1) + z * (T(1) - s));
    }
    default: return T(1);
  }
}

// Multiplier of inverted dropout for one element: 1/(1-p) if kept, else 0
// (a multiplier rather than a select so NaN propagates like F.dropout).
WRN_HOST_DEVICE float dropout_multiplier(bool use_dropout, uint64_t seed, int64_t logical_index, float p,
                                         float inv_keep) {
  if (!use_dropout) return 1.0f;
  return dropout_keep(seed, logical_index, p) ? inv_keep : 0.0f;
}

inline float inverse_keep_probability(double p) { return p < 1.0 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f; }

}  // namespace wrn_fast
