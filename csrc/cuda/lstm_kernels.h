// Torch-free launch interface of the fused LSTM CUDA kernels (argument structs of raw pointers,
// sizes and strides from lstm_pointwise.h, and a stream). float32 and float64; the torch-facing
// glue runs half/bfloat16 in float32.
#pragma once
#include <cuda_runtime.h>

#include "../lstm_pointwise.h"

namespace fastvae {
namespace cuda {

// One pointwise forward step: one thread per (row, unit).
cudaError_t lstm_step_forward(const StepForwardArgs<float>& args, cudaStream_t stream);
cudaError_t lstm_step_forward(const StepForwardArgs<double>& args, cudaStream_t stream);

// One pointwise backward step: one thread per (row, unit).
cudaError_t lstm_step_backward(const StepBackwardArgs<float>& args, cudaStream_t stream);
cudaError_t lstm_step_backward(const StepBackwardArgs<double>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastvae
