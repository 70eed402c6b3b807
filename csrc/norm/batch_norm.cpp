#include "norm/batch_norm.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/parallel.h"

namespace fastconv {
namespace {

// Below ~64K elements per thread, waking one costs more than it saves.
int threads_for_shape(const BatchNormShape& shape) {
  return threads_for(shape.n * shape.c * shape.s, int64_t(1) << 16);
}

// Sums in kLanes interleaved double accumulators (fixed order, and short
// dependency chains the compiler can vectorise), then pairwise.
constexpr int kLanes = 8;
template <typename Fn>
double lane_sum(int64_t n, Fn&& term) {
  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(j + l);
  for (; j < n; ++j) acc[j % kLanes] += term(j);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Each thread owns a contiguous block of channels and walks them image by
// image, in memory order (a channel at a time would jump C * S elements per
// image, and its short runs would leave every cache miss exposed). A channel's
// sums thus run over images in order, whatever the thread count.
// fn(c0, c1, a, b) gets two per-channel double arrays, indexed by ch - c0,
// allocated here before the parallel region (an allocation failure must not
// escape it).
template <typename Fn>
void for_channel_blocks(const BatchNormShape& shape, Fn&& fn) {
  const int threads = threads_for_shape(shape);
  std::vector<double> scratch(static_cast<size_t>(2 * shape.c), 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t c0 = shape.c * t / nt, c1 = shape.c * (t + 1) / nt;
    if (c0 < c1) fn(c0, c1, scratch.data() + c0, scratch.data() + shape.c + c0);
  }
}

}  // namespace

template <typename T>
void batch_norm_stats(const T* x, const BatchNormShape& shape, T* mean, T* var) {
  const double count = static_cast<double>(shape.n * shape.s);
  for_channel_blocks(shape, [&](int64_t c0, int64_t c1, double* sums, double* squares) {
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const T* row = x + (i * shape.c + ch) * shape.s;
        sums[ch - c0] +=
            lane_sum(shape.s, [row](int64_t j) { return static_cast<double>(row[j]); });
      }
    for (int64_t ch = c0; ch < c1; ++ch)  // now the means
      sums[ch - c0] = count > 0 ? sums[ch - c0] / count : 0.0;
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const T* row = x + (i * shape.c + ch) * shape.s;
        const double mu = sums[ch - c0];
        squares[ch - c0] += lane_sum(shape.s, [row, mu](int64_t j) {
          const double d = static_cast<double>(row[j]) - mu;
          return d * d;
        });
      }
    for (int64_t ch = c0; ch < c1; ++ch) {
      mean[ch] = static_cast<T>(sums[ch - c0]);
      var[ch] = static_cast<T>(count > 0 ? squares[ch - c0] / count : 0.0);
    }
  });
}

namespace {

// One row of batch_norm_apply; Clamp is a BatchNormClamp, as a type so that
// each variant's loop compiles (and vectorises) on its own.
template <BatchNormClamp Clamp, typename T>
inline T clamped(T v) {
  if constexpr (Clamp == BatchNormClamp::kNone)
    return v;
  else if constexpr (Clamp == BatchNormClamp::kRelu)
    return v < T(0) ? T(0) : v;
  else
    return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
}

template <BatchNormClamp Clamp, typename T>
void apply_rows(const T* x, const BatchNormShape& shape, const T* mean, const T* invstd,
                const T* weight, const T* bias, T* xhat, T* out) {
  for_channel_blocks(shape, [&](int64_t c0, int64_t c1, double*, double*) {
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const T mu = mean[ch], is = invstd[ch];
        const T w = weight != nullptr ? weight[ch] : T(1), b = bias != nullptr ? bias[ch] : T(0);
        const int64_t base = (i * shape.c + ch) * shape.s;
        const T* __restrict in = x + base;
        T* __restrict o = out + base;
        if (xhat == nullptr) {
          for (int64_t j = 0; j < shape.s; ++j) o[j] = clamped<Clamp>((in[j] - mu) * is * w + b);
          continue;
        }
        T* __restrict h = xhat + base;
        for (int64_t j = 0; j < shape.s; ++j) {
          const T v = (in[j] - mu) * is;
          h[j] = v;
          o[j] = clamped<Clamp>(v * w + b);
        }
      }
  });
}

}  // namespace

template <typename T>
void batch_norm_apply(const T* x, const BatchNormShape& shape, const T* mean, const T* invstd,
                      const T* weight, const T* bias, T* xhat, T* out, BatchNormClamp clamp) {
  switch (clamp) {
    case BatchNormClamp::kNone:
      return apply_rows<BatchNormClamp::kNone>(x, shape, mean, invstd, weight, bias, xhat, out);
    case BatchNormClamp::kRelu:
      return apply_rows<BatchNormClamp::kRelu>(x, shape, mean, invstd, weight, bias, xhat, out);
    case BatchNormClamp::kRelu6:
      return apply_rows<BatchNormClamp::kRelu6>(x, shape, mean, invstd, weight, bias, xhat, out);
  }
}

template <typename T>
void batch_norm_backward(const T* g, const T* xhat, const BatchNormShape& shape, const T* scale,
                         bool batch_statistics, T* sum_g, T* sum_gx, T* grad_input) {
  const double count = static_cast<double>(shape.n * shape.s);
  for_channel_blocks(shape, [&](int64_t c0, int64_t c1, double* sg, double* sgx) {
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const T* gr = g + (i * shape.c + ch) * shape.s;
        const T* hr = xhat + (i * shape.c + ch) * shape.s;
        sg[ch - c0] += lane_sum(shape.s, [gr](int64_t j) { return static_cast<double>(gr[j]); });
        sgx[ch - c0] += lane_sum(shape.s, [gr, hr](int64_t j) {
          return static_cast<double>(gr[j]) * static_cast<double>(hr[j]);
        });
      }
    for (int64_t ch = c0; ch < c1; ++ch) {
      sum_g[ch] = static_cast<T>(sg[ch - c0]);
      sum_gx[ch] = static_cast<T>(sgx[ch - c0]);
    }
    if (grad_input == nullptr) return;
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const T k = scale[ch];
        const T mean_g = batch_statistics ? static_cast<T>(sg[ch - c0] / count) : T(0);
        const T mean_gx = batch_statistics ? static_cast<T>(sgx[ch - c0] / count) : T(0);
        const int64_t base = (i * shape.c + ch) * shape.s;
        const T* __restrict gr = g + base;
        const T* __restrict hr = xhat + base;
        T* __restrict o = grad_input + base;
        for (int64_t j = 0; j < shape.s; ++j) o[j] = (gr[j] - mean_g - hr[j] * mean_gx) * k;
      }
  });
}

#define FASTCONV_INSTANTIATE(T)                                                                    \
  template void batch_norm_stats<T>(const T*, const BatchNormShape&, T*, T*);                      \
  template void batch_norm_apply<T>(const T*, const BatchNormShape&, const T*, const T*, const T*, \
                                    const T*, T*, T*, BatchNormClamp);                             \
  template void batch_norm_backward<T>(const T*, const T*, const BatchNormShape&, const T*, bool,  \
                                       T*, T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
