// C++ unit test of the CPU fused LSTM cell against plain ATen math.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "../lstm_cell.h"
#include "check.h"

static void check_against_aten(int64_t B, int64_t H, at::ScalarType dtype, double tol) {
  auto gates = at::randn({B, 4 * H}, at::TensorOptions().dtype(dtype)) * 3;
  auto c_prev = at::randn({B, H}, at::TensorOptions().dtype(dtype));
  auto [h, c, act] = fastvae::lstm_cell_forward_cpu(gates, c_prev);
  auto chunks = gates.to(at::kDouble).chunk(4, 1);
  auto i = chunks[0].sigmoid(), f = chunks[1].sigmoid(), g = chunks[2].tanh(), o = chunks[3].sigmoid();
  auto c_ref = f * c_prev.to(at::kDouble) + i * g;
  auto h_ref = o * c_ref.tanh();
  expect_close(c.to(at::kDouble), c_ref, tol, tol, "cell state");
  expect_close(h.to(at::kDouble), h_ref, tol, tol, "hidden state");
  expect_close(act.to(at::kDouble), at::cat({i, f, g, o}, 1), tol, tol, "activated gates");
}

int main() {
  at::manual_seed(0);
  check_against_aten(1, 1, at::kFloat, 1e-6);
  check_against_aten(37, 50, at::kFloat, 1e-6);
  check_against_aten(5, 3, at::kDouble, 1e-12);
  check_against_aten(7, 9, at::kBFloat16, 2e-2);

  // The op is reachable through the dispatcher under its public name.
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastvae::lstm_cell_forward", "");
  FASTVAE_EXPECT(op.hasKernelForDispatchKey(c10::DispatchKey::CPU), "CPU kernel registered");

  // Bad input: messages a user understands.
  expect_error([] { fastvae::lstm_cell_forward_cpu(at::zeros({2, 7}), at::zeros({2, 2})); }, "4*hidden",
               "gate width");
  expect_error([] { fastvae::lstm_cell_forward_cpu(at::zeros({3, 8}), at::zeros({2, 2})); }, "batch sizes differ",
               "batch mismatch");
  expect_error([] { fastvae::lstm_cell_forward_cpu(at::zeros({8}), at::zeros({2, 2})); }, "must be 2-D", "rank");
  expect_error(
      [] { fastvae::lstm_cell_forward_cpu(at::zeros({2, 8}, at::kInt), at::zeros({2, 2}, at::kInt)); },
      "floating-point", "integer dtype");
  std::cout << "test_lstm_cell: all checks passed" << std::endl;
  return 0;
}
