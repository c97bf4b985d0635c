// CPU implementation of the fused LSTM ops: the pointwise step, parallel over rows with ATen's
// parallel_for; the time loops and GEMMs are the device-generic ones in lstm_loops.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../lstm_loops.h"

namespace fastvae {

namespace {

// Rows per task: about 16k units of work, so small batches do not pay threading overhead.
inline int64_t grain_rows(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)); }

struct CpuDevice {
  template <typename T>
  static void forward_step(const StepForwardArgs<T>& a) {
    const int64_t H = a.H;
    at::parallel_for(0, a.N, grain_rows(H), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* rec = a.recurrent + n * 4 * H;
        const T* in = a.input ? a.input + (n / a.K) * a.input_stride : nullptr;
        const T* smp = a.sample ? a.sample + n * 4 * H : nullptr;
        const T* c_prev = a.c_prev + n * a.c_prev_stride;
        T* h = a.h + n * a.h_stride;
        T* c = a.c + n * a.c_stride;
        T* act = a.act ? a.act + n * a.act_stride : nullptr;
        for (int64_t j = 0; j < H; ++j) {
          T pre[4];
          for (int q = 0; q < 4; ++q) {
            pre[q] = rec[q * H + j];
            if (in) pre[q] += in[q * H + j];
            if (smp) pre[q] += smp[q * H + j];
          }
          T i, f, g, o, c_new, h_new;
          lstm_unit_forward<T>(pre[0], pre[1], pre[2], pre[3], c_prev[j], i, f, g, o, c_new, h_new);
          c[j] = c_new;
          h[j] = h_new;
          if (act) {
            act[j] = i;
            act[H + j] = f;
            act[2 * H + j] = g;
            act[3 * H + j] = o;
          }
        }
      }
    });
  }

  template <typename T>
  static void backward_step(const StepBackwardArgs<T>& a) {
    const int64_t H = a.H;
    at::parallel_for(0, a.N, grain_rows(H), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T* act = a.act + n * a.act_stride;
        const T* c = a.c + n * a.c_stride;
        const T* c_prev = a.c_prev + n * a.c_prev_stride;
        const T* grad_h = a.grad_h ? a.grad_h + n * a.grad_h_stride : nullptr;
        const T* dh_rec = a.dh_rec ? a.dh_rec + n * H : nullptr;
        T* dc = a.dc + n * H;
        T* dg = a.d_gates + n * a.d_gates_stride;
        for (int64_t j = 0; j < H; ++j) {
          T dh = T(0);
          if (grad_h) dh += grad_h[j];
          if (dh_rec) dh += dh_rec[j];
          T d_i, d_f, d_g, d_o, dc_prev;
          lstm_unit_backward<T>(act[j], act[H + j], act[2 * H + j], act[3 * H + j], c[j], c_prev[j], dh, dc[j], d_i,
                                d_f, d_g, d_o, dc_prev);
          dg[j] = d_i;
          dg[H + j] = d_f;
          dg[2 * H + j] = d_g;
          dg[3 * H + j] = d_o;
          dc[j] = dc_prev;
        }
      }
    });
  }
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm_cell_forward_cpu(const Tensor& gates, const Tensor& c_prev) {
  return loops::cell_forward<CpuDevice>(gates, c_prev);
}

std::tuple<Tensor, Tensor, Tensor> lstm_step_forward_cpu(const Tensor& input_gates, const Tensor& h, const Tensor& c,
                                                         const Tensor& weight_hh) {
  return loops::step_forward<CpuDevice>(input_gates, h, c, weight_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_step_backward_cpu(const std::optional<Tensor>& grad_h_new,
                                                                  const std::optional<Tensor>& grad_c_new,
                                                                  const Tensor& h, const Tensor& c,
                                                                  const Tensor& c_new, const Tensor& act,
                                                                  const Tensor& weight_hh, bool need_weight_grad) {
  return loops::step_backward<CpuDevice>(grad_h_new, grad_c_new, h, c, c_new, act, weight_hh, need_weight_grad);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_sequence_forward_cpu(const Tensor& input_gates,
                                                                     const Tensor& sample_gates, const Tensor& h0,
                                                                     const Tensor& c0, const Tensor& weight_hh,
                                                                     bool save_for_backward) {
  return loops::sequence_forward<CpuDevice>(input_gates, sample_gates, h0, c0, weight_hh, save_for_backward);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_sequence_backward_cpu(
    const std::optional<Tensor>& grad_h_all, const std::optional<Tensor>& grad_c_last, const Tensor& h0,
    const Tensor& c0, const Tensor& weight_hh, const Tensor& h_all, const Tensor& c_all, const Tensor& act,
    std::array<bool, 3> output_mask) {
  return loops::sequence_backward<CpuDevice>(grad_h_all, grad_c_last, h0, c0, weight_hh, h_all, c_all, act,
                                             output_mask);
}

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  m.impl("lstm_cell_forward", &fastvae::lstm_cell_forward_cpu);
  m.impl("lstm_step_forward", &fastvae::lstm_step_forward_cpu);
  m.impl("lstm_step_backward", &fastvae::lstm_step_backward_cpu);
  m.impl("lstm_sequence_forward", &fastvae::lstm_sequence_forward_cpu);
  m.impl("lstm_sequence_backward", &fastvae::lstm_sequence_backward_cpu);
}
