// CPU implementation of the fused LSTM ops: the pointwise step, parallel over rows with ATen's
// parallel_for and vectorised over hidden units (float32 uses a call-free exp so the compiler emits
// SIMD code; target_clones picks AVX-512/AVX2 at load time); the time loops and GEMMs are the
// device-generic ones in lstm_loops.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../lstm_loops.h"
#include "vec_math.h"

namespace fastvae {

namespace {

// Rows per task: about 16k units of work, so small batches do not pay threading overhead.
inline int64_t grain_rows(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)); }

template <typename T>
struct Math {  // float64: the library functions (exact reference behaviour)
  static T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
  static T tanh(T x) { return std::tanh(x); }
};
template <>
struct Math<float> {
  static float sigmoid(float x) { return 1.0f / (1.0f + exp_f32(-x)); }
  static float tanh(float x) { return 1.0f - 2.0f / (exp_f32(2.0f * x) + 1.0f); }
};

// One row of the forward step. pre: [4H] scratch holding the summed pre-activations.
template <typename T>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void forward_row(const T* __restrict__ pre, const T* __restrict__ c_prev, T* __restrict__ h, T* __restrict__ c,
                 T* __restrict__ act, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = Math<T>::sigmoid(pre[j]);
    const T f = Math<T>::sigmoid(pre[H + j]);
    const T g = Math<T>::tanh(pre[2 * H + j]);
    const T o = Math<T>::sigmoid(pre[3 * H + j]);
    const T c_new = f * c_prev[j] + i * g;
    c[j] = c_new;
    h[j] = o * Math<T>::tanh(c_new);
    act[j] = i;
    act[H + j] = f;
    act[2 * H + j] = g;
    act[3 * H + j] = o;
  }
}

// One row of the backward step: act [4H] activated gates, dh [H] total gradient reaching h_t.
template <typename T>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void backward_row(const T* __restrict__ act, const T* __restrict__ c, const T* __restrict__ c_prev,
                  const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ dg, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = act[j], f = act[H + j], g = act[2 * H + j], o = act[3 * H + j];
    const T tanh_c = Math<T>::tanh(c[j]);
    const T dc_total = dc[j] + dh[j] * o * (T(1) - tanh_c * tanh_c);
    dg[j] = dc_total * g * i * (T(1) - i);
    dg[H + j] = dc_total * c_prev[j] * f * (T(1) - f);
    dg[2 * H + j] = dc_total * i * (T(1) - g * g);
    dg[3 * H + j] = dh[j] * tanh_c * o * (T(1) - o);
    dc[j] = dc_total * f;
  }
}

struct CpuDevice {
  // The rows of a sequence are independent through time: split them across threads once per sequence, so
  // each thread runs the whole time loop (its GEMMs single-threaded) with no synchronisation per step.
  // With a large W_hh (hidden > 512: > 4 MB in float32) and few rows per thread, every thread would stream
  // all of W_hh each step; there one multi-threaded GEMM per step (split over gate columns) is better.
  template <typename F>
  static void for_rows(int64_t N, int64_t H, const F& fn) {
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t rows_per_thread = (N + threads - 1) / threads;
    if (threads == 1 || (H > 512 && rows_per_thread < 256)) {
      fn(0, N);
      return;
    }
    at::parallel_for(0, N, std::max<int64_t>(1, rows_per_thread), fn);
  }

  template <typename T>
  static void forward_step(const StepForwardArgs<T>& a) {
    const int64_t H = a.H, G = 4 * H;
    at::parallel_for(0, a.N, grain_rows(H), [&](int64_t begin, int64_t end) {
      // pre: summed pre-activations of one row; act_scratch stands in when gates are not saved.
      std::vector<T> scratch(2 * G);
      T* pre = scratch.data();
      for (int64_t n = begin; n < end; ++n) {
        const T* rec = a.recurrent + n * G;
        if (a.input && a.sample) {
          const T* in = a.input + ((a.row_offset + n) / a.K) * a.input_stride;
          const T* smp = a.sample + n * G;
          for (int64_t q = 0; q < G; ++q) pre[q] = rec[q] + in[q] + smp[q];
        } else if (a.input) {
          const T* in = a.input + ((a.row_offset + n) / a.K) * a.input_stride;
          for (int64_t q = 0; q < G; ++q) pre[q] = rec[q] + in[q];
        } else if (a.sample) {
          const T* smp = a.sample + n * G;
          for (int64_t q = 0; q < G; ++q) pre[q] = rec[q] + smp[q];
        } else {
          std::copy(rec, rec + G, pre);
        }
        T* act = a.act ? a.act + n * a.act_stride : scratch.data() + G;
        forward_row<T>(pre, a.c_prev + n * a.c_prev_stride, a.h + n * a.h_stride, a.c + n * a.c_stride, act, H);
      }
    });
  }

  template <typename T>
  static void backward_step(const StepBackwardArgs<T>& a) {
    const int64_t H = a.H;
    at::parallel_for(0, a.N, grain_rows(H), [&](int64_t begin, int64_t end) {
      std::vector<T> dh(H);
      for (int64_t n = begin; n < end; ++n) {
        const T* grad_h = a.grad_h ? a.grad_h + n * a.grad_h_stride : nullptr;
        const T* dh_rec = a.dh_rec ? a.dh_rec + n * H : nullptr;
        if (grad_h && dh_rec) {
          for (int64_t j = 0; j < H; ++j) dh[j] = grad_h[j] + dh_rec[j];
        } else if (grad_h) {
          std::copy(grad_h, grad_h + H, dh.data());
        } else if (dh_rec) {
          std::copy(dh_rec, dh_rec + H, dh.data());
        } else {
          std::fill(dh.begin(), dh.end(), T(0));
        }
        backward_row<T>(a.act + n * a.act_stride, a.c + n * a.c_stride, a.c_prev + n * a.c_prev_stride, dh.data(),
                        a.dc + n * H, a.d_gates + n * a.d_gates_stride, H);
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
                                                                     bool save_for_backward,
                                                                     const std::optional<Tensor>& weight_hh_compute) {
  return loops::sequence_forward<CpuDevice>(input_gates, sample_gates, h0, c0, weight_hh, save_for_backward,
                                             weight_hh_compute);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_sequence_backward_cpu(
    const std::optional<Tensor>& grad_h_all, const std::optional<Tensor>& grad_c_last, const Tensor& h0,
    const Tensor& c0, const Tensor& weight_hh, const Tensor& h_all, const Tensor& c_all, const Tensor& act,
    std::array<bool, 3> output_mask, const std::optional<Tensor>& weight_hh_compute) {
  return loops::sequence_backward<CpuDevice>(grad_h_all, grad_c_last, h0, c0, weight_hh, h_all, c_all, act,
                                             output_mask, weight_hh_compute);
}

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  m.impl("lstm_cell_forward", &fastvae::lstm_cell_forward_cpu);
  m.impl("lstm_step_forward", &fastvae::lstm_step_forward_cpu);
  m.impl("lstm_step_backward", &fastvae::lstm_step_backward_cpu);
  m.impl("lstm_sequence_forward", &fastvae::lstm_sequence_forward_cpu);
  m.impl("lstm_sequence_backward", &fastvae::lstm_sequence_backward_cpu);
}
