// Level-1 row primitives used by the direct convolution kernels, dispatched
// by ISA through the kernel table (portable versions fill every slot; AVX2+FMA,
// then AVX-512, override some).
#pragma once

#include <cstdint>

namespace fastconv {

template <typename T>
struct VectorOps {
  void (*axpy)(int64_t n, T alpha, const T* x, T* y);  // y += alpha * x
  T (*dot)(int64_t n, const T* x, const T* y);         // sum x * y (fixed order per ISA)
  // out[i] = init + sum_t w[t] * rows[t][i] for i < n: a weighted sum of rows,
  // accumulated in registers (taps in order t = 0, 1, ...).
  void (*weighted_rows)(int64_t n, int64_t taps, const T* const* rows, const T* w, T init, T* out);
  // acc[t * n + i] += x[i] * rows[t][i] for t < taps, i < n: lane-wise products
  // of one row with several, accumulated lane by lane (the reduction over the
  // lanes is left to the caller, once, instead of one per dot product).
  void (*rows_mul_add)(int64_t n, const T* x, int64_t taps, const T* const* rows, T* acc);
  // out[i * nb + j] += sum over r < rows, w < width of a[i][r * a_stride + w] *
  // b[j][r * b_stride + w], for i < na <= dot_tile_a and j < nb <= dot_tile_b:
  // a tile of dot products of 2-D runs, its sums kept in vector lanes until the
  // end (weight gradients with few output channels: LeNet, CIFAR stems).
  void (*dot_tile)(int64_t rows, int64_t width, const T* const* a, int64_t a_stride, int na,
                   const T* const* b, int64_t b_stride, int nb, T* out);
  int dot_tile_a, dot_tile_b;  // the dot tile's shape (at most kDotTileMaxA x kDotTileMaxB)
};

constexpr int kDotTileMaxA = 4, kDotTileMaxB = 6;

// The active ISA tier's ops (from the kernel table).
template <typename T>
const VectorOps<T>& vector_ops();

// Constructors for the kernel table, one per ISA tier that has its own.
template <typename T>
VectorOps<T> vector_ops_portable();
VectorOps<float> vector_ops_f32_avx2();
VectorOps<double> vector_ops_f64_avx2();
// The AVX2 table with the AVX-512 dot tile.
VectorOps<float> vector_ops_f32_avx512(VectorOps<float> avx2);

}  // namespace fastconv
