// The Python module fastvae._C. The operators themselves live in the torch.ops.fastvae
// namespace (registered by TORCH_LIBRARY when this module is loaded); this file only
// reports what the build contains.
#include <torch/extension.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastvae compiled core: registers torch.ops.fastvae.* operators";
#ifdef FASTVAE_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
}
