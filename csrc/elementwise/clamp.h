// ReLU and ReLU6 (a clamp from below, or between two bounds), forward and
// backward, over flat arrays: one pass each, threaded, in place when the
// output is the input. NaN follows PyTorch: it passes through the forward; in
// the backward it lets the gradient through a one-sided clamp (threshold_backward)
// and stops it in a two-sided one (hardtanh_backward, vectorised path).
#pragma once

#include <cstdint>

namespace fastconv {

// out[i] = x[i] < lo ? lo : (has_hi && x[i] > hi ? hi : x[i]); out may be x.
template <typename T>
void clamp_forward(const T* x, T* out, int64_t n, T lo, bool has_hi, T hi);

// grad_input[i] = grad[i] where out[i] > lo (one-sided: also at NaN) or
// lo < out[i] < hi (two-sided), else 0; from the forward's output (its input
// gives the same answer); grad_input may be grad.
template <typename T>
void clamp_backward(const T* grad, const T* out, T* grad_input, int64_t n, T lo, bool has_hi, T hi);

}  // namespace fastconv
