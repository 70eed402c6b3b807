// BatchNorm2d over an (N, C, S) array (S = H * W): per-channel statistics,
// normalisation and the backward pass, fused so that each runs in two passes
// over the data instead of NumPy's six or seven. Channels are independent, so
// threads split them; per-channel sums accumulate in double in a fixed order
// (deterministic for any thread count).
#pragma once

#include <cstdint>

namespace fastconv {

struct BatchNormShape {
  int64_t n = 0, c = 0, s = 0;
};

// mean[c] and biased var[c] of x over N and S.
template <typename T>
void batch_norm_stats(const T* x, const BatchNormShape& shape, T* mean, T* var);

// What batch_norm_apply clamps its output to, fused into the same pass: nothing,
// [0, inf) (ReLU) or [0, 6] (ReLU6); NaN stays NaN, as in clamp_forward.
enum class BatchNormClamp { kNone, kRelu, kRelu6 };

// xhat = (x - mean) * invstd; out = clamp(xhat * weight + bias) (weight, bias
// and xhat nullable: without xhat, only out is written).
template <typename T>
void batch_norm_apply(const T* x, const BatchNormShape& shape, const T* mean, const T* invstd,
                      const T* weight, const T* bias, T* xhat, T* out,
                      BatchNormClamp clamp = BatchNormClamp::kNone);

// Per-channel sum_g = sum g and sum_gx = sum g * xhat; then, if grad_input is
// given, grad_input = (g - [batch] (sum_g + xhat * sum_gx) / count) * scale.
template <typename T>
void batch_norm_backward(const T* g, const T* xhat, const BatchNormShape& shape, const T* scale,
                         bool batch_statistics, T* sum_g, T* sum_gx, T* grad_input);

}  // namespace fastconv
