// AVX-512 micro-kernels: 12 rows x 2 vectors of accumulators (24 of the 32 zmm
// registers), B loaded as two vectors and each A value broadcast per k (the
// broadcast folds into the FMA's memory operand). BLIS's Skylake-X sgemm uses
// the same 12 x 32 shape, transposed. Entered only after the CPUID check in
// gemm.cpp.
#include <immintrin.h>

#include "gemm/gemm.h"

// clang-format off
#include "common/isa_avx512_begin.h"  // after every other include: AVX-512 code from here on
// clang-format on

namespace fastconv {
namespace {

struct F32 {
  using T = float;
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V broadcast(const T* p) { return _mm512_set1_ps(*p); }
  static V set1(T x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
};

struct F64 {
  using T = double;
  using V = __m512d;
  static constexpr int kLanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V broadcast(const T* p) { return _mm512_set1_pd(*p); }
  static V set1(T x) { return _mm512_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
};

}  // namespace
}  // namespace fastconv

#include "gemm/gemm_small_n_impl.h"

namespace fastconv {
namespace {

constexpr int kMR = 12;

// Applies X to each of the 12 row indices.
#define FASTCONV_EACH_ROW(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

// The first ROWS rows of the 12 x 2-vector tile, shared by the direct and
// indirect kernels. Rows past ROWS are neither computed nor stored.
template <typename S, int ROWS>
struct Tile {
  using V = typename S::V;
  using T = typename S::T;
  static constexpr int L = S::kLanes;
  // Named registers, not an array: GCC keeps these in zmm registers.
#define FASTCONV_DECLARE(i) V c##i##a, c##i##b;
  FASTCONV_EACH_ROW(FASTCONV_DECLARE)
#undef FASTCONV_DECLARE
  // User-provided (not implicit) so that it is compiled inside the AVX-512 region.
  inline __attribute__((always_inline)) Tile() {
#define FASTCONV_ZERO(i) c##i##a = c##i##b = S::zero();
    FASTCONV_EACH_ROW(FASTCONV_ZERO)
#undef FASTCONV_ZERO
  }
  // One k step: row i += *a_at(i) * b, a_at giving where A value i lives
  // (a packed sliver, or a gathered row pointer).
  template <typename AddressOfA>
  inline __attribute__((always_inline)) void step_at(AddressOfA&& a_at, const T* b) {
    const V b0 = S::load(b), b1 = S::load(b + L);
#define FASTCONV_STEP(i)                \
  if constexpr (ROWS > i) {             \
    const V ai = S::broadcast(a_at(i)); \
    c##i##a = S::fma(ai, b0, c##i##a);  \
    c##i##b = S::fma(ai, b1, c##i##b);  \
  }
    FASTCONV_EACH_ROW(FASTCONV_STEP)
#undef FASTCONV_STEP
  }
  // A values contiguous: a[0..ROWS).
  inline __attribute__((always_inline)) void step(const T* a, const T* b) {
    step_at([a](int i) { return a + i; }, b);
  }
  // A value i at a[i][p] (gathered from ROWS row pointers).
  inline __attribute__((always_inline)) void step_gather(const T* const* a, int64_t p, const T* b) {
    step_at([a, p](int i) { return a[i] + p; }, b);
  }
  // C[0:ROWS] = alpha * tile + beta * C (beta == 0: C not read).
  inline __attribute__((always_inline)) void store(T* out, int64_t ldc, T alpha, T beta) const {
    const V va = S::set1(alpha);
    if (beta == T(0)) {
#define FASTCONV_STORE(i)                             \
  if constexpr (ROWS > i) {                           \
    S::store(out + i * ldc, S::mul(va, c##i##a));     \
    S::store(out + i * ldc + L, S::mul(va, c##i##b)); \
  }
      FASTCONV_EACH_ROW(FASTCONV_STORE)
#undef FASTCONV_STORE
    } else {
      const V vb = S::set1(beta);
#define FASTCONV_UPDATE(i)                                                \
  if constexpr (ROWS > i) {                                               \
    T* row = out + i * ldc;                                               \
    S::store(row, S::fma(va, c##i##a, S::mul(vb, S::load(row))));         \
    S::store(row + L, S::fma(va, c##i##b, S::mul(vb, S::load(row + L)))); \
  }
      FASTCONV_EACH_ROW(FASTCONV_UPDATE)
#undef FASTCONV_UPDATE
    }
  }
};

#undef FASTCONV_EACH_ROW

// C is touched once, after the k loop: start pulling its lines in now so the
// misses overlap the FMAs instead of following them.
template <typename T, int ROWS, int NR>
inline void prefetch_c(const T* c, int64_t ldc) {
  for (int i = 0; i < ROWS; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
}

template <typename S, int ROWS>
void kernel_12x2v(int64_t kc, const typename S::T* a, const typename S::T* b, typename S::T* c,
                  int64_t ldc, typename S::T alpha, typename S::T beta) {
  constexpr int NR = 2 * S::kLanes;
  prefetch_c<typename S::T, ROWS, NR>(c, ldc);
  Tile<S, ROWS> tile;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    // The A sliver streams from L2: one line ahead per k step keeps it in L1.
    _mm_prefetch(reinterpret_cast<const char*>(a + kMR * 8), _MM_HINT_T0);
    tile.step(a, b);
    a += kMR;
    b += NR;
  }
  tile.store(c, ldc, alpha, beta);
}

template <typename S, int ROWS>
void indirect_kernel_12x2v(int64_t kc, const typename S::T* a, const typename S::T* const* rows,
                           int64_t offset, typename S::T* c, int64_t ldc, typename S::T beta) {
  constexpr int NR = 2 * S::kLanes;
  prefetch_c<typename S::T, ROWS, NR>(c, ldc);
  Tile<S, ROWS> tile;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    tile.step(a, rows[p] + offset);
    a += kMR;
  }
  tile.store(c, ldc, typename S::T(1), beta);
}

template <typename S, int ROWS>
void pixel_kernel_12x2v(int64_t kc, const typename S::T* const* rows, int64_t offset,
                        const typename S::T* b, typename S::T* c, int64_t ldc, typename S::T beta) {
  using T = typename S::T;
  constexpr int NR = 2 * S::kLanes;
  Tile<S, ROWS> tile;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    tile.step(rows[p] + offset, b);
    b += NR;
  }
  tile.store(c, ldc, T(1), beta);
}

// 8 rows, not 12: the 12 row pointers of a full tile would not fit beside
// the loop state in the general registers, and GCC then spills vectors too.
constexpr int kGatherMR = 8;

template <typename S, int ROWS>
void gather_kernel_8x2v(int64_t segments, int64_t width, const typename S::T* const* rows,
                        const typename S::T* b, typename S::T* c, int64_t ldc, typename S::T beta) {
  using T = typename S::T;
  constexpr int NR = 2 * S::kLanes;
  prefetch_c<T, ROWS, NR>(c, ldc);
  Tile<S, ROWS> tile;
  for (int64_t s = 0; s < segments; ++s) {
    const T* a[kGatherMR];
    for (int i = 0; i < ROWS; ++i) a[i] = rows[s * kGatherMR + i];
#pragma GCC unroll 4
    for (int64_t w = 0; w < width; ++w) {
      tile.step_gather(a, w, b);
      b += NR;
    }
  }
  tile.store(c, ldc, T(1), beta);
}

}  // namespace

#define FASTCONV_ROW_VARIANTS(KERNEL, S)                                                 \
  {KERNEL<S, 1>, KERNEL<S, 2>, KERNEL<S, 3>, KERNEL<S, 4>,  KERNEL<S, 5>,  KERNEL<S, 6>, \
   KERNEL<S, 7>, KERNEL<S, 8>, KERNEL<S, 9>, KERNEL<S, 10>, KERNEL<S, 11>, KERNEL<S, 12>}

GemmKernelInfo<float> gemm_f32_12x32_avx512() {
  return {FASTCONV_ROW_VARIANTS(kernel_12x2v, F32),
          kMR,
          32,
          "f32-gemm-12x32-avx512",
          // A-sliver order (measured against B-sliver order with {256, 240,
          // 4096}, same process, 2 threads: square 2048 and 1024 +3-8%, the
          // conv shapes 0 to +8%, 512 and 512x49x4608 -1 to -2%). float64's
          // 12 x 16 kernel measured slower in this order. In this order a
          // row-major A is packed one sliver at a time (gemm.cpp), so for it
          // mc only sizes the A block of the shallow-K fallback to B-sliver
          // order.
          {256, 960, 1536, 32, true}};
}

GemmKernelInfo<double> gemm_f64_12x16_avx512() {
  return {FASTCONV_ROW_VARIANTS(kernel_12x2v, F64),
          kMR,
          16,
          "f64-gemm-12x16-avx512",
          {256, 120, 2048, 16, false}};
}

IgemmKernelInfo<float> igemm_f32_12x32_avx512() {
  return {FASTCONV_ROW_VARIANTS(indirect_kernel_12x2v, F32), kMR, 32, "f32-igemm-12x32-avx512"};
}

IgemmKernelInfo<double> igemm_f64_12x16_avx512() {
  return {FASTCONV_ROW_VARIANTS(indirect_kernel_12x2v, F64), kMR, 16, "f64-igemm-12x16-avx512"};
}

PixelIgemmKernelInfo<float> pixel_igemm_f32_12x32_avx512() {
  return {FASTCONV_ROW_VARIANTS(pixel_kernel_12x2v, F32), kMR, 32, "f32-pixel-igemm-12x32-avx512"};
}

PixelIgemmKernelInfo<double> pixel_igemm_f64_12x16_avx512() {
  return {FASTCONV_ROW_VARIANTS(pixel_kernel_12x2v, F64), kMR, 16, "f64-pixel-igemm-12x16-avx512"};
}

#define FASTCONV_GATHER_VARIANTS(S)                                              \
  {gather_kernel_8x2v<S, 1>, gather_kernel_8x2v<S, 2>, gather_kernel_8x2v<S, 3>, \
   gather_kernel_8x2v<S, 4>, gather_kernel_8x2v<S, 5>, gather_kernel_8x2v<S, 6>, \
   gather_kernel_8x2v<S, 7>, gather_kernel_8x2v<S, 8>}

GatherGemmKernelInfo<float> gather_gemm_f32_8x32_avx512() {
  return {FASTCONV_GATHER_VARIANTS(F32), kGatherMR, 32, "f32-gather-gemm-8x32-avx512"};
}

GatherGemmKernelInfo<double> gather_gemm_f64_8x16_avx512() {
  return {FASTCONV_GATHER_VARIANTS(F64), kGatherMR, 16, "f64-gather-gemm-8x16-avx512"};
}

#undef FASTCONV_GATHER_VARIANTS

#undef FASTCONV_ROW_VARIANTS

SmallNKernelInfo<float> small_n_f32_avx512() { return small_n_info<F32>("f32-small-n-avx512"); }
SmallNKernelInfo<double> small_n_f64_avx512() { return small_n_info<F64>("f64-small-n-avx512"); }

}  // namespace fastconv

#include "common/isa_avx512_end.h"
