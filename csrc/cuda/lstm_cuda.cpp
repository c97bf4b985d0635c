// CUDA glue of the fused LSTM ops: the device-generic loops of lstm_loops.h (GEMMs through ATen ->
// cuBLAS, on the current stream) with the pointwise steps of lstm_kernels.cu, plus launch checks.
// Built only in CUDA builds (it needs torch's CUDA headers).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../lstm_loops.h"
#include "lstm_kernels.h"

namespace fastvae {

namespace {

struct CudaDevice {
  // All rows at once: one GEMM and one kernel per step.
  template <typename F>
  static void for_rows(int64_t N, int64_t /*H*/, const F& fn) {
    fn(0, N);
  }

  template <typename T>
  static void forward_step(const StepForwardArgs<T>& a) {
    const cudaError_t err = cuda::lstm_step_forward(a, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "fastvae.lstm: CUDA forward kernel launch failed: ", cudaGetErrorString(err));
  }
  template <typename T>
  static void backward_step(const StepBackwardArgs<T>& a) {
    const cudaError_t err = cuda::lstm_step_backward(a, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "fastvae.lstm: CUDA backward kernel launch failed: ", cudaGetErrorString(err));
  }
};

std::tuple<Tensor, Tensor, Tensor> lstm_cell_forward_cuda(const Tensor& gates, const Tensor& c_prev) {
  const c10::cuda::CUDAGuard guard(gates.device());
  return loops::cell_forward<CudaDevice>(gates, c_prev);
}

std::tuple<Tensor, Tensor, Tensor> lstm_step_forward_cuda(const Tensor& input_gates, const Tensor& h, const Tensor& c,
                                                          const Tensor& weight_hh) {
  const c10::cuda::CUDAGuard guard(h.device());
  return loops::step_forward<CudaDevice>(input_gates, h, c, weight_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_step_backward_cuda(const std::optional<Tensor>& grad_h_new,
                                                                   const std::optional<Tensor>& grad_c_new,
                                                                   const Tensor& h, const Tensor& c,
                                                                   const Tensor& c_new, const Tensor& act,
                                                                   const Tensor& weight_hh, bool need_weight_grad) {
  const c10::cuda::CUDAGuard guard(h.device());
  return loops::step_backward<CudaDevice>(grad_h_new, grad_c_new, h, c, c_new, act, weight_hh, need_weight_grad);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_sequence_forward_cuda(const Tensor& input_gates,
                                                                      const Tensor& sample_gates, const Tensor& h0,
                                                                      const Tensor& c0, const Tensor& weight_hh,
                                                                      bool save_for_backward,
                                                                      const std::optional<Tensor>& weight_hh_compute) {
  const c10::cuda::CUDAGuard guard(input_gates.device());
  return loops::sequence_forward<CudaDevice>(input_gates, sample_gates, h0, c0, weight_hh, save_for_backward,
                                             weight_hh_compute);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_sequence_backward_cuda(
    const std::optional<Tensor>& grad_h_all, const std::optional<Tensor>& grad_c_last, const Tensor& h0,
    const Tensor& c0, const Tensor& weight_hh, const Tensor& h_all, const Tensor& c_all, const Tensor& act,
    std::array<bool, 3> output_mask, const std::optional<Tensor>& weight_hh_compute) {
  const c10::cuda::CUDAGuard guard(h_all.device());
  return loops::sequence_backward<CudaDevice>(grad_h_all, grad_c_last, h0, c0, weight_hh, h_all, c_all, act,
                                              output_mask, weight_hh_compute);
}

}  // namespace

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  m.impl("lstm_cell_forward", &fastvae::lstm_cell_forward_cuda);
  m.impl("lstm_step_forward", &fastvae::lstm_step_forward_cuda);
  m.impl("lstm_step_backward", &fastvae::lstm_step_backward_cuda);
  m.impl("lstm_sequence_forward", &fastvae::lstm_sequence_forward_cuda);
  m.impl("lstm_sequence_backward", &fastvae::lstm_sequence_backward_cuda);
}
