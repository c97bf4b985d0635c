// The Python module fastvae._C. The operators themselves live in the torch.ops.fastvae
// namespace (registered by TORCH_LIBRARY when this module is loaded); this file only
// reports what the build contains.
#include <torch/extension.h>

#include "gemm.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastvae compiled core: registers torch.ops.fastvae.* operators";
#ifdef FASTVAE_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  m.def("cpu_fp32_gemm_backend", &fastvae::cpu_fp32_gemm_backend,
        "'onednn' or 'aten': what the fused ops' CPU float32 products use in this process (csrc/gemm.h)");
  m.def("set_cpu_fp32_gemm_backend", &fastvae::set_cpu_fp32_gemm_backend, py::arg("name"),
        "'onednn', 'aten' or 'auto' (the FASTVAE_CPU_FP32_GEMM rule): for tests and benchmarks");
}
