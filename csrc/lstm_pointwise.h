// The LSTM pointwise math of one (row, unit) for the CUDA kernels, and the per-step argument structs that the
// shared time loop (lstm_loops.h) hands to each device's step. The CPU kernels (cpu/lstm_cpu.cpp) write the same
// math out over whole rows instead, with vec_math.h's exp (std::exp per element does not vectorise); the tests
// hold both to the torch reference. Torch-free (plain C++ / CUDA): the .cu files include it without torch's headers.
// Gate order is torch.nn.LSTM's: input, forget, cell (g), output. Acc is the compute type
// (float for half/bfloat16 storage, else the storage type).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTVAE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTVAE_HOST_DEVICE inline
#endif

namespace fastvae {

template <typename Acc>
FASTVAE_HOST_DEVICE Acc sigmoid_acc(Acc x) {
  using std::exp;
  return Acc(1) / (Acc(1) + exp(-x));
}

// Forward of one (row, unit): pre-activations -> activated gates, new cell and hidden state.
template <typename Acc>
FASTVAE_HOST_DEVICE void lstm_unit_forward(Acc pre_i, Acc pre_f, Acc pre_g, Acc pre_o, Acc c_prev, Acc& i, Acc& f,
                                           Acc& g, Acc& o, Acc& c, Acc& h) {
  using std::tanh;
  i = sigmoid_acc(pre_i);
  f = sigmoid_acc(pre_f);
  g = tanh(pre_g);
  o = sigmoid_acc(pre_o);
  c = f * c_prev + i * g;
  h = o * tanh(c);
}

// Backward of one (row, unit). dh: gradient reaching h_t; dc: gradient reaching c_t from later steps
// (and from outside). Writes the pre-activation gradients and the gradient flowing to c_{t-1}.
template <typename Acc>
FASTVAE_HOST_DEVICE void lstm_unit_backward(Acc i, Acc f, Acc g, Acc o, Acc c, Acc c_prev, Acc dh, Acc dc, Acc& d_i,
                                            Acc& d_f, Acc& d_g, Acc& d_o, Acc& dc_prev) {
  using std::tanh;
  const Acc tanh_c = tanh(c);
  const Acc dc_total = dc + dh * o * (Acc(1) - tanh_c * tanh_c);
  d_o = dh * tanh_c * o * (Acc(1) - o);
  d_i = dc_total * g * i * (Acc(1) - i);
  d_f = dc_total * c_prev * f * (Acc(1) - f);
  d_g = dc_total * i * (Acc(1) - g * g);
  dc_prev = dc_total * f;
}

// Pointers and row strides (in elements) of one forward step over N rows (a slice of the B * K rows starting
// at row_offset); global row r belongs to sentence r / K. The unit j of a row reads gate columns j, H+j,
// 2H+j, 3H+j.
template <typename T>
struct StepForwardArgs {
  const T* recurrent;   // [N, 4H] h_{t-1} @ W_hh^T (contiguous)
  const T* input;       // per-sentence gates [B rows, stride input_stride], row 0 = sentence 0; may be null
  int64_t input_stride;
  const T* sample;      // per-row gates [N, 4H] (contiguous); may be null
  const T* c_prev;      // [N, H] rows of stride c_prev_stride
  int64_t c_prev_stride;
  T* h;                 // [N, H] rows of stride h_stride
  int64_t h_stride;
  T* c;                 // [N, H] rows of stride c_stride
  int64_t c_stride;
  T* act;               // activated gates [N, 4H] rows of stride act_stride; null: not saved
  int64_t act_stride;
  int64_t N, K, H;
  int64_t row_offset;   // global index of row 0 of this slice (for the row -> sentence map)
};

// One backward step. grad_h may be null (no gradient from outside at this step); dh_rec may be null
// (last step). dc [N, H] contiguous enters as the gradient reaching c_t and leaves as the one reaching c_{t-1}.
template <typename T>
struct StepBackwardArgs {
  const T* act;         // [N, 4H] rows of stride act_stride
  int64_t act_stride;
  const T* c;           // c_t, rows of stride c_stride
  int64_t c_stride;
  const T* c_prev;      // c_{t-1}, rows of stride c_prev_stride
  int64_t c_prev_stride;
  const T* grad_h;      // rows of stride grad_h_stride; may be null
  int64_t grad_h_stride;
  const T* dh_rec;      // [N, H] contiguous: d_gates_{t+1} @ W_hh; may be null
  T* dc;                // [N, H] contiguous, read and written
  T* d_gates;           // [N, 4H] rows of stride d_gates_stride
  int64_t d_gates_stride;
  int64_t N, H;
};

}  // namespace fastvae
