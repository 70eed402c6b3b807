// AVX-512 row primitives (entered only after the CPUID check): the dot tile and
// the weighted sum of rows have their own AVX-512 versions; the other primitives
// keep their AVX2 ones.
#include <immintrin.h>

#include "common/vector_ops.h"

// clang-format off
#include "common/isa_avx512_begin.h"  // after every other include: AVX-512 code from here on
// clang-format on

namespace fastconv {

namespace {

constexpr int kTileA = 4, kTileB = 6;
static_assert(kTileA <= kDotTileMaxA && kTileB <= kDotTileMaxB);

// Up to 4 x 6 accumulators of 16 lanes (24 of the 32 zmm registers, plus the
// four a vectors and one b vector); rows are walked 16 columns at a time, the
// ragged end of each row through a masked load.
void dot_tile_f32(int64_t rows, int64_t width, const float* const* a, int64_t a_stride, int na,
                  const float* const* b, int64_t b_stride, int nb, float* out) {
  // Rows past na (nb) re-read row na - 1 (nb - 1) under an empty mask, which
  // loads zeros and touches nothing: the loop body has no branches.
  const float* pa[kTileA];
  const float* pb[kTileB];
  __mmask16 ea[kTileA], eb[kTileB];
  for (int i = 0; i < kTileA; ++i) {
    pa[i] = a[i < na ? i : na - 1];
    ea[i] = i < na ? 0xFFFF : 0;
  }
  for (int j = 0; j < kTileB; ++j) {
    pb[j] = b[j < nb ? j : nb - 1];
    eb[j] = j < nb ? 0xFFFF : 0;
  }
  // Named accumulators, not an array: GCC keeps these in zmm registers.
#define FASTCONV_EACH_B(X, i) X(i, 0) X(i, 1) X(i, 2) X(i, 3) X(i, 4) X(i, 5)
#define FASTCONV_EACH(X) \
  FASTCONV_EACH_B(X, 0) FASTCONV_EACH_B(X, 1) FASTCONV_EACH_B(X, 2) FASTCONV_EACH_B(X, 3)
#define FASTCONV_DECLARE(i, j) __m512 c##i##j = _mm512_setzero_ps();
  FASTCONV_EACH(FASTCONV_DECLARE)
#undef FASTCONV_DECLARE
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t w = 0; w < width; w += 16) {
      const __mmask16 mask =
          width - w >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (width - w)) - 1);
      const int64_t oa = r * a_stride + w, ob = r * b_stride + w;
      const __m512 x0 = _mm512_maskz_loadu_ps(mask & ea[0], pa[0] + oa);
      const __m512 x1 = _mm512_maskz_loadu_ps(mask & ea[1], pa[1] + oa);
      const __m512 x2 = _mm512_maskz_loadu_ps(mask & ea[2], pa[2] + oa);
      const __m512 x3 = _mm512_maskz_loadu_ps(mask & ea[3], pa[3] + oa);
#define FASTCONV_COLUMN(j)                                            \
  {                                                                   \
    const __m512 y = _mm512_maskz_loadu_ps(mask & eb[j], pb[j] + ob); \
    c0##j = _mm512_fmadd_ps(x0, y, c0##j);                            \
    c1##j = _mm512_fmadd_ps(x1, y, c1##j);                            \
    c2##j = _mm512_fmadd_ps(x2, y, c2##j);                            \
    c3##j = _mm512_fmadd_ps(x3, y, c3##j);                            \
  }
      FASTCONV_COLUMN(0)
      FASTCONV_COLUMN(1)
      FASTCONV_COLUMN(2)
      FASTCONV_COLUMN(3)
      FASTCONV_COLUMN(4)
      FASTCONV_COLUMN(5)
#undef FASTCONV_COLUMN
    }
  }
  // Lane sums in a fixed order (deterministic).
  alignas(64) float sums[kTileA * kTileB][16];
#define FASTCONV_SPILL(i, j) _mm512_store_ps(sums[i * kTileB + j], c##i##j);
  FASTCONV_EACH(FASTCONV_SPILL)
#undef FASTCONV_SPILL
#undef FASTCONV_EACH
#undef FASTCONV_EACH_B
  for (int i = 0; i < na; ++i)
    for (int j = 0; j < nb; ++j) {
      float sum = 0.0f;
      for (int l = 0; l < 16; ++l) sum += sums[i * kTileB + j][l];
      out[i * nb + j] += sum;
    }
}

}  // namespace

// Four 16-lane accumulators (64 columns) a step: four independent FMA chains;
// then 16 columns at a time, the ragged end through a masked load and store.
void weighted_rows_f32(int64_t n, int64_t taps, const float* const* rows, const float* w,
                       float init, float* out) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 a0 = _mm512_set1_ps(init), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < taps; ++t) {
      const __m512 wt = _mm512_set1_ps(w[t]);
      const float* r = rows[t] + i;
      a0 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(r), a0);
      a1 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(r + 16), a1);
      a2 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(r + 32), a2);
      a3 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(r + 48), a3);
    }
    _mm512_storeu_ps(out + i, a0);
    _mm512_storeu_ps(out + i + 16, a1);
    _mm512_storeu_ps(out + i + 32, a2);
    _mm512_storeu_ps(out + i + 48, a3);
  }
  for (; i + 32 <= n; i += 32) {
    __m512 a0 = _mm512_set1_ps(init), a1 = a0;
    for (int64_t t = 0; t < taps; ++t) {
      const __m512 wt = _mm512_set1_ps(w[t]);
      a0 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(rows[t] + i), a0);
      a1 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(rows[t] + i + 16), a1);
    }
    _mm512_storeu_ps(out + i, a0);
    _mm512_storeu_ps(out + i + 16, a1);
  }
  for (; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    __m512 a0 = _mm512_set1_ps(init);
    for (int64_t t = 0; t < taps; ++t)
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), _mm512_maskz_loadu_ps(live, rows[t] + i), a0);
    _mm512_mask_storeu_ps(out + i, live, a0);
  }
}

VectorOps<float> vector_ops_f32_avx512(VectorOps<float> avx2) {
  avx2.weighted_rows = weighted_rows_f32;
  avx2.dot_tile = dot_tile_f32;
  avx2.dot_tile_a = kTileA;
  avx2.dot_tile_b = kTileB;
  return avx2;
}

}  // namespace fastconv

#include "common/isa_avx512_end.h"
