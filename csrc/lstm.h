// The fused LSTM ops: declarations shared by the op schemas (ops.cpp), the device implementations
// (cpu/lstm_cpu.cpp, cuda/lstm_cuda.cpp) and the C++ unit tests.
// Gate order is torch.nn.LSTM's: input, forget, cell (g), output.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastvae {

using Tensor = at::Tensor;

// Shared argument checks, so every device rejects bad input with the same words.
void check_lstm_cell_args(const Tensor& gates, const Tensor& c_prev);
void check_lstm_step_args(const Tensor& input_gates, const Tensor& h, const Tensor& c, const Tensor& weight_hh);
void check_lstm_sequence_args(const Tensor& input_gates, const Tensor& sample_gates, const Tensor& h0,
                              const Tensor& c0, const Tensor& weight_hh);
void check_lstm_sequence_backward_args(const Tensor& h0, const Tensor& c0, const Tensor& weight_hh,
                                       const Tensor& h_all, const Tensor& c_all, const Tensor& act);

// ---- CPU implementations (the CUDA ones have the same signatures, suffix _cuda) ----

// Pointwise part of one step. gates [N, 4H] pre-activations, c_prev [N, H]
// -> (h [N, H], c [N, H], act [N, 4H] activated gates, saved for backward).
std::tuple<Tensor, Tensor, Tensor> lstm_cell_forward_cpu(const Tensor& gates, const Tensor& c_prev);

// One step: gates = input_gates + h @ weight_hh^T. -> (h_new, c_new, act).
std::tuple<Tensor, Tensor, Tensor> lstm_step_forward_cpu(const Tensor& input_gates, const Tensor& h, const Tensor& c,
                                                         const Tensor& weight_hh);
// -> (grad_input_gates [N, 4H], grad_h [N, H], grad_c [N, H], grad_weight_hh [4H, H] or empty when not needed).
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_step_backward_cpu(const std::optional<Tensor>& grad_h_new,
                                                                  const std::optional<Tensor>& grad_c_new,
                                                                  const Tensor& h, const Tensor& c,
                                                                  const Tensor& c_new, const Tensor& act,
                                                                  const Tensor& weight_hh, bool need_weight_grad);

// The whole recurrence. input_gates [B, T, 4H] (shared by the K samples of a row), sample_gates [B, K, 4H]
// (added at every step), h0, c0 [B, K, H], weight_hh [4H, H]
// -> (h_all [B, K, T, H], c_last [B, K, H], c_all [B, K, T, H], act [B, K, T, 4H]);
// c_all and act are empty (0 elements) when save_for_backward is false.
// weight_hh_compute (optional): a low-precision copy of weight_hh (bfloat16) that the per-step recurrent GEMMs
// read, h_{t-1} rounded to its dtype (float32 accumulation); the state and the pointwise math stay float32.
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_sequence_forward_cpu(const Tensor& input_gates,
                                                                     const Tensor& sample_gates, const Tensor& h0,
                                                                     const Tensor& c0, const Tensor& weight_hh,
                                                                     bool save_for_backward,
                                                                     const std::optional<Tensor>& weight_hh_compute =
                                                                         std::nullopt);
// Backward through time. output_mask = which of (input_gates, sample_gates, weight_hh) need a gradient;
// the others come back empty. -> (grad_input_gates, grad_sample_gates, grad_h0, grad_c0, grad_weight_hh).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_sequence_backward_cpu(
    const std::optional<Tensor>& grad_h_all, const std::optional<Tensor>& grad_c_last, const Tensor& h0,
    const Tensor& c0, const Tensor& weight_hh, const Tensor& h_all, const Tensor& c_all, const Tensor& act,
    std::array<bool, 3> output_mask, const std::optional<Tensor>& weight_hh_compute = std::nullopt);

}  // namespace fastvae
