// Branch-free CPU forms of act_forward / act_derivative (common.h) with the same
// values, for the vectorised CPU loops: GCC (with its default -ftrapping-math) will
// not if-convert a float compare that guards arithmetic, so selects are done on the
// bits and compares are the quiet __builtin_isgreater (NaN -> false, like `>`).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.h"

namespace wrn_fast {
namespace cpu {

// memcpy bit cast: std::bit_cast is C++20, and torch < 2.13 builds extensions as C++17.
template <typename To, typename From>
inline To bits_as(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

template <typename T>
inline T bit_select(bool c, T a, T b) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const U m = U(0) - static_cast<U>(c);
  return bits_as<T>(static_cast<U>((bits_as<U>(a) & m) | (bits_as<U>(b) & ~m)));
}

template <int ACT, typename T>
inline T act_fwd(T z, T slope) {
  if constexpr (ACT == kLeakyRelu) {
    return bit_select(__builtin_isgreater(z, T(0)), z, z * slope);
  } else {
    return act_forward<T>(ACT, z, slope);
  }
}

// g * act'(z), as the original g * act_derivative(act, z, slope)
template <int ACT, typename T>
inline T times_act_derivative(T g, T z, T slope) {
  if constexpr (ACT == kIdentity) {
    return g;  // g * 1
  } else if constexpr (ACT == kRelu) {
    return g * static_cast<T>(__builtin_isgreater(z, T(0)));
  } else if constexpr (ACT == kLeakyRelu) {
    return g * bit_select(__builtin_isgreater(z, T(0)), T(1), slope);
  } else {
    return g * act_derivative<T>(ACT, z, slope);
  }
}

// g_z = g * keep/(1-p) * act'(x * s + h): the backward of y = dropout(act(x * s + h)) at
// one element (x already in acc_t). mult[j] = keep/(1-p) is read only with dropout (DROP).
template <int ACT, bool DROP, typename T>
inline T grad_z(T g, T x, T s, T h, const float* mult, int64_t j, T slope) {
  if constexpr (DROP) g = g * static_cast<T>(mult[j]);
  return times_act_derivative<ACT, T>(g, x * s + h, slope);
}

}  // namespace cpu
}  // namespace wrn_fast
