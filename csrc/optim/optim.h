// Fused optimizer steps: one call updates every parameter of a group in place,
// element by element in the order of operations of torch.optim's single-tensor
// implementations (and fastconv.optim's NumPy ones), so the results match them
// to the bit where the compiler does not contract a * b + c (this translation
// unit is built for the baseline ISA, which has no FMA).
#pragma once

#include <cstdint>
#include <vector>

namespace fastconv {

// One parameter and its state. The optimizer says which state arrays it uses;
// the others are null. `scalar` holds what the caller computes per parameter
// from its step count (Adam's step size, Adagrad's decayed learning rate).
template <typename T>
struct OptimTensor {
  T* param;
  const T* grad;
  T* state[3];
  int64_t size;
  double scalar[2];
  bool first;  // SGD: the momentum buffer starts as the gradient
};

struct SgdOptions {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};
// state[0]: the momentum buffer (when momentum != 0).
template <typename T>
void sgd_step(const std::vector<OptimTensor<T>>& tensors, const SgdOptions& o);

struct AdamOptions {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled;  // decoupled: AdamW
};
// state: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad); scalar: step size
// (lr / bias_correction1), sqrt(bias_correction2).
template <typename T>
void adam_step(const std::vector<OptimTensor<T>>& tensors, const AdamOptions& o);

struct AdagradOptions {
  double weight_decay, eps;
  bool maximize;
};
// state[0]: the sum of squares; scalar[0]: the decayed learning rate.
template <typename T>
void adagrad_step(const std::vector<OptimTensor<T>>& tensors, const AdagradOptions& o);

struct RmspropOptions {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};
// state: square_avg, grad_avg (centered), momentum buffer (momentum > 0).
template <typename T>
void rmsprop_step(const std::vector<OptimTensor<T>>& tensors, const RmspropOptions& o);

}  // namespace fastconv
