// Tapwise convolution: every pass as a sum over kernel taps, each tap touching
// only the rectangle of outputs whose input it reads. Nothing is padded, so
//  - a tap that falls on padding contributes nothing, not a zero times the
//    weight (PyTorch's semantics: an Inf weight next to padding gives Inf, not
//    NaN), and
//  - the cost is bounded by the output and the kernel, however far the padding,
//    stride or dilation reach (the other kernels size buffers by that reach).
// Plain loops, parallel over independent output planes: the path for
// non-finite operands next to padding and for far-reaching geometry, not for
// speed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

#include "common/parallel.h"
#include "conv2d/conv2d.h"

namespace fastconv {
namespace {

// Outputs o in [0, out) whose tap reads input index o * stride + offset in
// [0, in): a range [first, last).
std::pair<int64_t, int64_t> reading_outputs(int64_t in, int64_t out, int64_t stride,
                                            int64_t offset) {
  // o >= ceil(-offset / stride) and o <= floor((in - 1 - offset) / stride).
  const int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t top = in - 1 - offset;
  if (top < 0) return {0, 0};
  return {std::min(first, out), std::min(out, top / stride + 1)};
}

struct TapWindow {
  int64_t y0, y1, x0, x1;  // outputs [y0, y1) x [x0, x1) read the input through this tap
  int64_t dy, dx;          // input index = output index * stride + (dy, dx)
  bool empty() const { return y0 >= y1 || x0 >= x1; }
};

TapWindow tap_window(const ConvParams& p, int64_t r, int64_t s) {
  TapWindow t;
  t.dy = r * p.dilation_h - p.pad_top;
  t.dx = s * p.dilation_w - p.pad_left;
  std::tie(t.y0, t.y1) = reading_outputs(p.in_h, p.out_h, p.stride_h, t.dy);
  std::tie(t.x0, t.x1) = reading_outputs(p.in_w, p.out_w, p.stride_w, t.dx);
  return t;
}

constexpr int64_t kMacsPerThread = 1 << 16;

}  // namespace

template <typename T>
void conv2d_tapwise_forward(const T* input, const T* weight, const T* bias, T* output,
                            const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), planes = p.batch * p.out_channels;
  const int threads = threads_for(static_cast<int64_t>(p.flops() / 2), kMacsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const int64_t n = plane / p.out_channels, k = plane % p.out_channels, g = k / kg;
    T* out = output + plane * p.out_plane();
    std::fill(out, out + p.out_plane(), bias != nullptr ? bias[k] : T(0));
    for (int64_t c = 0; c < cg; ++c) {
      const T* in = input + (n * p.in_channels + g * cg + c) * p.in_plane();
      const T* w = weight + (k * cg + c) * p.taps();
      for (int64_t r = 0; r < p.kernel_h; ++r)
        for (int64_t s = 0; s < p.kernel_w; ++s) {
          const TapWindow t = tap_window(p, r, s);
          if (t.empty()) continue;
          const T wv = w[r * p.kernel_w + s];
          for (int64_t oy = t.y0; oy < t.y1; ++oy) {
            const T* row = in + (oy * p.stride_h + t.dy) * p.in_w + t.dx;
            T* o = out + oy * p.out_w;
            for (int64_t ox = t.x0; ox < t.x1; ++ox) o[ox] += wv * row[ox * p.stride_w];
          }
        }
    }
  }
}

template <typename T>
void conv2d_tapwise_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                   const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), planes = p.batch * p.in_channels;
  const int threads = threads_for(static_cast<int64_t>(p.flops() / 2), kMacsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const int64_t n = plane / p.in_channels, ci = plane % p.in_channels;
    const int64_t g = ci / cg, c = ci % cg;
    T* in = grad_input + plane * p.in_plane();
    std::fill(in, in + p.in_plane(), T(0));
    for (int64_t k = g * kg; k < (g + 1) * kg; ++k) {
      const T* dy = grad_output + (n * p.out_channels + k) * p.out_plane();
      const T* w = weight + (k * cg + c) * p.taps();
      for (int64_t r = 0; r < p.kernel_h; ++r)
        for (int64_t s = 0; s < p.kernel_w; ++s) {
          const TapWindow t = tap_window(p, r, s);
          if (t.empty()) continue;
          const T wv = w[r * p.kernel_w + s];
          for (int64_t oy = t.y0; oy < t.y1; ++oy) {
            T* row = in + (oy * p.stride_h + t.dy) * p.in_w + t.dx;
            const T* d = dy + oy * p.out_w;
            for (int64_t ox = t.x0; ox < t.x1; ++ox) row[ox * p.stride_w] += d[ox] * wv;
          }
        }
    }
  }
}

template <typename T>
void conv2d_tapwise_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                    const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), filters = p.out_channels * cg;
  const int threads = threads_for(static_cast<int64_t>(p.flops() / 2), kMacsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t filter = 0; filter < filters; ++filter) {
    const int64_t k = filter / cg, c = filter % cg, g = k / kg;
    T* dw = grad_weight + filter * p.taps();
    for (int64_t r = 0; r < p.kernel_h; ++r)
      for (int64_t s = 0; s < p.kernel_w; ++s) {
        const TapWindow t = tap_window(p, r, s);
        T sum = 0;
        for (int64_t n = 0; n < p.batch && !t.empty(); ++n) {
          const T* in = input + (n * p.in_channels + g * cg + c) * p.in_plane();
          const T* dy = grad_output + (n * p.out_channels + k) * p.out_plane();
          for (int64_t oy = t.y0; oy < t.y1; ++oy) {
            const T* row = in + (oy * p.stride_h + t.dy) * p.in_w + t.dx;
            const T* d = dy + oy * p.out_w;
            for (int64_t ox = t.x0; ox < t.x1; ++ox) sum += d[ox] * row[ox * p.stride_w];
          }
        }
        dw[r * p.kernel_w + s] = sum;
      }
  }
}

bool reads_padding(const ConvParams& p) {
  return p.pad_top > 0 || p.pad_left > 0 ||
         (p.out_h - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h - p.pad_top >= p.in_h ||
         (p.out_w - 1) * p.stride_w + (p.kernel_w - 1) * p.dilation_w - p.pad_left >= p.in_w;
}

bool is_far_reaching(const ConvParams& p) {
  // The span of input rows and columns the windows cover, padding included (in
  // double: it may not fit in 64 bits), against what the problem holds.
  const double rows = (p.out_h - 1) * static_cast<double>(p.stride_h) +
                      (p.kernel_h - 1) * static_cast<double>(p.dilation_h) + 1;
  const double cols = (p.out_w - 1) * static_cast<double>(p.stride_w) +
                      (p.kernel_w - 1) * static_cast<double>(p.dilation_w) + 1;
  const double held = static_cast<double>(p.in_plane() + p.out_plane() + p.taps());
  return rows * cols > 16 * held + (1 << 20);
}

template <typename T>
bool all_finite(const T* values, int64_t count) {
  // |v| <= max is false exactly for Inf and NaN; an OR over comparisons vectorises.
  constexpr T kMax = std::numeric_limits<T>::max();
  int not_finite = 0;
  for (int64_t i = 0; i < count; ++i) not_finite |= !(std::abs(values[i]) <= kMax);
  return not_finite == 0;
}

#define FASTCONV_INSTANTIATE(T)                                                                 \
  template void conv2d_tapwise_forward<T>(const T*, const T*, const T*, T*, const ConvParams&); \
  template void conv2d_tapwise_backward_input<T>(const T*, const T*, T*, const ConvParams&);    \
  template void conv2d_tapwise_backward_weight<T>(const T*, const T*, T*, const ConvParams&);   \
  template bool all_finite<T>(const T*, int64_t);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
