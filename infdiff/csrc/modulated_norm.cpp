// The modulated LayerNorm of the sampling path in one pass over the rows (CPU, no autograd).
//
//   out[b, n, c] = ((x[b, n, c] - mean_bn) * rstd_bn * gain[b, c] + shift[b, c]) * zgain[b, c]
//
// mean_bn and the biased variance over the C channels of row (b, n) in float32 (two passes over the row,
// which stays in registers/L1), rstd = 1 / sqrt(var + eps); zgain is optional (empty tensor: none).
// x [B, N, C] contiguous float32 or bfloat16; gain, shift, zgain [B, C] float32; out [B, N, C] float32 or
// bfloat16 (rounded once, from the float32 result).
// ATen and torch/library.h only (not torch/extension.h, pybind11 and all of libtorch's API): a first build
// compiles in seconds instead of ~25 s. The functions are registered as operators, torch.ops.infdiff_<stem>.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// float -> bfloat16 bits, rounding to nearest even (as c10::BFloat16), in a form the compiler vectorises.
inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return std::isnan(f) ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

inline float store(float v, float*) { return v; }
inline uint16_t store(float v, uint16_t*) { return to_bf16_bits(v); }

template <typename T, typename U>
void modulated_norm_rows(const T* __restrict__ x, const float* __restrict__ gain, const float* __restrict__ shift,
                         const float* __restrict__ zgain, U* __restrict__ out, int64_t B, int64_t N, int64_t C,
                         double eps) {
  at::parallel_for(0, B * N, 256, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(C);
    float* __restrict__ v = row.data();
    const float inv_c = 1.f / static_cast<float>(C);
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ xr = x + r * C;
      const int64_t b = r / N;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < C; ++c) {
        v[c] = static_cast<float>(xr[c]);
        sum += v[c];
      }
      const float mean = sum * inv_c;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < C; ++c) {
        const float d = v[c] - mean;
        ss += d * d;
      }
      const float rstd = 1.f / std::sqrt(ss * inv_c + static_cast<float>(eps));
      const float* __restrict__ g = gain + b * C;
      const float* __restrict__ s = shift + b * C;
      U* __restrict__ o = out + r * C;
      if (zgain == nullptr) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = store((v[c] - mean) * rstd * g[c] + s[c], o);
      } else {
        const float* __restrict__ z = zgain + b * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = store(((v[c] - mean) * rstd * g[c] + s[c]) * z[c], o);
      }
    }
  });
}

}  // namespace

namespace {

template <typename T>
void dispatch_out(const at::Tensor& x, const at::Tensor& gain, const at::Tensor& shift, const float* zp,
                  at::Tensor& out, int64_t B, int64_t N, int64_t C, double eps) {
  if (out.scalar_type() == at::kFloat) {
    modulated_norm_rows(x.data_ptr<T>(), gain.data_ptr<float>(), shift.data_ptr<float>(), zp, out.data_ptr<float>(),
                        B, N, C, eps);
  } else {
    modulated_norm_rows(x.data_ptr<T>(), gain.data_ptr<float>(), shift.data_ptr<float>(), zp,
                        reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), B, N, C, eps);
  }
}

}  // namespace

at::Tensor modulated_norm(at::Tensor x, at::Tensor gain, at::Tensor shift, at::Tensor zgain, double eps,
                             bool out_bf16) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && !x.requires_grad(), "x must be [B, N, C] contiguous, no grad");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  for (const auto* t : {&gain, &shift}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 && t->size(0) == B &&
                t->size(1) == C, "gain and shift must be [B, C] float32, contiguous");
  }
  const bool has_z = zgain.numel() > 0;
  if (has_z) {
    TORCH_CHECK(zgain.scalar_type() == at::kFloat && zgain.is_contiguous() && zgain.dim() == 2 &&
                zgain.size(0) == B && zgain.size(1) == C, "zgain must be [B, C] float32, contiguous, or empty");
  }
  auto out = at::empty({B, N, C}, x.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  const float* zp = has_z ? zgain.data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kFloat) {
    dispatch_out<float>(x, gain, shift, zp, out, B, N, C, eps);
  } else {
    dispatch_out<at::BFloat16>(x, gain, shift, zp, out, B, N, C, eps);
  }
  return out;
}

TORCH_LIBRARY(infdiff_modulated_norm, m) {
  m.def("modulated_norm(Tensor x, Tensor gain, Tensor shift, Tensor zgain, float eps, bool out_bf16) -> Tensor",
        &modulated_norm);
}
