// AVX2+FMA build of the Winograd kernel: the same source as the portable one,
// with the transforms vectorised 8 tiles wide.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "common/transpose.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_common.h"
#include "gemm/gemm.h"

// clang-format off
#include "common/isa_avx2_begin.h"  // after every other include: AVX2 code from here on
// AVX2+FMA build of the Winograd F(4x4, 3x3) kernel (see conv2d_winograd_impl.h):
#include "conv2d/conv2d_winograd_impl.h"
// clang-format on

namespace fastconv {

void conv2d_winograd_forward_f32_avx2(const float* input, const FilterView& weight,
                                      const float* bias, float* output, const ConvParams& p) {
  winograd_forward(input, weight, bias, output, p);
}

}  // namespace fastconv

#include "common/isa_avx2_end.h"
