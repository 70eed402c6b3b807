// Fused optimizer steps (see optim.h). Memory-bound elementwise loops: the work
// is cut into chunks across every parameter of the group, one parallel region.
#include "optim/optim.h"

#include <algorithm>
#include <cmath>

#include "common/parallel.h"

namespace fastconv {
namespace {

constexpr int64_t kChunk = 1 << 15;

// Runs fn(tensor, begin, end) over chunks of every tensor, in parallel.
template <typename T, typename Fn>
void for_each_chunk(const std::vector<OptimTensor<T>>& tensors, Fn fn) {
  struct Chunk {
    int64_t tensor, begin, end;
  };
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    for (int64_t b = 0; b < tensors[t].size; b += kChunk)
      chunks.push_back({t, b, std::min(tensors[t].size, b + kChunk)});
    total += tensors[t].size;
  }
  const int threads = threads_for(total, kChunk);
  const int64_t count = static_cast<int64_t>(chunks.size());
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < count; ++i) fn(tensors[chunks[i].tensor], chunks[i].begin, chunks[i].end);
}

// torch.lerp's two-branch formula, as fastconv.optim._lerp.
template <typename T>
inline T lerp(T start, T end, double weight) {
  if (std::abs(weight) < 0.5) return start + static_cast<T>(weight) * (end - start);
  return end - (end - start) * static_cast<T>(1.0 - weight);
}

// np.maximum: NaN wins.
template <typename T>
inline T nan_max(T a, T b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

}  // namespace

template <typename T>
void sgd_step(const std::vector<OptimTensor<T>>& tensors, const SgdOptions& o) {
  const T lr = static_cast<T>(o.lr), momentum = static_cast<T>(o.momentum);
  const T wd = static_cast<T>(o.weight_decay), keep = static_cast<T>(1.0 - o.dampening);
  for_each_chunk(tensors, [&](const OptimTensor<T>& t, int64_t begin, int64_t end) {
    T* buf = t.state[0];
    for (int64_t i = begin; i < end; ++i) {
      T g = o.maximize ? -t.grad[i] : t.grad[i];
      if (o.weight_decay != 0) g = g + wd * t.param[i];
      if (o.momentum != 0) {
        if (t.first) {
          buf[i] = g;
        } else {
          buf[i] = buf[i] * momentum;
          buf[i] = buf[i] + keep * g;
        }
        g = o.nesterov ? g + momentum * buf[i] : buf[i];
      }
      t.param[i] = t.param[i] - lr * g;
    }
  });
}

template <typename T>
void adam_step(const std::vector<OptimTensor<T>>& tensors, const AdamOptions& o) {
  const T wd = static_cast<T>(o.weight_decay), decay = static_cast<T>(1.0 - o.lr * o.weight_decay);
  const T beta2 = static_cast<T>(o.beta2), rest2 = static_cast<T>(1.0 - o.beta2);
  const T eps = static_cast<T>(o.eps);
  const double weight1 = 1.0 - o.beta1;
  for_each_chunk(tensors, [&](const OptimTensor<T>& t, int64_t begin, int64_t end) {
    T *m = t.state[0], *v = t.state[1], *v_max = t.state[2];
    const T step_size = static_cast<T>(t.scalar[0]), bc2_sqrt = static_cast<T>(t.scalar[1]);
    for (int64_t i = begin; i < end; ++i) {
      T g = o.maximize ? -t.grad[i] : t.grad[i];
      if (o.weight_decay != 0) {
        if (o.decoupled)
          t.param[i] = t.param[i] * decay;
        else
          g = g + wd * t.param[i];
      }
      m[i] = lerp(m[i], g, weight1);
      v[i] = v[i] * beta2;
      v[i] = v[i] + rest2 * g * g;
      T second = v[i];
      if (o.amsgrad) {
        v_max[i] = nan_max(v_max[i], v[i]);
        second = v_max[i];
      }
      const T denom = std::sqrt(second) / bc2_sqrt + eps;
      t.param[i] = t.param[i] - step_size * (m[i] / denom);
    }
  });
}

template <typename T>
void adagrad_step(const std::vector<OptimTensor<T>>& tensors, const AdagradOptions& o) {
  const T wd = static_cast<T>(o.weight_decay), eps = static_cast<T>(o.eps);
  for_each_chunk(tensors, [&](const OptimTensor<T>& t, int64_t begin, int64_t end) {
    T* sum = t.state[0];
    const T clr = static_cast<T>(t.scalar[0]);
    for (int64_t i = begin; i < end; ++i) {
      T g = o.maximize ? -t.grad[i] : t.grad[i];
      if (o.weight_decay != 0) g = g + wd * t.param[i];
      sum[i] = sum[i] + g * g;
      const T std_dev = std::sqrt(sum[i]) + eps;
      t.param[i] = t.param[i] - clr * (g / std_dev);
    }
  });
}

template <typename T>
void rmsprop_step(const std::vector<OptimTensor<T>>& tensors, const RmspropOptions& o) {
  const T lr = static_cast<T>(o.lr), alpha = static_cast<T>(o.alpha);
  const T rest = static_cast<T>(1.0 - o.alpha), eps = static_cast<T>(o.eps);
  const T wd = static_cast<T>(o.weight_decay), momentum = static_cast<T>(o.momentum);
  for_each_chunk(tensors, [&](const OptimTensor<T>& t, int64_t begin, int64_t end) {
    T *square_avg = t.state[0], *grad_avg = t.state[1], *buf = t.state[2];
    for (int64_t i = begin; i < end; ++i) {
      T g = o.maximize ? -t.grad[i] : t.grad[i];
      if (o.weight_decay != 0) g = g + wd * t.param[i];
      square_avg[i] = square_avg[i] * alpha;
      square_avg[i] = square_avg[i] + rest * g * g;
      T avg;
      if (o.centered) {
        grad_avg[i] = lerp(grad_avg[i], g, 1.0 - o.alpha);
        avg = std::sqrt(square_avg[i] - grad_avg[i] * grad_avg[i]);
      } else {
        avg = std::sqrt(square_avg[i]);
      }
      avg = avg + eps;
      if (o.momentum > 0) {
        buf[i] = buf[i] * momentum;
        buf[i] = buf[i] + g / avg;
        t.param[i] = t.param[i] - lr * buf[i];
      } else {
        t.param[i] = t.param[i] - lr * (g / avg);
      }
    }
  });
}

#define FASTCONV_INSTANTIATE(T)                                                             \
  template void sgd_step<T>(const std::vector<OptimTensor<T>>&, const SgdOptions&);         \
  template void adam_step<T>(const std::vector<OptimTensor<T>>&, const AdamOptions&);       \
  template void adagrad_step<T>(const std::vector<OptimTensor<T>>&, const AdagradOptions&); \
  template void rmsprop_step<T>(const std::vector<OptimTensor<T>>&, const RmspropOptions&);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
