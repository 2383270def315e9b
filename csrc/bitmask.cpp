// Bit-packed masks: schemas and CPU kernels of
//   pack_mask(bool mask) -> uint8 [ceil(numel/8)]   bit j of byte i = element 8*i + j
//   unpack_mask(uint8 packed, int numel) -> bool [numel]
//   dropout_mask(seed, size, p) -> bool keep mask of a contiguous logical NCHW tensor
// Elements are in logical (row-major) order. CUDA: csrc/cuda/bitmask.cu.
#include <torch/library.h>

#include "bitmask.h"
#include "cpu_loops.h"

namespace wrn_fast {
namespace {

at::Tensor pack_mask_cpu(const at::Tensor& mask_in) {
  check_pack_mask_args(mask_in);
  const at::Tensor mask = mask_in.contiguous();
  const int64_t numel = mask.numel(), bytes = packed_mask_bytes(numel);
  at::Tensor packed = at::empty({bytes}, mask.options().dtype(at::kByte));
  const bool* bits = mask.const_data_ptr<bool>();
  uint8_t* out = packed.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, bytes, cpu::kGrainElements / 8, [&](int64_t begin, int64_t end) {
    for (int64_t byte = begin; byte < end; ++byte) {
      uint8_t value = 0;
      for (int64_t bit = 0; bit < 8 && byte * 8 + bit < numel; ++bit)
        value |= static_cast<uint8_t>(bits[byte * 8 + bit] ? 1u : 0u) << bit;
      out[byte] = value;
    }
  });
  return packed;
}

at::Tensor unpack_mask_cpu(const at::Tensor& packed_in, int64_t numel) {
  check_unpack_mask_args(packed_in, numel);
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor mask = at::empty({numel}, packed.options().dtype(at::kBool));
  const uint8_t* in = packed.const_data_ptr<uint8_t>();
  bool* out = mask.mutable_data_ptr<bool>();
  at::parallel_for(0, numel, cpu::kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = (in[i >> 3] >> (i & 7)) & 1u;
  });
  return mask;
}

at::Tensor dropout_mask_cpu(const at::Tensor& seed, at::IntArrayRef size, double p) {
  check_dropout_mask_args(seed, size, p);
  at::Tensor mask = at::empty(size, seed.options().dtype(at::kBool));
  bool* out = mask.mutable_data_ptr<bool>();
  if (p == 0.0) {  // no dropout: keep everything, draw nothing
    mask.fill_(true);
    return mask;
  }
  const uint64_t seed_value = static_cast<uint64_t>(seed.item<int64_t>());
  const float p_f = static_cast<float>(p);
  at::parallel_for(0, mask.numel(), cpu::kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = dropout_keep(seed_value, i, p_f);
  });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrn_fast, CPU, m) {
  m.impl("pack_mask", &pack_mask_cpu);
  m.impl("unpack_mask", &unpack_mask_cpu);
  m.impl("dropout_mask", &dropout_mask_cpu);
}

}  // namespace wrn_fast
