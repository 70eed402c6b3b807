// AVX2 + FMA micro-kernels: 6 rows x 2 vectors of accumulators (12 of the 16
// ymm registers), B loaded as two vectors and each A value broadcast per k.
// Entered only after the CPUID check in gemm.cpp.
#include <immintrin.h>

#include "gemm/gemm.h"

namespace fastconv {
namespace {

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V broadcast(const T* p) { return _mm256_broadcast_ss(p); }
  static V set1(T x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
};

struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int kLanes = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V broadcast(const T* p) { return _mm256_broadcast_sd(p); }
  static V set1(T x) { return _mm256_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
};

// ROWS < 6 variants serve the bottom edge of C without a temporary tile.
template <typename S, int ROWS>
void kernel_6x2v(int64_t kc, const typename S::T* a, const typename S::T* b, typename S::T* c,
                 int64_t ldc, typename S::T alpha, typename S::T beta) {
  using V = typename S::V;
  constexpr int L = S::kLanes;
  constexpr int NR = 2 * L;
  V c00 = S::zero(), c01 = S::zero(), c10 = S::zero(), c11 = S::zero();
  V c20 = S::zero(), c21 = S::zero(), c30 = S::zero(), c31 = S::zero();
  V c40 = S::zero(), c41 = S::zero(), c50 = S::zero(), c51 = S::zero();
  // C is touched once, after the k loop: start pulling its lines in now so the
  // misses overlap the FMAs instead of following them.
  for (int i = 0; i < ROWS; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    _mm_prefetch(reinterpret_cast<const char*>(a + 6 * 8), _MM_HINT_T0);
    const V b0 = S::load(b), b1 = S::load(b + L);
    V ai = S::broadcast(a + 0);
    c00 = S::fma(ai, b0, c00);
    c01 = S::fma(ai, b1, c01);
    ai = S::broadcast(a + 1);
    c10 = S::fma(ai, b0, c10);
    c11 = S::fma(ai, b1, c11);
    ai = S::broadcast(a + 2);
    c20 = S::fma(ai, b0, c20);
    c21 = S::fma(ai, b1, c21);
    ai = S::broadcast(a + 3);
    c30 = S::fma(ai, b0, c30);
    c31 = S::fma(ai, b1, c31);
    ai = S::broadcast(a + 4);
    c40 = S::fma(ai, b0, c40);
    c41 = S::fma(ai, b1, c41);
    ai = S::broadcast(a + 5);
    c50 = S::fma(ai, b0, c50);
    c51 = S::fma(ai, b1, c51);
    a += 6;
    b += NR;
  }
  const V va = S::set1(alpha);
  V rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (beta == typename S::T(0)) {
    for (int i = 0; i < ROWS; ++i) {
      S::store(c + i * ldc, S::mul(va, rows[i][0]));
      S::store(c + i * ldc + L, S::mul(va, rows[i][1]));
    }
  } else {
    const V vb = S::set1(beta);
    for (int i = 0; i < ROWS; ++i) {
      typename S::T* row = c + i * ldc;
      S::store(row, S::fma(va, rows[i][0], S::mul(vb, S::load(row))));
      S::store(row + L, S::fma(va, rows[i][1], S::mul(vb, S::load(row + L))));
    }
  }
}

}  // namespace

GemmKernelInfo<float> gemm_f32_6x16_avx2_fma() {
  return {{kernel_6x2v<F32, 1>, kernel_6x2v<F32, 2>, kernel_6x2v<F32, 3>, kernel_6x2v<F32, 4>,
           kernel_6x2v<F32, 5>, kernel_6x2v<F32, 6>},
          6,
          16,
          "f32-gemm-6x16-avx2-fma"};
}

GemmKernelInfo<double> gemm_f64_6x8_avx2_fma() {
  return {{kernel_6x2v<F64, 1>, kernel_6x2v<F64, 2>, kernel_6x2v<F64, 3>, kernel_6x2v<F64, 4>,
           kernel_6x2v<F64, 5>, kernel_6x2v<F64, 6>},
          6,
          8,
          "f64-gemm-6x8-avx2-fma"};
}

}  // namespace fastconv
