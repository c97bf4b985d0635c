// C++ unit tests of the CPU fused LSTM ops against plain ATen math (forward) and ATen autograd (backward).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <vector>

#include "../lstm.h"
#include "check.h"

using at::Tensor;

static at::TensorOptions opts(at::ScalarType dtype) { return at::TensorOptions().dtype(dtype); }

// Plain ATen: one step of the pointwise cell, gates [N, 4H] -> (h, c).
static std::pair<Tensor, Tensor> reference_cell(const Tensor& gates, const Tensor& c_prev) {
  auto chunks = gates.chunk(4, 1);
  auto c = chunks[1].sigmoid() * c_prev + chunks[0].sigmoid() * chunks[2].tanh();
  return {chunks[3].sigmoid() * c.tanh(), c};
}

// Plain ATen: the whole recurrence, h_all [B, K, T, H] and c_last [B, K, H].
static std::pair<Tensor, Tensor> reference_sequence(const Tensor& xg, const Tensor& zg, const Tensor& h0,
                                                    const Tensor& c0, const Tensor& w) {
  const int64_t B = xg.size(0), T = xg.size(1), G = xg.size(2), K = zg.size(1), H = G / 4;
  auto h = h0.reshape({B * K, H});
  auto c = c0.reshape({B * K, H});
  std::vector<Tensor> hs;
  for (int64_t t = 0; t < T; ++t) {
    auto gates = xg.select(1, t).repeat_interleave(K, 0) + zg.reshape({B * K, G}) + h.mm(w.t());
    std::tie(h, c) = reference_cell(gates, c);
    hs.push_back(h);
  }
  return {at::stack(hs, 1).view({B, K, T, H}), c.view({B, K, H})};
}

static void check_cell(int64_t B, int64_t H, at::ScalarType dtype, double tol) {
  auto gates = at::randn({B, 4 * H}, opts(dtype)) * 3;
  auto c_prev = at::randn({B, H}, opts(dtype));
  auto [h, c, act] = fastvae::lstm_cell_forward_cpu(gates, c_prev);
  auto [h_ref, c_ref] = reference_cell(gates.to(at::kDouble), c_prev.to(at::kDouble));
  expect_close(c.to(at::kDouble), c_ref, tol, tol, "cell state");
  expect_close(h.to(at::kDouble), h_ref, tol, tol, "hidden state");
  auto g = gates.to(at::kDouble).chunk(4, 1);
  expect_close(act.to(at::kDouble), at::cat({g[0].sigmoid(), g[1].sigmoid(), g[2].tanh(), g[3].sigmoid()}, 1), tol,
               tol, "activated gates");
}

static void check_sequence(int64_t B, int64_t K, int64_t T, int64_t H, at::ScalarType dtype, double tol) {
  const int64_t G = 4 * H;
  auto xg = at::randn({B, T, G}, opts(dtype));
  auto zg = at::randn({B, K, G}, opts(dtype));
  auto h0 = at::randn({B, K, H}, opts(dtype)).tanh();
  auto c0 = at::randn({B, K, H}, opts(dtype));
  auto w = at::randn({G, H}, opts(dtype)) * 0.3;
  auto [h_all, c_last, c_all, act] = fastvae::lstm_sequence_forward_cpu(xg, zg, h0, c0, w, true);
  auto [h_ref, c_ref] = reference_sequence(xg, zg, h0, c0, w);
  expect_close(h_all, h_ref, tol, tol, "sequence h_all");
  expect_close(c_last, c_ref, tol, tol, "sequence c_last");
  // Without saving: same outputs, nothing saved.
  auto [h2, c2, c_all2, act2] = fastvae::lstm_sequence_forward_cpu(xg, zg, h0, c0, w, false);
  expect_close(h2, h_ref, tol, tol, "sequence h_all (no save)");
  expect_close(c2, c_ref, tol, tol, "sequence c_last (no save)");
  FASTVAE_EXPECT(act2.numel() == 0 && c_all2.numel() == 0, "nothing saved without save_for_backward");

  // Backward against ATen autograd through the reference.
  auto gh = at::randn({B, K, T, H}, opts(dtype));
  auto gc = at::randn({B, K, H}, opts(dtype));
  auto [d_x, d_z, d_h0, d_c0, d_w] = fastvae::lstm_sequence_backward_cpu(gh, gc, h0, c0, w, h_all, c_all, act,
                                                                           {true, true, true});
  std::vector<Tensor> leaves = {xg.clone().requires_grad_(), zg.clone().requires_grad_(),
                                h0.clone().requires_grad_(), c0.clone().requires_grad_(), w.clone().requires_grad_()};
  auto [h_r, c_r] = reference_sequence(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4]);
  ((h_r * gh).sum() + (c_r * gc).sum()).backward();
  expect_close(d_x, leaves[0].grad(), tol, tol, "grad input_gates");
  expect_close(d_z, leaves[1].grad(), tol, tol, "grad sample_gates");
  expect_close(d_h0, leaves[2].grad(), tol, tol, "grad h0");
  expect_close(d_c0, leaves[3].grad(), tol, tol, "grad c0");
  expect_close(d_w, leaves[4].grad(), tol, tol, "grad weight_hh");
  // Skipping the weight gradient leaves the others unchanged.
  auto skipped = fastvae::lstm_sequence_backward_cpu(gh, gc, h0, c0, w, h_all, c_all, act, {false, false, false});
  FASTVAE_EXPECT(std::get<4>(skipped).numel() == 0 && std::get<0>(skipped).numel() == 0, "masked grads are empty");
  expect_close(std::get<2>(skipped), d_h0, tol, tol, "grad h0 with mask");
}

int main() {
  at::manual_seed(0);
  check_cell(1, 1, at::kFloat, 1e-6);
  check_cell(37, 50, at::kFloat, 1e-6);
  check_cell(5, 3, at::kDouble, 1e-12);
  check_cell(7, 9, at::kBFloat16, 2e-2);
  check_sequence(3, 1, 5, 4, at::kDouble, 1e-10);
  check_sequence(2, 3, 7, 5, at::kDouble, 1e-10);
  check_sequence(1, 1, 1, 1, at::kDouble, 1e-10);
  check_sequence(4, 2, 6, 8, at::kFloat, 1e-4);

  for (const char* name : {"fastvae::lstm_cell_forward", "fastvae::lstm_step_forward", "fastvae::lstm_step_backward",
                           "fastvae::lstm_sequence_forward", "fastvae::lstm_sequence_backward"}) {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
    FASTVAE_EXPECT(op.hasKernelForDispatchKey(c10::DispatchKey::CPU), name << ": CPU kernel registered");
  }

  // Bad input: messages a user understands.
  expect_error([] { fastvae::lstm_cell_forward_cpu(at::zeros({2, 7}), at::zeros({2, 2})); }, "4*hidden",
               "gate width");
  expect_error([] { fastvae::lstm_cell_forward_cpu(at::zeros({3, 8}), at::zeros({2, 2})); }, "batch sizes differ",
               "batch mismatch");
  expect_error([] { fastvae::lstm_cell_forward_cpu(at::zeros({8}), at::zeros({2, 2})); }, "must be 2-D", "rank");
  expect_error(
      [] { fastvae::lstm_cell_forward_cpu(at::zeros({2, 8}, at::kInt), at::zeros({2, 2}, at::kInt)); },
      "floating-point", "integer dtype");
  expect_error(
      [] {
        fastvae::lstm_sequence_forward_cpu(at::zeros({2, 3, 8}), at::zeros({2, 1, 8}), at::zeros({2, 1, 2}),
                                           at::zeros({2, 1, 2}), at::zeros({8, 3}), false);
      },
      "weight_hh must be", "weight shape");
  expect_error(
      [] {
        fastvae::lstm_sequence_forward_cpu(at::zeros({2, 3, 8}), at::zeros({3, 1, 8}), at::zeros({2, 1, 2}),
                                           at::zeros({2, 1, 2}), at::zeros({8, 2}), false);
      },
      "sample_gates must be", "sample shape");
  expect_error(
      [] {
        fastvae::lstm_sequence_forward_cpu(at::zeros({2, 3, 8}), at::zeros({2, 1, 8}, at::kDouble),
                                           at::zeros({2, 1, 2}), at::zeros({2, 1, 2}), at::zeros({8, 2}), false);
      },
      "share one dtype", "dtype mismatch");
  expect_error(
      [] {
        fastvae::lstm_step_forward_cpu(at::zeros({2, 8}), at::zeros({2, 2}), at::zeros({2, 3}), at::zeros({8, 2}));
      },
      "c must have the shape of h", "step state shape");
  std::cout << "test_lstm: all checks passed" << std::endl;
  return 0;
}
