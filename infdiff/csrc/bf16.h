// bfloat16 <-> float32 in forms the compiler vectorises (c10::BFloat16's conversions, with their NaN branch
// and type punning, keep loops scalar). Shared by the C++ kernels of infdiff/csrc/.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace infdiff_bf16 {

// float -> bfloat16 bits, rounding to nearest even (as c10::BFloat16).
inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return std::isnan(f) ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

// bfloat16 bits -> float (exact).
inline float from_bf16_bits(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Element loads and stores of float32 or bf16 storage (uint16_t), overloaded on the pointer type.
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return from_bf16_bits(p[i]); }
inline float store(float v, float*) { return v; }
inline uint16_t store(float v, uint16_t*) { return to_bf16_bits(v); }

}  // namespace infdiff_bf16
