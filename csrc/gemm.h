// The matrix products of the fused ops: out = a @ b, or out += a @ b.
//
// On the CPU, float32 products may go through oneDNN instead of ATen's BLAS: MKL (torch's BLAS on x86) takes
// slower code paths on CPUs that are not Intel's; measured on an AMD EPYC with AVX-512, one thread, the output
// layer's forward product ran at 58 GFLOP/s in MKL and 100 in oneDNN (NOTES.md, session 12). The choice is made
// once per process and never by timing, so that a resumed run multiplies exactly as the run it continues:
//   FASTVAE_CPU_FP32_GEMM=auto (default): oneDNN on x86 CPUs whose vendor is not Intel, when this torch's oneDNN
//     takes float32 (checked once on a small product); ATen elsewhere.
//   FASTVAE_CPU_FP32_GEMM=onednn | aten: that one (onednn falls back to aten, with a warning, where unusable).
// Other dtypes and devices always use ATen (bfloat16 CPU products already go through oneDNN there).
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace fastvae {

void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate = false);

// "onednn" or "aten": what CPU float32 products use in this process (decided at the first call)
std::string cpu_fp32_gemm_backend();
// For tests and benchmarks: "onednn", "aten" or "auto" (the environment's rule again). Throws for a name
// outside these, and for "onednn" where it is unusable.
void set_cpu_fp32_gemm_backend(const std::string& name);

}  // namespace fastvae
