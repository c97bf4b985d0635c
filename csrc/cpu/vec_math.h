// Scalar math written so that loops calling it vectorise (no library calls, no branches), shared by the
// CPU kernels (lstm_cpu.cpp, linear_cross_entropy_cpu.cpp).
#pragma once
#include <cstdint>
#include <cstring>

namespace fastvae {

// exp for float32: Cody-Waite range reduction, degree-6 polynomial, 2^n built from the exponent bits;
// about 1 ulp on [-87, 88], NaN stays NaN.
inline float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + shift) - shift;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// float32 -> bfloat16 bits, rounded to nearest even (what c10::BFloat16 does, without its branch): NaN stays a
// quiet NaN.
inline uint16_t bf16_bits_from_float(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return x != x ? uint16_t(0x7FC0) : uint16_t(rounded);
}

inline float float_from_bf16_bits(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

}  // namespace fastvae
