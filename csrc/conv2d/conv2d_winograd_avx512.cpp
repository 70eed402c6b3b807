// AVX-512 build of the Winograd kernel: the same source as the portable one,
// with the transforms vectorised 16 tiles wide (the GEMMs
// run on the AVX-512 micro-kernel either way).
#include <immintrin.h>
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
#include "common/isa_avx512_begin.h"  // after every other include: AVX-512 code from here on
// AVX-512 build of the Winograd F(4x4, 3x3) kernel (see conv2d_winograd_impl.h),
// with the permute-based row split:
#define FASTCONV_WINOGRAD_AVX512 1
#include "conv2d/conv2d_winograd_impl.h"
// clang-format on

namespace fastconv {

void conv2d_winograd_forward_f32_avx512(const float* input, const FilterView& weight,
                                        const float* bias, float* output, const ConvParams& p) {
  winograd_forward(input, weight, bias, output, p);
}

}  // namespace fastconv

#include "common/isa_avx512_end.h"
