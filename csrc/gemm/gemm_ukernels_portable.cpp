// Portable micro-kernels: plain C++ the compiler vectorises for the baseline
// target. They fill every dispatch slot before ISA-specific kernels override.
#include "gemm/gemm.h"

namespace fastconv {
namespace {

template <typename T, int MR, int NR, int ROWS>
void portable_kernel(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta) {
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[p * MR + i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[p * NR + j];
    }
  }
  for (int i = 0; i < ROWS; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < NR; ++j) row[j] = alpha * acc[i][j];
    } else {
      for (int j = 0; j < NR; ++j) row[j] = alpha * acc[i][j] + beta * row[j];
    }
  }
}

template <typename T, int MR, int NR, int ROWS>
void portable_indirect_kernel(int64_t kc, const T* a, const T* const* rows, int64_t offset, T* c,
                              int64_t ldc, T beta) {
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const T* b = rows[p] + offset;
    for (int i = 0; i < MR; ++i) {
      const T ai = a[p * MR + i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < ROWS; ++i) {
    T* row = c + i * ldc;
    for (int j = 0; j < NR; ++j) row[j] = beta == T(0) ? acc[i][j] : acc[i][j] + beta * row[j];
  }
}

template <typename T, int MR, int NR, int ROWS>
void portable_pixel_kernel(int64_t kc, const T* const* rows, int64_t offset, const T* b, T* c,
                           int64_t ldc, T beta) {
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p, b += NR)
    for (int i = 0; i < ROWS; ++i) {
      const T ai = rows[p][offset + i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
  for (int i = 0; i < ROWS; ++i)
    for (int j = 0; j < NR; ++j)
      c[i * ldc + j] = beta == T(0) ? acc[i][j] : acc[i][j] + beta * c[i * ldc + j];
}

template <typename T, int MR, int NR, int ROWS>
void portable_gather_kernel(int64_t segments, int64_t width, const T* const* rows, const T* b, T* c,
                            int64_t ldc, T beta) {
  T acc[MR][NR] = {};
  for (int64_t s = 0; s < segments; ++s)
    for (int64_t w = 0; w < width; ++w, b += NR)
      for (int i = 0; i < ROWS; ++i) {
        const T ai = rows[s * MR + i][w];
        for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
      }
  for (int i = 0; i < ROWS; ++i) {
    T* row = c + i * ldc;
    for (int j = 0; j < NR; ++j) row[j] = beta == T(0) ? acc[i][j] : acc[i][j] + beta * row[j];
  }
}

}  // namespace

PixelIgemmKernelInfo<float> pixel_igemm_f32_6x16_portable() {
  return {{portable_pixel_kernel<float, 6, 16, 1>, portable_pixel_kernel<float, 6, 16, 2>,
           portable_pixel_kernel<float, 6, 16, 3>, portable_pixel_kernel<float, 6, 16, 4>,
           portable_pixel_kernel<float, 6, 16, 5>, portable_pixel_kernel<float, 6, 16, 6>},
          6,
          16,
          "f32-pixel-igemm-6x16-portable"};
}

PixelIgemmKernelInfo<double> pixel_igemm_f64_4x8_portable() {
  return {{portable_pixel_kernel<double, 4, 8, 1>, portable_pixel_kernel<double, 4, 8, 2>,
           portable_pixel_kernel<double, 4, 8, 3>, portable_pixel_kernel<double, 4, 8, 4>},
          4,
          8,
          "f64-pixel-igemm-4x8-portable"};
}

GatherGemmKernelInfo<float> gather_gemm_f32_6x16_portable() {
  return {{portable_gather_kernel<float, 6, 16, 1>, portable_gather_kernel<float, 6, 16, 2>,
           portable_gather_kernel<float, 6, 16, 3>, portable_gather_kernel<float, 6, 16, 4>,
           portable_gather_kernel<float, 6, 16, 5>, portable_gather_kernel<float, 6, 16, 6>},
          6,
          16,
          "f32-gather-gemm-6x16-portable"};
}

GatherGemmKernelInfo<double> gather_gemm_f64_4x8_portable() {
  return {{portable_gather_kernel<double, 4, 8, 1>, portable_gather_kernel<double, 4, 8, 2>,
           portable_gather_kernel<double, 4, 8, 3>, portable_gather_kernel<double, 4, 8, 4>},
          4,
          8,
          "f64-gather-gemm-4x8-portable"};
}

IgemmKernelInfo<float> igemm_f32_6x16_portable() {
  return {{portable_indirect_kernel<float, 6, 16, 1>, portable_indirect_kernel<float, 6, 16, 2>,
           portable_indirect_kernel<float, 6, 16, 3>, portable_indirect_kernel<float, 6, 16, 4>,
           portable_indirect_kernel<float, 6, 16, 5>, portable_indirect_kernel<float, 6, 16, 6>},
          6,
          16,
          "f32-igemm-6x16-portable"};
}

IgemmKernelInfo<double> igemm_f64_4x8_portable() {
  return {{portable_indirect_kernel<double, 4, 8, 1>, portable_indirect_kernel<double, 4, 8, 2>,
           portable_indirect_kernel<double, 4, 8, 3>, portable_indirect_kernel<double, 4, 8, 4>},
          4,
          8,
          "f64-igemm-4x8-portable"};
}

GemmKernelInfo<float> gemm_f32_6x16_portable() {
  return {{portable_kernel<float, 6, 16, 1>, portable_kernel<float, 6, 16, 2>,
           portable_kernel<float, 6, 16, 3>, portable_kernel<float, 6, 16, 4>,
           portable_kernel<float, 6, 16, 5>, portable_kernel<float, 6, 16, 6>},
          6,
          16,
          "f32-gemm-6x16-portable",
          {256, 144, 3072, 8}};
}

GemmKernelInfo<double> gemm_f64_4x8_portable() {
  return {{portable_kernel<double, 4, 8, 1>, portable_kernel<double, 4, 8, 2>,
           portable_kernel<double, 4, 8, 3>, portable_kernel<double, 4, 8, 4>},
          4,
          8,
          "f64-gemm-4x8-portable",
          {256, 72, 1536, 4}};
}

}  // namespace fastconv
