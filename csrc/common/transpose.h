// A transposing copy shared by the GEMM packers and the Winograd filter
// transform. Header-only: each translation unit (and ISA region) that
// includes it compiles its own copy.
#pragma once

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <cstdint>
#include <type_traits>

namespace fastconv {

// Transposing copy: dst[p * ld + i] = src[i][p] for i < rows, p < kc, where
// row i starts at src + i * stride and is contiguous. A scalar loop
// scatters every store; float32 goes through 4x4 SSE2 transposes instead.
template <typename T>
inline void transpose_into(const T* src, int64_t stride, int64_t rows, int64_t kc, T* dst,
                           int64_t ld) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 4 <= rows; i += 4) {
      const float* r0 = src + i * stride;
      const float *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
      int64_t p = 0;
      for (; p + 4 <= kc; p += 4) {
        __m128 a = _mm_loadu_ps(r0 + p), b = _mm_loadu_ps(r1 + p);
        __m128 c = _mm_loadu_ps(r2 + p), d = _mm_loadu_ps(r3 + p);
        _MM_TRANSPOSE4_PS(a, b, c, d);
        _mm_storeu_ps(dst + p * ld + i, a);
        _mm_storeu_ps(dst + (p + 1) * ld + i, b);
        _mm_storeu_ps(dst + (p + 2) * ld + i, c);
        _mm_storeu_ps(dst + (p + 3) * ld + i, d);
      }
      for (; p < kc; ++p) {
        dst[p * ld + i] = r0[p];
        dst[p * ld + i + 1] = r1[p];
        dst[p * ld + i + 2] = r2[p];
        dst[p * ld + i + 3] = r3[p];
      }
    }
  }
#endif
  for (; i < rows; ++i) {
    const T* row = src + i * stride;
    for (int64_t p = 0; p < kc; ++p) dst[p * ld + i] = row[p];
  }
}

// dst[p * ld + i] = src[i][p] for i < rows, and 0 for rows <= i < ld: packs
// rows into ld-lane blocks, missing lanes zero. 64 columns at a time, so that
// both sides stay in L1 (column by column, every store would land on a new
// line).
template <typename T>
inline void transpose_into_lanes(const T* src, int64_t stride, int64_t rows, int64_t kc, T* dst,
                                 int64_t ld) {
  for (int64_t p0 = 0; p0 < kc; p0 += 64) {
    const int64_t width = kc - p0 < 64 ? kc - p0 : 64;
    transpose_into(src + p0, stride, rows, width, dst + p0 * ld, ld);
    for (int64_t p = p0; p < p0 + width; ++p)
      for (int64_t i = rows; i < ld; ++i) dst[p * ld + i] = T(0);
  }
}

}  // namespace fastconv
