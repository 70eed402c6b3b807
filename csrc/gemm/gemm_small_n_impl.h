// The small-N GEMM kernels, generic over an ISA's vector ops S (load, store,
// zero and fma on S::V holding S::kLanes values of S::T): included by each
// ISA's micro-kernel file inside its target region.
//
// With B 1 .. kSmallNDotColumns columns wide, a packed GEMM spends more on
// packing A than on multiply-adds, and broadcasting A leaves most lanes idle:
// these take kSmallNDotRows rows of A in place (each row unit-stride along k)
// and NC columns of B (packed as B^T, NC rows of k) as dot products along k,
// A and B^T both read a vector at a time, the lanes summed at the end (in lane
// order, then the scalar tail). A streams through once, as in a GEMV.
#pragma once

#include <cstdint>

namespace fastconv {
namespace {

template <typename S, int NC>
void small_n_dot_kernel(int64_t k, const typename S::T* a, int64_t lda, int rows,
                        const typename S::T* bt, typename S::T* out) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int L = S::kLanes, R = kSmallNDotRows;
  const T* row[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) row[i] = a + (i < rows ? i : 0) * lda;
  V acc[R][NC];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) acc[i][j] = S::zero();
  int64_t p = 0;
  for (; p + L <= k; p += L) {
    V bv[NC];
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) bv[j] = S::load(bt + j * k + p);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const V av = S::load(row[i] + p);
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) acc[i][j] = S::fma(av, bv[j], acc[i][j]);
    }
  }
  alignas(64) T lanes[L];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NC; ++j) {
      S::store(lanes, acc[i][j]);
      T sum = T(0);
      for (int l = 0; l < L; ++l) sum += lanes[l];
      for (int64_t q = p; q < k; ++q) sum += row[i][q] * bt[j * k + q];
      out[i * NC + j] = sum;
    }
}

// The kernels for 1 .. kSmallNDotColumns columns.
template <typename S>
SmallNKernelInfo<typename S::T> small_n_info(const char* name) {
  return {{small_n_dot_kernel<S, 1>, small_n_dot_kernel<S, 2>, small_n_dot_kernel<S, 3>,
           small_n_dot_kernel<S, 4>},
          name};
}

}  // namespace
}  // namespace fastconv
