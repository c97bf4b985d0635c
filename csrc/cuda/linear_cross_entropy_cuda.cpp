// CUDA registration of the fused output layer + cross-entropy: the device-generic chunk loop of
// linear_cross_entropy.h with cuBLAS GEMMs and the row pass in ATen kernels, on the current stream.
// Built only in CUDA builds.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../linear_cross_entropy.h"

namespace fastvae {

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_forward_cuda(
    const Tensor& hidden, const Tensor& weight, const std::optional<Tensor>& weight_compute, const Tensor& target,
    const Tensor& row_scale, std::array<bool, 2> grad_mask, int64_t max_chunk_elems) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  return loops::linear_cross_entropy<loops::GenericRows>(hidden, weight, weight_compute, target, row_scale,
                                                         grad_mask, max_chunk_elems);
}

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  m.impl("linear_cross_entropy_forward", &fastvae::linear_cross_entropy_forward_cuda);
}
