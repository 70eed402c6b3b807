// Weight gradients of layers with few output channels and short reductions, as
// plane-wide dot-product tiles over phase-split rows.
#include <algorithm>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/transpose.h"
#include "common/vector_ops.h"
#include "conv2d/conv2d_common.h"
#include "gemm/gemm.h"

namespace fastconv {

// Weight gradient of a layer with few output channels and a short reduction
// (LeNet, CIFAR stems), where both GEMM paths would spend their time packing
// for tiles that are mostly empty: dW[k][tap] is a dot product over every
// pixel of an image of dY's plane with the tap's input runs, and the kernel
// (VectorOps::dot_tile) keeps a 3 x 4 tile of those sums in vector lanes over
// the whole plane. Each thread sums fixed images into its own partials,
// reduced in thread order.
template <typename T>
void conv2d_direct_dot_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                       const ConvParams& p) {
  const VectorOps<T>& ops = vector_ops<T>();
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), taps = p.reduction();
  const int64_t weight_size = p.out_channels * taps;
  const PhaseLayout layout(p, p.out_w);
  // Input rows under every output row and tap, from row -pad_top on.
  const int64_t span = (p.out_h - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
  const int64_t tasks = p.batch * p.groups;
  const int threads = static_cast<int>(std::min<int64_t>(
      threads_for(static_cast<int64_t>(p.flops()), kFlopsPerThread), std::max<int64_t>(1, tasks)));
  PerThread<T> partials(threads, static_cast<size_t>(weight_size));
  PerThread<T> phases(threads, static_cast<size_t>(cg * span * layout.size()));
  const std::vector<int64_t> tap_base = tap_run_offsets(p, layout, span);
#pragma omp parallel num_threads(threads)
  {
    T* dw = partials.mine().data();  // [k][tap], zero from PerThread
    T* phase = phases.mine().data();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n = task / p.groups, g = task % p.groups;
      for (int64_t c = 0; c < cg; ++c)
        fill_phase_rows(input + (n * p.in_channels + g * cg + c) * p.in_plane(), p, layout,
                        -p.pad_top, span, phase + c * span * layout.size());
      for (int64_t k0 = 0; k0 < kg; k0 += ops.dot_tile_a) {
        const int na = static_cast<int>(std::min<int64_t>(ops.dot_tile_a, kg - k0));
        const T* a[kDotTileMaxA];
        for (int i = 0; i < na; ++i)
          a[i] = grad_output + (n * p.out_channels + g * kg + k0 + i) * p.out_plane();
        for (int64_t t0 = 0; t0 < taps; t0 += ops.dot_tile_b) {
          const int nb = static_cast<int>(std::min<int64_t>(ops.dot_tile_b, taps - t0));
          const T* b[kDotTileMaxB];
          for (int j = 0; j < nb; ++j) b[j] = phase + tap_base[t0 + j];
          T tile[kDotTileMaxA * kDotTileMaxB] = {};
          ops.dot_tile(p.out_h, p.out_w, a, p.out_w, na, b, p.stride_h * layout.size(), nb, tile);
          for (int i = 0; i < na; ++i)
            for (int j = 0; j < nb; ++j) dw[(g * kg + k0 + i) * taps + t0 + j] += tile[i * nb + j];
        }
      }
    }
  }
  for (int64_t i = 0; i < weight_size; ++i) {
    T sum = T(0);
    for (int th = 0; th < threads; ++th) sum += partials.at(th)[i];
    grad_weight[i] = sum;
  }
}

#define FASTCONV_INSTANTIATE(T) \
  template void conv2d_direct_dot_backward_weight<T>(const T*, const T*, T*, const ConvParams&);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
