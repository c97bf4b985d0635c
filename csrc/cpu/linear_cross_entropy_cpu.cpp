// CPU kernel of the fused output layer + cross-entropy (linear_cross_entropy.h): the GEMMs through ATen
// (oneDNN/MKL; bfloat16 GEMMs use the CPU's bf16 matrix units where it has them) and one fused pass per row
// for the log-sum-exp, the loss and the logits gradient, parallel over rows, vectorised over the vocabulary.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../linear_cross_entropy.h"
#include "vec_math.h"

namespace fastvae {

namespace {

constexpr int64_t kLanes = 16;  // independent partial sums/maxima: lets the compiler vectorise the reductions

template <typename Store>
using float_or_double_t = std::conditional_t<std::is_same_v<Store, double>, double, float>;

template <typename Acc>
struct RowMath;
template <>
struct RowMath<float> {
  static float exp(float x) { return exp_f32(x); }
};
template <>
struct RowMath<double> {  // float64: the library function (the exact reference behaviour)
  static double exp(double x) { return std::exp(x); }
};

template <typename Acc>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
Acc row_max(const Acc* __restrict__ z, int64_t V) {
  Acc lanes[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = -std::numeric_limits<Acc>::infinity();
  int64_t v = 0;
  for (; v + kLanes <= V; v += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] = z[v + j] > lanes[j] ? z[v + j] : lanes[j];
  }
  Acc m = -std::numeric_limits<Acc>::infinity();
  for (int64_t j = 0; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  for (; v < V; ++v) m = z[v] > m ? z[v] : m;
  return m;
}

template <typename Acc>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
Acc row_sum_exp(const Acc* __restrict__ z, Acc shift, int64_t V) {
  Acc lanes[kLanes] = {};
  int64_t v = 0;
  for (; v + kLanes <= V; v += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += RowMath<Acc>::exp(z[v + j] - shift);
  }
  Acc s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += lanes[j];
  for (; v < V; ++v) s += RowMath<Acc>::exp(z[v] - shift);
  return s;
}

// out[v] = scale * exp(z[v] - lse), in the storage type
template <typename Acc, typename Out>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void row_softmax_scaled(const Acc* z, Acc lse, Acc scale, Out* out, int64_t V) {  // out may alias z
  for (int64_t v = 0; v < V; ++v) out[v] = static_cast<Out>(scale * RowMath<Acc>::exp(z[v] - lse));
}

// float32 -> bfloat16 for a row, the conversion written out so the loop vectorises (c10::BFloat16's does not).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void row_store_bf16(const float* __restrict__ in, uint16_t* __restrict__ out, int64_t V) {
  for (int64_t v = 0; v < V; ++v) out[v] = bf16_bits_from_float(in[v]);
}

// A row of stored logits in the accumulation type.
template <typename Store, typename Acc>
void row_load(const Store* in, Acc* out, int64_t V) {
  for (int64_t v = 0; v < V; ++v) out[v] = static_cast<Acc>(in[v]);
}

template <>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void row_load<at::BFloat16, float>(const at::BFloat16* in, float* out, int64_t V) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(in);
  for (int64_t v = 0; v < V; ++v) out[v] = float_from_bf16_bits(bits[v]);
}

// Rows [begin, end) of a chunk: nll, and with need_grad the scaled logits gradient written over the logits.
// Returns the first row whose target is out of range, or -1.
template <typename Store>
int64_t process_rows(Store* z_all, const int64_t* t_all, const float_or_double_t<Store>* s_all,
                     float_or_double_t<Store>* nll_all, int64_t begin, int64_t end, int64_t V, bool need_grad) {
  using Acc = float_or_double_t<Store>;
  std::vector<Acc> scratch(std::is_same_v<Store, Acc> ? 0 : V);
  int64_t bad = -1;
  for (int64_t r = begin; r < end; ++r) {
    Store* z_store = z_all + r * V;
    const Acc* z;
    if constexpr (std::is_same_v<Store, Acc>) {
      z = z_store;
    } else {
      row_load<Store, Acc>(z_store, scratch.data(), V);
      z = scratch.data();
    }
    const int64_t t = t_all[r];
    if (t < 0 || t >= V) {
      if (bad < 0) bad = r;
      nll_all[r] = std::numeric_limits<Acc>::quiet_NaN();
      continue;
    }
    const Acc m = row_max<Acc>(z, V);
    // a row of -inf (or +inf) logits: shift by 0 so the sum comes out 0 (or inf/NaN), as logsumexp
    const Acc shift = std::isfinite(m) ? m : Acc(0);
    const Acc lse = shift + std::log(row_sum_exp<Acc>(z, shift, V));
    const Acc target_logit = z[t];
    nll_all[r] = lse - target_logit;
    if (need_grad) {
      const Acc s = s_all[r];
      if constexpr (std::is_same_v<Store, at::BFloat16>) {  // softmax into the float row, then one rounding pass
        row_softmax_scaled<Acc, Acc>(z, lse, s, scratch.data(), V);
        row_store_bf16(scratch.data(), reinterpret_cast<uint16_t*>(z_store), V);
      } else {
        row_softmax_scaled<Acc, Store>(z, lse, s, z_store, V);
      }
      // the one-hot part, computed in the accumulation type and rounded once
      z_store[t] = static_cast<Store>(s * RowMath<Acc>::exp(target_logit - lse) - s);
    }
  }
  return bad;
}

struct CpuRows {
  static void rows_loss(const Tensor& logits, const Tensor& target, const Tensor& scale, const Tensor& nll,
                        bool need_grad) {
    const int64_t rows = logits.size(0), V = logits.size(1);
    std::atomic<int64_t> bad_target{-1};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "fastvae.linear_cross_entropy",
                                    [&] {
      using Acc = float_or_double_t<scalar_t>;
      scalar_t* z_all = logits.data_ptr<scalar_t>();
      const int64_t* t_all = target.data_ptr<int64_t>();
      const Acc* s_all = scale.data_ptr<Acc>();
      Acc* nll_all = nll.data_ptr<Acc>();
      // rows per task: about 64k logits of work
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(V, 1));
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        const int64_t bad = process_rows<scalar_t>(z_all, t_all, s_all, nll_all, begin, end, V, need_grad);
        if (bad >= 0) bad_target.store(bad);
      });
    });
    const int64_t bad = bad_target.load();
    TORCH_CHECK(bad < 0, "fastvae.linear_cross_entropy: target ids must be in [0, ", V, "), got ",
                target[bad].item<int64_t>(), " at row ", bad);
  }
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_forward_cpu(
    const Tensor& hidden, const Tensor& weight, const std::optional<Tensor>& weight_compute, const Tensor& target,
    const Tensor& row_scale, std::array<bool, 2> grad_mask, int64_t max_chunk_elems) {
  return loops::linear_cross_entropy<CpuRows>(hidden, weight, weight_compute, target, row_scale, grad_mask,
                                             max_chunk_elems);
}

}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  m.impl("linear_cross_entropy_forward", &fastvae::linear_cross_entropy_forward_cpu);
}
