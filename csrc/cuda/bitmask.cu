// CUDA kernels of pack_mask, unpack_mask, dropout_mask (schemas and CPU kernels:
// csrc/bitmask.cpp). One thread per output byte / element, grid-stride.
#include <torch/library.h>

#include "../bitmask.h"
#include "cuda_utils.cuh"

namespace wrn_fast {
namespace cuda {
namespace {

__global__ void pack_mask_kernel(const bool* __restrict__ mask, int64_t numel, int64_t bytes,
                                 uint8_t* __restrict__ packed) {
  for (int64_t byte = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; byte < bytes;
       byte += int64_t(gridDim.x) * blockDim.x) {
    uint8_t value = 0;
    for (int bit = 0; bit < 8 && byte * 8 + bit < numel; ++bit)
      value |= static_cast<uint8_t>(mask[byte * 8 + bit] ? 1u : 0u) << bit;
    packed[byte] = value;
  }
}

__global__ void unpack_mask_kernel(const uint8_t* __restrict__ packed, int64_t numel, bool* __restrict__ mask) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x)
    mask[i] = (packed[i >> 3] >> (i & 7)) & 1u;
}

__global__ void dropout_mask_kernel(const int64_t* __restrict__ seed, float p, int64_t numel, bool* __restrict__ mask) {
  const uint64_t seed_value = static_cast<uint64_t>(*seed);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x)
    mask[i] = dropout_keep(seed_value, i, p);
}

at::Tensor pack_mask_cuda(const at::Tensor& mask_in) {
  check_pack_mask_args(mask_in);
  const c10::cuda::CUDAGuard guard(mask_in.device());
  const at::Tensor mask = mask_in.contiguous();
  const int64_t numel = mask.numel(), bytes = packed_mask_bytes(numel);
  at::Tensor packed = at::empty({bytes}, mask.options().dtype(at::kByte));
  if (bytes == 0) return packed;
  pack_mask_kernel<<<elementwise_blocks(bytes), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      mask.const_data_ptr<bool>(), numel, bytes, packed.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

at::Tensor unpack_mask_cuda(const at::Tensor& packed_in, int64_t numel) {
  check_unpack_mask_args(packed_in, numel);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor mask = at::empty({numel}, packed.options().dtype(at::kBool));
  if (numel == 0) return mask;
  unpack_mask_kernel<<<elementwise_blocks(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      packed.const_data_ptr<uint8_t>(), numel, mask.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mask;
}

at::Tensor dropout_mask_cuda(const at::Tensor& seed, at::IntArrayRef size, double p) {
  check_dropout_mask_args(seed, size, p);
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor mask = at::empty(size, seed.options().dtype(at::kBool));
  if (p == 0.0) return mask.fill_(true);  // no dropout: keep everything, draw nothing
  const int64_t numel = mask.numel();
  if (numel == 0) return mask;
  dropout_mask_kernel<<<elementwise_blocks(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      seed.const_data_ptr<int64_t>(), static_cast<float>(p), numel, mask.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mask;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(wrn_fast, CUDA, m) {
  m.impl("pack_mask", &cuda::pack_mask_cuda);
  m.impl("unpack_mask", &cuda::unpack_mask_cuda);
  m.impl("dropout_mask", &cuda::dropout_mask_cuda);
}

}  // namespace wrn_fast
