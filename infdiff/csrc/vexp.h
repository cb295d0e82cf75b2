// exp(y) for y <= 0 in a form the compiler vectorises (libm's expf keeps loops scalar without -ffast-math).
// Shared by the C++ kernels of infdiff/csrc/ (the GELU of gelu.cpp, the SiLU of group_norm.cpp).
#pragma once

#include <cstdint>
#include <cstring>

namespace infdiff_vexp {

// Cody-Waite range reduction and a degree-6 polynomial (relative error ~1e-7), branch-free. y >= -87.3 stays
// normal; below it the result is flushed towards 0 smoothly enough for its users (h phi(h), sigma(z)).
inline float exp_nonpositive(float y) {
  y = y < -87.0f ? -87.0f : y;
  // y = n ln2 + r, |r| <= ln2 / 2; n rounded to nearest by the 1.5 * 2^23 trick (roundf does not vectorise)
  const float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (y - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;      // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// The logistic sigma(z) = 1 / (1 + exp(-z)) through exp(-|z|) <= 1 (no overflow for any z).
inline float sigmoid(float z) {
  const float e = exp_nonpositive(z < 0.f ? z : -z);
  const float s = 1.0f / (1.0f + e);
  return z < 0.f ? e * s : s;
}

}  // namespace infdiff_vexp
