// The modulated LayerNorm of training, forward and backward, on the CPU (infdiff/layer_norm.py):
//
//   y[r, c] = (v[r, c] - mu[r]) * rstd[r] * gain[b, c] + shift[b, c],      b = r / N (image of row r)
//
// for v [R, C] (R = B N points, C channels, float32 or bf16), gain and shift [B, C] float32, y in float32 or
// bf16. Each row's statistics in float32 (as torch's LayerNorm); the result rounded once. Backward per row,
//   dv = rstd (dxh - mean_c(dxh) - xhat mean_c(dxh xhat)),   dxh = dy gain[b],   xhat = (v - mu) rstd,
// and per image dgain[b, c] = sum_r dy xhat, dshift[b, c] = sum_r dy, summed per task of rows and then over
// the tasks in order (float64), so the result does not depend on the number of threads.
// ATen and torch/library.h only, like the other kernels (a first build takes seconds).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "bf16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using infdiff_bf16::load;
using infdiff_bf16::store;

// Rows per task of the backward pass (its partial parameter gradients are one [C] row per task).
constexpr int64_t kRows = 128;

template <typename V, typename Y>
void forward_impl(const V* __restrict__ v, const float* __restrict__ gain, const float* __restrict__ shift,
                  Y* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int64_t R, int64_t N, int64_t C,
                  double eps) {
  const float inv_c = 1.f / static_cast<float>(C);
  at::parallel_for(0, R, 256, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(C);
    float* __restrict__ x = row.data();
    for (int64_t r = r0; r < r1; ++r) {
      const V* __restrict__ vr = v + r * C;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < C; ++c) {
        x[c] = load(vr, c);
        sum += x[c];
      }
      const float mu = sum * inv_c;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < C; ++c) ss += (x[c] - mu) * (x[c] - mu);
      const float rs = 1.f / std::sqrt(ss * inv_c + static_cast<float>(eps));
      mean[r] = mu;
      rstd[r] = rs;
      const float* __restrict__ g = gain + (r / N) * C;
      const float* __restrict__ s = shift + (r / N) * C;
      Y* __restrict__ o = y + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = store((x[c] - mu) * rs * g[c] + s[c], o);
    }
  });
}

template <typename V, typename Y>
void backward_impl(const Y* __restrict__ dy, const V* __restrict__ v, const float* __restrict__ gain,
                   const float* __restrict__ mean, const float* __restrict__ rstd, V* __restrict__ dv,
                   float* __restrict__ part_g, float* __restrict__ part_s, int64_t B, int64_t N, int64_t C) {
  const int64_t per_image = (N + kRows - 1) / kRows;
  const float inv_c = 1.f / static_cast<float>(C);
  at::parallel_for(0, B * per_image, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> xh(C), dxh(C), dyr(C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per_image, n0 = (t % per_image) * kRows, n1 = std::min(N, n0 + kRows);
      const float* __restrict__ g = gain + b * C;
      float* __restrict__ pg = part_g + t * C;
      float* __restrict__ ps = part_s + t * C;
      for (int64_t r = b * N + n0; r < b * N + n1; ++r) {
        const V* __restrict__ vr = v + r * C;
        const Y* __restrict__ dr = dy + r * C;
        const float mu = mean[r], rs = rstd[r];
        float s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t c = 0; c < C; ++c) {
          const float d = load(dr, c), xhat = (load(vr, c) - mu) * rs, e = d * g[c];
          xh[c] = xhat;
          dxh[c] = e;
          dyr[c] = d;
          s1 += e;
          s2 += e * xhat;
        }
        s1 *= inv_c;
        s2 *= inv_c;
        V* __restrict__ o = dv + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          o[c] = store(rs * (dxh[c] - s1 - xh[c] * s2), o);
          pg[c] += dyr[c] * xh[c];
          ps[c] += dyr[c];
        }
      }
    }
  });
}

// Storage pointer of a float32 or bf16 tensor, as float* or uint16_t*.
template <typename P>
P* ptr(const at::Tensor& t) { return static_cast<P*>(t.data_ptr()); }

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              name, " must be [R, C] float32 or bfloat16, contiguous");
}

void check_image(const at::Tensor& t, int64_t B, int64_t C) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 2 && t.size(0) == B && t.size(1) == C,
              "gain and shift must be [B, C] float32, contiguous");
}

}  // namespace

// v [R, C] with R = B N -> (y [R, C] in float32 or bf16, mean [R], rstd [R])
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(at::Tensor v, at::Tensor gain, at::Tensor shift, int64_t N,
                                                       double eps, bool out_bf16) {
  check_rows(v, "v");
  const int64_t R = v.size(0), C = v.size(1);
  TORCH_CHECK(N > 0 && R % N == 0, "rows must be B x N");
  check_image(gain, R / N, C);
  check_image(shift, R / N, C);
  auto y = at::empty({R, C}, v.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  auto mean = at::empty({R}, v.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  const float *g = gain.data_ptr<float>(), *s = shift.data_ptr<float>();
  float *m = mean.data_ptr<float>(), *rs = rstd.data_ptr<float>();
  const bool v16 = v.scalar_type() == at::kBFloat16;
  if (!v16 && !out_bf16) forward_impl(ptr<const float>(v), g, s, ptr<float>(y), m, rs, R, N, C, eps);
  if (!v16 && out_bf16) forward_impl(ptr<const float>(v), g, s, ptr<uint16_t>(y), m, rs, R, N, C, eps);
  if (v16 && !out_bf16) forward_impl(ptr<const uint16_t>(v), g, s, ptr<float>(y), m, rs, R, N, C, eps);
  if (v16 && out_bf16) forward_impl(ptr<const uint16_t>(v), g, s, ptr<uint16_t>(y), m, rs, R, N, C, eps);
  return {y, mean, rstd};
}

// -> (dv [R, C] in v's dtype, dgain [B, C], dshift [B, C])
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(at::Tensor dy, at::Tensor v, at::Tensor gain, at::Tensor mean,
                                                        at::Tensor rstd, int64_t N) {
  check_rows(v, "v");
  check_rows(dy, "dy");
  const int64_t R = v.size(0), C = v.size(1), B = R / N;
  TORCH_CHECK(dy.sizes() == v.sizes() && N > 0 && R % N == 0, "dy must match v, rows B x N");
  check_image(gain, B, C);
  const int64_t per_image = (N + kRows - 1) / kRows;
  auto part_g = at::zeros({B * per_image, C}, v.options().dtype(at::kFloat)), part_s = at::zeros_like(part_g);
  auto dv = at::empty_like(v);
  const float *g = gain.data_ptr<float>(), *m = mean.data_ptr<float>(), *rs = rstd.data_ptr<float>();
  float *pg = part_g.data_ptr<float>(), *ps = part_s.data_ptr<float>();
  const bool v16 = v.scalar_type() == at::kBFloat16, y16 = dy.scalar_type() == at::kBFloat16;
  if (!v16 && !y16) backward_impl(ptr<const float>(dy), ptr<const float>(v), g, m, rs, ptr<float>(dv), pg, ps, B, N, C);
  if (!v16 && y16) backward_impl(ptr<const uint16_t>(dy), ptr<const float>(v), g, m, rs, ptr<float>(dv), pg, ps, B, N, C);
  if (v16 && !y16) backward_impl(ptr<const float>(dy), ptr<const uint16_t>(v), g, m, rs, ptr<uint16_t>(dv), pg, ps, B, N, C);
  if (v16 && y16) backward_impl(ptr<const uint16_t>(dy), ptr<const uint16_t>(v), g, m, rs, ptr<uint16_t>(dv), pg, ps, B, N, C);
  // per image, the tasks' partial sums in task order, in float64
  auto dgain = at::empty({B, C}, v.options().dtype(at::kFloat)), dshift = at::empty_like(dgain);
  float *dg = dgain.data_ptr<float>(), *ds = dshift.data_ptr<float>();
  std::vector<double> acc_g(C), acc_s(C);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(acc_g.begin(), acc_g.end(), 0.0);
    std::fill(acc_s.begin(), acc_s.end(), 0.0);
    for (int64_t t = b * per_image; t < (b + 1) * per_image; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        acc_g[c] += pg[t * C + c];
        acc_s[c] += ps[t * C + c];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      dg[b * C + c] = static_cast<float>(acc_g[c]);
      ds[b * C + c] = static_cast<float>(acc_s[c]);
    }
  }
  return {dv, dgain, dshift};
}

TORCH_LIBRARY(infdiff_layer_norm, m) {
  m.def("forward(Tensor v, Tensor gain, Tensor shift, int N, float eps, bool out_bf16) -> (Tensor, Tensor, Tensor)",
        &forward);
  m.def("backward(Tensor dy, Tensor v, Tensor gain, Tensor mean, Tensor rstd, int N) -> (Tensor, Tensor, Tensor)",
        &backward);
}
