// Machine probes for the benchmark reports: the FMA throughput the CPU
// sustains (an upper bound for any kernel) and the memory copy bandwidth.
#pragma once

#include <cstdint>

namespace fastconv {

// GFLOP/s of float32 FMAs on `threads` threads, each running `iterations` of
// independent FMA chains (enough of them to cover FMA latency).
// The active tier's probe (from the kernel table), then one per tier.
double fma_peak_gflops(int threads, int64_t iterations);
double fma_peak_gflops_portable(int threads, int64_t iterations);
double fma_peak_gflops_avx2(int threads, int64_t iterations);
double fma_peak_gflops_avx512(int threads, int64_t iterations);

}  // namespace fastconv
