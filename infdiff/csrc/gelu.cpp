// The exact (erf) GELU of training's point MLPs and its derivative, in one pass on the CPU (infdiff/point_mlp.py):
//
//   a = h Phi(h),   d = da/dh = Phi(h) + h phi(h),   Phi(h) = (1 + erf(h / sqrt 2)) / 2,   phi = Phi',
//
// for h [R, H] (float32 or bf16, contiguous), a and d of h's dtype, each computed in float32 and rounded once.
// Keeping d instead of h lets the backward pass apply the GELU inside oneDNN's product dA = dY W2 (a binary
// "mul" post-op) instead of in a pass of its own over the hidden layer.
//
// erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), whose exp(-h^2 / 2) is also phi's: one
// exponential per element (vexp.h: a polynomial, relative error ~1e-7, branch-free so the loop vectorises).
// Measured against float64: |a| within 4e-7; relative 5e-5 for h in [-3, 0] and 2e-3 for h in [-5, -4],
// where |a| < 1e-3 and its bf16 rounding may differ from torch's.
// ATen and torch/library.h only, like the other kernels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "bf16.h"
#include "vexp.h"

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using infdiff_bf16::load;
using infdiff_bf16::store;
using infdiff_vexp::exp_nonpositive;

template <typename T>
void gelu_impl(const T* __restrict__ h, T* __restrict__ a, T* __restrict__ d, int64_t n) {
  at::parallel_for(0, n, 1 << 15, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float x = load(h, i);
      const float ax = x < 0.f ? -x : x;
      const float e = exp_nonpositive(-0.5f * x * x);                // exp(-x^2 / 2) = exp(-(x / sqrt 2)^2)
      const float t = 1.0f / (1.0f + 0.3275911f * 0.70710678118654752f * ax);
      const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                         t * 1.061405429f))));
      const float tail = 0.5f * poly * e;                            // Phi(-|x|) = erfc(|x| / sqrt 2) / 2
      const float Phi = x < 0.f ? tail : 1.0f - tail;                // no 1 - (1 - tail) cancellation
      a[i] = store(x * Phi, a);
      d[i] = store(Phi + x * (0.39894228040143268f * e), d);          // phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gelu_with_grad(const at::Tensor& h) {
  TORCH_CHECK(h.device().is_cpu() && h.is_contiguous(), "h must be a contiguous CPU tensor");
  auto a = at::empty_like(h), d = at::empty_like(h);
  if (h.scalar_type() == at::kBFloat16) {
    gelu_impl(reinterpret_cast<const uint16_t*>(h.data_ptr()), reinterpret_cast<uint16_t*>(a.data_ptr()),
              reinterpret_cast<uint16_t*>(d.data_ptr()), h.numel());
  } else {
    TORCH_CHECK(h.scalar_type() == at::kFloat, "h must be float32 or bf16");
    gelu_impl(h.data_ptr<float>(), a.data_ptr<float>(), d.data_ptr<float>(), h.numel());
  }
  return {a, d};
}

}  // namespace

TORCH_LIBRARY(infdiff_gelu, m) {
  m.def("gelu_with_grad(Tensor h) -> (Tensor, Tensor)", &gelu_with_grad);
}
