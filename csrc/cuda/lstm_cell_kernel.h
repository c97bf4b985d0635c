// Torch-free launch interface of the fused LSTM cell kernels (raw pointers, sizes, a stream).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace fastvae {
namespace cuda {

// gates [B, 4H], c_prev [B, H] -> h [B, H], c [B, H], act [B, 4H]; all row-major, contiguous.
cudaError_t lstm_cell_forward_f32(const float* gates, const float* c_prev, float* h, float* c, float* act,
                                  int64_t B, int64_t H, cudaStream_t stream);
cudaError_t lstm_cell_forward_f64(const double* gates, const double* c_prev, double* h, double* c,
                                  double* act, int64_t B, int64_t H, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastvae
