// Depthwise convolution on channel blocks, forward and both gradients: the
// layout XNNPACK and oneDNN use for depthwise layers, channels innermost. The
// planes of kBlock channels are packed into one zero-padded buffer of
// [row][column][kBlock] values, so every tap of every output pixel is one
// kBlock-wide multiply-add (a whole vector register of 64 bytes), however
// small the plane: a 7x7 or 1x1 plane keeps all lanes busy, where the row
// kernels (conv2d_depthwise.cpp) run one short row at a time. The compiler
// vectorises the lane loops; this header is compiled once per ISA.
//
// Included by exactly one translation unit per ISA; everything lives in an
// anonymous namespace so the builds never share a symbol.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "common/transpose.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_common.h"

namespace fastconv {
namespace {

template <typename T>
constexpr int64_t kBlock = 64 / static_cast<int64_t>(sizeof(T));
// Output pixels per register tile: their accumulators (one 64-byte block each)
// and the shared weights fit the vector registers -- 8 of AVX-512's 32, 4 of the
// 16 the other tiers have (two registers a block). The including translation
// unit may set FASTCONV_DEPTHWISE_PIXEL_TILE.
#ifndef FASTCONV_DEPTHWISE_PIXEL_TILE
#define FASTCONV_DEPTHWISE_PIXEL_TILE 4
#endif
constexpr int64_t kPixelTile = FASTCONV_DEPTHWISE_PIXEL_TILE;

// The padded plane a block is packed into: every row and column any tap reads.
struct BlockGeometry {
  int64_t rows, cols;  // padded extent
  explicit BlockGeometry(const ConvParams& p)
      : rows((p.out_h - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1),
        cols((p.out_w - 1) * p.stride_w + (p.kernel_w - 1) * p.dilation_w + 1) {}
  int64_t size() const { return rows * cols; }
};

// Per-thread buffers: the padded input block, the output (or dY) block, and the
// block's weights. Kept by each thread for its next call.
template <typename T>
struct BlockBuffers {
  AlignedBuffer<T> input, output, weight;
};
template <typename T>
BlockBuffers<T>& block_buffers() {
  static thread_local BlockBuffers<T> buffers;
  return buffers;
}

// Lane l of the block starting at output channel k0 reads input channel
// (k0 + l) / multiplier; lanes past `lanes` stay zero.
template <typename T>
void pack_input_block(const T* image, const ConvParams& p, const BlockGeometry& g, int64_t k0,
                      int64_t lanes, T* xb) {
  constexpr int64_t L = kBlock<T>;
  const int64_t multiplier = p.out_per_group();
  std::memset(xb, 0, sizeof(T) * static_cast<size_t>(g.size() * L));
  const int64_t row0 = std::max<int64_t>(0, p.pad_top);
  const int64_t col0 = std::max<int64_t>(0, p.pad_left);
  const int64_t ih_end = std::min(p.in_h, g.rows - p.pad_top);
  const int64_t iw_end = std::min(p.in_w, g.cols - p.pad_left);
  if (multiplier == 1) {  // consecutive planes: 4x4 transposes, row by row
    const T* planes = image + k0 * p.in_plane();
    for (int64_t ih = row0 - p.pad_top; ih < ih_end; ++ih) {
      const int64_t iw0 = col0 - p.pad_left;
      transpose_into(planes + ih * p.in_w + iw0, p.in_plane(), lanes, iw_end - iw0,
                     xb + ((ih + p.pad_top) * g.cols + iw0 + p.pad_left) * L, L);
    }
    return;
  }
  // Pixel by pixel, lanes inside: one contiguous block row written, `lanes`
  // sequential plane rows read.
  const T* planes[L];
  for (int64_t l = 0; l < lanes; ++l) planes[l] = image + ((k0 + l) / multiplier) * p.in_plane();
  for (int64_t ih = row0 - p.pad_top; ih < ih_end; ++ih) {
    T* dst = xb + ((ih + p.pad_top) * g.cols + p.pad_left) * L;
    for (int64_t iw = col0 - p.pad_left; iw < iw_end; ++iw) {
      const int64_t at = ih * p.in_w + iw;
      for (int64_t l = 0; l < lanes; ++l) dst[iw * L + l] = planes[l][at];
    }
  }
}

// Planes (lanes) of a block into [pixel][kBlock] order, zero past `lanes`.
template <typename T>
void pack_planes(const T* planes, int64_t plane, int64_t lanes, T* dst) {
  constexpr int64_t L = kBlock<T>;
  if (lanes < L) std::memset(dst, 0, sizeof(T) * static_cast<size_t>(plane * L));
  transpose_into(planes, plane, lanes, plane, dst, L);
}

template <typename T>
void unpack_planes(const T* src, int64_t plane, int64_t lanes, T* planes) {
  constexpr int64_t L = kBlock<T>;
  transpose_into(src, L, plane, lanes, planes, plane);
}

// wb[tap][l] = weight of output channel k0 + l at tap.
template <typename T>
void pack_block_weights(const T* weight, const ConvParams& p, int64_t k0, int64_t lanes, T* wb) {
  constexpr int64_t L = kBlock<T>;
  const int64_t taps = p.taps();
  std::memset(wb, 0, sizeof(T) * static_cast<size_t>(taps * L));
  for (int64_t l = 0; l < lanes; ++l)
    for (int64_t t = 0; t < taps; ++t) wb[t * L + l] = weight[(k0 + l) * taps + t];
}

// A tile of J output pixels of one row: ob[ow + j][l] = init[l] + sum over taps
// of wb[tap][l] * xb[oh * sh + r * dh][(ow + j) * sw + s * dw][l]. J independent
// accumulator chains hide the FMA latency; J is a compile-time constant so they
// stay in registers.
template <int64_t J, typename T>
inline void forward_pixel_tile(const T* xb, const T* wb, const T* init, const ConvParams& p,
                               const BlockGeometry& g, int64_t oh, int64_t ow, T* ob) {
  constexpr int64_t L = kBlock<T>;
  const int64_t sw = p.stride_w * L;
  T acc[J][L];
  for (int64_t j = 0; j < J; ++j)
    for (int64_t l = 0; l < L; ++l) acc[j][l] = init[l];
  for (int64_t r = 0; r < p.kernel_h; ++r) {
    const T* row = xb + ((oh * p.stride_h + r * p.dilation_h) * g.cols + ow * p.stride_w) * L;
    for (int64_t s = 0; s < p.kernel_w; ++s) {
      const T* w = wb + (r * p.kernel_w + s) * L;
      const T* x = row + s * p.dilation_w * L;
      for (int64_t j = 0; j < J; ++j)
        for (int64_t l = 0; l < L; ++l) acc[j][l] += w[l] * x[j * sw + l];
    }
  }
  for (int64_t j = 0; j < J; ++j) std::memcpy(ob + (ow + j) * L, acc[j], sizeof(T) * L);
}

// The last `left` (< J) pixels of a row as one tile.
template <int64_t J, typename T>
inline void forward_row_tail(int64_t left, const T* xb, const T* wb, const T* init,
                             const ConvParams& p, const BlockGeometry& g, int64_t oh, int64_t ow,
                             T* ob) {
  if constexpr (J > 1) {
    if (left == J - 1) return forward_pixel_tile<J - 1>(xb, wb, init, p, g, oh, ow, ob);
    forward_row_tail<J - 1>(left, xb, wb, init, p, g, oh, ow, ob);
  }
}

// One output row of a block, in tiles of kPixelTile pixels and one tile of what
// is left (a 7-wide row is one tile of 4 and one of 3, not 4 + 1 + 1 + 1: a lone
// pixel's single chain waits on every FMA).
template <typename T>
void forward_block_row(const T* xb, const T* wb, const T* init, const ConvParams& p,
                       const BlockGeometry& g, int64_t oh, T* ob) {
  int64_t ow = 0;
  for (; ow + kPixelTile <= p.out_w; ow += kPixelTile)
    forward_pixel_tile<kPixelTile>(xb, wb, init, p, g, oh, ow, ob);
  forward_row_tail<kPixelTile>(p.out_w - ow, xb, wb, init, p, g, oh, ow, ob);
}

// Tasks are (image, channel block) pairs, split statically over the threads:
// each output value is computed by one thread in a fixed order.
template <typename Fn>
void for_each_block(const ConvParams& p, int64_t blocks, Fn&& fn) {
  const int64_t tasks = p.batch * blocks;
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t task = 0; task < tasks; ++task) fn(task / blocks, task % blocks);
}

template <typename T>
void depthwise_blocked_forward(const T* input, const T* weight, const T* bias, T* output,
                               const ConvParams& p) {
  constexpr int64_t L = kBlock<T>;
  const BlockGeometry g(p);
  const int64_t blocks = (p.out_channels + L - 1) / L;
  for_each_block(p, blocks, [&](int64_t n, int64_t b) {
    BlockBuffers<T>& buf = block_buffers<T>();
    buf.input.resize(static_cast<size_t>(g.size() * L));
    buf.output.resize(static_cast<size_t>(p.out_plane() * L));
    buf.weight.resize(static_cast<size_t>((p.taps() + 1) * L));
    const int64_t k0 = b * L, lanes = std::min(L, p.out_channels - k0);
    pack_input_block(input + n * p.in_channels * p.in_plane(), p, g, k0, lanes, buf.input.data());
    T* wb = buf.weight.data();
    pack_block_weights(weight, p, k0, lanes, wb);
    T* init = wb + p.taps() * L;
    for (int64_t l = 0; l < L; ++l) init[l] = bias != nullptr && l < lanes ? bias[k0 + l] : T(0);
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      forward_block_row(buf.input.data(), wb, init, p, g, oh, buf.output.data() + oh * p.out_w * L);
    unpack_planes(buf.output.data(), p.out_plane(), lanes,
                  output + (n * p.out_channels + k0) * p.out_plane());
  });
}

// dst[l] += w[l] * g[l] over a block's lanes (restrict: the buffers never
// overlap, so the compiler keeps the lanes in one vector).
template <typename T>
inline void add_lane_products(T* __restrict dst, const T* __restrict w, const T* __restrict g) {
  for (int64_t l = 0; l < kBlock<T>; ++l) dst[l] += w[l] * g[l];
}

// dX: each output pixel's dY scatters through the taps into a padded block
// (the adjoint of the forward's gather), whose interior then goes to dX. With a
// channel multiplier above 1, several lanes feed one input channel: the lanes of
// a block are summed per input channel on the way out.
template <typename T>
void depthwise_blocked_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                      const ConvParams& p) {
  constexpr int64_t L = kBlock<T>;
  const BlockGeometry g(p);
  const int64_t multiplier = p.out_per_group();
  // Blocks hold whole input channels (a multiple of the multiplier lanes), so
  // no two blocks write one dX plane.
  // (depthwise_uses_blocks keeps the multiplier within a block.)
  const int64_t channels_per_block = L / multiplier;
  const int64_t blocks = (p.in_channels + channels_per_block - 1) / channels_per_block;
  for_each_block(p, blocks, [&](int64_t n, int64_t b) {
    BlockBuffers<T>& buf = block_buffers<T>();
    buf.input.resize(static_cast<size_t>(g.size() * L));
    buf.output.resize(static_cast<size_t>(p.out_plane() * L));
    buf.weight.resize(static_cast<size_t>(p.taps() * L));
    const int64_t c0 = b * channels_per_block;
    const int64_t channels = std::min(channels_per_block, p.in_channels - c0);
    const int64_t k0 = c0 * multiplier, lanes = channels * multiplier;
    T* xb = buf.input.data();
    T* ob = buf.output.data();
    T* wb = buf.weight.data();
    std::memset(xb, 0, sizeof(T) * static_cast<size_t>(g.size() * L));
    pack_planes(grad_output + (n * p.out_channels + k0) * p.out_plane(), p.out_plane(), lanes, ob);
    pack_block_weights(weight, p, k0, lanes, wb);
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        T dy[L];
        std::memcpy(dy, ob + (oh * p.out_w + ow) * L, sizeof(T) * L);
        for (int64_t r = 0; r < p.kernel_h; ++r) {
          T* row = xb + ((oh * p.stride_h + r * p.dilation_h) * g.cols + ow * p.stride_w) * L;
          for (int64_t s = 0; s < p.kernel_w; ++s)
            add_lane_products(row + s * p.dilation_w * L, wb + (r * p.kernel_w + s) * L, dy);
        }
      }
    // The padded block's interior: input pixel (ih, iw) sits at (ih + pad_top,
    // iw + pad_left); lanes m * c .. m * c + m - 1 belong to input channel c0 + c.
    T* planes = grad_input + (n * p.in_channels + c0) * p.in_plane();
    for (int64_t ih = 0; ih < p.in_h; ++ih) {
      const int64_t row = ih + p.pad_top;
      for (int64_t iw = 0; iw < p.in_w; ++iw) {
        const int64_t col = iw + p.pad_left;
        const int64_t at = ih * p.in_w + iw;
        if (row < 0 || row >= g.rows || col < 0 || col >= g.cols) {
          for (int64_t c = 0; c < channels; ++c) planes[c * p.in_plane() + at] = T(0);
          continue;
        }
        const T* v = xb + (row * g.cols + col) * L;
        if (multiplier == 1) {
          for (int64_t c = 0; c < channels; ++c) planes[c * p.in_plane() + at] = v[c];
        } else {
          for (int64_t c = 0; c < channels; ++c) {
            T sum = T(0);
            for (int64_t j = 0; j < multiplier; ++j) sum += v[c * multiplier + j];
            planes[c * p.in_plane() + at] = sum;
          }
        }
      }
    }
  });
}

// dW[k][tap] = sum over images and output pixels of x(tap, pixel) * dY[k][pixel].
// One task per channel block, over every image in order: each dW value is summed
// by one thread in a fixed order (bit-identical for any thread count).
template <typename T>
void depthwise_blocked_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                       const ConvParams& p) {
  constexpr int64_t L = kBlock<T>;
  const BlockGeometry g(p);
  const int64_t blocks = (p.out_channels + L - 1) / L;
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    BlockBuffers<T>& buf = block_buffers<T>();
    buf.input.resize(static_cast<size_t>(g.size() * L));
    buf.output.resize(static_cast<size_t>(p.out_plane() * L));
    buf.weight.resize(static_cast<size_t>(p.taps() * L));
    const int64_t k0 = b * L, lanes = std::min(L, p.out_channels - k0);
    T* acc = buf.weight.data();  // acc[tap][l]
    std::memset(acc, 0, sizeof(T) * static_cast<size_t>(p.taps() * L));
    for (int64_t n = 0; n < p.batch; ++n) {
      pack_input_block(input + n * p.in_channels * p.in_plane(), p, g, k0, lanes, buf.input.data());
      pack_planes(grad_output + (n * p.out_channels + k0) * p.out_plane(), p.out_plane(), lanes,
                  buf.output.data());
      const T* xb = buf.input.data();
      for (int64_t r = 0; r < p.kernel_h; ++r)
        for (int64_t s = 0; s < p.kernel_w; ++s) {
          T sum[L] = {};
          for (int64_t oh = 0; oh < p.out_h; ++oh) {
            const T* x =
                xb + ((oh * p.stride_h + r * p.dilation_h) * g.cols + s * p.dilation_w) * L;
            const T* dy = buf.output.data() + oh * p.out_w * L;
            for (int64_t ow = 0; ow < p.out_w; ++ow)
              for (int64_t l = 0; l < L; ++l) sum[l] += x[ow * p.stride_w * L + l] * dy[ow * L + l];
          }
          T* a = acc + (r * p.kernel_w + s) * L;
          for (int64_t l = 0; l < L; ++l) a[l] += sum[l];
        }
    }
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t t = 0; t < p.taps(); ++t) grad_weight[(k0 + l) * p.taps() + t] = acc[t * L + l];
  }
}

}  // namespace
}  // namespace fastconv
