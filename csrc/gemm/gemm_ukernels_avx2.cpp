// AVX2 + FMA micro-kernels: 6 rows x 2 vectors of accumulators (12 of the 16
// ymm registers), B loaded as two vectors and each A value broadcast per k.
// Entered only after the CPUID check in gemm.cpp.
#include <immintrin.h>

#include "gemm/gemm.h"

// clang-format off
#include "common/isa_avx2_begin.h"  // after every other include: AVX2 code from here on
// clang-format on

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
}  // namespace
}  // namespace fastconv

#include "gemm/gemm_small_n_impl.h"

namespace fastconv {
namespace {

// The 6 x 2-vector register tile shared by the direct and indirect kernels.
template <typename S>
struct Tile {
  using V = typename S::V;
  using T = typename S::T;
  static constexpr int L = S::kLanes;
  // Named registers, not an array: GCC keeps these in ymm registers.
  V c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  // User-provided (not implicit) so that it is compiled inside the AVX2 region.
  inline __attribute__((always_inline)) Tile() {
    c00 = c01 = c10 = c11 = c20 = c21 = S::zero();
    c30 = c31 = c40 = c41 = c50 = c51 = S::zero();
  }
  // One k step: row i += *a_at(i) * b for the 6 rows, a_at giving where A
  // value i lives (a packed sliver, or a gathered row pointer).
  template <typename AddressOfA>
  inline __attribute__((always_inline)) void step_at(AddressOfA&& a_at, const T* b) {
    const V b0 = S::load(b), b1 = S::load(b + L);
    V ai = S::broadcast(a_at(0));
    c00 = S::fma(ai, b0, c00);
    c01 = S::fma(ai, b1, c01);
    ai = S::broadcast(a_at(1));
    c10 = S::fma(ai, b0, c10);
    c11 = S::fma(ai, b1, c11);
    ai = S::broadcast(a_at(2));
    c20 = S::fma(ai, b0, c20);
    c21 = S::fma(ai, b1, c21);
    ai = S::broadcast(a_at(3));
    c30 = S::fma(ai, b0, c30);
    c31 = S::fma(ai, b1, c31);
    ai = S::broadcast(a_at(4));
    c40 = S::fma(ai, b0, c40);
    c41 = S::fma(ai, b1, c41);
    ai = S::broadcast(a_at(5));
    c50 = S::fma(ai, b0, c50);
    c51 = S::fma(ai, b1, c51);
  }
  // A values contiguous: a[0..6).
  inline __attribute__((always_inline)) void step(const T* a, const T* b) {
    step_at([a](int i) { return a + i; }, b);
  }
  // A value i at a[i][p] (six gathered row pointers).
  inline __attribute__((always_inline)) void step_gather(const T* const* a, int64_t p, const T* b) {
    step_at([a, p](int i) { return a[i] + p; }, b);
  }
  // C[0:ROWS] = alpha * tile + beta * C (beta == 0: C not read).
  template <int ROWS>
  inline __attribute__((always_inline)) void store(T* out, int64_t ldc, T alpha, T beta) const {
    const V rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    const V va = S::set1(alpha);
    if (beta == T(0)) {
      for (int i = 0; i < ROWS; ++i) {
        S::store(out + i * ldc, S::mul(va, rows[i][0]));
        S::store(out + i * ldc + L, S::mul(va, rows[i][1]));
      }
    } else {
      const V vb = S::set1(beta);
      for (int i = 0; i < ROWS; ++i) {
        T* row = out + i * ldc;
        S::store(row, S::fma(va, rows[i][0], S::mul(vb, S::load(row))));
        S::store(row + L, S::fma(va, rows[i][1], S::mul(vb, S::load(row + L))));
      }
    }
  }
};

// C is touched once, after the k loop: start pulling its lines in now so the
// misses overlap the FMAs instead of following them.
template <typename T, int ROWS, int NR>
inline void prefetch_c(const T* c, int64_t ldc) {
  for (int i = 0; i < ROWS; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
}

// ROWS < 6 variants serve the bottom edge of C without a temporary tile.
template <typename S, int ROWS>
void kernel_6x2v(int64_t kc, const typename S::T* a, const typename S::T* b, typename S::T* c,
                 int64_t ldc, typename S::T alpha, typename S::T beta) {
  constexpr int NR = 2 * S::kLanes;
  prefetch_c<typename S::T, ROWS, NR>(c, ldc);
  Tile<S> tile;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    _mm_prefetch(reinterpret_cast<const char*>(a + 6 * 8), _MM_HINT_T0);
    tile.step(a, b);
    a += 6;
    b += NR;
  }
  tile.template store<ROWS>(c, ldc, alpha, beta);
}

template <typename S, int ROWS>
void indirect_kernel_6x2v(int64_t kc, const typename S::T* a, const typename S::T* const* rows,
                          int64_t offset, typename S::T* c, int64_t ldc, typename S::T beta) {
  constexpr int NR = 2 * S::kLanes;
  prefetch_c<typename S::T, ROWS, NR>(c, ldc);
  Tile<S> tile;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    tile.step(a, rows[p] + offset);
    a += 6;
  }
  tile.template store<ROWS>(c, ldc, typename S::T(1), beta);
}

// Reads all six A values of every step (callers pad their rows); stores ROWS.
template <typename S, int ROWS>
void pixel_kernel_6x2v(int64_t kc, const typename S::T* const* rows, int64_t offset,
                       const typename S::T* b, typename S::T* c, int64_t ldc, typename S::T beta) {
  using T = typename S::T;
  constexpr int NR = 2 * S::kLanes;
  Tile<S> tile;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    tile.step(rows[p] + offset, b);
    b += NR;
  }
  tile.template store<ROWS>(c, ldc, T(1), beta);
}

// Rows past ROWS read a valid pointer (row 0) and are never stored.
template <typename S, int ROWS>
void gather_kernel_6x2v(int64_t segments, int64_t width, const typename S::T* const* rows,
                        const typename S::T* b, typename S::T* c, int64_t ldc, typename S::T beta) {
  using T = typename S::T;
  constexpr int NR = 2 * S::kLanes;
  prefetch_c<T, ROWS, NR>(c, ldc);
  Tile<S> tile;
  for (int64_t s = 0; s < segments; ++s) {
    const T* a[6];
    for (int i = 0; i < 6; ++i) a[i] = rows[s * 6 + (i < ROWS ? i : 0)];
#pragma GCC unroll 4
    for (int64_t w = 0; w < width; ++w) {
      tile.step_gather(a, w, b);
      b += NR;
    }
  }
  tile.template store<ROWS>(c, ldc, T(1), beta);
}

}  // namespace

#define FASTCONV_ROW_VARIANTS(KERNEL, S) \
  {KERNEL<S, 1>, KERNEL<S, 2>, KERNEL<S, 3>, KERNEL<S, 4>, KERNEL<S, 5>, KERNEL<S, 6>}

GemmKernelInfo<float> gemm_f32_6x16_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(kernel_6x2v, F32),
          6,
          16,
          "f32-gemm-6x16-avx2-fma",
          {256, 144, 3072, 16, false}};
}

GemmKernelInfo<double> gemm_f64_6x8_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(kernel_6x2v, F64),
          6,
          8,
          "f64-gemm-6x8-avx2-fma",
          {256, 72, 1536, 8, false}};
}

IgemmKernelInfo<float> igemm_f32_6x16_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(indirect_kernel_6x2v, F32), 6, 16, "f32-igemm-6x16-avx2-fma"};
}

IgemmKernelInfo<double> igemm_f64_6x8_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(indirect_kernel_6x2v, F64), 6, 8, "f64-igemm-6x8-avx2-fma"};
}

PixelIgemmKernelInfo<float> pixel_igemm_f32_6x16_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(pixel_kernel_6x2v, F32), 6, 16, "f32-pixel-igemm-6x16-avx2-fma"};
}

PixelIgemmKernelInfo<double> pixel_igemm_f64_6x8_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(pixel_kernel_6x2v, F64), 6, 8, "f64-pixel-igemm-6x8-avx2-fma"};
}

GatherGemmKernelInfo<float> gather_gemm_f32_6x16_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(gather_kernel_6x2v, F32), 6, 16, "f32-gather-gemm-6x16-avx2-fma"};
}

GatherGemmKernelInfo<double> gather_gemm_f64_6x8_avx2_fma() {
  return {FASTCONV_ROW_VARIANTS(gather_kernel_6x2v, F64), 6, 8, "f64-gather-gemm-6x8-avx2-fma"};
}

#undef FASTCONV_ROW_VARIANTS

SmallNKernelInfo<float> small_n_f32_avx2_fma() { return small_n_info<F32>("f32-small-n-avx2-fma"); }
SmallNKernelInfo<double> small_n_f64_avx2_fma() {
  return small_n_info<F64>("f64-small-n-avx2-fma");
}

}  // namespace fastconv

#include "common/isa_avx2_end.h"
