// Declares every fastvae operator once; the devices register implementations
// (cpu/lstm_cpu.cpp, cuda/lstm_cuda.cpp) and the dispatcher picks one by the inputs' device.
#include <torch/library.h>


#include "linear_cross_entropy.h"
#include "lstm.h"

namespace fastvae {

namespace {
void check_float_same(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  TORCH_CHECK(at::isFloatingType(first->scalar_type()), "fastvae.", op, ": expected floating-point tensors, got ",
              first_name, " of dtype ", first->scalar_type());
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(tensor->scalar_type() == first->scalar_type(), "fastvae.", op, ": ", name, " has dtype ",
                tensor->scalar_type(), " but ", first_name, " has ", first->scalar_type(),
                "; all tensors must share one dtype");
    TORCH_CHECK(tensor->device() == first->device(), "fastvae.", op, ": ", name, " is on ", tensor->device(),
                " but ", first_name, " is on ", first->device(), "; move all tensors to the same device");
  }
}
}  // namespace

void check_lstm_cell_args(const Tensor& gates, const Tensor& c_prev) {
  TORCH_CHECK(gates.dim() == 2, "fastvae.lstm_cell: gates must be 2-D [batch, 4*hidden], got shape ",
              gates.sizes());
  TORCH_CHECK(c_prev.dim() == 2, "fastvae.lstm_cell: c_prev must be 2-D [batch, hidden], got shape ",
              c_prev.sizes());
  TORCH_CHECK(gates.size(0) == c_prev.size(0), "fastvae.lstm_cell: batch sizes differ: gates has ",
              gates.size(0), " rows, c_prev has ", c_prev.size(0));
  TORCH_CHECK(gates.size(1) == 4 * c_prev.size(1), "fastvae.lstm_cell: gates must have 4*hidden = ",
              4 * c_prev.size(1), " columns for hidden size ", c_prev.size(1), ", got ", gates.size(1));
  check_float_same("lstm_cell", {{"gates", &gates}, {"c_prev", &c_prev}});
}

void check_lstm_step_args(const Tensor& input_gates, const Tensor& h, const Tensor& c, const Tensor& weight_hh) {
  TORCH_CHECK(h.dim() == 2, "fastvae.lstm_step: h must be 2-D [rows, hidden], got shape ", h.sizes());
  const int64_t N = h.size(0), H = h.size(1);
  TORCH_CHECK(c.sizes() == h.sizes(), "fastvae.lstm_step: c must have the shape of h ", h.sizes(), ", got ",
              c.sizes());
  TORCH_CHECK(input_gates.dim() == 2 && input_gates.size(0) == N && input_gates.size(1) == 4 * H,
              "fastvae.lstm_step: input_gates must be [rows=", N, ", 4*hidden=", 4 * H, "], got shape ",
              input_gates.sizes());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 4 * H && weight_hh.size(1) == H,
              "fastvae.lstm_step: weight_hh must be [4*hidden=", 4 * H, ", hidden=", H, "], got shape ",
              weight_hh.sizes());
  check_float_same("lstm_step", {{"input_gates", &input_gates}, {"h", &h}, {"c", &c}, {"weight_hh", &weight_hh}});
}

void check_lstm_sequence_args(const Tensor& input_gates, const Tensor& sample_gates, const Tensor& h0,
                              const Tensor& c0, const Tensor& weight_hh) {
  TORCH_CHECK(input_gates.dim() == 3 && input_gates.size(2) % 4 == 0,
              "fastvae.lstm_sequence: input_gates must be 3-D [batch, time, 4*hidden], got shape ",
              input_gates.sizes());
  const int64_t B = input_gates.size(0), G = input_gates.size(2), H = G / 4;
  TORCH_CHECK(sample_gates.dim() == 3 && sample_gates.size(0) == B && sample_gates.size(2) == G,
              "fastvae.lstm_sequence: sample_gates must be [batch=", B, ", samples, 4*hidden=", G, "], got shape ",
              sample_gates.sizes());
  const int64_t K = sample_gates.size(1);
  TORCH_CHECK(h0.dim() == 3 && h0.size(0) == B && h0.size(1) == K && h0.size(2) == H,
              "fastvae.lstm_sequence: h0 must be [batch=", B, ", samples=", K, ", hidden=", H, "], got shape ",
              h0.sizes());
  TORCH_CHECK(c0.sizes() == h0.sizes(), "fastvae.lstm_sequence: c0 must have the shape of h0 ", h0.sizes(),
              ", got ", c0.sizes());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == G && weight_hh.size(1) == H,
              "fastvae.lstm_sequence: weight_hh must be [4*hidden=", G, ", hidden=", H, "], got shape ",
              weight_hh.sizes());
  check_float_same("lstm_sequence", {{"input_gates", &input_gates},
                                     {"sample_gates", &sample_gates},
                                     {"h0", &h0},
                                     {"c0", &c0},
                                     {"weight_hh", &weight_hh}});
}

void check_lstm_sequence_backward_args(const Tensor& h0, const Tensor& c0, const Tensor& weight_hh,
                                       const Tensor& h_all, const Tensor& c_all, const Tensor& act) {
  TORCH_CHECK(h_all.dim() == 4, "fastvae.lstm_sequence_backward: h_all must be [batch, samples, time, hidden], "
              "got shape ", h_all.sizes());
  const int64_t B = h_all.size(0), K = h_all.size(1), T = h_all.size(2), H = h_all.size(3);
  TORCH_CHECK(act.numel() == B * K * T * 4 * H && c_all.numel() == B * K * T * H,
              "fastvae.lstm_sequence_backward: the forward did not save its state (save_for_backward=false); "
              "run the forward with gradients enabled");
  TORCH_CHECK(h0.dim() == 3 && h0.size(0) == B && h0.size(1) == K && h0.size(2) == H && c0.sizes() == h0.sizes(),
              "fastvae.lstm_sequence_backward: h0/c0 must be [", B, ", ", K, ", ", H, "], got ", h0.sizes(), " and ",
              c0.sizes());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 4 * H && weight_hh.size(1) == H,
              "fastvae.lstm_sequence_backward: weight_hh must be [", 4 * H, ", ", H, "], got ", weight_hh.sizes());
  check_float_same("lstm_sequence_backward",
                   {{"h_all", &h_all}, {"h0", &h0}, {"c0", &c0}, {"weight_hh", &weight_hh}, {"c_all", &c_all},
                    {"act", &act}});
}

void check_linear_cross_entropy_args(const Tensor& hidden, const Tensor& weight,
                                     const std::optional<Tensor>& weight_compute, const Tensor& target,
                                     const Tensor& row_scale, int64_t max_chunk_elems) {
  TORCH_CHECK(hidden.dim() == 2, "fastvae.linear_cross_entropy: hidden must be 2-D [rows, hidden], got shape ",
              hidden.sizes());
  const int64_t N = hidden.size(0), H = hidden.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == H && weight.size(0) > 0,
              "fastvae.linear_cross_entropy: weight must be [vocab >= 1, hidden=", H, "], got shape ",
              weight.sizes());
  check_float_same("linear_cross_entropy", {{"hidden", &hidden}, {"weight", &weight}});
  if (weight_compute.has_value() && weight_compute->defined()) {
    TORCH_CHECK(weight_compute->sizes() == weight.sizes(), "fastvae.linear_cross_entropy: weight_compute must have "
                "the shape of weight ", weight.sizes(), ", got ", weight_compute->sizes());
    TORCH_CHECK(at::isFloatingType(weight_compute->scalar_type()) && weight_compute->device() == weight.device(),
                "fastvae.linear_cross_entropy: weight_compute must be a floating-point tensor on ", weight.device(),
                ", got ", weight_compute->scalar_type(), " on ", weight_compute->device());
  }
  TORCH_CHECK(target.dim() == 1 && target.size(0) == N && target.scalar_type() == at::kLong &&
                  target.device() == hidden.device(),
              "fastvae.linear_cross_entropy: target must be an int64 tensor [rows=", N, "] on ", hidden.device(),
              ", got ", target.scalar_type(), " of shape ", target.sizes(), " on ", target.device());
  TORCH_CHECK(row_scale.dim() == 1 && row_scale.size(0) == N && at::isFloatingType(row_scale.scalar_type()) &&
                  row_scale.device() == hidden.device(),
              "fastvae.linear_cross_entropy: row_scale must be a floating-point tensor [rows=", N, "] on ",
              hidden.device(), ", got ", row_scale.scalar_type(), " of shape ", row_scale.sizes());
  TORCH_CHECK(max_chunk_elems >= 1, "fastvae.linear_cross_entropy: max_chunk_elems must be >= 1, got ",
              max_chunk_elems);
}

}  // namespace fastvae

TORCH_LIBRARY(fastvae, m) {
  m.def("lstm_cell_forward(Tensor gates, Tensor c_prev) -> (Tensor, Tensor, Tensor)");
  m.def("lstm_step_forward(Tensor input_gates, Tensor h, Tensor c, Tensor weight_hh) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lstm_step_backward(Tensor? grad_h_new, Tensor? grad_c_new, Tensor h, Tensor c, Tensor c_new, Tensor act, "
      "Tensor weight_hh, bool need_weight_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_sequence_forward(Tensor input_gates, Tensor sample_gates, Tensor h0, Tensor c0, Tensor weight_hh, "
      "bool save_for_backward, Tensor? weight_hh_compute=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_sequence_backward(Tensor? grad_h_all, Tensor? grad_c_last, Tensor h0, Tensor c0, Tensor weight_hh, "
      "Tensor h_all, Tensor c_all, Tensor act, bool[3] output_mask, Tensor? weight_hh_compute=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "linear_cross_entropy_forward(Tensor hidden, Tensor weight, Tensor? weight_compute, Tensor target, "
      "Tensor row_scale, bool[2] grad_mask, int max_chunk_elems) -> (Tensor, Tensor, Tensor, Tensor)");
}
