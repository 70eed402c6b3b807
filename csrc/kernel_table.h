// The one CPU kernel table: every ISA-dependent kernel of every op family, built
// once per ISA tier and read by every op (XNNPACK builds one config per dtype
// the same way). As in BLIS, the portable kernels fill every slot first and each
// higher tier overrides only the slots it has its own kernel for, so a lookup
// never finds nothing.
#pragma once

#include <cstdint>

#include "common/cpu_features.h"
#include "common/vector_ops.h"
#include "conv2d/conv2d.h"
#include "gemm/gemm.h"
#include "pool2d/pool2d.h"

namespace fastconv {

using WinogradForwardF32 = void (*)(const float* input, const FilterView& weight, const float* bias,
                                    float* output, const ConvParams& p);
using FmaPeakProbe = double (*)(int threads, int64_t iterations);

template <typename T>
struct KernelTable {
  GemmKernelInfo<T> gemm;
  IgemmKernelInfo<T> igemm;
  PixelIgemmKernelInfo<T> pixel_igemm;
  GatherGemmKernelInfo<T> gather_gemm;
  VectorOps<T> vector;
  PoolRowKernels<T> pool_rows;
  DepthwiseBlockedKernels<T> depthwise_blocked;
  SmallNKernelInfo<T> small_n;
};

struct CpuKernels {
  Isa isa;
  KernelTable<float> f32;
  KernelTable<double> f64;
  WinogradForwardF32 winograd_f32;  // F(4x4, 3x3) exists for float32 only
  FmaPeakProbe fma_peak;

  template <typename T>
  const KernelTable<T>& table() const {
    if constexpr (std::is_same_v<T, float>)
      return f32;
    else
      return f64;
  }
};

// The kernels of one tier (any tier: building a table runs none of its code).
const CpuKernels& kernels_for(Isa isa);
// The kernels of the active tier (active_isa()).
const CpuKernels& cpu_kernels();
template <typename T>
const KernelTable<T>& kernel_table() {
  return cpu_kernels().table<T>();
}

}  // namespace fastconv
