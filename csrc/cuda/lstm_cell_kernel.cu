// Fused LSTM cell pointwise kernel: one thread per (row, hidden unit); torch-free so that
// `nvcc -c` checks it on machines without torch's CUDA headers.
#include "lstm_cell_kernel.h"

namespace fastvae {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

template <typename T>
__global__ void lstm_cell_forward_kernel(const T* __restrict__ gates,   // [B, 4H]
                                         const T* __restrict__ c_prev,  // [B, H]
                                         T* __restrict__ h,             // [B, H]
                                         T* __restrict__ c,             // [B, H]
                                         T* __restrict__ act,           // [B, 4H]
                                         int64_t B, int64_t H) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int64_t b = idx / H, j = idx % H;
  const T* g = gates + b * 4 * H;
  T* a = act + b * 4 * H;
  const T i_gate = sigmoid(g[j]);
  const T f_gate = sigmoid(g[H + j]);
  const T g_gate = tanh(g[2 * H + j]);
  const T o_gate = sigmoid(g[3 * H + j]);
  const T c_new = f_gate * c_prev[idx] + i_gate * g_gate;
  c[idx] = c_new;
  h[idx] = o_gate * tanh(c_new);
  a[j] = i_gate;
  a[H + j] = f_gate;
  a[2 * H + j] = g_gate;
  a[3 * H + j] = o_gate;
}

template <typename T>
cudaError_t launch_forward(const T* gates, const T* c_prev, T* h, T* c, T* act, int64_t B, int64_t H,
                           cudaStream_t stream) {
  const int64_t n = B * H;
  if (n == 0) return cudaSuccess;
  constexpr int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  lstm_cell_forward_kernel<T><<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(gates, c_prev, h, c,
                                                                                        act, B, H);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lstm_cell_forward_f32(const float* gates, const float* c_prev, float* h, float* c, float* act,
                                  int64_t B, int64_t H, cudaStream_t stream) {
  return launch_forward(gates, c_prev, h, c, act, B, H, stream);
}

cudaError_t lstm_cell_forward_f64(const double* gates, const double* c_prev, double* h, double* c,
                                  double* act, int64_t B, int64_t H, cudaStream_t stream) {
  return launch_forward(gates, c_prev, h, c, act, B, H, stream);
}

}  // namespace cuda
}  // namespace fastvae
