// Scalar pooling of one output column: the reference order every row kernel
// follows. Internal linkage on purpose: each translation unit (baseline and
// AVX2 builds) gets its own copy, so no ISA-specific code is shared by the linker.
#pragma once

#include <cmath>
#include <limits>

#include "pool2d/pool2d.h"

namespace fastconv {
namespace {

template <typename T>
inline void max_pool_column(const PoolRow& row, T* best, int32_t* tap, int64_t ow) {
  T m = -std::numeric_limits<T>::infinity();
  int32_t t = -1;
  const int64_t w0 = ow * row.stride_w - row.pad_w;
  for (int64_t i = 0; i < row.row_count; ++i) {
    const T* in = static_cast<const T*>(row.rows[i]);
    for (int64_t s = 0; s < row.kernel_w; ++s) {
      const int64_t iw = w0 + s * row.dilation_w;
      if (iw < 0 || iw >= row.in_w) continue;
      const T x = in[iw];
      if (x > m || std::isnan(x)) {
        m = x;
        t = row.row_taps[i] + static_cast<int32_t>(s);
      }
    }
  }
  best[ow] = m;
  tap[ow] = t;
}

template <typename T>
inline void sum_pool_column(const PoolRow& row, T* acc, int64_t ow) {
  T sum = T(0);
  const int64_t w0 = ow * row.stride_w - row.pad_w;
  for (int64_t i = 0; i < row.row_count; ++i) {
    const T* in = static_cast<const T*>(row.rows[i]);
    for (int64_t s = 0; s < row.kernel_w; ++s) {
      const int64_t iw = w0 + s;
      if (iw >= 0 && iw < row.in_w) sum += in[iw];
    }
  }
  acc[ow] = sum;
}

}  // namespace
}  // namespace fastconv
