// Helpers shared by the convolution algorithms.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "conv2d/conv2d.h"

namespace fastconv {

// Floating-point operations worth one more thread.
constexpr int64_t kFlopsPerThread = int64_t(1) << 21;

// Runs fn(task, inner_threads) for task in [0, count). With at least as many
// tasks as threads, tasks run in parallel and each gets one thread; otherwise
// tasks run one after another and each may use every thread inside. `flops`
// (the whole call's) caps the threads for small problems.
template <typename Fn>
void run_tasks(int64_t count, double flops, Fn&& fn) {
  const int threads = threads_for(static_cast<int64_t>(flops), kFlopsPerThread);
  if (count >= threads && threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < count; ++task) fn(task, 1);
  } else {
    for (int64_t task = 0; task < count; ++task) fn(task, threads);
  }
}

// A row in padded coordinates j = iw + pad_left, split by j % stride:
// phase q holds j = q, q + stride, q + 2 * stride, ...
struct PhaseLayout {
  int64_t stride, pad_left, length;  // length of one phase
  PhaseLayout(int64_t stride_, int64_t pad_left_, int64_t length_)
      : stride(stride_), pad_left(pad_left_), length(length_) {}
  // Long enough for out_w outputs of every tap of p's kernel row.
  PhaseLayout(const ConvParams& p, int64_t out_w)
      : stride(p.stride_w),
        pad_left(p.pad_left),
        length(out_w + ((p.kernel_w - 1) * p.dilation_w) / p.stride_w + 1) {}
  int64_t size() const { return stride * length; }
  // Offset of tap s's contiguous run of out_w inputs.
  int64_t tap_offset(int64_t s, int64_t dilation) const {
    const int64_t o = s * dilation;
    return (o % stride) * length + o / stride;
  }
  // tap_offset of every kernel column, computed once (two divisions each).
  std::vector<int64_t> tap_offsets(int64_t kernel_w, int64_t dilation) const {
    std::vector<int64_t> out(static_cast<size_t>(kernel_w));
    for (int64_t s = 0; s < kernel_w; ++s) out[s] = tap_offset(s, dilation);
    return out;
  }
};

template <int64_t kStride, typename T>
inline void fill_phase_row_strided(const T* row, int64_t width, const PhaseLayout& layout, T* dst,
                                   int64_t phase_stride) {
  const int64_t stride = kStride > 0 ? kStride : layout.stride;
  const int64_t pad = layout.pad_left, length = layout.length;
  // Entry i of phase q is column iw = i * stride + q - pad. On the interior
  // [lo, hi) every phase is in bounds: one pass, no checks (a constant stride
  // lets the compiler vectorise it with shuffles).
  // (pad_left < 0 for some transposed convolutions: then lo = 0.)
  const int64_t lo = std::min(length, pad > 0 ? (pad + stride - 1) / stride : int64_t(0));
  const int64_t hi =
      std::clamp(width + pad >= stride ? (width + pad - stride) / stride + 1 : 0, lo, length);
  for (int64_t i = lo; i < hi; ++i)
    for (int64_t q = 0; q < stride; ++q) dst[q * phase_stride + i] = row[i * stride + q - pad];
  for (int64_t q = 0; q < stride; ++q) {
    T* phase = dst + q * phase_stride;
    for (int64_t i = 0; i < lo; ++i) {
      const int64_t iw = i * stride + q - pad;
      phase[i] = iw >= 0 && iw < width ? row[iw] : T(0);
    }
    for (int64_t i = hi; i < length; ++i) {
      const int64_t iw = i * stride + q - pad;
      phase[i] = iw >= 0 && iw < width ? row[iw] : T(0);
    }
  }
}

// Splits one input row (`width` columns) into its phases, `phase_stride`
// apart (default: packed, layout.length apart).
template <typename T>
inline void fill_phase_row(const T* row, int64_t width, const PhaseLayout& layout, T* dst,
                           int64_t phase_stride = -1) {
  if (phase_stride < 0) phase_stride = layout.length;
  switch (layout.stride) {
    case 1:
      return fill_phase_row_strided<1>(row, width, layout, dst, phase_stride);
    case 2:
      return fill_phase_row_strided<2>(row, width, layout, dst, phase_stride);
    case 4:
      return fill_phase_row_strided<4>(row, width, layout, dst, phase_stride);
    default:
      return fill_phase_row_strided<0>(row, width, layout, dst, phase_stride);
  }
}

// Scratch vectors for every thread of a parallel region, allocated before the
// region is entered: an allocation failure then raises (MemoryError in Python)
// instead of escaping an OpenMP region, which would terminate the process.
template <typename T>
class PerThread {
 public:
  PerThread(int threads, size_t size) : buffers_(static_cast<size_t>(threads)) {
    for (auto& b : buffers_) b.resize(size);
  }
  std::vector<T>& mine() { return buffers_[static_cast<size_t>(omp_get_thread_num())]; }
  const std::vector<T>& at(int thread) const { return buffers_[static_cast<size_t>(thread)]; }

 private:
  std::vector<std::vector<T>> buffers_;
};

// One im2col row segment: dst[i] = x[ih][(ow0 + i) * stride + offset] for
// i < count, zero where the tap falls into padding.
template <typename T>
inline void im2col_segment(const T* plane, int64_t in_h, int64_t in_w, int64_t ih, int64_t ow0,
                           int64_t count, int64_t stride, int64_t offset, T* dst) {
  if (ih < 0 || ih >= in_h) {
    std::fill(dst, dst + count, T(0));
    return;
  }
  const T* row = plane + ih * in_w;
  // In-bounds outputs: 0 <= ow * stride + offset < in_w (no division for stride 1:
  // this runs once per tap and row segment of every im2col panel).
  int64_t lo, hi;
  if (stride == 1) {
    lo = std::clamp<int64_t>(-offset - ow0, 0, count);
    hi = std::clamp<int64_t>(in_w - offset - ow0, lo, count);
  } else {
    lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    hi = in_w - 1 - offset < 0 ? 0 : (in_w - 1 - offset) / stride + 1;
    lo = std::clamp<int64_t>(lo - ow0, 0, count);
    hi = std::clamp<int64_t>(hi - ow0, lo, count);
  }
  std::fill(dst, dst + lo, T(0));
  const T* src = row + ow0 * stride + offset;
  if (stride == 1) {
    std::memcpy(dst + lo, src + lo, static_cast<size_t>(hi - lo) * sizeof(T));
  } else {
    for (int64_t i = lo; i < hi; ++i) dst[i] = src[i * stride];
  }
  std::fill(dst + hi, dst + count, T(0));
}

// Calls fn(oh, ow0, count, offset_in_range) for the output rows that the flat
// output range [j0, j0 + n) spans.
template <typename Fn>
inline void for_each_output_row_segment(int64_t j0, int64_t n, int64_t out_w, Fn&& fn) {
  int64_t j = j0;
  const int64_t end = j0 + n;
  while (j < end) {
    const int64_t oh = j / out_w, ow = j % out_w;
    const int64_t count = std::min(out_w - ow, end - j);
    fn(oh, ow, count, j - j0);
    j += count;
  }
}

// Phase-split copies of the input rows [ih0, ih0 + slots) of `plane`, one per
// slot `layout.size()` apart; rows outside the input (padding) are zero.
template <typename T>
void fill_phase_rows(const T* plane, const ConvParams& p, const PhaseLayout& layout, int64_t ih0,
                     int64_t slots, T* dst) {
  for (int64_t slot = 0; slot < slots; ++slot, dst += layout.size()) {
    const int64_t ih = ih0 + slot;
    if (ih >= 0 && ih < p.in_h) {
      fill_phase_row(plane + ih * p.in_w, p.in_w, layout, dst);
    } else {
      std::fill(dst, dst + layout.size(), T(0));
    }
  }
}

// For each tap t = (c, r, s) of a group, where its run for the first output row
// starts in phase rows laid out per channel `span` slots apart (slot 0 under
// the first output row's top tap); each further output row is stride_h slots on.
inline std::vector<int64_t> tap_run_offsets(const ConvParams& p, const PhaseLayout& layout,
                                            int64_t span) {
  std::vector<int64_t> offsets(static_cast<size_t>(p.reduction()));
  for (int64_t t = 0; t < p.reduction(); ++t) {
    const int64_t c = t / p.taps(), r = (t / p.kernel_w) % p.kernel_h, s = t % p.kernel_w;
    offsets[t] = (c * span + r * p.dilation_h) * layout.size() + layout.tap_offset(s, p.dilation_w);
  }
  return offsets;
}

// Adds a phase-split row back onto a plain row (the adjoint of fill_phase_row).
template <typename T>
void add_phase_row(const T* src, const PhaseLayout& layout, int64_t width, T* row) {
  for (int64_t q = 0; q < layout.stride; ++q) {
    const T* phase = src + q * layout.length;
    for (int64_t i = 0; i < layout.length; ++i) {
      const int64_t iw = i * layout.stride + q - layout.pad_left;
      if (iw >= 0 && iw < width) row[iw] += phase[i];
    }
  }
}

}  // namespace fastconv
