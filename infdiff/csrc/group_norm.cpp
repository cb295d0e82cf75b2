// GroupNorm with a per-image affine, forward and backward, on the CPU (infdiff/group_norm.py):
//
//   z[b, c, p] = (x[b, c, p] - mu[b, g]) * rstd[b, g] * gain[b, c] + bias[b, c],     g = c / (C / G)
//
// and y = z, or (silu) y = SiLU(z) = z sigma(z): the activation that follows the norm in a ResBlock, applied
// before the one rounding (the backward recomputes z from x and applies SiLU'(z) = sigma(z) (1 + z (1 - sigma(z)))
// to dy before the norm's own backward, in the same two passes).
// for x [B, C, H, W] stored channels-last ([B, P, C], P = H W: the U-Nets' layout, where torch's bf16 kernels
// are slow) or NCHW ([B, C, P]), float32 or bf16; gain and bias [B, C] float32 (the module's affine folded
// with a ResBlock's scale-shift, so one pass does both). Statistics and arithmetic in float32 with per-image
// sums in float64, the result rounded once to x's dtype. One image per task: its slice stays in cache
// between the two passes of forward (sums, then y) and of backward (sums, then dx).
// ATen and torch/library.h only, like the other kernels (a first build takes seconds).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "bf16.h"
#include "vexp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using infdiff_bf16::load;
using infdiff_bf16::store;

// Rows (channels-last) or channel runs (NCHW) summed in float32 before they are added into float64.
constexpr int64_t kBlock = 64;

// Per-channel sums over one image, in float64, of values shifted per channel (numerically safe where the mean
// is large against the spread): s1[c] = sum_p (a[c, p] - ka[c]), s2[c] = sum_p (a[c, p] - ka[c]) (b[c, p] - kb[c]).
// a, b: the image's [P, C] (channels_last) or [C, P] storage; b = a, kb = ka gives shifted sums of squares.
template <typename A, typename Bt>
void channel_sums(const A* __restrict__ a, const Bt* __restrict__ b, const float* __restrict__ ka,
                  const float* __restrict__ kb, int64_t C, int64_t P, bool channels_last, double* __restrict__ s1,
                  double* __restrict__ s2, float* __restrict__ f1, float* __restrict__ f2) {
  std::fill(s1, s1 + C, 0.0);
  std::fill(s2, s2 + C, 0.0);
  if (channels_last) {
    for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
      std::fill(f1, f1 + C, 0.f);
      std::fill(f2, f2 + C, 0.f);
      for (int64_t p = p0; p < std::min(P, p0 + kBlock); ++p) {
        const A* __restrict__ ar = a + p * C;
        const Bt* __restrict__ br = b + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float av = load(ar, c) - ka[c];
          f1[c] += av;
          f2[c] += av * (load(br, c) - kb[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        s1[c] += f1[c];
        s2[c] += f2[c];
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const A* __restrict__ ac = a + c * P;
      const Bt* __restrict__ bc = b + c * P;
      const float kac = ka[c], kbc = kb[c];
      for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
        float t1 = 0.f, t2 = 0.f;
#pragma omp simd reduction(+ : t1, t2)
        for (int64_t p = p0; p < std::min(P, p0 + kBlock); ++p) {
          const float av = load(ac, p) - kac;
          t1 += av;
          t2 += av * (load(bc, p) - kbc);
        }
        s1[c] += t1;
        s2[c] += t2;
      }
    }
  }
}

// f(z) = z, or SiLU(z) (Silu).
template <bool Silu>
inline float act(float z) {
  return Silu ? z * infdiff_vexp::sigmoid(z) : z;
}

// out[c, p] = f(c, u[c, p], v[c, p]) over one image, in its layout ([P, C] channels-last or [C, P]), rounded
// once to out's dtype; f(c, a, b) -> float reads the per-channel constants of channel c.
template <typename U, typename V, typename O, typename F>
void image_pass(const U* __restrict__ u, const V* __restrict__ v, O* __restrict__ out, int64_t C, int64_t P,
                bool channels_last, F f) {
  if (channels_last) {
    for (int64_t p = 0; p < P; ++p) {
      const U* __restrict__ ur = u + p * C;
      const V* __restrict__ vr = v + p * C;
      O* __restrict__ o = out + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = store(f(c, load(ur, c), load(vr, c)), o);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const U* __restrict__ uc = u + c * P;
      const V* __restrict__ vc = v + c * P;
      O* __restrict__ o = out + c * P;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) o[p] = store(f(c, load(uc, p), load(vc, p)), o);
    }
  }
}

// out = act(k1[c] * u + k2[c] * v + k3[c]) over one image (forward: u = x, k2 = 0, act = SiLU or the identity;
// backward: u = dL/dz, v = x, the identity).
template <bool Silu = false, typename U, typename V, typename O>
void affine_pass(const U* u, const V* v, O* out, const float* __restrict__ k1, const float* __restrict__ k2,
                 const float* __restrict__ k3, int64_t C, int64_t P, bool channels_last) {
  image_pass(u, v, out, C, P, channels_last,
             [=](int64_t c, float a, float b) { return act<Silu>(k1[c] * a + k2[c] * b + k3[c]); });
}

template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& gain, const at::Tensor& bias, at::Tensor& y,
                  at::Tensor& mean, at::Tensor& rstd, int64_t G, double eps, bool channels_last, bool silu) {
  const int64_t B = x.size(0), C = x.size(1), P = x.numel() / std::max<int64_t>(1, B * C), Cg = C / G;
  const T* xp = static_cast<const T*>(x.data_ptr());
  T* yp = static_cast<T*>(y.data_ptr());
  const float *gp = gain.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  const double n = static_cast<double>(Cg * P);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> s1(C), s2(C);
    std::vector<float> f1(C), f2(C), k1(C), k2(C, 0.f), k3(C), pivot(C);
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = xp + b * C * P;
      // Each channel's sums are taken about its first value (a pivot near its mean), then combined exactly
      // in float64: sum (x - mu)^2 = sum_c [S2_c + 2 (k_c - mu) S1_c + P (k_c - mu)^2].
      for (int64_t c = 0; c < C; ++c) pivot[c] = load(xb, channels_last ? c : c * P);
      channel_sums(xb, xb, pivot.data(), pivot.data(), C, P, channels_last, s1.data(), s2.data(), f1.data(), f2.data());
      for (int64_t g = 0; g < G; ++g) {
        double t1 = 0.0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) t1 += s1[c] + static_cast<double>(P) * pivot[c];
        const double mu = t1 / n;
        double t2 = 0.0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const double d = pivot[c] - mu;
          t2 += s2[c] + 2.0 * d * s1[c] + static_cast<double>(P) * d * d;
        }
        const double var = std::max(t2 / n, 0.0);
        const float r = static_cast<float>(1.0 / std::sqrt(var + eps));
        mp[b * G + g] = static_cast<float>(mu);
        rp[b * G + g] = r;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          k1[c] = r * gp[b * C + c];                                  // y = k1 x + k3
          k3[c] = static_cast<float>(bp[b * C + c] - mu * k1[c]);
        }
      }
      if (silu) {
        affine_pass<true>(xb, xb, yp + b * C * P, k1.data(), k2.data(), k3.data(), C, P, channels_last);
      } else {
        affine_pass<false>(xb, xb, yp + b * C * P, k1.data(), k2.data(), k3.data(), C, P, channels_last);
      }
    }
  });
}

// dL/dz from dL/dy = dy for y = SiLU(z), z = k1[c] x + k3[c] recomputed (float32) over one image, into dz.
inline float silu_slope(float z) {
  const float sg = infdiff_vexp::sigmoid(z);
  return sg * (1.0f + z * (1.0f - sg));
}

template <typename T>
void silu_grad(const T* dy, const T* x, float* dz, const float* __restrict__ k1, const float* __restrict__ k3,
               int64_t C, int64_t P, bool channels_last) {
  image_pass(dy, x, dz, C, P, channels_last,
             [=](int64_t c, float d, float xv) { return d * silu_slope(k1[c] * xv + k3[c]); });
}

// dL/dx, dL/dgain, dL/dbias of z for one image b, from dL/dz (dz: x's dtype, or float32 after silu_grad). With
// xhat = (x - mu) r and per-channel sums over the image's P positions,
//   dbias[c] = sum dz,   dgain[c] = sum dz xhat = r sum dz (x - mu),
// and per group (n = Cg P), A = sum_{c in g} gain[c] dbias[c] / n, Bg = sum_{c in g} gain[c] dgain[c] / n:
//   dx = r (gain[c] dz - A - xhat Bg) = k1[c] dz + k2 x + k3,   k1 = r gain[c], k2 = -r^2 Bg, k3 = r (r Bg mu - A).
// s1, s2 [C] double and f1, f2, k1, k2, k3 [C] float: the task's scratch; mu_c [C]: each channel's group mean.
template <typename D, typename T>
void backward_image(const D* dz, const T* xb, T* dxb, int64_t b, int64_t C, int64_t P, int64_t G, const float* gp,
                    const float* mp, const float* rp, float* dgp, float* dbp, const float* mu_c, const float* zero,
                    double* s1, double* s2, float* f1, float* f2, float* k1, float* k2, float* k3, bool channels_last) {
  const int64_t Cg = C / G;
  const double n = static_cast<double>(Cg * P);
  // s1 = sum dz, s2 = sum dz (x - mu): dgain = r s2 without cancellation
  channel_sums(dz, xb, zero, mu_c, C, P, channels_last, s1, s2, f1, f2);
  for (int64_t g = 0; g < G; ++g) {
    const double mu = mp[b * G + g], r = rp[b * G + g];
    double A = 0.0, Bg = 0.0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      const double db = s1[c], dg = r * s2[c];
      dbp[b * C + c] = static_cast<float>(db);
      dgp[b * C + c] = static_cast<float>(dg);
      A += gp[b * C + c] * db;
      Bg += gp[b * C + c] * dg;
    }
    A /= n;
    Bg /= n;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      k1[c] = static_cast<float>(r * gp[b * C + c]);
      k2[c] = static_cast<float>(-r * r * Bg);
      k3[c] = static_cast<float>(r * (r * Bg * mu - A));
    }
  }
  affine_pass(dz, xb, dxb, k1, k2, k3, C, P, channels_last);
}

// dL/dx, dL/dgain, dL/dbias; with silu, dy is dL/dy of y = SiLU(z) and first becomes dL/dz (silu_grad).
template <typename T>
void backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& gain, const at::Tensor& bias,
                   const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dgain,
                   at::Tensor& dbias, int64_t G, bool channels_last, bool silu) {
  const int64_t B = x.size(0), C = x.size(1), P = x.numel() / std::max<int64_t>(1, B * C), Cg = C / G;
  const T *xp = static_cast<const T*>(x.data_ptr()), *dyp = static_cast<const T*>(dy.data_ptr());
  T* dxp = static_cast<T*>(dx.data_ptr());
  const float *gp = gain.data_ptr<float>(), *bp = bias.data_ptr<float>(), *mp = mean.data_ptr<float>(),
              *rp = rstd.data_ptr<float>();
  float *dgp = dgain.data_ptr<float>(), *dbp = dbias.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> s1(C), s2(C);
    std::vector<float> f1(C), f2(C), k1(C), k2(C), k3(C), zero(C, 0.f), mu_c(C), dz(silu ? C * P : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const T *xb = xp + b * C * P, *dyb = dyp + b * C * P;
      for (int64_t c = 0; c < C; ++c) mu_c[c] = mp[b * G + c / Cg];
      if (silu) {
        for (int64_t c = 0; c < C; ++c) {                       // z = k1 x + k3, as in forward_impl
          k1[c] = rp[b * G + c / Cg] * gp[b * C + c];
          k3[c] = static_cast<float>(bp[b * C + c] - static_cast<double>(mu_c[c]) * k1[c]);
        }
        silu_grad(dyb, xb, dz.data(), k1.data(), k3.data(), C, P, channels_last);
        backward_image(dz.data(), xb, dxp + b * C * P, b, C, P, G, gp, mp, rp, dgp, dbp, mu_c.data(), zero.data(),
                       s1.data(), s2.data(), f1.data(), f2.data(), k1.data(), k2.data(), k3.data(), channels_last);
      } else {
        backward_image(dyb, xb, dxp + b * C * P, b, C, P, G, gp, mp, rp, dgp, dbp, mu_c.data(), zero.data(),
                       s1.data(), s2.data(), f1.data(), f2.data(), k1.data(), k2.data(), k3.data(), channels_last);
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& gain, int64_t G, bool channels_last) {
  TORCH_CHECK(x.dim() >= 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "x must be [B, C, ...] float32 or bfloat16");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(G > 0 && C % G == 0, "groups must divide the channels");
  TORCH_CHECK(channels_last ? x.is_contiguous(at::MemoryFormat::ChannelsLast) : x.is_contiguous(),
              "x must be contiguous in the layout named by channels_last");
  TORCH_CHECK(gain.scalar_type() == at::kFloat && gain.is_contiguous() && gain.dim() == 2 && gain.size(0) == B &&
              gain.size(1) == C, "gain and bias must be [B, C] float32, contiguous");
}

}  // namespace

// -> (y in x's dtype and layout, mean [B, G], rstd [B, G]); y = z, or SiLU(z) (silu)
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(at::Tensor x, at::Tensor gain, at::Tensor bias, int64_t groups,
                                                       double eps, bool channels_last, bool silu) {
  check(x, gain, groups, channels_last);
  check(x, bias, groups, channels_last);
  auto y = at::empty_like(x);
  auto mean = at::empty({x.size(0), groups}, x.options().dtype(at::kFloat));
  auto rstd = at::empty_like(mean);
  if (x.scalar_type() == at::kFloat) {
    forward_impl<float>(x, gain, bias, y, mean, rstd, groups, eps, channels_last, silu);
  } else {
    forward_impl<uint16_t>(x, gain, bias, y, mean, rstd, groups, eps, channels_last, silu);
  }
  return {y, mean, rstd};
}

// -> (dx in x's dtype and layout, dgain [B, C], dbias [B, C]); dy in x's dtype and layout; bias: forward's (read
// only with silu, to recompute z).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(at::Tensor dy, at::Tensor x, at::Tensor gain, at::Tensor bias,
                                                        at::Tensor mean, at::Tensor rstd, int64_t groups,
                                                        bool channels_last, bool silu) {
  check(x, gain, groups, channels_last);
  check(x, bias, groups, channels_last);
  check(dy, gain, groups, channels_last);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy must match x");
  auto dx = at::empty_like(x);
  auto dgain = at::empty_like(gain), dbias = at::empty_like(gain);
  if (x.scalar_type() == at::kFloat) {
    backward_impl<float>(dy, x, gain, bias, mean, rstd, dx, dgain, dbias, groups, channels_last, silu);
  } else {
    backward_impl<uint16_t>(dy, x, gain, bias, mean, rstd, dx, dgain, dbias, groups, channels_last, silu);
  }
  return {dx, dgain, dbias};
}

TORCH_LIBRARY(infdiff_group_norm, m) {
  m.def("forward(Tensor x, Tensor gain, Tensor bias, int groups, float eps, bool channels_last, bool silu) -> "
        "(Tensor, Tensor, Tensor)", &forward);
  m.def("backward(Tensor dy, Tensor x, Tensor gain, Tensor bias, Tensor mean, Tensor rstd, int groups, "
        "bool channels_last, bool silu) -> (Tensor, Tensor, Tensor)", &backward);
}
