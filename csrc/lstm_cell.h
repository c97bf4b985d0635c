// The fused LSTM cell: pointwise part of one step.
// Gate order is torch.nn.LSTM's: input, forget, cell (g), output.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace fastvae {

// gates: [B, 4H] pre-activations (x W_ih^T + h W_hh^T + biases), c_prev: [B, H].
// Returns (h [B, H], c [B, H], act_gates [B, 4H] = sigmoid/tanh-activated gates,
// saved for the backward pass).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(
    const at::Tensor& gates, const at::Tensor& c_prev);

// Shared argument checks, so CPU and CUDA reject bad input with the same words.
void check_lstm_cell_args(const at::Tensor& gates, const at::Tensor& c_prev);

}  // namespace fastvae
