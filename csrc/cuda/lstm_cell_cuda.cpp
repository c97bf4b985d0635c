// CUDA glue for the fused LSTM cell: checks, allocation, current stream, launch check.
// Built only in CUDA builds (it needs torch's CUDA headers).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../lstm_cell.h"
#include "lstm_cell_kernel.h"

namespace fastvae {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cuda(const at::Tensor& gates_in,
                                                                      const at::Tensor& c_prev_in) {
  check_lstm_cell_args(gates_in, c_prev_in);
  const c10::cuda::CUDAGuard guard(gates_in.device());
  const auto gates = gates_in.contiguous();
  const auto c_prev = c_prev_in.contiguous();
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  auto h = at::empty_like(c_prev);
  auto c = at::empty_like(c_prev);
  auto act = at::empty_like(gates);
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  if (gates.scalar_type() == at::kFloat) {
    err = cuda::lstm_cell_forward_f32(gates.data_ptr<float>(), c_prev.data_ptr<float>(), h.data_ptr<float>(),
                                      c.data_ptr<float>(), act.data_ptr<float>(), B, H, stream);
  } else if (gates.scalar_type() == at::kDouble) {
    err = cuda::lstm_cell_forward_f64(gates.data_ptr<double>(), c_prev.data_ptr<double>(),
                                      h.data_ptr<double>(), c.data_ptr<double>(), act.data_ptr<double>(), B, H,
                                      stream);
  } else {
    // Half inputs: compute in fp32 and cast back (fp32 accumulation).
    auto out = lstm_cell_forward_cuda(gates.to(at::kFloat), c_prev.to(at::kFloat));
    return {std::get<0>(out).to(gates.scalar_type()), std::get<1>(out).to(gates.scalar_type()),
            std::get<2>(out).to(gates.scalar_type())};
  }
  TORCH_CHECK(err == cudaSuccess, "fastvae.lstm_cell: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {h, c, act};
}

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) { m.impl("lstm_cell_forward", &fastvae::lstm_cell_forward_cuda); }
