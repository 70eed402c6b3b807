#include "common/vector_ops.h"

#include "common/vector_ops_generic.h"

namespace fastconv {
namespace {

template <typename T>
void axpy_portable(int64_t n, T alpha, const T* x, T* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
T dot_portable(int64_t n, const T* x, const T* y) {
  // Four independent partial sums: vectorisable and a fixed order.
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i] * y[i];
    s1 += x[i + 1] * y[i + 1];
    s2 += x[i + 2] * y[i + 2];
    s3 += x[i + 3] * y[i + 3];
  }
  for (; i < n; ++i) s0 += x[i] * y[i];
  return (s0 + s1) + (s2 + s3);
}

template <typename T>
void weighted_rows_portable(int64_t n, int64_t taps, const T* const* rows, const T* w, T init,
                            T* out) {
  constexpr int64_t kBlock = 16;  // accumulators the compiler keeps in registers
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    T acc[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) acc[j] = init;
    for (int64_t t = 0; t < taps; ++t) {
      const T* row = rows[t] + i;
      for (int64_t j = 0; j < kBlock; ++j) acc[j] += w[t] * row[j];
    }
    for (int64_t j = 0; j < kBlock; ++j) out[i + j] = acc[j];
  }
  for (; i < n; ++i) {
    T acc = init;
    for (int64_t t = 0; t < taps; ++t) acc += w[t] * rows[t][i];
    out[i] = acc;
  }
}

template <typename T>
void rows_mul_add_portable(int64_t n, const T* x, int64_t taps, const T* const* rows, T* acc) {
  for (int64_t t = 0; t < taps; ++t) {
    const T* row = rows[t];
    T* a = acc + t * n;
    for (int64_t i = 0; i < n; ++i) a[i] += x[i] * row[i];
  }
}

}  // namespace

template <typename T>
VectorOps<T> vector_ops_portable() {
  return {axpy_portable<T>,         dot_portable<T>,     weighted_rows_portable<T>,
          rows_mul_add_portable<T>, dot_tile_generic<T>, kGenericDotTileA,
          kGenericDotTileB};
}

template VectorOps<float> vector_ops_portable<float>();
template VectorOps<double> vector_ops_portable<double>();

}  // namespace fastconv
