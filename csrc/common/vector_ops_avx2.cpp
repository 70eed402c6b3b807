// AVX2+FMA row primitives (entered only after the CPUID check).
#include <immintrin.h>

#include <cmath>

#include "common/vector_ops.h"

// clang-format off
#include "common/isa_avx2_begin.h"  // after every other include: AVX2 code from here on
#include "common/vector_ops_generic.h"  // compiled for AVX2 in this file
// clang-format on

namespace fastconv {
namespace {

void axpy_f32(int64_t n, float alpha, const float* x, float* y) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    _mm256_storeu_ps(y + i + 8,
                     _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
  }
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

float dot_f32(int64_t n, const float* x, const float* y) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
  float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
            ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

void axpy_f64(int64_t n, double alpha, const double* x, double* y) {
  const __m256d a = _mm256_set1_pd(alpha);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    _mm256_storeu_pd(y + i, _mm256_fmadd_pd(a, _mm256_loadu_pd(x + i), _mm256_loadu_pd(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

double dot_f64(int64_t n, const double* x, const double* y) {
  __m256d s0 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(x + i), _mm256_loadu_pd(y + i), s0);
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, s0);
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// Lane masks for the first k < 8 lanes of a masked load or store.
inline __m256i first_lanes(int64_t k) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Four 8-lane accumulators (32 columns) a step: four independent FMA chains;
// then 8 columns, then the ragged end through a masked load and store (a scalar
// tail would run one serial FMA chain per column).
void weighted_rows_f32(int64_t n, int64_t taps, const float* const* rows, const float* w,
                       float init, float* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 a0 = _mm256_set1_ps(init), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < taps; ++t) {
      const __m256 wt = _mm256_set1_ps(w[t]);
      const float* r = rows[t] + i;
      a0 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(r), a0);
      a1 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(r + 8), a1);
      a2 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(r + 16), a2);
      a3 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(r + 24), a3);
    }
    _mm256_storeu_ps(out + i, a0);
    _mm256_storeu_ps(out + i + 8, a1);
    _mm256_storeu_ps(out + i + 16, a2);
    _mm256_storeu_ps(out + i + 24, a3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 a0 = _mm256_set1_ps(init);
    for (int64_t t = 0; t < taps; ++t)
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), _mm256_loadu_ps(rows[t] + i), a0);
    _mm256_storeu_ps(out + i, a0);
  }
  if (i < n) {
    const __m256i live = first_lanes(n - i);
    __m256 a0 = _mm256_set1_ps(init);
    for (int64_t t = 0; t < taps; ++t)
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), _mm256_maskload_ps(rows[t] + i, live), a0);
    _mm256_maskstore_ps(out + i, live, a0);
  }
}

void weighted_rows_f64(int64_t n, int64_t taps, const double* const* rows, const double* w,
                       double init, double* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256d a0 = _mm256_set1_pd(init), a1 = a0;
    for (int64_t t = 0; t < taps; ++t) {
      const __m256d wt = _mm256_set1_pd(w[t]);
      a0 = _mm256_fmadd_pd(wt, _mm256_loadu_pd(rows[t] + i), a0);
      a1 = _mm256_fmadd_pd(wt, _mm256_loadu_pd(rows[t] + i + 4), a1);
    }
    _mm256_storeu_pd(out + i, a0);
    _mm256_storeu_pd(out + i + 4, a1);
  }
  for (; i < n; ++i) {
    double acc = init;
    for (int64_t t = 0; t < taps; ++t) acc = std::fma(w[t], rows[t][i], acc);
    out[i] = acc;
  }
}

// x stays in registers 32 lanes at a time while every row streams past it.
void rows_mul_add_f32(int64_t n, const float* x, int64_t taps, const float* const* rows,
                      float* acc) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    const __m256 x2 = _mm256_loadu_ps(x + i + 16), x3 = _mm256_loadu_ps(x + i + 24);
    for (int64_t t = 0; t < taps; ++t) {
      const float* r = rows[t] + i;
      float* a = acc + t * n + i;
      _mm256_storeu_ps(a, _mm256_fmadd_ps(x0, _mm256_loadu_ps(r), _mm256_loadu_ps(a)));
      _mm256_storeu_ps(a + 8, _mm256_fmadd_ps(x1, _mm256_loadu_ps(r + 8), _mm256_loadu_ps(a + 8)));
      _mm256_storeu_ps(a + 16,
                       _mm256_fmadd_ps(x2, _mm256_loadu_ps(r + 16), _mm256_loadu_ps(a + 16)));
      _mm256_storeu_ps(a + 24,
                       _mm256_fmadd_ps(x3, _mm256_loadu_ps(r + 24), _mm256_loadu_ps(a + 24)));
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + i);
    for (int64_t t = 0; t < taps; ++t) {
      float* a = acc + t * n + i;
      _mm256_storeu_ps(a, _mm256_fmadd_ps(x0, _mm256_loadu_ps(rows[t] + i), _mm256_loadu_ps(a)));
    }
  }
  for (; i < n; ++i)
    for (int64_t t = 0; t < taps; ++t) acc[t * n + i] = std::fma(x[i], rows[t][i], acc[t * n + i]);
}

void rows_mul_add_f64(int64_t n, const double* x, int64_t taps, const double* const* rows,
                      double* acc) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d x0 = _mm256_loadu_pd(x + i);
    for (int64_t t = 0; t < taps; ++t) {
      double* a = acc + t * n + i;
      _mm256_storeu_pd(a, _mm256_fmadd_pd(x0, _mm256_loadu_pd(rows[t] + i), _mm256_loadu_pd(a)));
    }
  }
  for (; i < n; ++i)
    for (int64_t t = 0; t < taps; ++t) acc[t * n + i] = std::fma(x[i], rows[t][i], acc[t * n + i]);
}

constexpr int kDotTileA = 3, kDotTileB = 4;
static_assert(kDotTileA <= kDotTileMaxA && kDotTileB <= kDotTileMaxB);

// Up to 3 x 4 accumulators of 8 lanes; rows are walked 8 columns at a time,
// the ragged end of each row through a masked load.
void dot_tile_f32(int64_t rows, int64_t width, const float* const* a, int64_t a_stride, int na,
                  const float* const* b, int64_t b_stride, int nb, float* out) {
  __m256 acc[kDotTileA][kDotTileB];
  for (auto& row : acc)
    for (auto& v : row) v = _mm256_setzero_ps();
  const int64_t full = width / 8 * 8;
  alignas(32) static const int32_t kMaskSource[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                      0,  0,  0,  0,  0,  0,  0,  0};
  const __m256i tail =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskSource + 8 - (width - full)));
  // 12 accumulators + 3 x + 1 y: all 16 ymm registers, no spills (y is loaded
  // per column of the tile, not all four up front).
  const auto step = [&](int64_t ra, int64_t rb, bool masked) {
    __m256 x[kDotTileA];
    for (int i = 0; i < kDotTileA; ++i)
      x[i] = i < na ? (masked ? _mm256_maskload_ps(a[i] + ra, tail) : _mm256_loadu_ps(a[i] + ra))
                    : _mm256_setzero_ps();
    for (int j = 0; j < kDotTileB; ++j) {
      const __m256 y =
          j < nb ? (masked ? _mm256_maskload_ps(b[j] + rb, tail) : _mm256_loadu_ps(b[j] + rb))
                 : _mm256_setzero_ps();
      for (int i = 0; i < kDotTileA; ++i) acc[i][j] = _mm256_fmadd_ps(x[i], y, acc[i][j]);
    }
  };
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ra = r * a_stride, rb = r * b_stride;
    for (int64_t w = 0; w < full; w += 8) step(ra + w, rb + w, false);
    if (full < width) step(ra + full, rb + full, true);
  }
  for (int i = 0; i < na; ++i)
    for (int j = 0; j < nb; ++j) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[i][j]);
      out[i * nb + j] += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
                         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }
}

}  // namespace

VectorOps<float> vector_ops_f32_avx2() {
  return {axpy_f32,     dot_f32,   weighted_rows_f32, rows_mul_add_f32,
          dot_tile_f32, kDotTileA, kDotTileB};
}
VectorOps<double> vector_ops_f64_avx2() {
  return {axpy_f64,
          dot_f64,
          weighted_rows_f64,
          rows_mul_add_f64,
          dot_tile_generic<double>,
          kGenericDotTileA,
          kGenericDotTileB};
}

}  // namespace fastconv

#include "common/isa_avx2_end.h"
