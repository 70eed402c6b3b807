// Plain-C++ row primitives shared by the portable table and the ISA files that
// have no hand-written version of them. Everything lives in an anonymous
// namespace: each including translation unit compiles its own copy for its
// own target (an AVX2 file gets AVX2 code), and no copy can stand in for another.
#pragma once

#include <cstdint>

namespace fastconv {
namespace {

// See VectorOps::dot_tile. Any tile shape works for it; tables that use it
// declare this one.
constexpr int kGenericDotTileA = 3, kGenericDotTileB = 4;
template <typename T>
void dot_tile_generic(int64_t rows, int64_t width, const T* const* a, int64_t a_stride, int na,
                      const T* const* b, int64_t b_stride, int nb, T* out) {
  for (int i = 0; i < na; ++i)
    for (int j = 0; j < nb; ++j) {
      T sum = T(0);
      for (int64_t r = 0; r < rows; ++r) {
        const T* x = a[i] + r * a_stride;
        const T* y = b[j] + r * b_stride;
        for (int64_t w = 0; w < width; ++w) sum += x[w] * y[w];
      }
      out[i * nb + j] += sum;
    }
}

}  // namespace
}  // namespace fastconv
