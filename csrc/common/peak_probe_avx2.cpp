#include <immintrin.h>
#include <omp.h>

#include <chrono>

#include "common/peak_probe.h"

// clang-format off
#include "common/isa_avx2_begin.h"  // after every other include: AVX2 code from here on
// clang-format on

namespace fastconv {

double fma_peak_gflops_avx2(int threads, int64_t iterations) {
  const auto start = std::chrono::steady_clock::now();
  double sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    // 12 independent chains: 2 FMA pipes x 4-5 cycles latency, with margin.
    __m256 c[12];
    for (auto& v : c) v = _mm256_set1_ps(0.0f);
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
    for (int64_t i = 0; i < iterations; ++i) {
      c[0] = _mm256_fmadd_ps(c[0], a, b);
      c[1] = _mm256_fmadd_ps(c[1], a, b);
      c[2] = _mm256_fmadd_ps(c[2], a, b);
      c[3] = _mm256_fmadd_ps(c[3], a, b);
      c[4] = _mm256_fmadd_ps(c[4], a, b);
      c[5] = _mm256_fmadd_ps(c[5], a, b);
      c[6] = _mm256_fmadd_ps(c[6], a, b);
      c[7] = _mm256_fmadd_ps(c[7], a, b);
      c[8] = _mm256_fmadd_ps(c[8], a, b);
      c[9] = _mm256_fmadd_ps(c[9], a, b);
      c[10] = _mm256_fmadd_ps(c[10], a, b);
      c[11] = _mm256_fmadd_ps(c[11], a, b);
    }
    __m256 total = c[0];
    for (int i = 1; i < 12; ++i) total = _mm256_add_ps(total, c[i]);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, total);
    for (float v : lanes) sink += v;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile double keep = sink;
  (void)keep;
  return 2.0 * 8 * 12 * static_cast<double>(iterations) * threads / seconds / 1e9;
}

}  // namespace fastconv

#include "common/isa_avx2_end.h"
