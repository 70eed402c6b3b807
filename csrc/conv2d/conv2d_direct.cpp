// Direct convolution without an im2col buffer: layers with few input channels,
// wide rows or little work (indirect GEMMs), their input gradients, and weight
// gradients that read the im2col matrix in place.
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

namespace fastconv {

// Taps per micro-kernel call of the direct kernel: mr x 256 packed weights
// (6 KB for f32) stay in L1.
constexpr int64_t kTapChunk = 256;

// Few input channels or wide rows: an indirect GEMM (XNNPACK's IGEMM). For
// one output row, each tap (c, r, s) is a pointer into a phase-split input
// row, so the reduction over taps runs in registers. Two orientations:
//  - channels x pixels (IGEMM): a packed block of mr output channels' weights
//    times nr output columns read through the tap pointers;
//  - pixels x channels (oneDNN's blocking): mr output columns read through the
//    tap pointers and broadcast, times nr output channels of packed weights.
// The one that wastes fewer lanes on this layer's output width and channel
// count runs (edge tiles of the broadcast side cost only their own rows).
template <typename T>
void conv2d_direct_forward(const T* input, const T* weight, const T* bias, T* output,
                           const ConvParams& p) {
  const IgemmKernelInfo<T> channel_kernels = igemm_kernel<T>();
  const PixelIgemmKernelInfo<T> pixel_kernels = pixel_igemm_kernel<T>();
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), taps = p.reduction();
  const auto waste = [](int64_t n, int64_t block) {
    return static_cast<double>((n + block - 1) / block * block) / static_cast<double>(n);
  };
  const bool pixels_broadcast = waste(kg, pixel_kernels.nr) < waste(p.out_w, channel_kernels.nr);
  // Weight blocks: mr channels (IGEMM, [tap][mr]) or nr channels (pixel
  // kernel, [tap][nr]) per block, missing channels zero.
  const int64_t block = pixels_broadcast ? pixel_kernels.nr : channel_kernels.mr;
  const int64_t k_blocks = (kg + block - 1) / block;
  // Input rows hold whole vectors past the last output: nr columns (IGEMM) or
  // mr broadcast pixels (the AVX2 pixel kernel reads all six).
  const int64_t cover = pixels_broadcast ? pixel_kernels.mr : channel_kernels.nr;
  const int64_t ow_padded = (p.out_w + cover - 1) / cover * cover;
  const PhaseLayout layout(p, ow_padded);
  AlignedBuffer<T> packed(static_cast<size_t>(p.groups * k_blocks * taps * block));
  const std::vector<int64_t> tap_offsets = layout.tap_offsets(p.kernel_w, p.dilation_w);
  // Output rows per task: the phase-split copy of each input row is made once
  // per task and shared by every output row and tap that reads it; the copies
  // for one task stay within about 256 KB (L2).
  const int64_t row_bytes = cg * layout.size() * static_cast<int64_t>(sizeof(T));
  const int64_t rows_per_task =
      std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(1, row_bytes * p.stride_h), 1, 8);
  const int64_t row_blocks = (p.out_h + rows_per_task - 1) / rows_per_task;
  const int64_t span = (rows_per_task - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
  const int64_t tasks = p.batch * p.groups * row_blocks;
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  const int64_t tile_size = std::max<int64_t>(channel_kernels.mr * channel_kernels.nr,
                                              pixel_kernels.mr * pixel_kernels.nr);
  PerThread<T> phases(threads, static_cast<size_t>(cg * span * layout.size()));
  PerThread<const T*> tap_lists(threads, static_cast<size_t>(taps));
  PerThread<T> tiles(threads, static_cast<size_t>(tile_size));
  PerThread<T> accumulators(
      threads,
      static_cast<size_t>(pixels_broadcast ? rows_per_task * p.out_w * pixel_kernels.nr : 0));
#pragma omp parallel num_threads(threads)
  {
    std::vector<T>& phase = phases.mine();
    std::vector<const T*>& tap_rows = tap_lists.mine();
    T* tile = tiles.mine().data();
    T* acc = accumulators.mine().data();
    // The packed weights: transposed into blocks, missing channels zero, 64
    // taps per job (tap by tap, every store would miss: a block's taps span up
    // to 600 KB).
    const int64_t tap_chunks = (taps + 63) / 64;
#pragma omp for schedule(static)
    for (int64_t job = 0; job < p.groups * k_blocks * tap_chunks; ++job) {
      const int64_t t0 = job % tap_chunks * 64, t1 = std::min(taps, t0 + 64);
      const int64_t gk = job / tap_chunks, g = gk / k_blocks, kb = gk % k_blocks;
      transpose_into_lanes(weight + (g * kg + kb * block) * taps + t0, taps,
                           std::min(block, kg - kb * block), t1 - t0,
                           packed.data() + (gk * taps + t0) * block, block);
    }  // (implicit barrier: every task reads every block)
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t rb = task % row_blocks, ng = task / row_blocks;
      const int64_t n = ng / p.groups, g = ng % p.groups;
      const int64_t oh0 = rb * rows_per_task, oh1 = std::min(p.out_h, oh0 + rows_per_task);
      const int64_t ih0 = oh0 * p.stride_h - p.pad_top;  // input row of phase slot 0
      const int64_t slots = (oh1 - 1 - oh0) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
      for (int64_t c = 0; c < cg; ++c) {
        const T* plane = input + (n * p.in_channels + g * cg + c) * p.in_plane();
        for (int64_t slot = 0; slot < slots; ++slot) {
          const int64_t ih = ih0 + slot;
          T* dst = phase.data() + (c * span + slot) * layout.size();
          if (ih < 0 || ih >= p.in_h)  // zero padding rows
            std::fill(dst, dst + layout.size(), T(0));
          else
            fill_phase_row(plane + ih * p.in_w, p.in_w, layout, dst);
        }
      }
      // One tap list for the task, under its first output row; output row oh
      // reads every tap row_step * (oh - oh0) further on.
      for (int64_t c = 0; c < cg; ++c)
        for (int64_t r = 0; r < p.kernel_h; ++r) {
          const T* row = phase.data() + (c * span + r * p.dilation_h) * layout.size();
          const T** dst = tap_rows.data() + (c * p.kernel_h + r) * p.kernel_w;
          for (int64_t s = 0; s < p.kernel_w; ++s) dst[s] = row + tap_offsets[s];
        }
      const int64_t row_step = p.stride_h * layout.size();
      for (int64_t oh = oh0; oh < oh1 && !pixels_broadcast; ++oh) {
        const int64_t row_offset = (oh - oh0) * row_step;
        T* out = output + (n * p.out_channels + g * kg) * p.out_plane() + oh * p.out_w;
        const int64_t mr = channel_kernels.mr, nr = channel_kernels.nr;
        const int64_t full_cols = p.out_w / nr * nr;
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
          const int64_t k0 = kb * mr, count = std::min(mr, kg - k0);
          T* c = out + k0 * p.out_plane();
          // Taps in chunks: a chunk of packed weights stays in L1 while the
          // micro-kernel sweeps the output row; partial sums stay in C.
          for (int64_t t0 = 0; t0 < taps; t0 += kTapChunk) {
            const int64_t chunk = std::min(kTapChunk, taps - t0);
            const T* a = packed.data() + ((g * k_blocks + kb) * taps + t0) * mr;
            const T* const* chunk_rows = tap_rows.data() + t0;
            const T beta = t0 == 0 ? T(0) : T(1);
            for (int64_t ow = 0; ow < full_cols; ow += nr)
              channel_kernels.kernels[count - 1](chunk, a, chunk_rows, row_offset + ow, c + ow,
                                                 p.out_plane(), beta);
            if (full_cols < p.out_w)  // ragged end of the row: through a full tile
              channel_kernels.kernels[mr - 1](chunk, a, chunk_rows, row_offset + full_cols, tile,
                                              nr, beta);
          }
          if (full_cols < p.out_w)
            for (int64_t i = 0; i < count; ++i)
              std::copy(tile + i * nr, tile + i * nr + (p.out_w - full_cols),
                        c + i * p.out_plane() + full_cols);
          if (bias != nullptr)
            for (int64_t i = 0; i < count; ++i) {
              const T b = bias[g * kg + k0 + i];
              T* row = c + i * p.out_plane();
              for (int64_t ow = 0; ow < p.out_w; ++ow) row[ow] += b;
            }
        }
      }
      if (!pixels_broadcast) continue;
      // Pixel kernel: per block of nr channels, chunks of taps whose packed
      // weights stay in L1 while the kernel sweeps every row of the task,
      // partial sums in acc[row][ow][nr]; then acc goes to the output rows.
      const int64_t mr = pixel_kernels.mr, nr = pixel_kernels.nr;
      const int64_t chunk_taps = std::max<int64_t>(16, (int64_t(16) << 10) / (nr * sizeof(T)));
      for (int64_t kb = 0; kb < k_blocks; ++kb) {
        const T* w = packed.data() + (g * k_blocks + kb) * taps * nr;
        for (int64_t t0 = 0; t0 < taps; t0 += chunk_taps) {
          const int64_t chunk = std::min(chunk_taps, taps - t0);
          const T beta = t0 == 0 ? T(0) : T(1);
          for (int64_t oh = oh0; oh < oh1; ++oh)
            for (int64_t ow0 = 0; ow0 < p.out_w; ow0 += mr)
              pixel_kernels.kernels[std::min(mr, p.out_w - ow0) - 1](
                  chunk, tap_rows.data() + t0, (oh - oh0) * row_step + ow0, w + t0 * nr,
                  acc + ((oh - oh0) * p.out_w + ow0) * nr, nr, beta);
        }
        // acc (pixels x nr) -> output planes: a transpose, then the bias.
        const int64_t k0 = kb * nr, kn = std::min(nr, kg - k0);
        const int64_t pixels = (oh1 - oh0) * p.out_w;
        T* out0 = output + (n * p.out_channels + g * kg + k0) * p.out_plane() + oh0 * p.out_w;
        transpose_into(acc, nr, pixels, kn, out0, p.out_plane());
        if (bias != nullptr)
          for (int64_t j = 0; j < kn; ++j) {
            const T b = bias[g * kg + k0 + j];
            T* dst = out0 + j * p.out_plane();
            for (int64_t q = 0; q < pixels; ++q) dst[q] += b;
          }
      }
    }
  }
}

// Input gradient of a grouped convolution with few channels per group (used for
// depthwise layers at any stride): per input plane, accumulate phase-split rows,
// then fold them back.
template <typename T>
void conv2d_direct_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                  const ConvParams& p) {
  const VectorOps<T>& ops = vector_ops<T>();
  const PhaseLayout layout(p, p.out_w);
  const int64_t kg = p.out_per_group(), cg = p.in_per_group();
  const std::vector<int64_t> tap_offsets = layout.tap_offsets(p.kernel_w, p.dilation_w);
  const int64_t planes = p.batch * p.in_channels;
  const int threads = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  PerThread<T> accumulators(threads, static_cast<size_t>(p.in_h * layout.size()));
#pragma omp parallel num_threads(threads)
  {
    std::vector<T>& acc = accumulators.mine();
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane) {
      const int64_t n = plane / p.in_channels, ci = plane % p.in_channels;
      const int64_t g = ci / cg, c = ci % cg;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t k = 0; k < kg; ++k) {
        const int64_t ko = g * kg + k;
        const T* dy = grad_output + (n * p.out_channels + ko) * p.out_plane();
        const T* w = weight + (ko * cg + c) * p.taps();
        for (int64_t oh = 0; oh < p.out_h; ++oh) {
          for (int64_t r = 0; r < p.kernel_h; ++r) {
            const int64_t ih = oh * p.stride_h + r * p.dilation_h - p.pad_top;
            if (ih < 0 || ih >= p.in_h) continue;
            T* row = acc.data() + ih * layout.size();
            for (int64_t s = 0; s < p.kernel_w; ++s)
              ops.axpy(p.out_w, w[r * p.kernel_w + s], dy + oh * p.out_w, row + tap_offsets[s]);
          }
        }
      }
      T* dx = grad_input + plane * p.in_plane();
      std::fill(dx, dx + p.in_plane(), T(0));
      for (int64_t ih = 0; ih < p.in_h; ++ih)
        add_phase_row(acc.data() + ih * layout.size(), layout, p.in_w, dx + ih * p.in_w);
    }
  }
}

// Weight gradient as a gathered-A GEMM: dW^T[tap][k] = sum over pixels of
// x_tap[pixel] * dY[k][pixel]. Under output row oh, tap (c, r, s) reads a
// contiguous run of a phase-split input row, so the micro-kernel reads the
// im2col matrix in place: mr taps x nr output channels per call, accumulated
// in registers over every pixel of a task. A task is a band of output rows of
// one image, or whole planes of several images when planes are small, so each
// call sums a few hundred pixels at least; dY is transposed once per task into
// nr-channel slivers. Each thread sums fixed tasks into its own partial dW^T,
// reduced in thread order (deterministic for a fixed thread count).
template <typename T>
void conv2d_direct_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                   const ConvParams& p) {
  const GatherGemmKernelInfo<T> kinfo = gather_gemm_kernel<T>();
  const int64_t mr = kinfo.mr, nr = kinfo.nr;
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), taps = p.reduction();
  const int64_t k_blocks = (kg + nr - 1) / nr, kg_pad = k_blocks * nr;
  const int64_t tap_blocks = (taps + mr - 1) / mr, taps_pad = tap_blocks * mr;
  const PhaseLayout layout(p, p.out_w);
  const int threads_wanted = threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread);
  // Pixels per task: the transposed dY within ~256 KB, and at least 256.
  const int64_t target = std::max<int64_t>(256, (int64_t(1) << 16) / kg_pad);
  int64_t band = p.out_h, images = 1;
  if (p.out_plane() >= target) {
    band = std::clamp<int64_t>(target / p.out_w, 1, p.out_h);
  } else {  // whole planes, several images, but a share for every thread
    const int64_t share = (p.batch + threads_wanted - 1) / threads_wanted;
    images = std::clamp<int64_t>(target / p.out_plane(), 1, share);
  }
  const int64_t image_groups = (p.batch + images - 1) / images;
  // Fewer tasks than threads (a batch of one on a 14x14 plane was one task on one
  // thread: half the speed of implicit GEMM on two): split the rows into bands.
  const int64_t tasks_per_band = image_groups * p.groups;
  if (tasks_per_band * ((p.out_h + band - 1) / band) < threads_wanted) {
    const int64_t bands_wanted = (threads_wanted + tasks_per_band - 1) / tasks_per_band;
    band = std::min(band, std::max<int64_t>(1, (p.out_h + bands_wanted - 1) / bands_wanted));
  }
  const int64_t bands = (p.out_h + band - 1) / band;
  const int64_t span = (band - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
  const int64_t image_stride = cg * span * layout.size();  // one image's phase rows
  const int64_t tasks = image_groups * p.groups * bands;
  const int threads = static_cast<int>(std::min<int64_t>(threads_wanted, tasks));
  // One workspace, carved per thread: partial dW^T (never zeroed: a thread's
  // first task in a group writes all of that group's tiles with beta = 0, and
  // groups a thread never touched are left out of the sum), phase rows,
  // transposed dY.
  // Kept by the calling thread for its next call (fresh pages for a few MB of
  // partials cost more than the kernel's own work on the small layers).
  const int64_t partial_size = (p.groups * taps_pad * kg_pad + 15) / 16 * 16;
  const int64_t phase_size = (images * image_stride + 15) / 16 * 16;
  const int64_t dy_size = (images * band * p.out_w * kg_pad + 15) / 16 * 16;
  const int64_t per_thread = partial_size + phase_size + dy_size;
  static thread_local AlignedBuffer<T> workspace;
  workspace.resize(static_cast<size_t>(threads * per_thread));
  T* const partials = workspace.data();
  PerThread<const T*> row_lists(threads, static_cast<size_t>(images * band * mr));
  PerThread<char> touched(threads, static_cast<size_t>(p.groups));  // [group]: written yet
  // Where tap (c, r, s) reads under a task's first output row; the next
  // output row is row_step further, the next image image_stride.
  const std::vector<int64_t> tap_base = tap_run_offsets(p, layout, span);
  const int64_t row_step = p.stride_h * layout.size();
#pragma omp parallel num_threads(threads)
  {
    T* dwt = partials + omp_get_thread_num() * per_thread;  // [g][tap][k]
    T* phase = dwt + partial_size;
    T* b = phase + phase_size;
    const T** rows = row_lists.mine().data();
    char* group_written = touched.mine().data();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bi = task % bands, rest = task / bands;
      const int64_t g = rest % p.groups, n0 = (rest / p.groups) * images;
      const int64_t n1 = std::min(p.batch, n0 + images);
      const int64_t oh0 = bi * band, oh1 = std::min(p.out_h, oh0 + band);
      const int64_t rows_per_image = oh1 - oh0, segments = (n1 - n0) * rows_per_image;
      const int64_t pixels = segments * p.out_w;
      const int64_t ih0 = oh0 * p.stride_h - p.pad_top;  // input row of phase slot 0
      const int64_t slots = (rows_per_image - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t c = 0; c < cg; ++c)
          fill_phase_rows(input + (n * p.in_channels + g * cg + c) * p.in_plane(), p, layout, ih0,
                          slots, phase + (n - n0) * image_stride + c * span * layout.size());
      // dY of the task, transposed: b[(kb * pixels + q) * nr + j] = dY[kb * nr + j] at pixel q,
      // channels past kg zero.
      const int64_t run = rows_per_image * p.out_w;  // pixels of one image in the task
      for (int64_t kb = 0; kb < k_blocks; ++kb)
        for (int64_t n = n0; n < n1; ++n)
          transpose_into_lanes(
              grad_output + (n * p.out_channels + g * kg + kb * nr) * p.out_plane() + oh0 * p.out_w,
              p.out_plane(), std::min(nr, kg - kb * nr), run,
              b + (kb * pixels + (n - n0) * run) * nr, nr);
      for (int64_t tb = 0; tb < tap_blocks; ++tb) {
        const int64_t t0 = tb * mr, count = std::min(mr, taps - t0);
        for (int64_t i = 0; i < count; ++i)
          for (int64_t n = n0; n < n1; ++n) {
            const T* row = phase + (n - n0) * image_stride + tap_base[t0 + i];
            const T** dst = rows + (n - n0) * rows_per_image * mr + i;
            for (int64_t oh = 0; oh < rows_per_image; ++oh, row += row_step) dst[oh * mr] = row;
          }
        for (int64_t kb = 0; kb < k_blocks; ++kb)
          kinfo.kernels[count - 1](segments, p.out_w, rows, b + kb * pixels * nr,
                                   dwt + (g * taps_pad + t0) * kg_pad + kb * nr, kg_pad,
                                   group_written[g] ? T(1) : T(0));
      }
      group_written[g] = 1;
    }
  }
  // dW[g][k][tap] = sum over threads, in thread order, of dW^T[g][tap][k],
  // in blocks of 64 taps x 16 channels: the threads' runs of 16 channels (a
  // cache line each) are summed into a block, which is then transposed into
  // dW (element by element, each sum's loads landed on lines far apart).
  const int64_t k_tiles = (kg + 15) / 16, t_tiles = (taps + 63) / 64;
  // Per group, the partial dW^T of each thread that wrote one, in thread order.
  std::vector<std::vector<const T*>> sources_of(static_cast<size_t>(p.groups));
  for (int64_t g = 0; g < p.groups; ++g)
    for (int th = 0; th < threads; ++th)
      if (touched.at(th)[g])
        sources_of[g].push_back(partials + th * per_thread + g * taps_pad * kg_pad);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < p.groups * k_tiles; ++job) {
    const int64_t g = job / k_tiles, k0 = (job % k_tiles) * 16, k1 = std::min(kg, k0 + 16);
    const std::vector<const T*>& sources = sources_of[g];
    alignas(64) T block[64 * 16];
    for (int64_t tt = 0; tt < t_tiles; ++tt) {
      const int64_t t0 = tt * 64, t1 = std::min(taps, t0 + 64);
      for (int64_t t = t0; t < t1; ++t) {
        T* row = block + (t - t0) * 16;
        std::fill(row, row + 16, T(0));
        for (const T* src : sources)
          for (int64_t k = 0; k < k1 - k0; ++k) row[k] += src[t * kg_pad + k0 + k];
      }
      transpose_into(block, 16, t1 - t0, k1 - k0, grad_weight + (g * kg + k0) * taps + t0, taps);
    }
  }
}

#define FASTCONV_INSTANTIATE(T)                                                                \
  template void conv2d_direct_forward<T>(const T*, const T*, const T*, T*, const ConvParams&); \
  template void conv2d_direct_backward_input<T>(const T*, const T*, T*, const ConvParams&);    \
  template void conv2d_direct_backward_weight<T>(const T*, const T*, T*, const ConvParams&);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
