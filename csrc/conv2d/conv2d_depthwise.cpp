// Depthwise convolution (groups == in_channels), forward and weight gradient,
// on phase-split rows.
//
// Every input row a kernel row touches is copied once into a zero-padded,
// stride-phase-split row, so that for tap s the inputs of a whole output row,
// x[oh*sh + r*dh - pt][ow*sw + s*dw - pl] for ow = 0..OW-1, are one contiguous
// run: padding and stride cost nothing in the inner loops, which walk these
// runs through tap pointers (micro-kernels) or along the width (row kernels).
#include <algorithm>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/transpose.h"
#include "common/vector_ops.h"
#include "conv2d/conv2d_common.h"
#include "gemm/gemm.h"
#include "kernel_table.h"

namespace fastconv {

// A depthwise layer on one-pixel planes whose one live tap reads that pixel (what
// 3x3 on 1x1 planes becomes once its dead taps are cut): each output is a single
// product, and NCHW already keeps an image's channels contiguous, so plain loops
// over (image, channel) beat packing channel blocks of one pixel.
bool is_channel_scale(const ConvParams& p) {
  return p.is_depthwise() && p.taps() == 1 && p.in_plane() == 1 && p.out_plane() == 1 &&
         p.pad_top == 0 && p.pad_left == 0;
}

// The loops below keep the sums' order of the general kernels (from zero or the
// bias, one product at a time); with one output per channel they run along the
// channels, which the compiler vectorises.
template <typename T>
void channel_scale_forward(const T* input, const T* weight, const T* bias, T* output,
                           const ConvParams& p) {
  const int64_t m = p.out_per_group();
  for (int64_t n = 0; n < p.batch; ++n) {
    const T* x = input + n * p.in_channels;
    T* y = output + n * p.out_channels;
    if (m == 1) {  // (the compiler unswitches the loop on bias)
      for (int64_t c = 0; c < p.in_channels; ++c)
        y[c] = (bias != nullptr ? bias[c] : T(0)) + weight[c] * x[c];
      continue;
    }
    for (int64_t c = 0; c < p.in_channels; ++c)
      for (int64_t j = 0; j < m; ++j) {
        const int64_t k = c * m + j;
        y[k] = (bias != nullptr ? bias[k] : T(0)) + weight[k] * x[c];
      }
  }
}

template <typename T>
void channel_scale_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                  const ConvParams& p) {
  const int64_t m = p.out_per_group();
  for (int64_t n = 0; n < p.batch; ++n) {
    const T* dy = grad_output + n * p.out_channels;
    T* dx = grad_input + n * p.in_channels;
    if (m == 1) {
      for (int64_t c = 0; c < p.in_channels; ++c) dx[c] = T(0) + weight[c] * dy[c];
      continue;
    }
    for (int64_t c = 0; c < p.in_channels; ++c) {
      T sum = T(0);
      for (int64_t j = 0; j < m; ++j) sum += weight[c * m + j] * dy[c * m + j];
      dx[c] = sum;
    }
  }
}

template <typename T>
void channel_scale_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                   const ConvParams& p) {
  // Image by image, every channel's running sum: the images' order of the
  // general kernels, read along the rows of x and dY.
  const int64_t m = p.out_per_group();
  std::fill(grad_weight, grad_weight + p.out_channels, T(0));
  for (int64_t n = 0; n < p.batch; ++n) {
    const T* x = input + n * p.in_channels;
    const T* dy = grad_output + n * p.out_channels;
    if (m == 1) {
      for (int64_t k = 0; k < p.out_channels; ++k) grad_weight[k] += x[k] * dy[k];
    } else {
      for (int64_t k = 0; k < p.out_channels; ++k) grad_weight[k] += x[k / m] * dy[k];
    }
  }
}

// Depthwise (one input channel per group; forced elsewhere it sums the group's
// channels): per image and group, every input row is phase-split once; each
// output row is then a weighted sum of Cg * R * S shifted rows, accumulated in
// registers 16 columns at a time.
template <typename T>
void conv2d_depthwise_forward(const T* input, const T* weight, const T* bias, T* output,
                              const ConvParams& p) {
  if (is_channel_scale(p)) return channel_scale_forward(input, weight, bias, output, p);
  if (depthwise_uses_blocks(p))
    return kernel_table<T>().depthwise_blocked.forward(input, weight, bias, output, p);
  const VectorOps<T>& ops = vector_ops<T>();
  const PhaseLayout layout(p, p.out_w);
  const int64_t kg = p.out_per_group(), cg = p.in_per_group();
  const int64_t taps = p.reduction();  // cg * R * S: one group's weights for one output channel
  const int64_t plane_rows = p.in_h * layout.size();
  const std::vector<T> zeros(static_cast<size_t>(layout.size()), T(0));
  const std::vector<int64_t> tap_offsets = layout.tap_offsets(p.kernel_w, p.dilation_w);
  const int64_t tasks = p.batch * p.groups;
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  PerThread<T> phases(threads, static_cast<size_t>(cg * plane_rows));
  PerThread<const T*> row_lists(threads, static_cast<size_t>(taps));
#pragma omp parallel num_threads(threads)
  {
    std::vector<T>& phase = phases.mine();
    std::vector<const T*>& rows = row_lists.mine();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n = task / p.groups, g = task % p.groups;
      for (int64_t c = 0; c < cg; ++c) {
        const T* plane = input + (n * p.in_channels + g * cg + c) * p.in_plane();
        for (int64_t ih = 0; ih < p.in_h; ++ih)
          fill_phase_row(plane + ih * p.in_w, p.in_w, layout,
                         phase.data() + c * plane_rows + ih * layout.size());
      }
      for (int64_t oh = 0; oh < p.out_h; ++oh) {
        for (int64_t c = 0; c < cg; ++c)
          for (int64_t r = 0; r < p.kernel_h; ++r) {
            const int64_t ih = oh * p.stride_h + r * p.dilation_h - p.pad_top;
            const T* row = (ih >= 0 && ih < p.in_h)
                               ? phase.data() + c * plane_rows + ih * layout.size()
                               : zeros.data();
            for (int64_t s = 0; s < p.kernel_w; ++s)
              rows[(c * p.kernel_h + r) * p.kernel_w + s] = row + tap_offsets[s];
          }
        for (int64_t k = g * kg; k < (g + 1) * kg; ++k)
          ops.weighted_rows(p.out_w, taps, rows.data(), weight + k * taps,
                            bias != nullptr ? bias[k] : T(0),
                            output + (n * p.out_channels + k) * p.out_plane() + oh * p.out_w);
      }
    }
  }
}

template <typename T>
void conv2d_depthwise_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                      const ConvParams& p) {
  if (is_channel_scale(p)) return channel_scale_backward_weight(input, grad_output, grad_weight, p);
  if (depthwise_uses_blocks(p))
    return kernel_table<T>().depthwise_blocked.backward_weight(input, grad_output, grad_weight, p);
  const VectorOps<T>& ops = vector_ops<T>();
  const PhaseLayout layout(p, p.out_w);
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), taps = p.taps();
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  // One thread owns each output channel: no partial sums, fixed order. Per
  // output row, dY's row times every tap's input run is accumulated lane by
  // lane (taps x OW accumulators, in L1); the lanes are summed once per
  // channel, not once per row as dot products would.
  PerThread<T> phases(threads, static_cast<size_t>(p.in_h * layout.size()));
  PerThread<T> lane_sums(threads, static_cast<size_t>(taps * p.out_w));
  PerThread<const T*> tap_lists(threads, static_cast<size_t>(taps));
  const std::vector<T> zeros(static_cast<size_t>(layout.size()), T(0));
  const std::vector<int64_t> tap_offsets = layout.tap_offsets(p.kernel_w, p.dilation_w);
#pragma omp parallel num_threads(threads)
  {
    T* phase = phases.mine().data();
    T* acc = lane_sums.mine().data();
    const T** rows = tap_lists.mine().data();
#pragma omp for schedule(static)
    for (int64_t k = 0; k < p.out_channels; ++k) {
      const int64_t g = k / kg;
      for (int64_t c = 0; c < cg; ++c) {
        std::fill(acc, acc + taps * p.out_w, T(0));
        for (int64_t n = 0; n < p.batch; ++n) {
          const T* plane = input + (n * p.in_channels + g * cg + c) * p.in_plane();
          const T* dy = grad_output + (n * p.out_channels + k) * p.out_plane();
          fill_phase_rows(plane, p, layout, 0, p.in_h, phase);
          for (int64_t oh = 0; oh < p.out_h; ++oh) {
            for (int64_t r = 0; r < p.kernel_h; ++r) {
              const int64_t ih = oh * p.stride_h + r * p.dilation_h - p.pad_top;
              const T* row = (ih >= 0 && ih < p.in_h) ? phase + ih * layout.size() : zeros.data();
              for (int64_t s = 0; s < p.kernel_w; ++s)
                rows[r * p.kernel_w + s] = row + tap_offsets[s];
            }
            ops.rows_mul_add(p.out_w, dy + oh * p.out_w, taps, rows, acc);
          }
        }
        for (int64_t t = 0; t < taps; ++t) {
          const T* lanes = acc + t * p.out_w;
          T sum = T(0);
          for (int64_t w = 0; w < p.out_w; ++w) sum += lanes[w];
          grad_weight[(k * cg + c) * taps + t] = sum;
        }
      }
    }
  }
}

#define FASTCONV_INSTANTIATE(T)                                                                   \
  template void conv2d_depthwise_forward<T>(const T*, const T*, const T*, T*, const ConvParams&); \
  template void conv2d_depthwise_backward_weight<T>(const T*, const T*, T*, const ConvParams&);   \
  template void channel_scale_backward_input<T>(const T*, const T*, T*, const ConvParams&);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
