// Convolution as GEMM over the project's own GEMM (csrc/gemm).
//
// Forward: out[n, g] (Kg x OH*OW) = W[g] (Kg x Cg*R*S) @ im2col(x[n, g]). The
// im2col matrix is never built: GEMM asks for packed B panels and they are
// filled straight from the image (implicit GEMM), so extra memory is the GEMM
// panels only. 1x1 stride-1 unpadded convolutions need no im2col at all.
// Backward wrt input: GEMM into a bounded column tile, then col2im.
// Backward wrt weight: per-thread partial sums over images of
// dY @ im2col(x)^T, im2col built one bounded pixel tile at a time, partials
// reduced in thread order (deterministic for a fixed thread count).
#include <algorithm>
#include <vector>

#include "common/aligned_buffer.h"
#include "conv2d/conv2d_common.h"
#include "gemm/gemm.h"

namespace fastconv {
namespace {

// Column tiles of the backward passes hold about this many elements...
constexpr int64_t kTileElements = 1 << 18;
// ...and a single image's input-gradient tiles of at most this many pixels run
// pixel-major.
constexpr int64_t kPixelMajorMaxPixels = 64;
// ...but the weight gradient's tiles span at least this many pixels: they are
// the reduction length of its GEMMs, each of which reads and writes all of dW.
constexpr int64_t kWeightGradTilePixels = 256;
// ...and otherwise hold about this many elements (64 KB of float32: gathered
// and packed while still in L2; measured 5-10% faster than 2^18 on the
// CIFAR, LeNet and 7x7 layers).
constexpr int64_t kWeightGradTileElements = 1 << 14;

struct TapGeometry {
  int64_t c, row_offset, col_offset;  // channel within the group, ih = oh*sh + row_offset, ...
};

std::vector<TapGeometry> tap_table(const ConvParams& p) {
  std::vector<TapGeometry> taps(static_cast<size_t>(p.reduction()));
  size_t t = 0;
  for (int64_t c = 0; c < p.in_per_group(); ++c)
    for (int64_t r = 0; r < p.kernel_h; ++r)
      for (int64_t s = 0; s < p.kernel_w; ++s)
        taps[t++] = {c, r * p.dilation_h - p.pad_top, s * p.dilation_w - p.pad_left};
  return taps;
}

// Fills `dst` (rows x count, row stride ld) with im2col rows [t0, t0 + rows)
// for the flat output pixels [j0, j0 + count) of one image group.
template <typename T>
void im2col_tile(const T* x, const ConvParams& p, const std::vector<TapGeometry>& taps, int64_t t0,
                 int64_t rows, int64_t j0, int64_t count, T* dst, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) {
    const TapGeometry& tap = taps[t0 + i];
    const T* plane = x + tap.c * p.in_plane();
    T* out = dst + i * ld;
    for_each_output_row_segment(
        j0, count, p.out_w, [&](int64_t oh, int64_t ow, int64_t n, int64_t at) {
          im2col_segment(plane, p.in_h, p.in_w, oh * p.stride_h + tap.row_offset, ow, n, p.stride_w,
                         tap.col_offset, out + at);
        });
  }
}

// Packed-B producer for the forward GEMM: slivers of nr output pixels. Column
// j is pixel j % P of image j / P (P = OH * OW), images `image_stride` apart, so
// small planes of several images can share one GEMM.
template <typename T>
PackB<T> implicit_im2col_packer(const T* x, int64_t image_stride, const ConvParams& p,
                                const std::vector<TapGeometry>& taps, int64_t columns) {
  return [x, image_stride, &p, &taps, columns](int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                                               int64_t nr, T* dst) {
    const int64_t pixels = p.out_plane();
    for (int64_t jr = 0; jr < nc; jr += nr) {
      const int64_t cols = std::min<int64_t>(nr, std::min(nc - jr, columns - j0 - jr));
      T* sliver = dst + jr * kc;
      for (int64_t i = 0; i < kc; ++i) {
        const TapGeometry& tap = taps[k0 + i];
        T* out = sliver + i * nr;
        for (int64_t j = j0 + jr, end = j0 + jr + cols; j < end;) {
          const int64_t n = j / pixels, local = j % pixels;
          const int64_t count = std::min(pixels - local, end - j);
          const T* plane = x + n * image_stride + tap.c * p.in_plane();
          for_each_output_row_segment(
              local, count, p.out_w, [&](int64_t oh, int64_t ow, int64_t m, int64_t at) {
                im2col_segment(plane, p.in_h, p.in_w, oh * p.stride_h + tap.row_offset, ow, m,
                               p.stride_w, tap.col_offset, out + (j - j0 - jr) + at);
              });
          j += count;
        }
        std::fill(out + cols, out + nr, T(0));
      }
    }
  };
}

// out rows = bias (so GEMM can accumulate with beta = 1), or nothing to do.
template <typename T>
T fill_bias(const T* bias, T* out, int64_t channels, int64_t plane) {
  if (bias == nullptr) return T(0);
  for (int64_t k = 0; k < channels; ++k) std::fill(out + k * plane, out + (k + 1) * plane, bias[k]);
  return T(1);
}

// Scratch kept by each calling thread for its next call: packed weights and the
// small-plane paths' column and output blocks (up to kSmallPlaneColumnsBytes).
// Fresh, zero-filled vectors cost a page-faulting memset of several MB a call,
// more than the GEMM itself on small layers (N32 C256 8x8 stride 2: 11% of the
// forward time).
template <typename T>
struct GemmScratch {
  AlignedBuffer<T> packed, cols, block;
};
template <typename T>
GemmScratch<T>& gemm_scratch() {
  static thread_local GemmScratch<T> scratch;
  return scratch;
}

// The GEMMs' A, packed once per call into `dst` and reused for every image: W[g]
// (kg x red) for the forward pass, or its transpose (red x kg) for the input
// gradient. Packing the transpose reads W down its columns (a stride of red),
// which cost more than the multiply-adds when it was redone for every image and
// pixel tile (a 3x3 stride-2 layer, 256 -> 512 channels on 7x7 outputs: 44% of
// the input gradient's time). Not where the GEMM runs a narrow C transposed,
// which takes plain operands.
template <typename T>
const T* pack_weights(const T* weight, int64_t groups, int64_t kg, int64_t red, bool transposed,
                      AlignedBuffer<T>& dst) {
  const int64_t rows = transposed ? red : kg, depth = transposed ? kg : red;
  const int64_t per_group = gemm_packed_a_size<T>(rows, depth);
  dst.resize(static_cast<size_t>(groups * per_group));
  for (int64_t g = 0; g < groups; ++g) {
    const T* w = weight + g * kg * red;
    const MatrixView<T> a = transposed ? MatrixView<T>{w, 1, red} : MatrixView<T>{w, red, 1};
    gemm_pack_a<T>(a, rows, depth, dst.data() + g * per_group);
  }
  return dst.data();
}

}  // namespace

// Below this many output pixels per image, the images of a batch share one
// GEMM: nr-wide column slivers would otherwise be mostly padding (7x7 = 49
// pixels fill 4 slivers of 16 to 77%), and the packed weights are streamed
// once instead of once per image. Their im2col matrix is built explicitly, a
// chunk of images within this many bytes at a time: on planes this small the
// implicit packer's per-row segments are a few pixels long and its bookkeeping
// costs more than the copy (measured, one thread: N32 C256 4x4 -> 512 stride 2
// 8.6 -> 2.3 ms of GEMM at 130 GFLOP/s; C512 2x2 29 -> 7.6 ms).
constexpr int64_t kBatchedGemmMaxPixels = 256;
constexpr int64_t kSmallPlaneColumnsBytes = 8 << 20;
// The input gradient batches images only up to 4x4 outputs: its scatter through
// the offset table is slower than the per-image col2im's row segments, which
// wins from 7x7 on (one thread, stride 2: 4x4 0.27 -> 0.92x torch; 7x7 and 8x8
// 0.93-1.04x per image against 0.71-0.83x batched).
constexpr int64_t kBatchedInputGradMaxPixels = 16;

// Where each output pixel's window reads, per kernel position: the input
// offset of tap (r, s) of column j (pixel j % P of image j / P), images
// `image_stride` apart, or -1 on padding. Built once per call for a chunk of
// images; gather() then fills the im2col matrix row by row -- one row per
// (channel, r, s) -- with one table lookup per value.
class SpatialOffsets {
 public:
  SpatialOffsets(const ConvParams& p, int64_t images, int64_t image_stride)
      : taps_(p.taps()), offsets_(static_cast<size_t>(images * p.out_plane() * p.taps())) {
    for (int64_t n = 0; n < images; ++n)
      for (int64_t oh = 0; oh < p.out_h; ++oh)
        for (int64_t ow = 0; ow < p.out_w; ++ow) {
          int64_t* out = offsets_.data() + ((n * p.out_h + oh) * p.out_w + ow) * taps_;
          for (int64_t r = 0; r < p.kernel_h; ++r)
            for (int64_t s = 0; s < p.kernel_w; ++s) {
              const int64_t ih = oh * p.stride_h + r * p.dilation_h - p.pad_top;
              const int64_t iw = ow * p.stride_w + s * p.dilation_w - p.pad_left;
              const bool inside = ih >= 0 && ih < p.in_h && iw >= 0 && iw < p.in_w;
              out[r * p.kernel_w + s] = inside ? n * image_stride + ih * p.in_w + iw : -1;
            }
        }
  }

  // dx (the chunk's images at dx, per channel) += col2im(cols): the adjoint of
  // gather. Parallel over input channels, which own disjoint planes.
  template <typename T>
  void scatter_add(const T* cols, const ConvParams& p, int64_t columns, T* dx, int threads) const {
    const int64_t channels = p.in_per_group();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < channels; ++c) {
      T* plane = dx + c * p.in_plane();
      for (int64_t tap = 0; tap < taps_; ++tap) {
        const int64_t* offset = offsets_.data() + tap;
        const T* src = cols + (c * taps_ + tap) * columns;
        for (int64_t j = 0; j < columns; ++j) {
          const int64_t at = offset[j * taps_];
          if (at >= 0) plane[at] += src[j];
        }
      }
    }
  }

  // cols (reduction x columns, row-major) = im2col of the chunk's images at x.
  template <typename T>
  void gather(const T* x, const ConvParams& p, int64_t columns, T* cols, int threads) const {
    const int64_t rows = p.reduction();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const T* plane = x + (row / taps_) * p.in_plane();
      const int64_t* offset = offsets_.data() + row % taps_;
      T* out = cols + row * columns;
      for (int64_t j = 0; j < columns; ++j) {
        const int64_t at = offset[j * taps_];
        out[j] = at >= 0 ? plane[at] : T(0);
      }
    }
  }

 private:
  int64_t taps_;
  std::vector<int64_t> offsets_;
};

template <typename T>
void conv2d_gemm_forward(const T* input, const T* weight, const T* bias, T* output,
                         const ConvParams& p) {
  const std::vector<TapGeometry> taps = tap_table(p);
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), pixels = p.out_plane();
  GemmScratch<T>& scratch = gemm_scratch<T>();
  // At most kSmallNDotColumns output pixels in all: the GEMM reads the weights in
  // place (its small-N path), so packing them would be wasted.
  const bool few_pixels = p.batch * pixels <= kSmallNDotColumns;
  const T* packed = few_pixels
                        ? nullptr
                        : pack_weights(weight, p.groups, kg, p.reduction(), false, scratch.packed);
  const int64_t per_group = gemm_packed_a_size<T>(kg, p.reduction());
  const int64_t image_stride = p.in_channels * p.in_plane();
  if ((pixels < kBatchedGemmMaxPixels && p.batch > 1) || few_pixels) {
    const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
    // Images per GEMM: their im2col matrix and offsets within kSmallPlaneColumnsBytes.
    const int64_t bytes_per_image = pixels * (p.reduction() * static_cast<int64_t>(sizeof(T)) +
                                              p.taps() * static_cast<int64_t>(sizeof(int64_t)));
    const int64_t chunk =
        std::clamp<int64_t>(kSmallPlaneColumnsBytes / bytes_per_image, 1, p.batch);
    const SpatialOffsets offsets(p, chunk, image_stride);
    scratch.cols.resize(static_cast<size_t>(p.reduction() * chunk * pixels));
    scratch.block.resize(static_cast<size_t>(kg * chunk * pixels));  // one group of output
    T* cols = scratch.cols.data();
    T* c = scratch.block.data();
    for (int64_t n0 = 0; n0 < p.batch; n0 += chunk) {
      const int64_t images = std::min(chunk, p.batch - n0), columns = images * pixels;
      for (int64_t g = 0; g < p.groups; ++g) {
        const T* x = input + n0 * image_stride + g * cg * p.in_plane();
        offsets.gather(x, p, columns, cols, threads);
        GemmProblem<T> pr;
        pr.m = kg;
        pr.n = columns;
        pr.k = p.reduction();
        if (few_pixels)
          pr.a = {weight + g * kg * p.reduction(), p.reduction(), 1};
        else
          pr.packed_a = packed + g * per_group;
        pr.b = {cols, columns, 1};
        pr.c = {c, columns, 1};
        gemm(pr, threads);
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
        for (int64_t n = 0; n < images; ++n)
          for (int64_t k = 0; k < kg; ++k) {
            const T* src = c + k * columns + n * pixels;
            T* dst = output + ((n0 + n) * p.out_channels + g * kg + k) * pixels;
            const T b = bias ? bias[g * kg + k] : T(0);
            for (int64_t i = 0; i < pixels; ++i) dst[i] = src[i] + b;
          }
      }
    }
    return;
  }
  run_tasks(p.batch * p.groups, p.flops(), [&](int64_t task, int threads) {
    const int64_t n = task / p.groups, g = task % p.groups;
    const T* x = input + (n * p.in_channels + g * cg) * p.in_plane();
    T* out = output + (n * p.out_channels + g * kg) * pixels;
    GemmProblem<T> pr;
    pr.m = kg;
    pr.n = pixels;
    pr.k = p.reduction();
    pr.packed_a = packed + g * per_group;
    pr.pack_b = implicit_im2col_packer(x, image_stride, p, taps, pixels);
    pr.c = {out, pixels, 1};
    pr.beta = fill_bias(bias ? bias + g * kg : nullptr, out, kg, pixels);
    gemm(pr, threads);
  });
}

// Planes of one pixel (squeeze-excitation convs, the last stage of a small input):
// one GEMM per group across the whole batch, Y (N x Kg) = X (N x Cg) @ W^T, instead
// of N matrix-vector products.
template <typename T>
void pointwise_single_pixel_forward(const T* input, const T* weight, const T* bias, T* output,
                                    const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group();
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  if (bias != nullptr)
    for (int64_t n = 0; n < p.batch; ++n)
      std::copy(bias, bias + p.out_channels, output + n * p.out_channels);
  for (int64_t g = 0; g < p.groups; ++g) {
    GemmProblem<T> pr;
    pr.m = p.batch;
    pr.n = kg;
    pr.k = cg;
    pr.a = {input + g * cg, p.in_channels, 1};
    pr.b = {weight + g * kg * cg, 1, cg};  // B[c][k] = W[k][c]
    pr.c = {output + g * kg, p.out_channels, 1};
    pr.beta = bias != nullptr ? T(1) : T(0);
    gemm(pr, threads);
  }
}

template <typename T>
void conv2d_pointwise_forward(const T* input, const T* weight, const T* bias, T* output,
                              const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), pixels = p.out_plane();
  if (pixels == 1 && p.batch > 1)
    return pointwise_single_pixel_forward(input, weight, bias, output, p);
  // Weights packed once for the batch; a single image packs them in its one GEMM,
  // which can then run a narrow output (7x7 = 49 pixels) transposed.
  const bool prepack = p.batch > 1 || !gemm_runs_narrow_c_transposed<T>(kg, pixels);
  const T* packed =
      prepack ? pack_weights(weight, p.groups, kg, cg, false, gemm_scratch<T>().packed) : nullptr;
  const int64_t per_group = gemm_packed_a_size<T>(kg, cg);
  run_tasks(p.batch * p.groups, p.flops(), [&](int64_t task, int threads) {
    const int64_t n = task / p.groups, g = task % p.groups;
    T* out = output + (n * p.out_channels + g * kg) * pixels;
    GemmProblem<T> pr;
    pr.m = kg;
    pr.n = pixels;
    pr.k = cg;
    pr.a = {weight + g * kg * cg, cg, 1};
    if (prepack) pr.packed_a = packed + g * per_group;
    pr.b = {input + (n * p.in_channels + g * cg) * pixels, pixels, 1};
    pr.c = {out, pixels, 1};
    pr.beta = fill_bias(bias ? bias + g * kg : nullptr, out, kg, pixels);
    gemm(pr, threads);
  });
}

template <typename T>
void conv2d_gemm_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), pixels = p.out_plane();
  if (p.is_pointwise() && pixels == 1 && p.batch > 1) {
    // One GEMM per group across the batch: dX (N x Cg) = dY (N x Kg) @ W (Kg x Cg).
    const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
    for (int64_t g = 0; g < p.groups; ++g) {
      GemmProblem<T> pr;
      pr.m = p.batch;
      pr.n = cg;
      pr.k = kg;
      pr.a = {grad_output + g * kg, p.out_channels, 1};
      pr.b = {weight + g * kg * cg, cg, 1};
      pr.c = {grad_input + g * cg, p.in_channels, 1};
      gemm(pr, threads);
    }
    return;
  }
  const int64_t red = p.reduction();
  if (pixels <= kBatchedInputGradMaxPixels && p.batch > 1 && !p.is_pointwise()) {
    // Tiny planes: the images of a chunk share one GEMM into an explicit column
    // matrix, scattered back through the forward pass's offset table (one
    // GEMM per image would have a few pixels of N).
    const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
    const int64_t image_stride = p.in_channels * p.in_plane();
    const int64_t bytes_per_image = pixels * ((red + kg) * static_cast<int64_t>(sizeof(T)) +
                                              p.taps() * static_cast<int64_t>(sizeof(int64_t)));
    const int64_t chunk =
        std::clamp<int64_t>(kSmallPlaneColumnsBytes / bytes_per_image, 1, p.batch);
    const SpatialOffsets offsets(p, chunk, image_stride);
    GemmScratch<T>& scratch = gemm_scratch<T>();
    scratch.block.resize(static_cast<size_t>(kg * chunk * pixels));
    scratch.cols.resize(static_cast<size_t>(red * chunk * pixels));
    T* dy_block = scratch.block.data();
    T* cols = scratch.cols.data();
    std::fill(grad_input, grad_input + p.batch * image_stride, T(0));
    for (int64_t n0 = 0; n0 < p.batch; n0 += chunk) {
      const int64_t images = std::min(chunk, p.batch - n0), columns = images * pixels;
      for (int64_t g = 0; g < p.groups; ++g) {
        for (int64_t k = 0; k < kg; ++k)  // dY of the chunk as kg x (images * pixels)
          for (int64_t n = 0; n < images; ++n)
            std::copy_n(grad_output + ((n0 + n) * p.out_channels + g * kg + k) * pixels, pixels,
                        dy_block + k * columns + n * pixels);
        GemmProblem<T> pr;  // columns (red x columns) = W[g]^T @ dY
        pr.m = red;
        pr.n = columns;
        pr.k = kg;
        pr.a = {weight + g * kg * red, 1, red};
        pr.b = {dy_block, columns, 1};
        pr.c = {cols, columns, 1};
        gemm(pr, threads);
        offsets.scatter_add(cols, p, columns,
                            grad_input + n0 * image_stride + g * cg * p.in_plane(), threads);
      }
    }
    return;
  }
  const std::vector<TapGeometry> taps = tap_table(p);
  const int64_t tile_pixels = std::clamp<int64_t>(kTileElements / red, 16, pixels);
  // A single image's tiles of a few pixels (small planes) run pixel-major: cols^T
  // (count x red) = dY^T @ W[g], which puts the pixels on the micro-kernel's rows
  // and lets the GEMM pack W along its rows; W^T packed down its columns cost as
  // much as the multiply-adds (a U-Net up-convolution, 1024 -> 512 2x2 stride 2
  // on 8x8: 10.9 -> 4.2 ms). Over several images the W^T packed once per call
  // wins (a DCGAN layer, batch 16, 256 -> 128 4x4 stride 2 on 8x8: 9.1 against
  // 11.0 ms pixel-major).
  const bool pixel_major = !p.is_pointwise() && p.batch == 1 && tile_pixels <= kPixelMajorMaxPixels;
  // (The tiny-plane path above packs per chunk of images, few times a call.)
  const bool prepack = !pixel_major && !gemm_runs_narrow_c_transposed<T>(
                                           red, p.is_pointwise() ? pixels : tile_pixels);
  const T* packed =
      prepack ? pack_weights(weight, p.groups, kg, red, true, gemm_scratch<T>().packed) : nullptr;
  const int64_t per_group = gemm_packed_a_size<T>(red, kg);
  run_tasks(p.batch * p.groups, p.flops(), [&](int64_t task, int threads) {
    const int64_t n = task / p.groups, g = task % p.groups;
    T* dx = grad_input + (n * p.in_channels + g * cg) * p.in_plane();
    const T* dy = grad_output + (n * p.out_channels + g * kg) * pixels;
    std::fill(dx, dx + cg * p.in_plane(), T(0));
    if (p.is_pointwise()) {  // dX = W^T @ dY, no columns needed
      GemmProblem<T> pr;
      pr.m = cg;
      pr.n = pixels;
      pr.k = kg;
      pr.a = {weight + g * kg * cg, 1, cg};
      if (prepack) pr.packed_a = packed + g * per_group;  // (red == cg)
      pr.b = {dy, pixels, 1};
      pr.c = {dx, pixels, 1};
      gemm(pr, threads);
      return;
    }
    AlignedBuffer<T> cols(static_cast<size_t>(red * tile_pixels));
    for (int64_t j0 = 0; j0 < pixels; j0 += tile_pixels) {
      const int64_t count = std::min(tile_pixels, pixels - j0);
      GemmProblem<T> pr;  // columns (red x count) = W[g]^T @ dY[:, j0:j0+count]
      pr.k = kg;
      if (pixel_major) {  // ... stored transposed, count x red
        pr.m = count;
        pr.n = red;
        pr.a = {dy + j0, 1, pixels};
        pr.b = {weight + g * kg * red, red, 1};
        pr.c = {cols.data(), red, 1};
      } else {
        pr.m = red;
        pr.n = count;
        pr.a = {weight + g * kg * red, 1, red};
        if (prepack && !gemm_runs_narrow_c_transposed<T>(red, count))
          pr.packed_a = packed + g * per_group;
        pr.b = {dy + j0, pixels, 1};
        pr.c = {cols.data(), count, 1};
      }
      gemm(pr, threads);
      // col2im: scatter-add each tap row back onto the input plane; column
      // (tap t, pixel j) is at cols[t * tap_step + j * pixel_step].
      const int64_t tap_step = pixel_major ? 1 : count, pixel_step = pixel_major ? red : 1;
      for (int64_t t = 0; t < red; ++t) {
        const TapGeometry& tap = taps[t];
        T* plane = dx + tap.c * p.in_plane();
        const T* src = cols.data() + t * tap_step;
        for_each_output_row_segment(j0, count, p.out_w,
                                    [&](int64_t oh, int64_t ow0, int64_t m, int64_t at) {
                                      const int64_t ih = oh * p.stride_h + tap.row_offset;
                                      if (ih < 0 || ih >= p.in_h) return;
                                      T* row = plane + ih * p.in_w;
                                      for (int64_t i = 0; i < m; ++i) {
                                        const int64_t iw = (ow0 + i) * p.stride_w + tap.col_offset;
                                        if (iw >= 0 && iw < p.in_w)
                                          row[iw] += src[(at + i) * pixel_step];
                                      }
                                    });
      }
    }
  });
}

template <typename T>
void conv2d_gemm_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                 const ConvParams& p) {
  const std::vector<TapGeometry> taps = tap_table(p);
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), pixels = p.out_plane();
  const int64_t red = p.reduction();
  const int64_t weight_size = p.out_channels * red;
  // Pixel tiles run across image boundaries: the GEMM's reduction is as long
  // as the tile whatever the plane size (a 7x7 plane alone would give K = 49).
  const int64_t tile_pixels = std::clamp<int64_t>(
      std::max<int64_t>(kWeightGradTilePixels, kWeightGradTileElements / std::max(red, kg)), 16,
      std::max<int64_t>(16, p.batch * pixels));
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  // With enough images, each thread sums a fixed range of them into its own
  // partial dW, reduced in thread order: deterministic for a thread count.
  const bool split_images = p.batch >= threads && threads > 1;
  const int parts = split_images ? threads : 1;
  // Partials are never zeroed: each range's first GEMM per group writes dW
  // with beta = 0. Kept by the calling thread for its next call.
  // (The pointer is taken here: inside the parallel region the name of a
  // thread_local would denote each worker's own, empty, buffer.)
  static thread_local AlignedBuffer<T> partial_buffer;
  partial_buffer.resize(static_cast<size_t>(weight_size * std::max(1, parts - 1)));
  T* const partials = partial_buffer.data();
  std::vector<AlignedBuffer<T>> cols(static_cast<size_t>(parts)), dys(static_cast<size_t>(parts));
  for (int t = 0; t < parts; ++t) {
    cols[t].resize(static_cast<size_t>(red * tile_pixels));
    dys[t].resize(static_cast<size_t>(kg * tile_pixels));
  }
  if (p.batch == 0 || pixels == 0) {  // nothing to sum
    std::fill(grad_weight, grad_weight + weight_size, T(0));
    return;
  }

  // dW[g] += dY[n0:n1, g] @ im2col(x[n0:n1, g])^T over the images' pixels.
  auto accumulate = [&](int64_t n0, int64_t n1, int inner_threads, T* dw, T* col, T* dy_tile) {
    // Planes that hold whole tiles: tiles stay inside an image and dY is read
    // in place. 1x1 layers read the input in place too (measured: gathering
    // costs 1.5x on resnet_1x1_56); others gather one tile of columns (CIFAR
    // stem: 10% faster than tiles spanning images).
    if (pixels >= (p.is_pointwise() ? kWeightGradTilePixels : tile_pixels)) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < p.groups; ++g) {
          const T* x = input + (n * p.in_channels + g * cg) * p.in_plane();
          const T* dy = grad_output + (n * p.out_channels + g * kg) * pixels;
          for (int64_t j0 = 0; j0 < pixels; j0 += tile_pixels) {
            const int64_t count = std::min(tile_pixels, pixels - j0);
            GemmProblem<T> pr;  // dW[g] (kg x red) += dY[:, j0:j0+count] @ columns^T
            pr.m = kg;
            pr.n = red;
            pr.k = count;
            pr.a = {dy + j0, pixels, 1};
            if (p.is_pointwise()) {
              pr.b = {x + j0, 1, pixels};
            } else {
              im2col_tile(x, p, taps, 0, red, j0, count, col, count);
              pr.b = {col, 1, count};
            }
            pr.c = {dw + g * kg * red, red, 1};
            pr.beta = n == n0 && j0 == 0 ? T(0) : T(1);
            gemm(pr, inner_threads);
          }
        }
      return;
    }
    // Small planes: tiles span images and are gathered into contiguous buffers.
    const int64_t total = (n1 - n0) * pixels;
    for (int64_t g = 0; g < p.groups; ++g) {
      for (int64_t j0 = 0; j0 < total; j0 += tile_pixels) {
        const int64_t count = std::min(tile_pixels, total - j0);
        for (int64_t j = j0; j < j0 + count;) {  // per image segment of the tile
          const int64_t n = n0 + j / pixels, local = j % pixels;
          const int64_t m = std::min(pixels - local, j0 + count - j);
          const T* x = input + (n * p.in_channels + g * cg) * p.in_plane();
          const T* dy = grad_output + (n * p.out_channels + g * kg) * pixels + local;
          for (int64_t k = 0; k < kg; ++k)
            std::copy(dy + k * pixels, dy + k * pixels + m, dy_tile + k * count + (j - j0));
          if (p.is_pointwise()) {
            for (int64_t c = 0; c < cg; ++c)
              std::copy(x + c * pixels + local, x + c * pixels + local + m,
                        col + c * count + (j - j0));
          } else {
            im2col_tile(x, p, taps, 0, red, local, m, col + (j - j0), count);
          }
          j += m;
        }
        GemmProblem<T> pr;  // dW[g] (kg x red) += dY tile (kg x count) @ columns^T
        pr.m = kg;
        pr.n = red;
        pr.k = count;
        pr.a = {dy_tile, count, 1};
        pr.b = {col, 1, count};
        pr.c = {dw + g * kg * red, red, 1};
        pr.beta = j0 == 0 ? T(0) : T(1);
        gemm(pr, inner_threads);
      }
    }
  };
  if (split_images) {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      T* dw = t == 0 ? grad_weight : partials + (t - 1) * weight_size;
      accumulate(p.batch * t / threads, p.batch * (t + 1) / threads, 1, dw, cols[t].data(),
                 dys[t].data());
    }
    for (int t = 1; t < threads; ++t) {
      const T* src = partials + (t - 1) * weight_size;
      for (int64_t i = 0; i < weight_size; ++i) grad_weight[i] += src[i];
    }
  } else {
    accumulate(0, p.batch, threads, grad_weight, cols[0].data(), dys[0].data());
  }
}

#define FASTCONV_INSTANTIATE(T)                                                                   \
  template void conv2d_gemm_forward<T>(const T*, const T*, const T*, T*, const ConvParams&);      \
  template void conv2d_pointwise_forward<T>(const T*, const T*, const T*, T*, const ConvParams&); \
  template void conv2d_gemm_backward_input<T>(const T*, const T*, T*, const ConvParams&);         \
  template void conv2d_gemm_backward_weight<T>(const T*, const T*, T*, const ConvParams&);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
