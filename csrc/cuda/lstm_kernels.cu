// Fused LSTM pointwise kernels: one thread per (row, hidden unit), one launch per time step.
// Torch-free so that `nvcc -c` checks it on machines without torch's CUDA headers.
#include "lstm_kernels.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void step_forward_kernel(StepForwardArgs<T> a) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.N * a.H) return;
  const int64_t H = a.H, n = idx / H, j = idx % H;
  const T* rec = a.recurrent + n * 4 * H;            // [N, 4H] h_{t-1} @ W_hh^T
  const T* in = a.input ? a.input + ((a.row_offset + n) / a.K) * a.input_stride : nullptr;  // shared by the K samples
  const T* smp = a.sample ? a.sample + n * 4 * H : nullptr;                // per row
  T pre[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    pre[q] = rec[q * H + j];
    if (in) pre[q] += in[q * H + j];
    if (smp) pre[q] += smp[q * H + j];
  }
  T i, f, g, o, c, h;
  lstm_unit_forward<T>(pre[0], pre[1], pre[2], pre[3], a.c_prev[n * a.c_prev_stride + j], i, f, g, o, c, h);
  a.c[n * a.c_stride + j] = c;
  a.h[n * a.h_stride + j] = h;
  if (a.act) {
    T* act = a.act + n * a.act_stride;
    act[j] = i;
    act[H + j] = f;
    act[2 * H + j] = g;
    act[3 * H + j] = o;
  }
}

template <typename T>
__global__ void step_backward_kernel(StepBackwardArgs<T> a) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.N * a.H) return;
  const int64_t H = a.H, n = idx / H, j = idx % H;
  const T* act = a.act + n * a.act_stride;
  T dh = T(0);
  if (a.grad_h) dh += a.grad_h[n * a.grad_h_stride + j];
  if (a.dh_rec) dh += a.dh_rec[idx];
  T d_i, d_f, d_g, d_o, dc_prev;
  lstm_unit_backward<T>(act[j], act[H + j], act[2 * H + j], act[3 * H + j], a.c[n * a.c_stride + j],
                        a.c_prev[n * a.c_prev_stride + j], dh, a.dc[idx], d_i, d_f, d_g, d_o, dc_prev);
  T* dg = a.d_gates + n * a.d_gates_stride;
  dg[j] = d_i;
  dg[H + j] = d_f;
  dg[2 * H + j] = d_g;
  dg[3 * H + j] = d_o;
  a.dc[idx] = dc_prev;
}

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename T>
cudaError_t launch_forward(const StepForwardArgs<T>& a, cudaStream_t stream) {
  const int64_t n = a.N * a.H;
  if (n == 0) return cudaSuccess;
  step_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const StepBackwardArgs<T>& a, cudaStream_t stream) {
  const int64_t n = a.N * a.H;
  if (n == 0) return cudaSuccess;
  step_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lstm_step_forward(const StepForwardArgs<float>& a, cudaStream_t s) { return launch_forward(a, s); }
cudaError_t lstm_step_forward(const StepForwardArgs<double>& a, cudaStream_t s) { return launch_forward(a, s); }
cudaError_t lstm_step_backward(const StepBackwardArgs<float>& a, cudaStream_t s) { return launch_backward(a, s); }
cudaError_t lstm_step_backward(const StepBackwardArgs<double>& a, cudaStream_t s) { return launch_backward(a, s); }

}  // namespace cuda
}  // namespace fastvae
