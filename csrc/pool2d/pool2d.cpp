#include "pool2d/pool2d.h"

#include <omp.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/parallel.h"
#include "kernel_table.h"
#include "pool2d/pool2d_row_scalar.h"

namespace fastconv {
namespace {

template <typename T>
void max_row_generic(const PoolRow& row, T* best, int32_t* tap) {
  for (int64_t ow = 0; ow < row.out_w; ++ow) max_pool_column<T>(row, best, tap, ow);
}

template <typename T>
void sum_row_generic(const PoolRow& row, T* acc) {
  for (int64_t ow = 0; ow < row.out_w; ++ow) sum_pool_column<T>(row, acc, ow);
}

// Output columns [begin, end) whose tap at column offset `offset` lands inside [0, width).
ColumnRange valid_columns(int64_t offset, int64_t stride, int64_t width, int64_t out_w) {
  const int64_t begin = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t end = width - 1 - offset < 0 ? 0 : (width - 1 - offset) / stride + 1;
  return {std::min(begin, out_w), std::min(std::max(end, begin), out_w)};
}

// Per-thread scratch for one output row. A window holds at most in_h
// in-bounds rows, however tall the kernel.
struct RowScratch {
  std::vector<const void*> rows;
  std::vector<int32_t> row_taps;
  std::vector<int32_t> taps;
  explicit RowScratch(const PoolParams& p)
      : rows(static_cast<size_t>(std::min(p.kernel_h, p.in_h))),
        row_taps(static_cast<size_t>(std::min(p.kernel_h, p.in_h))),
        taps(static_cast<size_t>(p.out_w)) {}
};

// Work is split over (plane, output row) pairs so small batches still use every thread.
template <typename Fn>
void for_each_output_row(const PoolParams& p, Fn&& fn) {
  const int64_t rows = p.planes * p.out_h;
  const int64_t taps = std::min(p.kernel_h, p.in_h) * std::min(p.kernel_w, p.in_w);
  const int threads = threads_for(rows * p.out_w * taps, 1 << 18);
  // Allocated here, not inside the parallel region: an exception must not
  // escape an OpenMP region.
  std::vector<RowScratch> scratch(static_cast<size_t>(threads), RowScratch(p));
#pragma omp parallel num_threads(threads)
  {
    RowScratch& mine = scratch[static_cast<size_t>(omp_get_thread_num())];
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) fn(row / p.out_h, row % p.out_h, mine);
  }
}

template <typename Fn>
void for_each_plane(const PoolParams& p, Fn&& fn) {
  const int threads = threads_for(p.planes * p.in_plane(), 1 << 18);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t plane = 0; plane < p.planes; ++plane) fn(plane);
}

// PyTorch's average-pool window: clipped to the padded input for the
// count_include_pad divisor, then to the real input for the summed elements.
struct AvgWindow {
  int64_t start, end, padded_size;
};
AvgWindow avg_window(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t size) {
  const int64_t start = o * stride - pad;
  const int64_t padded_end = std::min(start + kernel, size + pad);
  return {std::max<int64_t>(start, 0), std::min(padded_end, size), padded_end - start};
}

template <typename T>
T avg_divisor(const PoolParams& p, const AvgWindow& h, const AvgWindow& w) {
  if (p.divisor_override != 0) return static_cast<T>(p.divisor_override);
  if (p.count_include_pad) return static_cast<T>(h.padded_size * w.padded_size);
  return static_cast<T>((h.end - h.start) * (w.end - w.start));
}

// 2x2 windows at stride 2, no padding or dilation, every window inside the
// input: the common downsampling layer.
bool is_plain_2x2(const PoolParams& p) {
  return p.kernel_h == 2 && p.kernel_w == 2 && p.stride_h == 2 && p.stride_w == 2 && p.pad_h == 0 &&
         p.pad_w == 0 && p.dilation_h == 1 && p.dilation_w == 1 && 2 * p.out_h <= p.in_h &&
         2 * p.out_w <= p.in_w;
}

// Plain 2x2 max pooling over rows too short for the vector row kernels (small
// planes, as in a small CNN): one flat loop over every output of every plane,
// without per-row set-up. Same rules as the row kernels: taps in scan order, a
// tap wins if greater or NaN; selects, not branches (random data mispredicts).
template <typename T>
inline void max_2x2_scalar(const T* a, const T* b, int64_t ow, T* best, int* tap) {
  const T v[4] = {a[2 * ow], a[2 * ow + 1], b[2 * ow], b[2 * ow + 1]};
  T m = -std::numeric_limits<T>::infinity();
  int t_best = 0;  // nothing beat -inf: the window's first element
  for (int t = 0; t < 4; ++t) {
    const bool take = (v[t] > m) | (v[t] != v[t]);
    m = take ? v[t] : m;
    t_best = take ? t : t_best;
  }
  *best = m;
  *tap = t_best;
}

// Four float32 outputs at once with SSE2 (part of the x86-64 baseline).
// Returns how many columns it did (a multiple of 4).
inline int64_t max_2x2_sse2(const float* a, const float* b, int64_t out_w, float* best, int* taps) {
#if defined(__SSE2__)
  int64_t ow = 0;
  for (; ow + 4 <= out_w; ow += 4) {
    const __m128 a0 = _mm_loadu_ps(a + 2 * ow), a1 = _mm_loadu_ps(a + 2 * ow + 4);
    const __m128 b0 = _mm_loadu_ps(b + 2 * ow), b1 = _mm_loadu_ps(b + 2 * ow + 4);
    const __m128 v[4] = {_mm_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm_shuffle_ps(a0, a1, _MM_SHUFFLE(3, 1, 3, 1)),
                         _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1))};
    __m128 m = _mm_set1_ps(-std::numeric_limits<float>::infinity());
    __m128i t = _mm_setzero_si128();
    for (int k = 0; k < 4; ++k) {
      const __m128 take = _mm_or_ps(_mm_cmpgt_ps(v[k], m), _mm_cmpunord_ps(v[k], v[k]));
      m = _mm_or_ps(_mm_and_ps(take, v[k]), _mm_andnot_ps(take, m));
      const __m128i tk = _mm_castps_si128(take);
      t = _mm_or_si128(_mm_and_si128(tk, _mm_set1_epi32(k)), _mm_andnot_si128(tk, t));
    }
    _mm_storeu_ps(best + ow, m);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(taps + ow), t);
  }
  return ow;
#else
  (void)a, (void)b, (void)out_w, (void)best, (void)taps;
  return 0;
#endif
}

template <typename T>
void max_pool2d_2x2_narrow(const T* input, T* output, int64_t* indices, const PoolParams& p) {
  const int threads = threads_for(p.planes * p.out_h * p.out_w * 4, 1 << 18);
#pragma omp parallel num_threads(threads)
  {
    int taps[16];  // out_w < 16 on this path
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < p.planes; ++plane)
      for (int64_t oh = 0; oh < p.out_h; ++oh) {
        const T* a = input + plane * p.in_plane() + 2 * oh * p.in_w;
        const T* b = a + p.in_w;
        T* best = output + (plane * p.out_h + oh) * p.out_w;
        int64_t ow = 0;
        if constexpr (std::is_same_v<T, float>) ow = max_2x2_sse2(a, b, p.out_w, best, taps);
        for (; ow < p.out_w; ++ow) max_2x2_scalar(a, b, ow, best + ow, taps + ow);
        if (indices == nullptr) continue;
        int64_t* index = indices + (plane * p.out_h + oh) * p.out_w;
        for (ow = 0; ow < p.out_w; ++ow)
          index[ow] = (2 * oh + taps[ow] / 2) * p.in_w + 2 * ow + taps[ow] % 2;
      }
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward(const T* input, T* output, int64_t* indices, const PoolParams& p) {
  if (p.is_empty()) return;
  if (is_plain_2x2(p) && p.out_w < 16) return max_pool2d_2x2_narrow(input, output, indices, p);
  const PoolRowKernels<T> kernels = kernel_table<T>().pool_rows;
  // Flat offset of tap r * kernel_w + s from the window origin: a table for
  // ordinary kernels (no division per output), arithmetic for huge ones.
  constexpr int64_t kTableTaps = 4096;
  const int64_t taps = p.kernel_h * p.kernel_w;
  std::vector<int64_t> offsets(static_cast<size_t>(taps <= kTableTaps ? taps : 0));
  for (int64_t t = 0; t < static_cast<int64_t>(offsets.size()); ++t)
    offsets[t] = (t / p.kernel_w) * p.dilation_h * p.in_w + (t % p.kernel_w) * p.dilation_w;
  const auto tap_offset = [&](int64_t t) {
    if (!offsets.empty()) return offsets[t];
    return (t / p.kernel_w) * p.dilation_h * p.in_w + (t % p.kernel_w) * p.dilation_w;
  };
  for_each_output_row(p, [&](int64_t plane, int64_t oh, RowScratch& scratch) {
    const T* in = input + plane * p.in_plane();
    T* best = output + plane * p.out_plane() + oh * p.out_w;
    int64_t* index = indices ? indices + plane * p.out_plane() + oh * p.out_w : nullptr;
    const int64_t h0 = oh * p.stride_h - p.pad_h;
    const ColumnRange rows = in_bounds_taps(h0, p.dilation_h, p.kernel_h, p.in_h);
    int64_t count = 0;
    for (int64_t r = rows.begin; r < rows.end; ++r) {
      const int64_t ih = h0 + r * p.dilation_h;
      scratch.rows[count] = in + ih * p.in_w;
      scratch.row_taps[count++] = static_cast<int32_t>(r * p.kernel_w);
    }
    const PoolRow row{scratch.rows.data(),
                      scratch.row_taps.data(),
                      count,
                      p.kernel_w,
                      p.stride_w,
                      p.pad_w,
                      p.dilation_w,
                      p.in_w,
                      p.out_w};
    int32_t* tap = scratch.taps.data();
    kernels.max_row(row, best, tap);
    if (index == nullptr) return;  // values only
    for (int64_t ow = 0; ow < p.out_w; ++ow) {
      const int64_t w0 = ow * p.stride_w - p.pad_w;
      if (tap[ow] >= 0) {
        index[ow] = h0 * p.in_w + w0 + tap_offset(tap[ow]);
        continue;
      }
      // Nothing beat -inf: PyTorch reports the window's first in-bounds element.
      const int64_t iw =
          w0 + in_bounds_taps(w0, p.dilation_w, p.kernel_w, p.in_w).begin * p.dilation_w;
      index[ow] = (h0 + rows.begin * p.dilation_h) * p.in_w + iw;
    }
  });
}

template <typename T>
void max_pool2d_backward(const T* grad_output, const int64_t* indices, T* grad_input,
                         const PoolParams& p) {
  for_each_plane(p, [&](int64_t plane) {
    T* gin = grad_input + plane * p.in_plane();
    const T* gout = grad_output + plane * p.out_plane();
    const int64_t* index = indices + plane * p.out_plane();
    std::fill(gin, gin + p.in_plane(), T(0));
    for (int64_t o = 0; o < p.out_plane(); ++o) gin[index[o]] += gout[o];
  });
}

template <typename T>
void avg_pool2d_forward(const T* input, T* output, const PoolParams& p) {
  if (p.is_empty()) return;
  const PoolRowKernels<T> kernels = kernel_table<T>().pool_rows;
  // The divisor depends only on the output position: one table for all planes.
  // Windows with no input element sum to 0 and get divisor 1, giving 0 as PyTorch.
  std::vector<T> divisor(static_cast<size_t>(p.out_plane()));
  for (int64_t oh = 0; oh < p.out_h; ++oh) {
    const AvgWindow hw = avg_window(oh, p.stride_h, p.pad_h, p.kernel_h, p.in_h);
    for (int64_t ow = 0; ow < p.out_w; ++ow) {
      const AvgWindow ww = avg_window(ow, p.stride_w, p.pad_w, p.kernel_w, p.in_w);
      const bool empty = hw.start >= hw.end || ww.start >= ww.end;
      divisor[oh * p.out_w + ow] = empty ? T(1) : avg_divisor<T>(p, hw, ww);
    }
  }
  for_each_output_row(p, [&](int64_t plane, int64_t oh, RowScratch& scratch) {
    const T* in = input + plane * p.in_plane();
    T* acc = output + plane * p.out_plane() + oh * p.out_w;
    const AvgWindow hw = avg_window(oh, p.stride_h, p.pad_h, p.kernel_h, p.in_h);
    int64_t count = 0;
    for (int64_t ih = hw.start; ih < hw.end; ++ih) scratch.rows[count++] = in + ih * p.in_w;
    const PoolRow row{scratch.rows.data(),
                      scratch.row_taps.data(),
                      count,
                      p.kernel_w,
                      p.stride_w,
                      p.pad_w,
                      1,
                      p.in_w,
                      p.out_w};
    kernels.sum_row(row, acc);
    // PyTorch divides (rather than multiplying by a reciprocal): same rounding.
    const T* div = divisor.data() + oh * p.out_w;
    for (int64_t ow = 0; ow < p.out_w; ++ow) acc[ow] /= div[ow];
  });
}

template <typename T>
void avg_pool2d_backward(const T* grad_output, T* grad_input, const PoolParams& p) {
  for_each_plane(p, [&](int64_t plane) {
    T* gin = grad_input + plane * p.in_plane();
    const T* gout = grad_output + plane * p.out_plane();
    std::fill(gin, gin + p.in_plane(), T(0));
    std::vector<T> share(static_cast<size_t>(p.out_w));
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      const AvgWindow hw = avg_window(oh, p.stride_h, p.pad_h, p.kernel_h, p.in_h);
      if (hw.start >= hw.end) continue;
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        const AvgWindow ww = avg_window(ow, p.stride_w, p.pad_w, p.kernel_w, p.in_w);
        share[ow] = ww.start < ww.end ? gout[oh * p.out_w + ow] / avg_divisor<T>(p, hw, ww) : T(0);
      }
      // Only the taps some output reads inside the row (ow * stride_w + s - pad_w
      // in [0, in_w) for an ow < out_w): s in [pad_w - last, pad_w + in_w).
      const int64_t last = (p.out_w - 1) * p.stride_w;
      const ColumnRange taps = in_bounds_taps(last - p.pad_w, 1, p.kernel_w, p.in_w + last);
      for (int64_t ih = hw.start; ih < hw.end; ++ih) {
        T* row = gin + ih * p.in_w;
        for (int64_t s = taps.begin; s < taps.end; ++s) {
          const int64_t offset = s - p.pad_w;
          const ColumnRange cols = valid_columns(offset, p.stride_w, p.in_w, p.out_w);
          for (int64_t ow = cols.begin; ow < cols.end; ++ow)
            row[ow * p.stride_w + offset] += share[ow];
        }
      }
    }
  });
}

template <typename T>
PoolRowKernels<T> pool_row_kernels_portable() {
  return {max_row_generic<T>, sum_row_generic<T>};
}
template PoolRowKernels<float> pool_row_kernels_portable<float>();
template PoolRowKernels<double> pool_row_kernels_portable<double>();

#define FASTCONV_INSTANTIATE_POOL(T)                                                     \
  template void max_pool2d_forward<T>(const T*, T*, int64_t*, const PoolParams&);        \
  template void max_pool2d_backward<T>(const T*, const int64_t*, T*, const PoolParams&); \
  template void avg_pool2d_forward<T>(const T*, T*, const PoolParams&);                  \
  template void avg_pool2d_backward<T>(const T*, T*, const PoolParams&);
FASTCONV_INSTANTIATE_POOL(float)
FASTCONV_INSTANTIATE_POOL(double)
#undef FASTCONV_INSTANTIATE_POOL

}  // namespace fastconv
