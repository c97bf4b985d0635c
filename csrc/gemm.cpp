// gemm_out and the choice of the CPU float32 path (gemm.h says why and how it is chosen).
#include "gemm.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

#if defined(__linux__)
#include <dlfcn.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace fastvae {
namespace {

// at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result = alpha * mat1 @ mat2 + beta * result. An
// exported function of libtorch_cpu without a public header: looked up at run time, so that a torch without it
// (or one whose oneDNN path refuses float32) loads fastvae all the same and multiplies through ATen.
using OneDnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);
constexpr const char* kOneDnnMatmulSymbol = "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff";

OneDnnMatmul find_onednn_matmul() {
#if defined(__linux__)
  if (!at::hasMKLDNN()) return nullptr;
  return reinterpret_cast<OneDnnMatmul>(dlsym(RTLD_DEFAULT, kOneDnnMatmulSymbol));
#else
  return nullptr;
#endif
}

// Whether this torch's oneDNN multiplies float32 (older releases refuse it): one small product, compared with
// ATen's (exact on small integers).
bool onednn_takes_float32(OneDnnMatmul matmul) {
  if (matmul == nullptr) return false;
  try {
    const auto a = at::arange(6, at::kFloat).view({2, 3});
    const auto b = at::arange(12, at::kFloat).view({3, 4});
    auto out = at::empty({2, 4}, at::kFloat);
    matmul(a, b, out, 0.0f, 1.0f);
    return at::equal(out, at::mm(a, b));
  } catch (const std::exception&) {
    return false;
  }
}

bool cpu_vendor_is_intel() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  // "GenuineIntel" in EBX, EDX, ECX
  return ebx == 0x756e6547u && edx == 0x49656e69u && ecx == 0x6c65746eu;
#else
  return false;
#endif
}

bool cpu_is_x86() {
#if defined(__x86_64__) || defined(__i386__)
  return true;
#else
  return false;
#endif
}

struct Choice {
  std::mutex mutex;
  std::atomic<bool> decided{false};
  std::atomic<OneDnnMatmul> onednn{nullptr};  // non-null: CPU float32 products go through it
};

Choice& choice() {
  static Choice instance;
  return instance;
}

// decides `name` ("auto", "onednn", "aten"); the caller holds the mutex
void decide_locked(Choice& c, const std::string& name) {
  TORCH_CHECK(name == "auto" || name == "onednn" || name == "aten",
              "FASTVAE_CPU_FP32_GEMM / set_cpu_fp32_gemm_backend: expected auto, onednn or aten, got '", name, "'");
  OneDnnMatmul chosen = nullptr;
  if (name != "aten") {
    const auto found = find_onednn_matmul();
    const bool usable = onednn_takes_float32(found);
    if (name == "onednn") {
      TORCH_CHECK(usable, "fastvae: the oneDNN float32 product is not usable with this torch (",
                  found == nullptr ? "at::native::mkldnn_matmul not found" : "it refuses float32",
                  "); use FASTVAE_CPU_FP32_GEMM=aten or auto");
      chosen = found;
    } else if (usable && cpu_is_x86() && !cpu_vendor_is_intel()) {
      chosen = found;
    }
  }
  c.onednn.store(chosen);
  c.decided.store(true);
}

OneDnnMatmul onednn_for_cpu_float32() {
  auto& c = choice();
  if (!c.decided.load()) {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (!c.decided.load()) {
      const char* env = std::getenv("FASTVAE_CPU_FP32_GEMM");
      std::string name = env == nullptr || *env == '\0' ? "auto" : env;
      if (name == "onednn" && !onednn_takes_float32(find_onednn_matmul())) {
        TORCH_WARN("FASTVAE_CPU_FP32_GEMM=onednn, but this torch's oneDNN does not multiply float32: using ATen");
        name = "aten";
      }
      decide_locked(c, name);
    }
  }
  return c.onednn.load();
}

// oneDNN reads rows of a (or b) in place when the operand is contiguous or a transposed contiguous matrix
// (it copies other layouts itself); the result must be contiguous, as ATen's out= would not require
bool onednn_can_write(const at::Tensor& out) { return out.is_contiguous(); }

}  // namespace

void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (out.device().is_cpu() && out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat &&
      b.scalar_type() == at::kFloat && a.numel() > 0 && b.numel() > 0 && onednn_can_write(out)) {
    if (const auto matmul = onednn_for_cpu_float32()) {
      matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
      return;
    }
  }
  if (accumulate) {
    const_cast<at::Tensor&>(out).addmm_(a, b);
  } else {
    at::mm_out(const_cast<at::Tensor&>(out), a, b);
  }
}

std::string cpu_fp32_gemm_backend() { return onednn_for_cpu_float32() != nullptr ? "onednn" : "aten"; }

void set_cpu_fp32_gemm_backend(const std::string& name) {
  auto& c = choice();
  std::lock_guard<std::mutex> lock(c.mutex);
  decide_locked(c, name);
}

}  // namespace fastvae
