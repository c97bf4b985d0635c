// The device-generic parts of the fused LSTM ops: shapes, allocation, the time loops and the GEMMs
// (through ATen: BLAS on the CPU, cuBLAS on the GPU). Only the pointwise step differs per device:
// `Device` provides
//   template <typename T> static void forward_step(const StepForwardArgs<T>&);
//   template <typename T> static void backward_step(const StepBackwardArgs<T>&);
//   template <typename F> static void for_rows(int64_t N, int64_t H, const F& fn);  // fn(begin, end) per slice
// Included by cpu/lstm_cpu.cpp and cuda/lstm_cuda.cpp.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "gemm.h"
#include "lstm.h"
#include "lstm_pointwise.h"

namespace fastvae {
namespace loops {

// Half and bfloat16 inputs run in float32 (fp32 accumulation) and return in their own dtype.
inline bool needs_upcast(const Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}
inline std::optional<Tensor> to_float(const std::optional<Tensor>& t) {
  if (t.has_value() && t->defined()) return t->to(at::kFloat);
  return t;
}

template <typename T>
StepForwardArgs<T> forward_args(const Tensor& recurrent, const T* input, int64_t input_stride, const T* sample,
                                const T* c_prev, int64_t c_prev_stride, T* h, int64_t h_stride, T* c,
                                int64_t c_stride, T* act, int64_t act_stride, int64_t N, int64_t K, int64_t H) {
  StepForwardArgs<T> a;
  a.recurrent = recurrent.data_ptr<T>();
  a.input = input;
  a.input_stride = input_stride;
  a.sample = sample;
  a.c_prev = c_prev;
  a.c_prev_stride = c_prev_stride;
  a.h = h;
  a.h_stride = h_stride;
  a.c = c;
  a.c_stride = c_stride;
  a.act = act;
  a.act_stride = act_stride;
  a.N = N;
  a.K = K;
  a.H = H;
  a.row_offset = 0;
  return a;
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor> cell_forward(const Tensor& gates_in, const Tensor& c_prev_in) {
  check_lstm_cell_args(gates_in, c_prev_in);
  if (needs_upcast(gates_in)) {
    auto [h, c, act] = cell_forward<Device>(gates_in.to(at::kFloat), c_prev_in.to(at::kFloat));
    const auto type = gates_in.scalar_type();
    return {h.to(type), c.to(type), act.to(type)};
  }
  const auto gates = gates_in.contiguous();
  const auto c_prev = c_prev_in.contiguous();
  const int64_t N = c_prev.size(0), H = c_prev.size(1);
  auto h = at::empty_like(c_prev);
  auto c = at::empty_like(c_prev);
  auto act = at::empty_like(gates);
  if (N * H == 0) return {h, c, act};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "fastvae.lstm_cell", [&] {
    Device::template forward_step<scalar_t>(forward_args<scalar_t>(
        gates, nullptr, 0, nullptr, c_prev.data_ptr<scalar_t>(), H, h.data_ptr<scalar_t>(), H,
        c.data_ptr<scalar_t>(), H, act.data_ptr<scalar_t>(), 4 * H, N, 1, H));
  });
  return {h, c, act};
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor> step_forward(const Tensor& input_gates_in, const Tensor& h_in,
                                                const Tensor& c_in, const Tensor& weight_hh) {
  check_lstm_step_args(input_gates_in, h_in, c_in, weight_hh);
  if (needs_upcast(h_in)) {
    auto [h, c, act] = step_forward<Device>(input_gates_in.to(at::kFloat), h_in.to(at::kFloat),
                                            c_in.to(at::kFloat), weight_hh.to(at::kFloat));
    const auto type = h_in.scalar_type();
    return {h.to(type), c.to(type), act.to(type)};
  }
  const auto input_gates = input_gates_in.contiguous();
  const auto c_prev = c_in.contiguous();
  const int64_t N = h_in.size(0), H = h_in.size(1);
  auto h = at::empty_like(c_prev);
  auto c = at::empty_like(c_prev);
  auto act = at::empty_like(input_gates);
  if (N * H == 0) return {h, c, act};
  auto recurrent = at::empty({N, 4 * H}, h_in.options());
  gemm_out(recurrent, h_in, weight_hh.t());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "fastvae.lstm_step", [&] {
    Device::template forward_step<scalar_t>(forward_args<scalar_t>(
        recurrent, input_gates.data_ptr<scalar_t>(), 4 * H, nullptr, c_prev.data_ptr<scalar_t>(), H,
        h.data_ptr<scalar_t>(), H, c.data_ptr<scalar_t>(), H, act.data_ptr<scalar_t>(), 4 * H, N, 1, H));
  });
  return {h, c, act};
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> step_backward(const std::optional<Tensor>& grad_h_new,
                                                         const std::optional<Tensor>& grad_c_new, const Tensor& h,
                                                         const Tensor& c_in, const Tensor& c_new_in,
                                                         const Tensor& act_in, const Tensor& weight_hh,
                                                         bool need_weight_grad) {
  check_lstm_step_args(act_in, h, c_in, weight_hh);
  TORCH_CHECK(c_new_in.sizes() == c_in.sizes(), "fastvae.lstm_step_backward: c_new must have the shape of c ",
              c_in.sizes(), ", got ", c_new_in.sizes());
  if (needs_upcast(h)) {
    auto [dg, dh, dc, dw] = step_backward<Device>(to_float(grad_h_new), to_float(grad_c_new), h.to(at::kFloat),
                                                  c_in.to(at::kFloat), c_new_in.to(at::kFloat),
                                                  act_in.to(at::kFloat), weight_hh.to(at::kFloat), need_weight_grad);
    const auto type = h.scalar_type();
    return {dg.to(type), dh.to(type), dc.to(type), dw.to(type)};
  }
  const int64_t N = h.size(0), H = h.size(1);
  const auto act = act_in.contiguous();
  const auto c_prev = c_in.contiguous();
  const auto c_new = c_new_in.contiguous();
  auto dc = (grad_c_new.has_value() && grad_c_new->defined()) ? grad_c_new->contiguous().clone()
                                                              : at::zeros_like(c_prev);
  Tensor grad_h_c;
  if (grad_h_new.has_value() && grad_h_new->defined()) grad_h_c = grad_h_new->contiguous();
  auto d_gates = at::empty_like(act);
  if (N * H > 0) {
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "fastvae.lstm_step_backward", [&] {
      StepBackwardArgs<scalar_t> a;
      a.act = act.data_ptr<scalar_t>();
      a.act_stride = 4 * H;
      a.c = c_new.data_ptr<scalar_t>();
      a.c_stride = H;
      a.c_prev = c_prev.data_ptr<scalar_t>();
      a.c_prev_stride = H;
      a.grad_h = grad_h_c.defined() ? grad_h_c.data_ptr<scalar_t>() : nullptr;
      a.grad_h_stride = H;
      a.dh_rec = nullptr;
      a.dc = dc.data_ptr<scalar_t>();
      a.d_gates = d_gates.data_ptr<scalar_t>();
      a.d_gates_stride = 4 * H;
      a.N = N;
      a.H = H;
      Device::template backward_step<scalar_t>(a);
    });
  } else {
    d_gates.zero_();
  }
  auto grad_h = at::empty({N, H}, h.options());
  gemm_out(grad_h, d_gates, weight_hh);
  auto grad_w = at::empty({need_weight_grad ? 4 * H : 0, need_weight_grad ? H : 0}, h.options());
  if (need_weight_grad) gemm_out(grad_w, d_gates.t(), h);
  return {d_gates, grad_h, dc, grad_w};
}

// The recurrent GEMM out = a @ b (b maybe transposed) in float32, or, with a low-precision copy of the weight,
// with `a` rounded into a_low and the product in that dtype, then widened into out.
struct RecurrentGemm {
  Tensor weight;      // float32 operand (maybe a transposed view)
  Tensor weight_low;  // the same in low precision, or undefined
  Tensor a_low, out_low;  // per-row scratch of the low-precision path: [N, k], [N, n]

  RecurrentGemm(const Tensor& w, const std::optional<Tensor>& w_low, int64_t N, const at::TensorOptions& opts)
      : weight(w) {
    if (w_low.has_value() && w_low->defined()) {
      weight_low = *w_low;
      a_low = at::empty({N, w.size(0)}, opts.dtype(weight_low.scalar_type()));
      out_low = at::empty({N, w.size(1)}, opts.dtype(weight_low.scalar_type()));
    }
  }
  // rows [begin, begin + rows) of the product into out (a view of those rows)
  void run(Tensor out, const Tensor& a, int64_t begin, int64_t rows) const {
    if (!weight_low.defined()) {
      gemm_out(out, a, weight);
      return;
    }
    auto a_rows = a_low.narrow(0, begin, rows);
    a_rows.copy_(a);
    auto o_rows = out_low.narrow(0, begin, rows);
    at::mm_out(o_rows, a_rows, weight_low);
    out.copy_(o_rows);
  }
};

inline std::optional<Tensor> low_copy_view(const std::optional<Tensor>& w_low, bool transpose) {
  if (!w_low.has_value() || !w_low->defined()) return std::nullopt;
  return transpose ? w_low->t() : *w_low;
}

inline void check_weight_compute(const char* op, const Tensor& weight_hh, const std::optional<Tensor>& w_low) {
  if (!w_low.has_value() || !w_low->defined()) return;
  TORCH_CHECK(w_low->sizes() == weight_hh.sizes() && at::isFloatingType(w_low->scalar_type()) &&
                  w_low->device() == weight_hh.device(),
              "fastvae.", op, ": weight_hh_compute must be a floating-point tensor shaped like weight_hh ",
              weight_hh.sizes(), " on ", weight_hh.device(), ", got ", w_low->scalar_type(), " ", w_low->sizes(),
              " on ", w_low->device());
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> sequence_forward(const Tensor& input_gates_in, const Tensor& sample_gates_in,
                                                            const Tensor& h0_in, const Tensor& c0_in,
                                                            const Tensor& weight_hh_in, bool save,
                                                            const std::optional<Tensor>& weight_low = std::nullopt) {
  check_lstm_sequence_args(input_gates_in, sample_gates_in, h0_in, c0_in, weight_hh_in);
  check_weight_compute("lstm_sequence", weight_hh_in, weight_low);
  if (needs_upcast(input_gates_in)) {
    auto [h_all, c_last, c_all, act] =
        sequence_forward<Device>(input_gates_in.to(at::kFloat), sample_gates_in.to(at::kFloat),
                                 h0_in.to(at::kFloat), c0_in.to(at::kFloat), weight_hh_in.to(at::kFloat), save,
                                 weight_low);
    const auto type = input_gates_in.scalar_type();
    return {h_all.to(type), c_last.to(type), c_all.to(type), act.to(type)};
  }
  const int64_t B = input_gates_in.size(0), T = input_gates_in.size(1), G = input_gates_in.size(2), H = G / 4;
  const int64_t K = sample_gates_in.size(1), N = B * K;
  const auto input_gates = input_gates_in.contiguous();
  const auto sample_gates = sample_gates_in.contiguous();
  const auto h0 = h0_in.reshape({N, H}).contiguous();
  const auto c0 = c0_in.reshape({N, H}).contiguous();
  const auto weight_t = weight_hh_in.t();
  const auto opts = input_gates.options();
  auto h_all = at::empty({N, T, H}, opts);
  auto c_all = save ? at::empty({N, T, H}, opts) : at::empty({0}, opts);
  auto act = save ? at::empty({N, T, G}, opts) : at::empty({0}, opts);
  auto c_last = at::empty({N, H}, opts);
  if (T == 0 || N * H == 0) {
    c_last.copy_(c0);
    if (save) c_all.zero_(), act.zero_();
    return {h_all.view({B, K, T, H}), c_last.view({B, K, H}), save ? c_all.view({B, K, T, H}) : c_all,
            save ? act.view({B, K, T, G}) : act};
  }
  auto recurrent = at::empty({N, G}, opts);
  auto c_ping = save ? Tensor() : at::empty({2, N, H}, opts);
  const RecurrentGemm gemm(weight_t, low_copy_view(weight_low, true), N, opts);
  AT_DISPATCH_FLOATING_TYPES(input_gates.scalar_type(), "fastvae.lstm_sequence", [&] {
    using T_ = scalar_t;
    // The whole time loop for rows [begin, end); row slices of every buffer are disjoint.
    Device::for_rows(N, H, [&](int64_t begin, int64_t end) {
      const int64_t rows = end - begin;
      auto rec = recurrent.narrow(0, begin, rows);
      const auto h_rows = h_all.narrow(0, begin, rows);
      T_* h_base = h_all.data_ptr<T_>() + begin * T * H;
      T_* c_all_base = save ? c_all.data_ptr<T_>() + begin * T * H : nullptr;
      const T_* c0_base = c0.data_ptr<T_>() + begin * H;
      for (int64_t t = 0; t < T; ++t) {
        // rec = h_{t-1} @ W_hh^T: h_{t-1} is read in place from h_all (rows of stride T*H).
        gemm.run(rec, t == 0 ? h0.narrow(0, begin, rows) : h_rows.select(1, t - 1), begin, rows);
        const T_* c_prev;
        int64_t c_prev_stride;
        T_* c_out;
        int64_t c_stride;
        if (t == 0) {
          c_prev = c0_base;
          c_prev_stride = H;
        } else if (save) {
          c_prev = c_all_base + (t - 1) * H;
          c_prev_stride = T * H;
        } else {
          c_prev = c_ping[(t - 1) % 2].data_ptr<T_>() + begin * H;
          c_prev_stride = H;
        }
        if (save) {
          c_out = c_all_base + t * H;
          c_stride = T * H;
        } else {
          c_out = (t == T - 1 ? c_last.data_ptr<T_>() : c_ping[t % 2].data_ptr<T_>()) + begin * H;
          c_stride = H;
        }
        auto args = forward_args<T_>(rec, input_gates.data_ptr<T_>() + t * G, T * G,
                                     sample_gates.data_ptr<T_>() + begin * G, c_prev, c_prev_stride, h_base + t * H,
                                     T * H, c_out, c_stride,
                                     save ? act.data_ptr<T_>() + begin * T * G + t * G : nullptr, T * G, rows, K, H);
        args.row_offset = begin;
        Device::template forward_step<T_>(args);
      }
    });
  });
  if (save) c_last.copy_(c_all.select(1, T - 1));
  return {h_all.view({B, K, T, H}), c_last.view({B, K, H}), save ? c_all.view({B, K, T, H}) : c_all,
          save ? act.view({B, K, T, G}) : act};
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sequence_backward(
    const std::optional<Tensor>& grad_h_all_in, const std::optional<Tensor>& grad_c_last_in, const Tensor& h0_in,
    const Tensor& c0_in, const Tensor& weight_hh, const Tensor& h_all_in, const Tensor& c_all_in,
    const Tensor& act_in, std::array<bool, 3> output_mask, const std::optional<Tensor>& weight_low = std::nullopt) {
  check_lstm_sequence_backward_args(h0_in, c0_in, weight_hh, h_all_in, c_all_in, act_in);
  check_weight_compute("lstm_sequence_backward", weight_hh, weight_low);
  const int64_t B = h_all_in.size(0), K = h_all_in.size(1), T = h_all_in.size(2), H = h_all_in.size(3);
  const int64_t G = 4 * H, N = B * K;
  const bool have_grad_h = grad_h_all_in.has_value() && grad_h_all_in->defined();
  const bool have_grad_c = grad_c_last_in.has_value() && grad_c_last_in->defined();
  if (have_grad_h) {
    TORCH_CHECK(grad_h_all_in->sizes() == h_all_in.sizes(), "fastvae.lstm_sequence_backward: grad_h_all must have "
                "the shape of h_all ", h_all_in.sizes(), ", got ", grad_h_all_in->sizes());
  }
  if (have_grad_c) {
    TORCH_CHECK(grad_c_last_in->sizes() == h0_in.sizes(), "fastvae.lstm_sequence_backward: grad_c_last must have "
                "the shape of c0 ", h0_in.sizes(), ", got ", grad_c_last_in->sizes());
  }
  if (needs_upcast(h_all_in)) {
    auto out = sequence_backward<Device>(to_float(grad_h_all_in), to_float(grad_c_last_in), h0_in.to(at::kFloat),
                                         c0_in.to(at::kFloat), weight_hh.to(at::kFloat), h_all_in.to(at::kFloat),
                                         c_all_in.to(at::kFloat), act_in.to(at::kFloat), output_mask, weight_low);
    const auto type = h_all_in.scalar_type();
    return {std::get<0>(out).to(type), std::get<1>(out).to(type), std::get<2>(out).to(type),
            std::get<3>(out).to(type), std::get<4>(out).to(type)};
  }
  const auto opts = h_all_in.options();
  const auto h_all = h_all_in.reshape({N, T, H}).contiguous();
  const auto c_all = c_all_in.reshape({N, T, H}).contiguous();
  const auto act = act_in.reshape({N, T, G}).contiguous();
  const auto h0 = h0_in.reshape({N, H}).contiguous();
  const auto c0 = c0_in.reshape({N, H}).contiguous();
  const auto weight = weight_hh.contiguous();
  Tensor grad_h;
  if (have_grad_h) grad_h = grad_h_all_in->reshape({N, T, H}).contiguous();
  auto dc = have_grad_c ? grad_c_last_in->reshape({N, H}).contiguous().clone() : at::zeros({N, H}, opts);
  auto dh_rec = at::zeros({N, H}, opts);
  auto d_gates = at::empty({N, T, G}, opts);
  const RecurrentGemm gemm(weight, low_copy_view(weight_low, false), N, opts);
  if (N * H > 0) {
    AT_DISPATCH_FLOATING_TYPES(h_all.scalar_type(), "fastvae.lstm_sequence_backward", [&] {
      using T_ = scalar_t;
      Device::for_rows(N, H, [&](int64_t begin, int64_t end) {
        const int64_t rows = end - begin;
        auto dh_rows = dh_rec.narrow(0, begin, rows);
        const auto d_gates_rows = d_gates.narrow(0, begin, rows);
        const int64_t seq_offset = begin * T;  // first element row of this slice in [N, T, *] buffers
        for (int64_t t = T - 1; t >= 0; --t) {
          StepBackwardArgs<T_> a;
          a.act = act.data_ptr<T_>() + (seq_offset + t) * G;
          a.act_stride = T * G;
          a.c = c_all.data_ptr<T_>() + (seq_offset + t) * H;
          a.c_stride = T * H;
          a.c_prev = t > 0 ? c_all.data_ptr<T_>() + (seq_offset + t - 1) * H : c0.data_ptr<T_>() + begin * H;
          a.c_prev_stride = t > 0 ? T * H : H;
          a.grad_h = have_grad_h ? grad_h.data_ptr<T_>() + (seq_offset + t) * H : nullptr;
          a.grad_h_stride = T * H;
          a.dh_rec = t < T - 1 ? dh_rec.data_ptr<T_>() + begin * H : nullptr;
          a.dc = dc.data_ptr<T_>() + begin * H;
          a.d_gates = d_gates.data_ptr<T_>() + (seq_offset + t) * G;
          a.d_gates_stride = T * G;
          a.N = rows;
          a.H = H;
          Device::template backward_step<T_>(a);
          // Gradient reaching h_{t-1}: d_gates_t @ W_hh (d_gates_t read in place, rows of stride T*G).
          gemm.run(dh_rows, d_gates_rows.select(1, t), begin, rows);
        }
      });
    });
  } else {
    d_gates.zero_();
  }
  const auto d_gates4 = d_gates.view({B, K, T, G});
  auto grad_input = output_mask[0] ? (K == 1 ? d_gates4.select(1, 0).clone() : d_gates4.sum(1))
                                   : at::empty({0}, opts);
  auto grad_sample = output_mask[1] ? d_gates4.sum(2) : at::empty({0}, opts);
  Tensor grad_w;
  if (output_mask[2]) {
    // All weight-gradient GEMMs of the sequence in one: sum_t d_gates_t^T @ h_{t-1}.
    const auto h_prev = T > 0 ? at::cat({h0.view({N, 1, H}), h_all.narrow(1, 0, T - 1)}, 1) : h_all;
    if (gemm.weight_low.defined()) {  // in the copy's precision, as the steps' GEMMs
      const auto low = gemm.weight_low.scalar_type();
      grad_w = at::mm(d_gates.view({N * T, G}).t().to(low), h_prev.reshape({N * T, H}).to(low)).to(opts.dtype());
    } else {
      grad_w = at::empty({G, H}, opts);
      gemm_out(grad_w, d_gates.view({N * T, G}).t(), h_prev.reshape({N * T, H}));
    }
  } else {
    grad_w = at::empty({0}, opts);
  }
  return {grad_input, grad_sample, dh_rec.view({B, K, H}), dc.view({B, K, H}), grad_w};
}

}  // namespace loops
}  // namespace fastvae
