// Scalar pooling of one output column: the reference order every row kernel
// follows. Internal linkage on purpose: each translation unit (baseline and
// AVX2 builds) gets its own copy, so no ISA-specific code is shared by the linker.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "pool2d/pool2d.h"

namespace fastconv {
namespace {

// take ? a : b, computed on the bits (GCC turns the ternary into a branch).
template <typename T>
inline T select_if(bool take, T a, T b) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits ab, bb;
  std::memcpy(&ab, &a, sizeof(T));
  std::memcpy(&bb, &b, sizeof(T));
  const Bits mask = Bits(0) - static_cast<Bits>(take);
  const Bits r = (ab & mask) | (bb & ~mask);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

template <typename T>
inline void max_pool_column(const PoolRow& row, T* best, int32_t* tap, int64_t ow) {
  T m = -std::numeric_limits<T>::infinity();
  int32_t t = -1;
  const int64_t w0 = ow * row.stride_w - row.pad_w;
  const ColumnRange taps = in_bounds_taps(w0, row.dilation_w, row.kernel_w, row.in_w);
  for (int64_t i = 0; i < row.row_count; ++i) {
    const T* in = static_cast<const T*>(row.rows[i]);
    for (int64_t s = taps.begin; s < taps.end; ++s) {
      const T x = in[w0 + s * row.dilation_w];
      // Branch-free select: on real data the comparison is unpredictable.
      const bool take = (x > m) | (x != x);
      m = select_if(take, x, m);
      const int32_t cand = row.row_taps[i] + static_cast<int32_t>(s);
      t += (cand - t) * static_cast<int32_t>(take);
    }
  }
  best[ow] = m;
  tap[ow] = t;
}

template <typename T>
inline void sum_pool_column(const PoolRow& row, T* acc, int64_t ow) {
  T sum = T(0);
  const int64_t w0 = ow * row.stride_w - row.pad_w;
  const ColumnRange taps = in_bounds_taps(w0, 1, row.kernel_w, row.in_w);
  for (int64_t i = 0; i < row.row_count; ++i) {
    const T* in = static_cast<const T*>(row.rows[i]);
    for (int64_t s = taps.begin; s < taps.end; ++s) sum += in[w0 + s];
  }
  acc[ow] = sum;
}

}  // namespace
}  // namespace fastconv
