// Argument checks of the bit-packed mask ops, shared by CPU and CUDA kernels.
#pragma once
#include "common.h"

namespace wrn_fast {

inline int64_t packed_mask_bytes(int64_t numel) { return (numel + 7) / 8; }

inline void check_pack_mask_args(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "wrn_fast::pack_mask: mask must be bool, got ", mask.scalar_type());
}

inline void check_unpack_mask_args(const at::Tensor& packed, int64_t numel) {
  const char* op = "unpack_mask";
  TORCH_CHECK(packed.scalar_type() == at::kByte, "wrn_fast::", op, ": packed must be uint8, got ",
              packed.scalar_type());
  TORCH_CHECK(numel >= 0, "wrn_fast::", op, ": numel must be >= 0, got ", numel);
  TORCH_CHECK(packed.dim() == 1 && packed.size(0) == packed_mask_bytes(numel), "wrn_fast::", op,
              ": packed must have shape [ceil(numel / 8)] = [", packed_mask_bytes(numel), "] for numel = ", numel,
              ", got ", packed.sizes());
}

inline void check_dropout_mask_args(const at::Tensor& seed, at::IntArrayRef size, double p) {
  const char* op = "dropout_mask";
  for (const int64_t s : size)
    TORCH_CHECK(s >= 0, "wrn_fast::", op, ": size must have non-negative entries, got ", size);
  check_dropout(p, seed, seed.device(), op);
}

}  // namespace wrn_fast
