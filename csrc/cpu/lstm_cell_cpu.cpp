// CPU implementation of the fused LSTM cell: one pass over the gates, parallel over the batch.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "../lstm_cell.h"

namespace fastvae {

namespace {
template <typename scalar_t, typename acc_t>
void lstm_cell_forward_rows(const scalar_t* gates, const scalar_t* c_prev, scalar_t* h, scalar_t* c,
                            scalar_t* act, int64_t begin, int64_t end, int64_t H) {
  for (int64_t b = begin; b < end; ++b) {
    const scalar_t* g = gates + b * 4 * H;
    scalar_t* a = act + b * 4 * H;
    for (int64_t j = 0; j < H; ++j) {
      const acc_t i_gate = acc_t(1) / (acc_t(1) + std::exp(-static_cast<acc_t>(g[j])));
      const acc_t f_gate = acc_t(1) / (acc_t(1) + std::exp(-static_cast<acc_t>(g[H + j])));
      const acc_t g_gate = std::tanh(static_cast<acc_t>(g[2 * H + j]));
      const acc_t o_gate = acc_t(1) / (acc_t(1) + std::exp(-static_cast<acc_t>(g[3 * H + j])));
      const acc_t c_new = f_gate * static_cast<acc_t>(c_prev[b * H + j]) + i_gate * g_gate;
      c[b * H + j] = static_cast<scalar_t>(c_new);
      h[b * H + j] = static_cast<scalar_t>(o_gate * std::tanh(c_new));
      a[j] = static_cast<scalar_t>(i_gate);
      a[H + j] = static_cast<scalar_t>(f_gate);
      a[2 * H + j] = static_cast<scalar_t>(g_gate);
      a[3 * H + j] = static_cast<scalar_t>(o_gate);
    }
  }
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(const at::Tensor& gates_in,
                                                                     const at::Tensor& c_prev_in) {
  check_lstm_cell_args(gates_in, c_prev_in);
  const auto gates = gates_in.contiguous();
  const auto c_prev = c_prev_in.contiguous();
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  auto h = at::empty_like(c_prev);
  auto c = at::empty_like(c_prev);
  auto act = at::empty_like(gates);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "lstm_cell_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, B, /*grain_size=*/std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)),
                     [&](int64_t begin, int64_t end) {
                       lstm_cell_forward_rows<scalar_t, acc_t>(
                           gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                           c.data_ptr<scalar_t>(), act.data_ptr<scalar_t>(), begin, end, H);
                     });
  });
  return {h, c, act};
}

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) { m.impl("lstm_cell_forward", &fastvae::lstm_cell_forward_cpu); }
