#include "kernel_table.h"

#include <algorithm>
#include <array>

#include "common/peak_probe.h"

namespace fastconv {
namespace {

CpuKernels portable_kernels() {
  CpuKernels k{};
  k.isa = Isa::kBaseline;
  k.f32 = {gemm_f32_6x8_portable(),          igemm_f32_6x8_portable(),
           pixel_igemm_f32_6x8_portable(),   gather_gemm_f32_6x8_portable(),
           vector_ops_portable<float>(),     pool_row_kernels_portable<float>(),
           depthwise_blocked_f32_portable(), small_n_f32_portable()};
  k.f64 = {gemm_f64_6x4_portable(),          igemm_f64_6x4_portable(),
           pixel_igemm_f64_6x4_portable(),   gather_gemm_f64_6x4_portable(),
           vector_ops_portable<double>(),    pool_row_kernels_portable<double>(),
           depthwise_blocked_f64_portable(), small_n_f64_portable()};
  k.winograd_f32 = conv2d_winograd_forward_f32_portable;
  k.fma_peak = fma_peak_gflops_portable;
  return k;
}

void override_avx2(CpuKernels& k) {
  k.isa = Isa::kAvx2Fma;
  k.f32.gemm = gemm_f32_6x16_avx2_fma();
  k.f32.igemm = igemm_f32_6x16_avx2_fma();
  k.f32.pixel_igemm = pixel_igemm_f32_6x16_avx2_fma();
  k.f32.gather_gemm = gather_gemm_f32_6x16_avx2_fma();
  k.f32.vector = vector_ops_f32_avx2();
  k.f32.pool_rows = pool_row_kernels_f32_avx2();
  k.f32.depthwise_blocked = depthwise_blocked_f32_avx2();
  k.f64.depthwise_blocked = depthwise_blocked_f64_avx2();
  k.f64.gemm = gemm_f64_6x8_avx2_fma();
  k.f64.igemm = igemm_f64_6x8_avx2_fma();
  k.f64.pixel_igemm = pixel_igemm_f64_6x8_avx2_fma();
  k.f64.gather_gemm = gather_gemm_f64_6x8_avx2_fma();
  k.f64.vector = vector_ops_f64_avx2();
  k.f32.small_n = small_n_f32_avx2_fma();
  k.f64.small_n = small_n_f64_avx2_fma();
  k.winograd_f32 = conv2d_winograd_forward_f32_avx2;
  k.fma_peak = fma_peak_gflops_avx2;
}

// Slots not named here (f64 vector ops, pooling rows) keep their AVX2 kernels.
void override_avx512(CpuKernels& k) {
  k.isa = Isa::kAvx512;
  k.f32.gemm = gemm_f32_12x32_avx512();
  k.f32.igemm = igemm_f32_12x32_avx512();
  k.f32.pixel_igemm = pixel_igemm_f32_12x32_avx512();
  k.f32.gather_gemm = gather_gemm_f32_8x32_avx512();
  k.f32.vector = vector_ops_f32_avx512(k.f32.vector);
  k.f64.gemm = gemm_f64_12x16_avx512();
  k.f64.igemm = igemm_f64_12x16_avx512();
  k.f64.pixel_igemm = pixel_igemm_f64_12x16_avx512();
  k.f64.gather_gemm = gather_gemm_f64_8x16_avx512();
  k.f32.depthwise_blocked = depthwise_blocked_f32_avx512();
  k.f64.depthwise_blocked = depthwise_blocked_f64_avx512();
  k.f32.small_n = small_n_f32_avx512();
  k.f64.small_n = small_n_f64_avx512();
  k.winograd_f32 = conv2d_winograd_forward_f32_avx512;
  k.fma_peak = fma_peak_gflops_avx512;
}

std::array<CpuKernels, 3> build_tables() {
  std::array<CpuKernels, 3> tables{portable_kernels(), portable_kernels(), portable_kernels()};
  override_avx2(tables[1]);
  tables[2] = tables[1];
  override_avx512(tables[2]);
  return tables;
}

}  // namespace

const CpuKernels& kernels_for(Isa isa) {
  static const std::array<CpuKernels, 3> tables = build_tables();
  return tables[static_cast<size_t>(isa)];
}

const CpuKernels& cpu_kernels() { return kernels_for(active_isa()); }

// The per-family accessors the kernels call: each reads the active tier's table.
template <typename T>
GemmKernelInfo<T> gemm_kernel() {
  return kernel_table<T>().gemm;
}
template <typename T>
IgemmKernelInfo<T> igemm_kernel() {
  return kernel_table<T>().igemm;
}
template <typename T>
PixelIgemmKernelInfo<T> pixel_igemm_kernel() {
  return kernel_table<T>().pixel_igemm;
}
template <typename T>
GatherGemmKernelInfo<T> gather_gemm_kernel() {
  return kernel_table<T>().gather_gemm;
}
template <typename T>
SmallNKernelInfo<T> small_n_kernel() {
  return kernel_table<T>().small_n;
}
template <typename T>
const VectorOps<T>& vector_ops() {
  return kernel_table<T>().vector;
}
template <typename T>
int gemm_kernel_count() {
  return 1 + static_cast<int>(active_isa());
}
template <typename T>
GemmKernelInfo<T> gemm_kernel_at(int index) {
  const int tier = std::clamp(index, 0, static_cast<int>(active_isa()));
  return kernels_for(static_cast<Isa>(tier)).table<T>().gemm;
}

double fma_peak_gflops(int threads, int64_t iterations) {
  return cpu_kernels().fma_peak(threads, iterations);
}

#define FASTCONV_INSTANTIATE_TABLE(T)                       \
  template GemmKernelInfo<T> gemm_kernel<T>();              \
  template IgemmKernelInfo<T> igemm_kernel<T>();            \
  template PixelIgemmKernelInfo<T> pixel_igemm_kernel<T>(); \
  template GatherGemmKernelInfo<T> gather_gemm_kernel<T>(); \
  template SmallNKernelInfo<T> small_n_kernel<T>();         \
  template const VectorOps<T>& vector_ops<T>();             \
  template int gemm_kernel_count<T>();                      \
  template GemmKernelInfo<T> gemm_kernel_at<T>(int);
FASTCONV_INSTANTIATE_TABLE(float)
FASTCONV_INSTANTIATE_TABLE(double)
#undef FASTCONV_INSTANTIATE_TABLE

}  // namespace fastconv
