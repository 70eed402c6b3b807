#include "common/peak_probe.h"

#include <omp.h>

#include <chrono>

namespace fastconv {

// Portable: 4-wide chains the compiler can keep in SSE registers.
double fma_peak_gflops_portable(int threads, int64_t iterations) {
  const auto start = std::chrono::steady_clock::now();
  double sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    float acc[16] = {};
    const float a = 0.999f, b = 1e-3f;
    for (int64_t i = 0; i < iterations; ++i)
      for (float& v : acc) v = v * a + b;
    for (float v : acc) sink += v;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile double keep = sink;
  (void)keep;
  return 2.0 * 16 * static_cast<double>(iterations) * threads / seconds / 1e9;
}

}  // namespace fastconv
