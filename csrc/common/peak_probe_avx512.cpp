#include <immintrin.h>
#include <omp.h>

#include <chrono>

#include "common/peak_probe.h"

// clang-format off
#include "common/isa_avx512_begin.h"  // after every other include: AVX-512 code from here on
// clang-format on

namespace fastconv {

double fma_peak_gflops_avx512(int threads, int64_t iterations) {
  const auto start = std::chrono::steady_clock::now();
  double sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    // 16 independent chains: 2 FMA pipes x 4 cycles latency, with margin.
    __m512 c[16];
    for (auto& v : c) v = _mm512_set1_ps(0.0f);
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) c[j] = _mm512_fmadd_ps(c[j], a, b);
    }
    __m512 total = c[0];
    for (int i = 1; i < 16; ++i) total = _mm512_add_ps(total, c[i]);
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, total);
    for (float v : lanes) sink += v;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile double keep = sink;
  (void)keep;
  return 2.0 * 16 * 16 * static_cast<double>(iterations) * threads / seconds / 1e9;
}

}  // namespace fastconv

#include "common/isa_avx512_end.h"
