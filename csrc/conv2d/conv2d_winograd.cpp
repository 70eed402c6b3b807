// Portable build of the Winograd F(4x4, 3x3) kernel (see conv2d_winograd_impl.h).
#include "conv2d/conv2d_winograd_impl.h"

namespace fastconv {

void conv2d_winograd_forward_f32_portable(const float* input, const FilterView& weight,
                                          const float* bias, float* output, const ConvParams& p) {
  winograd_forward(input, weight, bias, output, p);
}

}  // namespace fastconv
