// The sparse depthwise operator (Eq. 20) on a CPU: loops over the *sampled* neighbours of each point only.
//
// Tables (infdiff.sparse.SparseGeometry.compact_table), Z = B*N points, J = most sampled neighbours of a point:
//   nb  [Z, J] int64: the j-th sampled neighbour of each point, in kernel-offset order; Z after the last one
//   off [Z, J] int64: its kernel offset o in 0..K-1 (row-major (dy, dx)); K after the last one
// Features v [Z, C] and kernels w [K(+1), C] are float32, contiguous. Built by infdiff/sparse_cpp.py.
// ATen and torch/library.h only (not torch/extension.h, pybind11 and all of libtorch's API): a first build
// compiles in seconds instead of ~25 s. The functions are registered as operators, torch.ops.infdiff_<stem>.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace {

void check(const at::Tensor& v, const at::Tensor& nb, const at::Tensor& off) {
  TORCH_CHECK(v.dim() == 2 && v.scalar_type() == at::kFloat && v.is_contiguous(), "v must be [Z, C] float32");
  TORCH_CHECK(nb.sizes() == off.sizes() && nb.size(0) == v.size(0), "nb and off must be [Z, J]");
  TORCH_CHECK(nb.scalar_type() == at::kLong && off.scalar_type() == at::kLong && nb.is_contiguous() &&
              off.is_contiguous(), "nb and off must be contiguous int64");
}

}  // namespace

// out[z, c] = sum_j w[off[z, j], c] * v[nb[z, j], c]   (the Monte-Carlo sum of Eq. 20, before its scale)
at::Tensor gather_conv(at::Tensor v, at::Tensor w, at::Tensor nb, at::Tensor off) {
  check(v, nb, off);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == v.size(1) && w.scalar_type() == at::kFloat && w.is_contiguous(),
              "w must be [K, C] float32");
  const int64_t Z = v.size(0), C = v.size(1), J = nb.size(1);
  auto out = at::empty({Z, C}, v.options());
  const float* __restrict__ vp = v.data_ptr<float>();
  const float* __restrict__ wp = w.data_ptr<float>();
  const int64_t* __restrict__ nbp = nb.data_ptr<int64_t>();
  const int64_t* __restrict__ offp = off.data_ptr<int64_t>();
  float* __restrict__ op = out.data_ptr<float>();
  at::parallel_for(0, Z, 64, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z) {
      float* __restrict__ o = op + z * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
      for (int64_t j = 0; j < J; ++j) {
        const int64_t s = nbp[z * J + j];
        if (s == Z) break;  // sampled neighbours come first
        const float* __restrict__ x = vp + s * C;
        const float* __restrict__ ww = wp + offp[z * J + j] * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += ww[c] * x[c];
      }
    }
  });
  return out;
}

// grad_w[o, c] = sum_z sum_{j : off[z, j] = o} g[z, c] * v[nb[z, j], c]
// Summed per fixed chunk of points, then over chunks in order: the result does not depend on the thread count.
at::Tensor weight_grad(at::Tensor v, at::Tensor g, at::Tensor nb, at::Tensor off, int64_t K) {
  check(v, nb, off);
  TORCH_CHECK(g.sizes() == v.sizes() && g.scalar_type() == at::kFloat && g.is_contiguous(),
              "g must be [Z, C] float32 like v");
  const int64_t Z = v.size(0), C = v.size(1), J = nb.size(1);
  const int64_t chunk = 512, n_chunks = std::max<int64_t>(1, (Z + chunk - 1) / chunk);
  auto part = at::zeros({n_chunks, K, C}, v.options());
  const float* __restrict__ vp = v.data_ptr<float>();
  const float* __restrict__ gp = g.data_ptr<float>();
  const int64_t* __restrict__ nbp = nb.data_ptr<int64_t>();
  const int64_t* __restrict__ offp = off.data_ptr<int64_t>();
  float* __restrict__ pp = part.data_ptr<float>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      float* __restrict__ acc = pp + b * K * C;
      const int64_t z_end = std::min(Z, (b + 1) * chunk);
      for (int64_t z = b * chunk; z < z_end; ++z) {
        const float* __restrict__ gz = gp + z * C;
        for (int64_t j = 0; j < J; ++j) {
          const int64_t s = nbp[z * J + j];
          if (s == Z) break;
          const float* __restrict__ x = vp + s * C;
          float* __restrict__ a = acc + offp[z * J + j] * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) a[c] += gz[c] * x[c];
        }
      }
    }
  });
  return part.sum(0);
}

// The compact tables themselves from the dense one: g [Z, K] int64 global neighbour ids, -1 where an offset holds no
// sampled pixel -> (nb, off) [Z, J], J = most sampled neighbours of any point; each row's sampled neighbours in
// offset order, then (missing, K) padding. One pass per row (torch's way, a stable sort of the missing flags and
// two gathers, took 5 ms of a 160 ms training step).
std::tuple<at::Tensor, at::Tensor> compact_table(at::Tensor g, int64_t missing) {
  TORCH_CHECK(g.dim() == 2 && g.scalar_type() == at::kLong && g.is_contiguous(), "g must be [Z, K] int64, contiguous");
  const int64_t Z = g.size(0), K = g.size(1);
  const int64_t* __restrict__ gp = g.data_ptr<int64_t>();
  int64_t J = 0;
  for (int64_t z = 0; z < Z; ++z) {
    int64_t n = 0;
    for (int64_t k = 0; k < K; ++k) n += gp[z * K + k] >= 0;
    J = std::max(J, n);
  }
  at::Tensor nb = at::empty({Z, J}, g.options()), off = at::empty({Z, J}, g.options());
  int64_t* __restrict__ nbp = nb.data_ptr<int64_t>();
  int64_t* __restrict__ offp = off.data_ptr<int64_t>();
  at::parallel_for(0, Z, 1024, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z) {
      int64_t j = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t s = gp[z * K + k];
        if (s >= 0) {
          nbp[z * J + j] = s;
          offp[z * J + j] = k;
          ++j;
        }
      }
      for (; j < J; ++j) {
        nbp[z * J + j] = missing;
        offp[z * J + j] = K;
      }
    }
  });
  return {nb, off};
}

TORCH_LIBRARY(infdiff_sparse_gather, m) {
  m.def("compact_table(Tensor g, int missing) -> (Tensor, Tensor)", &compact_table);
  m.def("gather_conv(Tensor v, Tensor w, Tensor nb, Tensor off) -> Tensor", &gather_conv);
  m.def("weight_grad(Tensor v, Tensor g, Tensor nb, Tensor off, int K) -> Tensor", &weight_grad);
}
