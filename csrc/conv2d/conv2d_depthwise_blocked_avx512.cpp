// AVX-512 build of the channel-blocked depthwise kernels.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_common.h"

// 32 vector registers: tiles of 8 output pixels.
#define FASTCONV_DEPTHWISE_PIXEL_TILE 8
// clang-format off
#include "common/isa_avx512_begin.h"  // after every other include: AVX512 code from here on
#include "conv2d/conv2d_depthwise_blocked_impl.h"
// clang-format on

namespace fastconv {

DepthwiseBlockedKernels<float> depthwise_blocked_f32_avx512() {
  return {depthwise_blocked_forward<float>, depthwise_blocked_backward_input<float>,
          depthwise_blocked_backward_weight<float>};
}

DepthwiseBlockedKernels<double> depthwise_blocked_f64_avx512() {
  return {depthwise_blocked_forward<double>, depthwise_blocked_backward_input<double>,
          depthwise_blocked_backward_weight<double>};
}

}  // namespace fastconv

#include "common/isa_avx512_end.h"
