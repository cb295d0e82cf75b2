/* The per-replicate passes of the SWD bootstrap (infdiff/metrics/swd.py, _direction_task), in plain C.
 *
 * A replicate r of one task (k directions) is, in numpy, a product, a gather, a sort, a shift, a difference,
 * an absolute value and a sum: six passes over [k, n P] floats besides the sort. Here the passes before the
 * sort are one (swd_fill: the rescaled projection of only the resampled images, written in resample order)
 * and the passes after it one (swd_reduce); numpy's SIMD sort runs between them. float32 arithmetic in the
 * order numpy uses (the channel sum in channel order; (g + shift) - pb rounded to float32), sums in double
 * (vectorised: -fopenmp-simd lets the reduction run in SIMD lanes, no OpenMP runtime).
 * No torch: the evaluation jobs never import it. Built by infdiff/c_kernels.py (-ffp-contract=off: no fused
 * multiply-add, the same float32 roundings on every machine).
 */
#include <math.h>
#include <stdint.h>

/* g[j, i P + p] = sum_c inv[c] Q[c, j, ix[i], p] for j < k, i < n, p < P.
 * Q: the task's first direction of a [C, K, n_images, P] float32 array (chan_stride = K n_images P,
 * dir_stride = n_images P); ix [n] image indices (the resample); inv [C]; g [k, n P]. */
void swd_fill(const float *Q, int64_t C, int64_t chan_stride, int64_t dir_stride, int64_t k,
              const int64_t *ix, int64_t n, int64_t P, const float *inv, float *g) {
  for (int64_t j = 0; j < k; ++j) {
    const float *Qj = Q + j * dir_stride;
    float *gj = g + j * n * P;
    for (int64_t i = 0; i < n; ++i) {
      const float *src = Qj + ix[i] * P;
      float *dst = gj + i * P;
      const float a0 = inv[0];
      for (int64_t p = 0; p < P; ++p) dst[p] = a0 * src[p];
      for (int64_t c = 1; c < C; ++c) {
        const float *s = src + c * chan_stride;
        const float a = inv[c];
        for (int64_t p = 0; p < P; ++p) dst[p] += a * s[p];
      }
    }
  }
}

/* Sum over the k directions of one replicate's W1 terms, each row g[j] sorted:
 *   equal sizes (ia == NULL): sum_j sum_i |(g[j, i] + shift[j]) - pb[j, i]|, over i < m
 *   unequal: sum_j sum_q |(g[j, ia[q]] + shift[j]) - pb[j, q]| * wq[q], over the m quantile pairs q
 * g [k, nP]; pb [k, m] (the reference's sorted projections, paired); shift [k]. */
double swd_reduce(const float *g, int64_t k, int64_t nP, const float *shift, const float *pb, int64_t m,
                  const int64_t *ia, const float *wq) {
  double total = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const float *gj = g + j * nP, *bj = pb + j * m;
    const float s = shift[j];
    double row = 0.0;
    if (ia == 0) {
#pragma omp simd reduction(+ : row)
      for (int64_t i = 0; i < m; ++i) row += fabsf((gj[i] + s) - bj[i]);
    } else {
#pragma omp simd reduction(+ : row)
      for (int64_t q = 0; q < m; ++q) row += fabsf((gj[ia[q]] + s) - bj[q]) * wq[q];
    }
    total += row;
  }
  return total;
}
