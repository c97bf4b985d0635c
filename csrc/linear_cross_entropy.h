// The fused output layer + cross-entropy: declarations and the device-generic loop.
//
//   linear_cross_entropy_forward(hidden [N, H], weight [V, H], weight_compute [V, H] or none, target [N],
//                                row_scale [N], grad_mask [2], max_chunk_elems)
//     -> (loss [] = sum_i row_scale_i * nll_i, nll [N], grad_hidden [N, H], grad_weight [V, H])
//   nll_i = logsumexp_v(hidden_i . weight_v) - hidden_i . weight_{target_i}
//
// Rows are processed in chunks of at most max_chunk_elems logits: one GEMM into a reused buffer, then one
// pass per row (log-sum-exp, the loss and, when a gradient is asked for, d loss / d logits written over
// the logits), then the grad-hidden and grad-weight GEMMs from that buffer. The [N, V] logits never exist
// at once. The gradients are those of `loss` (the row scales are known at forward time: the caller's
// reduction), so backward only scales them by the incoming scalar gradient.
// weight_compute (optional, e.g. a bfloat16 copy of a float32 weight refreshed once per optimiser step)
// is the matrix the GEMMs read; hidden is cast to its dtype. The log-sum-exp, the loss and the gradient
// accumulation run in float32 (float64 for float64 inputs); the results come back in weight's dtype.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "gemm.h"

namespace fastvae {

using Tensor = at::Tensor;

void check_linear_cross_entropy_args(const Tensor& hidden, const Tensor& weight,
                                     const std::optional<Tensor>& weight_compute, const Tensor& target,
                                     const Tensor& row_scale, int64_t max_chunk_elems);

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_forward_cpu(
    const Tensor& hidden, const Tensor& weight, const std::optional<Tensor>& weight_compute, const Tensor& target,
    const Tensor& row_scale, std::array<bool, 2> grad_mask, int64_t max_chunk_elems);

namespace loops {

// Device provides
//   static void rows_loss(const Tensor& logits, const Tensor& target, const Tensor& scale, const Tensor& nll,
//                         bool need_grad);
// logits [rows, V] (compute dtype, contiguous), target [rows] int64, scale [rows] and nll [rows] in the
// accumulation dtype. It writes nll and, with need_grad, overwrites logits with
// scale_i * (softmax(logits_i) - onehot(target_i)).
template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> linear_cross_entropy(const Tensor& hidden_in, const Tensor& weight,
                                                               const std::optional<Tensor>& weight_compute_in,
                                                               const Tensor& target_in, const Tensor& row_scale_in,
                                                               std::array<bool, 2> grad_mask,
                                                               int64_t max_chunk_elems) {
  check_linear_cross_entropy_args(hidden_in, weight, weight_compute_in, target_in, row_scale_in, max_chunk_elems);
  const bool use_copy = weight_compute_in.has_value() && weight_compute_in->defined();
  const Tensor weight_c = (use_copy ? *weight_compute_in : weight).contiguous();
  const auto compute_type = weight_c.scalar_type();
  const auto acc_type = compute_type == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = hidden_in.size(0), H = hidden_in.size(1), V = weight.size(0);
  const Tensor hidden = hidden_in.to(compute_type).contiguous();
  const Tensor target = target_in.contiguous();
  const Tensor scale = row_scale_in.to(acc_type).contiguous();
  const auto acc_opts = hidden_in.options().dtype(acc_type);
  auto nll = at::empty({N}, acc_opts);
  auto grad_hidden = grad_mask[0] ? at::empty({N, H}, hidden_in.options()) : at::empty({0}, hidden_in.options());
  // float32 accumulation of the weight gradient across chunks; weight's dtype at the end
  Tensor grad_weight_acc = grad_mask[1] ? at::empty({V, H}, weight.options().dtype(acc_type)) : Tensor();
  if (grad_mask[1] && N == 0) grad_weight_acc.zero_();
  const bool need_grad = grad_mask[0] || grad_mask[1];
  if (N > 0) {
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, max_chunk_elems / V));
    auto buffer = at::empty({chunk, V}, hidden.options());
    const auto weight_t = weight_c.t();
    for (int64_t start = 0; start < N; start += chunk) {
      const int64_t rows = std::min(chunk, N - start);
      auto logits = buffer.narrow(0, 0, rows);
      const auto h_rows = hidden.narrow(0, start, rows);
      gemm_out(logits, h_rows, weight_t);
      Device::rows_loss(logits, target.narrow(0, start, rows), scale.narrow(0, start, rows),
                        nll.narrow(0, start, rows), need_grad);
      if (grad_mask[0]) {
        auto out = grad_hidden.narrow(0, start, rows);
        if (out.scalar_type() == compute_type) {
          gemm_out(out, logits, weight_c);
        } else {
          out.copy_(at::mm(logits, weight_c));
        }
      }
      if (grad_mask[1]) {
        if (compute_type == acc_type) {  // the GEMM writes (first chunk) or accumulates in place
          gemm_out(grad_weight_acc, logits.t(), h_rows, /*accumulate=*/start > 0);
        } else if (start == 0) {
          grad_weight_acc.copy_(at::mm(logits.t(), h_rows));
        } else {
          grad_weight_acc.add_(at::mm(logits.t(), h_rows));
        }
      }
    }
  }
  auto loss = (nll * scale).sum();
  Tensor grad_weight;
  if (grad_mask[1]) {
    grad_weight = grad_weight_acc.scalar_type() == weight.scalar_type() ? grad_weight_acc
                                                                          : grad_weight_acc.to(weight.scalar_type());
  } else {
    grad_weight = at::empty({0}, weight.options());
  }
  return {loss, nll, grad_hidden, grad_weight};
}

// The row pass in ATen ops (any device): a few kernels per chunk instead of one fused pass.
struct GenericRows {
  static void rows_loss(const Tensor& logits, const Tensor& target, const Tensor& scale, const Tensor& nll,
                        bool need_grad) {
    const auto acc = logits.to(nll.scalar_type());
    const auto lse = at::logsumexp(acc, {1});
    nll.copy_(lse - acc.gather(1, target.unsqueeze(1)).squeeze(1));
    if (need_grad) {
      auto grad = (acc - lse.unsqueeze(1)).exp_().mul_(scale.unsqueeze(1));
      grad.scatter_add_(1, target.unsqueeze(1), -scale.unsqueeze(1));
      logits.copy_(grad);
    }
  }
};

}  // namespace loops
}  // namespace fastvae
