// The sparse depthwise operator (Eq. 20) on a CPU: loops over the *sampled* neighbours of each point only.
//
// Tables (infdiff.sparse.SparseGeometry.compact_table), Z = B*N points, J = most sampled neighbours of a point:
//   nb  [Z, J] int64: the j-th sampled neighbour of each point, in kernel-offset order; Z after the last one
//   off [Z, J] int64: its kernel offset o in 0..K-1 (row-major (dy, dx)); K after the last one
// Features v [Z, C] and kernels w [K(+1), C] are float32, contiguous. Built by infdiff/sparse_cpp.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace {

void check(const torch::Tensor& v, const torch::Tensor& nb, const torch::Tensor& off) {
  TORCH_CHECK(v.dim() == 2 && v.scalar_type() == torch::kFloat32 && v.is_contiguous(), "v must be [Z, C] float32");
  TORCH_CHECK(nb.sizes() == off.sizes() && nb.size(0) == v.size(0), "nb and off must be [Z, J]");
  TORCH_CHECK(nb.scalar_type() == torch::kInt64 && off.scalar_type() == torch::kInt64 && nb.is_contiguous() &&
              off.is_contiguous(), "nb and off must be contiguous int64");
}

}  // namespace

// out[z, c] = sum_j w[off[z, j], c] * v[nb[z, j], c]   (the Monte-Carlo sum of Eq. 20, before its scale)
torch::Tensor gather_conv(torch::Tensor v, torch::Tensor w, torch::Tensor nb, torch::Tensor off) {
  check(v, nb, off);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == v.size(1) && w.scalar_type() == torch::kFloat32 && w.is_contiguous(),
              "w must be [K, C] float32");
  const int64_t Z = v.size(0), C = v.size(1), J = nb.size(1);
  auto out = torch::empty({Z, C}, v.options());
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
torch::Tensor weight_grad(torch::Tensor v, torch::Tensor g, torch::Tensor nb, torch::Tensor off, int64_t K) {
  check(v, nb, off);
  TORCH_CHECK(g.sizes() == v.sizes() && g.scalar_type() == torch::kFloat32 && g.is_contiguous(),
              "g must be [Z, C] float32 like v");
  const int64_t Z = v.size(0), C = v.size(1), J = nb.size(1);
  const int64_t chunk = 512, n_chunks = std::max<int64_t>(1, (Z + chunk - 1) / chunk);
  auto part = torch::zeros({n_chunks, K, C}, v.options());
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_conv", &gather_conv, "sum_j w[off[z, j]] * v[nb[z, j]]");
  m.def("weight_grad", &weight_grad, "sum_z sum_{j: off[z, j] = o} g[z] * v[nb[z, j]]");
}
