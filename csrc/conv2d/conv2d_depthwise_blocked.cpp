// Portable build of the channel-blocked depthwise kernels (SSE2 vectors).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_common.h"
#include "conv2d/conv2d_depthwise_blocked_impl.h"

namespace fastconv {

DepthwiseBlockedKernels<float> depthwise_blocked_f32_portable() {
  return {depthwise_blocked_forward<float>, depthwise_blocked_backward_input<float>,
          depthwise_blocked_backward_weight<float>};
}

DepthwiseBlockedKernels<double> depthwise_blocked_f64_portable() {
  return {depthwise_blocked_forward<double>, depthwise_blocked_backward_input<double>,
          depthwise_blocked_backward_weight<double>};
}

}  // namespace fastconv
