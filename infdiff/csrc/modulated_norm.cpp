// The modulated LayerNorm of the sampling path in one pass over the rows (CPU, no autograd).
//
//   out[b, n, c] = ((x[b, n, c] - mean_bn) * rstd_bn * gain[b, c] + shift[b, c]) * zgain[b, c]
//
// mean_bn and the biased variance over the C channels of row (b, n) in float32 (two passes over the row,
// which stays in registers/L1), rstd = 1 / sqrt(var + eps); zgain is optional (empty tensor: none).
// x [B, N, C] contiguous float32 or bfloat16; gain, shift, zgain [B, C] float32; out [B, N, C] float32 or
// bfloat16 (rounded once, from the float32 result), point-major or (channel_major) a view of [B, C, N] storage.
// Below it, the residual MLP that follows the norm (residual_mlp).
// ATen and torch/library.h only (not torch/extension.h, pybind11 and all of libtorch's API): a first build
// compiles in seconds instead of ~25 s. The functions are registered as operators, torch.ops.infdiff_<stem>.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <torch/library.h>

#include "bf16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using infdiff_bf16::store;

// oneDNN's linear with the bias (and the exact GELU, `gelu`) applied to the product's accumulator:
// torch.ops.mkldnn._linear_pointwise, what torch's compiler fuses a Linear + GELU into on a CPU. Against
// addmm (which first copies the broadcast bias into the output) + gelu_ (a pass of its own over the hidden
// layer, reading and writing bf16) the ∞-Diff block MLP (32 -> 64 -> 32, bf16, 65536 rows) took 3.5-3.6
// instead of 4.3 ms on 1 thread of the AMX Xeon. nullopt where torch has no oneDNN (then addmm + gelu_).
using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   c10::string_view, c10::List<std::optional<at::Scalar>>,
                                   std::optional<c10::string_view>);
const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& onednn_linear_op() {
  static const std::optional<c10::TypedOperatorHandle<LinearPointwise>> op = []() {
    auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    return handle ? std::optional<c10::TypedOperatorHandle<LinearPointwise>>(handle->typed<LinearPointwise>())
                  : std::nullopt;
  }();
  return op;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool gelu) {
  return onednn_linear_op()->call(x, w, b, gelu ? "gelu" : "none", c10::List<std::optional<at::Scalar>>(),
                                  std::optional<c10::string_view>(gelu ? "none" : ""));
}

// One row: (LN(v) * g + s) * z -> o; v float32 [C] (a scratch row, overwritten), z optional (nullptr).
template <typename U>
inline void norm_row(float* __restrict__ v, const float* __restrict__ g, const float* __restrict__ s,
                     const float* __restrict__ z, U* __restrict__ o, int64_t C, float eps) {
  const float inv_c = 1.f / static_cast<float>(C);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < C; ++c) sum += v[c];
  const float mean = sum * inv_c;
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < C; ++c) {
    const float d = v[c] - mean;
    ss += d * d;
  }
  const float rstd = 1.f / std::sqrt(ss * inv_c + eps);
  if (z == nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = store((v[c] - mean) * rstd * g[c] + s[c], o);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = store(((v[c] - mean) * rstd * g[c] + s[c]) * z[c], o);
  }
}

template <typename T, typename U>
void modulated_norm_rows(const T* __restrict__ x, const float* __restrict__ gain, const float* __restrict__ shift,
                         const float* __restrict__ zgain, U* __restrict__ out, int64_t B, int64_t N, int64_t C,
                         double eps) {
  at::parallel_for(0, B * N, 256, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(C);
    float* __restrict__ v = row.data();
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ xr = x + r * C;
      const int64_t b = r / N;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) v[c] = static_cast<float>(xr[c]);
      norm_row(v, gain + b * C, shift + b * C, zgain == nullptr ? nullptr : zgain + b * C, out + r * C, C,
               static_cast<float>(eps));
    }
  });
}

// The same, written channel-major: out[b, c, n] (the FFT convolution's input planes). Tasks of kBlock rows
// of one image: normalised into a float32 block that stays in L1, then written one channel run at a time.
template <typename T, typename U>
void modulated_norm_planes(const T* __restrict__ x, const float* __restrict__ gain, const float* __restrict__ shift,
                           const float* __restrict__ zgain, U* __restrict__ out, int64_t B, int64_t N, int64_t C,
                           double eps) {
  constexpr int64_t kBlock = 64;
  const int64_t per_image = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, B * per_image, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> row(C), block(kBlock * C);
    float* __restrict__ v = row.data();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per_image, n0 = (t % per_image) * kBlock, S = std::min(kBlock, N - n0);
      for (int64_t i = 0; i < S; ++i) {
        const T* __restrict__ xr = x + (b * N + n0 + i) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) v[c] = static_cast<float>(xr[c]);
        norm_row(v, gain + b * C, shift + b * C, zgain == nullptr ? nullptr : zgain + b * C, block.data() + i * C,
                 C, static_cast<float>(eps));
      }
      for (int64_t c = 0; c < C; ++c) {
        U* __restrict__ o = out + (b * C + c) * N + n0;
        for (int64_t i = 0; i < S; ++i) o[i] = store(block[i * C + c], o);
      }
    }
  });
}

}  // namespace

namespace {

template <typename T, typename U>
void norm_into(const T* x, const float* gain, const float* shift, const float* zp, U* out, int64_t B, int64_t N,
               int64_t C, double eps, bool channel_major) {
  if (channel_major) {
    modulated_norm_planes(x, gain, shift, zp, out, B, N, C, eps);
  } else {
    modulated_norm_rows(x, gain, shift, zp, out, B, N, C, eps);
  }
}

template <typename T>
void dispatch_out(const at::Tensor& x, const at::Tensor& gain, const at::Tensor& shift, const float* zp,
                  at::Tensor& out, int64_t B, int64_t N, int64_t C, double eps, bool channel_major) {
  if (out.scalar_type() == at::kFloat) {
    norm_into(x.data_ptr<T>(), gain.data_ptr<float>(), shift.data_ptr<float>(), zp, out.data_ptr<float>(), B, N, C,
              eps, channel_major);
  } else {
    norm_into(x.data_ptr<T>(), gain.data_ptr<float>(), shift.data_ptr<float>(), zp,
              reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), B, N, C, eps, channel_major);
  }
}

// Checks the per-image modulation of both operators: gain, shift [B, C] float32 and zgain the same or empty.
// Returns whether zgain is given.
bool check_modulation(const at::Tensor& gain, const at::Tensor& shift, const at::Tensor& zgain, int64_t B,
                      int64_t C) {
  for (const auto* t : {&gain, &shift}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 && t->size(0) == B &&
                t->size(1) == C, "gain and shift must be [B, C] float32, contiguous");
  }
  const bool has_z = zgain.numel() > 0;
  if (has_z) {
    TORCH_CHECK(zgain.scalar_type() == at::kFloat && zgain.is_contiguous() && zgain.dim() == 2 &&
                zgain.size(0) == B && zgain.size(1) == C, "zgain must be [B, C] float32, contiguous, or empty");
  }
  return has_z;
}

}  // namespace

at::Tensor modulated_norm(at::Tensor x, at::Tensor gain, at::Tensor shift, at::Tensor zgain, double eps,
                          bool out_bf16, bool channel_major) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && !x.requires_grad(), "x must be [B, N, C] contiguous, no grad");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  const bool has_z = check_modulation(gain, shift, zgain, B, C);
  // channel-major: storage [B, C, N], returned as its [B, N, C] view
  auto out = at::empty(channel_major ? std::vector<int64_t>{B, C, N} : std::vector<int64_t>{B, N, C},
                       x.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  const float* zp = has_z ? zgain.data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kFloat) {
    dispatch_out<float>(x, gain, shift, zp, out, B, N, C, eps, channel_major);
  } else {
    dispatch_out<at::BFloat16>(x, gain, shift, zp, out, B, N, C, eps, channel_major);
  }
  return channel_major ? out.transpose(1, 2) : out;
}

// ---------------------------------------------------------------------------------------------------------
// The residual MLP that follows the modulated norm in the sampling path (an ∞-Diff block after its
// convolution; without h and cbias a plain residual MLP block):
//
//   u   = v + h + cbias                                   (h and cbias optional: empty tensors)
//   out = u + W2 GELU(W1 ((LN(u) * gain + shift) * zgain) + b1) + b2
//
// in tasks of `rows` points of the flattened [B * N] (a task may span images), run in parallel, each task's
// matrix products on its own thread. u and the norm in float32; the products in the weights' dtype (bf16
// under autocast: the norm rounded to it once, as the eager ops' cast does); `out` rounded once from the
// float32 sum. v and h may have any strides (h is the channel-major output of the FFT convolution): a task
// reads them in the order of their unit stride, so no transposed copy is made.
namespace {

// dst[i * C + c] (= or +=) x[b, n0 + i, c] for i < S, through x's strides.
template <typename T, bool kAssign>
void load_rows(float* __restrict__ dst, const at::Tensor& x, int64_t b, int64_t n0, int64_t S, int64_t C) {
  const int64_t sn = x.stride(1), sc = x.stride(2);
  const T* __restrict__ base = x.data_ptr<T>() + b * x.stride(0) + n0 * sn;
  if (sc == 1) {                   // point-major rows
    for (int64_t i = 0; i < S; ++i) {
      const T* __restrict__ xr = base + i * sn;
      float* __restrict__ d = dst + i * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] = kAssign ? static_cast<float>(xr[c]) : d[c] + static_cast<float>(xr[c]);
    }
  } else if (sn != 1) {            // no unit stride
    for (int64_t i = 0; i < S; ++i) {
      for (int64_t c = 0; c < C; ++c) {
        const float x_ic = static_cast<float>(base[i * sn + c * sc]);
        dst[i * C + c] = kAssign ? x_ic : dst[i * C + c] + x_ic;
      }
    }
  } else {                         // channel-major: transpose blocks of 16 points (their rows stay in L1)
    constexpr int64_t kBlock = 16;
    for (int64_t i0 = 0; i0 < S; i0 += kBlock) {
      const int64_t i1 = std::min(S, i0 + kBlock);
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict__ xc = base + c * sc;
        for (int64_t i = i0; i < i1; ++i) {
          dst[i * C + c] = kAssign ? static_cast<float>(xc[i]) : dst[i * C + c] + static_cast<float>(xc[i]);
        }
      }
    }
  }
}

template <bool kAssign>
void load_any(float* dst, const at::Tensor& x, int64_t b, int64_t n0, int64_t S, int64_t C) {
  if (x.scalar_type() == at::kFloat) {
    load_rows<float, kAssign>(dst, x, b, n0, S, C);
  } else {
    load_rows<at::BFloat16, kAssign>(dst, x, b, n0, S, C);
  }
}

template <typename W, typename O>
void residual_mlp_tasks(const at::Tensor& v, const at::Tensor& h, const float* cbias, const float* gain,
                        const float* shift, const float* zgain, const at::Tensor& w1, const at::Tensor& b1,
                        const at::Tensor& w2, const at::Tensor& b2, O* out, int64_t rows, float eps) {
  const int64_t B = v.size(0), N = v.size(1), C = v.size(2);
  const int64_t tasks = (B * N + rows - 1) / rows;
  const at::Tensor w1t = w1.t(), w2t = w2.t();
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> ubuf;
    for (int64_t t = t0; t < t1; ++t) {
      // rows r0 .. r0 + S of the flattened [B * N] points; a task may span images
      const int64_t r0 = t * rows, S = std::min(rows, B * N - r0);
      ubuf.resize(S * C);
      float* __restrict__ u = ubuf.data();
      for (int64_t r = r0; r < r0 + S;) {          // one image's run of points at a time
        const int64_t b = r / N, n0 = r % N, len = std::min(N - n0, r0 + S - r);
        float* dst = u + (r - r0) * C;
        load_any<true>(dst, v, b, n0, len, C);
        if (h.numel() > 0) load_any<false>(dst, h, b, n0, len, C);
        r += len;
      }
      if (cbias != nullptr) {
        for (int64_t i = 0; i < S; ++i) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) u[i * C + c] += cbias[c];
        }
      }
      at::Tensor nrm = at::empty({S, C}, w1.options());
      W* __restrict__ np = reinterpret_cast<W*>(nrm.data_ptr());
      std::vector<float> row(C);
      for (int64_t i = 0; i < S; ++i) {
        const int64_t b = (r0 + i) / N;
        std::memcpy(row.data(), u + i * C, C * sizeof(float));
        norm_row(row.data(), gain + b * C, shift + b * C, zgain == nullptr ? nullptr : zgain + b * C, np + i * C, C,
                 eps);
      }
      at::Tensor o;
      if (std::is_same_v<W, uint16_t> && onednn_linear_op()) {   // bf16: bias and GELU in oneDNN's epilogue
        o = onednn_linear(onednn_linear(nrm, w1, b1, true), w2, b2, false);
      } else {
        at::Tensor a = at::addmm(b1, nrm, w1t);
        at::gelu_(a);
        o = at::addmm(b2, a, w2t);
      }
      O* __restrict__ dst = out + r0 * C;
      if (o.scalar_type() == at::kFloat) {
        const float* __restrict__ op = o.data_ptr<float>();
#pragma omp simd
        for (int64_t j = 0; j < S * C; ++j) dst[j] = store(u[j] + op[j], dst);
      } else {
        const at::BFloat16* __restrict__ op = o.data_ptr<at::BFloat16>();
#pragma omp simd
        for (int64_t j = 0; j < S * C; ++j) dst[j] = store(u[j] + static_cast<float>(op[j]), dst);
      }
    }
  });
}

}  // namespace

at::Tensor residual_mlp(at::Tensor v, at::Tensor h, at::Tensor cbias, at::Tensor gain, at::Tensor shift,
                        at::Tensor zgain, at::Tensor w1, at::Tensor b1, at::Tensor w2, at::Tensor b2, double eps,
                        int64_t rows, bool out_bf16) {
  TORCH_CHECK(v.dim() == 3 && !v.requires_grad(), "v must be [B, N, C], no grad");
  const int64_t B = v.size(0), N = v.size(1), C = v.size(2);
  auto is_feat = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; };
  TORCH_CHECK(is_feat(v), "v must be float32 or bfloat16");
  if (h.numel() > 0) {
    TORCH_CHECK(h.sizes() == v.sizes() && is_feat(h) && !h.requires_grad(), "h must be like v (float32 or bfloat16)");
  }
  const bool has_cb = cbias.numel() > 0;
  if (has_cb) {
    TORCH_CHECK(cbias.scalar_type() == at::kFloat && cbias.is_contiguous() && cbias.numel() == C,
                "cbias must be [C] float32, contiguous, or empty");
  }
  const bool has_z = check_modulation(gain, shift, zgain, B, C);
  const int64_t H = w1.size(0);
  TORCH_CHECK(is_feat(w1) && w1.dim() == 2 && w1.size(1) == C && w1.is_contiguous(), "w1 must be [H, C] contiguous");
  TORCH_CHECK(w2.scalar_type() == w1.scalar_type() && w2.dim() == 2 && w2.size(0) == C && w2.size(1) == H &&
              w2.is_contiguous(), "w2 must be [C, H] contiguous, in w1's dtype");
  TORCH_CHECK(b1.scalar_type() == w1.scalar_type() && b1.numel() == H && b2.scalar_type() == w1.scalar_type() &&
              b2.numel() == C, "b1 [H] and b2 [C] must be in w1's dtype");
  TORCH_CHECK(rows > 0, "rows must be positive");
  auto out = at::empty({B, N, C}, v.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  if (out.numel() == 0) return out;
  const float* cb = has_cb ? cbias.data_ptr<float>() : nullptr;
  const float* zp = has_z ? zgain.data_ptr<float>() : nullptr;
  const float* g = gain.data_ptr<float>();
  const float* s = shift.data_ptr<float>();
  const float e = static_cast<float>(eps);
  if (w1.scalar_type() == at::kFloat) {
    if (out_bf16) {
      residual_mlp_tasks<float>(v, h, cb, g, s, zp, w1, b1, w2, b2,
                                reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), rows, e);
    } else {
      residual_mlp_tasks<float>(v, h, cb, g, s, zp, w1, b1, w2, b2, out.data_ptr<float>(), rows, e);
    }
  } else {
    if (out_bf16) {
      residual_mlp_tasks<uint16_t>(v, h, cb, g, s, zp, w1, b1, w2, b2,
                                   reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), rows, e);
    } else {
      residual_mlp_tasks<uint16_t>(v, h, cb, g, s, zp, w1, b1, w2, b2, out.data_ptr<float>(), rows, e);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// The skip merge before an up block of the sampling path, W [u; s] + b without the concatenation:
//
//   out[r] = W [u[r]; s[r]] + b        u, s [B, N, C] (any strides, float32 or bf16), W [Co, 2C], b [Co]
//
// in tasks of `rows` flattened points: each task reads its rows of u and s in the order of their unit stride
// (u is the channel-major read of the grid), rounds them once to the weights' dtype side by side in one
// [rows, 2C] buffer and makes one product with K = 2C straight into its rows of `out` ([B, N, Co], in the
// weights' dtype, as the eager Linear under autocast).
namespace {

template <typename W>
void merge_tasks(const at::Tensor& u, const at::Tensor& s, const at::Tensor& w, const at::Tensor& bias,
                 at::Tensor& out, int64_t rows) {
  const int64_t B = u.size(0), N = u.size(1), C = u.size(2), Co = w.size(0);
  const int64_t tasks = (B * N + rows - 1) / rows;
  const at::Tensor wt = w.t();
  at::Tensor flat = out.view({B * N, Co});
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> ubuf, sbuf;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * rows, S = std::min(rows, B * N - r0);
      ubuf.resize(S * C);
      sbuf.resize(S * C);
      for (int64_t r = r0; r < r0 + S;) {          // one image's run of points at a time
        const int64_t b = r / N, n0 = r % N, len = std::min(N - n0, r0 + S - r);
        load_any<true>(ubuf.data() + (r - r0) * C, u, b, n0, len, C);
        load_any<true>(sbuf.data() + (r - r0) * C, s, b, n0, len, C);
        r += len;
      }
      at::Tensor us = at::empty({S, 2 * C}, w.options());
      W* __restrict__ p = reinterpret_cast<W*>(us.data_ptr());
      for (int64_t i = 0; i < S; ++i) {
        const float* __restrict__ ur = ubuf.data() + i * C;
        const float* __restrict__ sr = sbuf.data() + i * C;
        W* __restrict__ pr = p + i * 2 * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          pr[c] = store(ur[c], pr);
          pr[C + c] = store(sr[c], pr);
        }
      }
      at::Tensor dst = flat.narrow(0, r0, S);
      at::addmm_out(dst, bias, us, wt);
    }
  });
}

}  // namespace

at::Tensor merge(at::Tensor u, at::Tensor s, at::Tensor w, at::Tensor bias, int64_t rows) {
  auto is_feat = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; };
  TORCH_CHECK(u.dim() == 3 && s.sizes() == u.sizes() && is_feat(u) && is_feat(s) && !u.requires_grad() &&
              !s.requires_grad(), "u and s must be [B, N, C] float32 or bfloat16 of one shape, no grad");
  const int64_t B = u.size(0), N = u.size(1), C = u.size(2);
  TORCH_CHECK(is_feat(w) && w.dim() == 2 && w.size(1) == 2 * C && w.is_contiguous(), "w must be [Co, 2C] contiguous");
  TORCH_CHECK(bias.scalar_type() == w.scalar_type() && bias.numel() == w.size(0), "bias must be [Co] in w's dtype");
  TORCH_CHECK(rows > 0, "rows must be positive");
  auto out = at::empty({B, N, w.size(0)}, u.options().dtype(w.scalar_type()));
  if (out.numel() == 0) return out;
  if (w.scalar_type() == at::kFloat) {
    merge_tasks<float>(u, s, w, bias, out, rows);
  } else {
    merge_tasks<uint16_t>(u, s, w, bias, out, rows);
  }
  return out;
}

TORCH_LIBRARY(infdiff_modulated_norm, m) {
  m.def("modulated_norm(Tensor x, Tensor gain, Tensor shift, Tensor zgain, float eps, bool out_bf16, "
        "bool channel_major) -> Tensor",
        &modulated_norm);
  m.def("residual_mlp(Tensor v, Tensor h, Tensor cbias, Tensor gain, Tensor shift, Tensor zgain, Tensor w1, "
        "Tensor b1, Tensor w2, Tensor b2, float eps, int rows, bool out_bf16) -> Tensor", &residual_mlp);
  m.def("merge(Tensor u, Tensor s, Tensor w, Tensor bias, int rows) -> Tensor", &merge);
}
