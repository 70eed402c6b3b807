#include "elementwise/clamp.h"

#include <omp.h>

#include <algorithm>

#include "common/parallel.h"

namespace fastconv {
namespace {

// Below ~64K elements per thread, waking one costs more than it saves; each
// thread takes one contiguous range (whole cache lines apart from the ends).
template <typename Fn>
void for_ranges(int64_t n, Fn&& fn) {
  const int threads = threads_for(n, int64_t(1) << 16);
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t i0 = n * t / nt / 16 * 16, i1 = t + 1 == nt ? n : n * (t + 1) / nt / 16 * 16;
    if (i0 < i1) fn(i0, i1);
  }
}

}  // namespace

template <typename T>
void clamp_forward(const T* x, T* out, int64_t n, T lo, bool has_hi, T hi) {
  for_ranges(n, [=](int64_t i0, int64_t i1) {
    // Comparisons with NaN are false, so NaN reaches the output unchanged.
    if (has_hi)
      for (int64_t i = i0; i < i1; ++i) {
        const T v = x[i];
        out[i] = v < lo ? lo : (v > hi ? hi : v);
      }
    else
      for (int64_t i = i0; i < i1; ++i) {
        const T v = x[i];
        out[i] = v < lo ? lo : v;
      }
  });
}

template <typename T>
void clamp_backward(const T* grad, const T* out, T* grad_input, int64_t n, T lo, bool has_hi,
                    T hi) {
  for_ranges(n, [=](int64_t i0, int64_t i1) {
    // Both operands loaded unconditionally and the test without a branch (`&`, not
    // `&&`): the loops then vectorise into compares and blends.
    if (has_hi)
      for (int64_t i = i0; i < i1; ++i) {
        const T v = out[i], g = grad[i];
        grad_input[i] = ((v > lo) & (v < hi)) ? g : T(0);
      }
    else
      for (int64_t i = i0; i < i1; ++i) {
        const T v = out[i], g = grad[i];
        grad_input[i] = v <= lo ? T(0) : g;
      }
  });
}

#define FASTCONV_INSTANTIATE(T)                                      \
  template void clamp_forward<T>(const T*, T*, int64_t, T, bool, T); \
  template void clamp_backward<T>(const T*, const T*, T*, int64_t, T, bool, T);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
