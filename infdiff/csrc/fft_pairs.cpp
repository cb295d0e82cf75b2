// Two real channel planes per complex FFT: the spectral step of the FFT depthwise convolution (CPU, no autograd).
//
// For real planes x1, x2 packed as z = x1 + i x2, Z = FFT2(z) holds both spectra:
//   X1[k] = (Z[k] + conj Z[-k]) / 2,   X2[k] = (Z[k] - conj Z[-k]) / (2i)        (k, -k modulo M x N).
// With kernel spectra K1, K2 (rfft2 halves, columns 0..N/2) the convolved pair is packed again,
//   Y[k] = X1[k] K1[k] + i X2[k] K2[k],   Y[-k] = conj(X1[k] K1[k]) + i conj(X2[k] K2[k])
// (y1, y2 are real), so IFFT2(Y) = y1 + i y2: one complex transform each way per two channels, where the
// real-input transforms need two rfft2 and two irfft2 (MKL's c2r at 1152 x 1152 takes ~2x its r2c).
// pair_product_ visits every pair {k, -k} once from its member in the rfft half and overwrites both in place.
// pack writes x1 + i x2 into the top-left corner of a zero-padded complex buffer; unpack crops the real and
// imaginary parts of the inverse transform back into two planes, times an optional normaliser.
// ATen and torch/library.h only (builds in seconds); registered as torch.ops.infdiff_fft_pairs.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>

namespace {

// Y at k and -k from a = Z[k], b = Z[-k] and the kernels' spectra at k: (k1r, k1i), (k2r, k2i).
inline void pair_update(float* a, float* b, float k1r, float k1i, float k2r,
                        float k2i) {
  // a and b may be the same element (k = -k); every read happens before the writes.
  const float x1r = 0.5f * (a[0] + b[0]), x1i = 0.5f * (a[1] - b[1]);
  const float x2r = 0.5f * (a[1] + b[1]), x2i = 0.5f * (b[0] - a[0]);
  const float y1r = x1r * k1r - x1i * k1i, y1i = x1r * k1i + x1i * k1r;
  const float y2r = x2r * k2r - x2i * k2i, y2i = x2r * k2i + x2i * k2r;
  // Z[-k] = conj(Y1) + i conj(Y2) first: for a self-paired k (b == a) the value at k must win.
  b[0] = y1r + y2i;
  b[1] = y2r - y1i;
  a[0] = y1r - y2i;
  a[1] = y1i + y2r;
}

// z [B, P, M, N] complex64 (as float pairs), in place; k [C, M, N/2 + 1] complex64 with C = 2P or 2P - 1:
// pair p uses kernels 2p and 2p + 1 (an odd C's last pair has a zero second plane: any kernel serves it).
void pair_product_(at::Tensor z, const at::Tensor& k) {
  TORCH_CHECK(z.scalar_type() == at::kComplexFloat && z.dim() == 4 && z.is_contiguous(),
              "z must be [B, P, M, N] contiguous complex64");
  const int64_t B = z.size(0), P = z.size(1), M = z.size(2), N = z.size(3), Nh = N / 2 + 1;
  TORCH_CHECK(k.scalar_type() == at::kComplexFloat && k.dim() == 3 && k.is_contiguous() &&
                  (k.size(0) == 2 * P || k.size(0) == 2 * P - 1) &&
                  k.size(1) == M && k.size(2) == Nh,
              "k must be [2P or 2P - 1, M, N/2 + 1] contiguous complex64 (rfft2 halves of the kernels)");
  const int64_t C = k.size(0);
  float* zp = reinterpret_cast<float*>(z.data_ptr());
  const float* kp = reinterpret_cast<const float*>(k.data_ptr());
  // Columns whose partner -c lies in the other half: 1 .. (N - 1) / 2. Columns 0 and N / 2 (N even) are
  // their own partners': there only rows r <= -r (mod M) are visited.
  const int64_t c_hi = (N - 1) / 2;
  at::parallel_for(0, B * P * M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task % M, bp = task / M, p = bp % P;
      const int64_t pr = (M - r) % M;
      float* row = zp + 2 * (bp * M + r) * N;
      float* prow = zp + 2 * (bp * M + pr) * N;
      const float* k1 = kp + 2 * ((2 * p) * M + r) * Nh;
      const float* k2 = 2 * p + 1 < C ? kp + 2 * ((2 * p + 1) * M + r) * Nh : k1;
      for (int64_t c = 1; c <= c_hi; ++c) {
        pair_update(row + 2 * c, prow + 2 * (N - c), k1[2 * c], k1[2 * c + 1], k2[2 * c], k2[2 * c + 1]);
      }
      if (r <= pr) {
        pair_update(row, prow, k1[0], k1[1], k2[0], k2[1]);
        if (N % 2 == 0) {
          const int64_t c = N / 2;
          pair_update(row + 2 * c, prow + 2 * c, k1[2 * c], k1[2 * c + 1], k2[2 * c], k2[2 * c + 1]);
        }
      }
    }
  });
}

// x [B, C, H, W] float32 (any strides in B, C and H; rows contiguous), C = 2P or 2P - 1 -> buf [B, P, M, N]
// complex64: buf[b, p, :H, :W] = x[b, 2p] + i x[b, 2p + 1] (0 for a missing channel 2P - 1); the rest of buf
// is left as it is (the caller's zeros).
void pack(const at::Tensor& x, at::Tensor buf) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4 && x.stride(3) == 1, "x must be [B, C, H, W] float32 with contiguous rows");
  TORCH_CHECK(buf.scalar_type() == at::kComplexFloat && buf.dim() == 4 && buf.is_contiguous(),
              "buf must be [B, P, M, N] contiguous complex64");
  const int64_t B = x.size(0), P = buf.size(1), H = x.size(2), W = x.size(3), M = buf.size(2), N = buf.size(3);
  const int64_t C = x.size(1);
  TORCH_CHECK(buf.size(0) == B && (C == 2 * P || C == 2 * P - 1) && H <= M && W <= N,
              "shapes of x and buf do not match");
  const float* xp = x.data_ptr<float>();
  float* bp_ = reinterpret_cast<float*>(buf.data_ptr());
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2);
  at::parallel_for(0, B * P * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task % H, bp = task / H, p = bp % P, b = bp / P;
      const float* x1 = xp + b * sb + (2 * p) * sc + r * sh;
      float* o = bp_ + 2 * (bp * M + r) * N;
      if (2 * p + 1 < C) {
        const float* x2 = x1 + sc;
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          o[2 * c] = x1[c];
          o[2 * c + 1] = x2[c];
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          o[2 * c] = x1[c];
          o[2 * c + 1] = 0.f;
        }
      }
    }
  });
}

// y [B, P, M, N] complex64 -> out [B, C, H, W] float32 (rows contiguous), C = 2P or 2P - 1: out[b, 2p] =
// Re y[b, p, off + i, off + j] * scale[i, j], out[b, 2p + 1] the imaginary part (if C has that channel);
// scale [H, W] float32 contiguous, or empty (none).
void unpack(const at::Tensor& y, at::Tensor out, const at::Tensor& scale, int64_t off) {
  TORCH_CHECK(y.scalar_type() == at::kComplexFloat && y.dim() == 4 && y.is_contiguous(),
              "y must be [B, P, M, N] contiguous complex64");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 4 && out.stride(3) == 1,
              "out must be [B, C, H, W] float32 with contiguous rows");
  const int64_t B = y.size(0), P = y.size(1), M = y.size(2), N = y.size(3), H = out.size(2), W = out.size(3);
  const int64_t C = out.size(1);
  TORCH_CHECK(out.size(0) == B && (C == 2 * P || C == 2 * P - 1) && off >= 0 && off + H <= M && off + W <= N,
              "shapes of y and out do not match");
  const bool has_scale = scale.numel() > 0;
  TORCH_CHECK(!has_scale || (scale.scalar_type() == at::kFloat && scale.numel() == H * W && scale.is_contiguous()),
              "scale must be [H, W] contiguous float32 or empty");
  const float* yp = reinterpret_cast<const float*>(y.data_ptr());
  float* op = out.data_ptr<float>();
  const float* sp = has_scale ? scale.data_ptr<float>() : nullptr;
  const int64_t sb = out.stride(0), sc = out.stride(1), sh = out.stride(2);
  at::parallel_for(0, B * P * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task % H, bp = task / H, p = bp % P, b = bp / P;
      const float* src = yp + 2 * ((bp * M + off + r) * N + off);
      float* o1 = op + b * sb + (2 * p) * sc + r * sh;
      // Without a normaliser the factor is 1 (exact); an odd C's last pair has no imaginary channel.
      const float* s = has_scale ? sp + r * W : nullptr;
      if (2 * p + 1 < C) {
        float* o2 = o1 + sc;
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          const float f = s != nullptr ? s[c] : 1.f;
          o1[c] = src[2 * c] * f;
          o2[c] = src[2 * c + 1] * f;
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) o1[c] = src[2 * c] * (s != nullptr ? s[c] : 1.f);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY(infdiff_fft_pairs, m) {
  m.def("pair_product_(Tensor(a!) z, Tensor k) -> ()", &pair_product_);
  m.def("pack(Tensor x, Tensor(a!) buf) -> ()", &pack);
  m.def("unpack(Tensor y, Tensor(a!) out, Tensor scale, int off) -> ()", &unpack);
}
