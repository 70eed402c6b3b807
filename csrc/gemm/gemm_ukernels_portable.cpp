// Portable micro-kernels: plain C++ the compiler vectorises for the baseline
// target. They fill every dispatch slot before ISA-specific kernels override.
#include "gemm/gemm.h"

namespace fastconv {
namespace {

// C[0:rows] = alpha * acc + beta * C (beta == 0: C not read).
template <typename T, int MR, int NR>
void store_tile(const T (&acc)[MR][NR], int rows, T* c, int64_t ldc, T alpha, T beta) {
  for (int i = 0; i < rows; ++i) {
    T* row = c + i * ldc;
    for (int j = 0; j < NR; ++j)
      row[j] = beta == T(0) ? alpha * acc[i][j] : alpha * acc[i][j] + beta * row[j];
  }
}

template <typename T, int MR, int NR, int ROWS>
void portable_kernel(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta) {
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[p * MR + i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[p * NR + j];
    }
  }
  store_tile(acc, ROWS, c, ldc, alpha, beta);
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
  store_tile(acc, ROWS, c, ldc, T(1), beta);
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
  store_tile(acc, ROWS, c, ldc, T(1), beta);
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
  store_tile(acc, ROWS, c, ldc, T(1), beta);
}

}  // namespace

// Every row count of a 6 x 16 float tile and a 4 x 8 double tile.
#define FASTCONV_F32_ROWS(K)                                   \
  {K<float, 6, 16, 1>, K<float, 6, 16, 2>, K<float, 6, 16, 3>, \
   K<float, 6, 16, 4>, K<float, 6, 16, 5>, K<float, 6, 16, 6>}
#define FASTCONV_F64_ROWS(K) \
  {K<double, 4, 8, 1>, K<double, 4, 8, 2>, K<double, 4, 8, 3>, K<double, 4, 8, 4>}

GemmKernelInfo<float> gemm_f32_6x16_portable() {
  return {FASTCONV_F32_ROWS(portable_kernel), 6, 16, "f32-gemm-6x16-portable", {256, 144, 3072, 8}};
}

GemmKernelInfo<double> gemm_f64_4x8_portable() {
  return {FASTCONV_F64_ROWS(portable_kernel), 4, 8, "f64-gemm-4x8-portable", {256, 72, 1536, 4}};
}

IgemmKernelInfo<float> igemm_f32_6x16_portable() {
  return {FASTCONV_F32_ROWS(portable_indirect_kernel), 6, 16, "f32-igemm-6x16-portable"};
}

IgemmKernelInfo<double> igemm_f64_4x8_portable() {
  return {FASTCONV_F64_ROWS(portable_indirect_kernel), 4, 8, "f64-igemm-4x8-portable"};
}

PixelIgemmKernelInfo<float> pixel_igemm_f32_6x16_portable() {
  return {FASTCONV_F32_ROWS(portable_pixel_kernel), 6, 16, "f32-pixel-igemm-6x16-portable"};
}

PixelIgemmKernelInfo<double> pixel_igemm_f64_4x8_portable() {
  return {FASTCONV_F64_ROWS(portable_pixel_kernel), 4, 8, "f64-pixel-igemm-4x8-portable"};
}

GatherGemmKernelInfo<float> gather_gemm_f32_6x16_portable() {
  return {FASTCONV_F32_ROWS(portable_gather_kernel), 6, 16, "f32-gather-gemm-6x16-portable"};
}

GatherGemmKernelInfo<double> gather_gemm_f64_4x8_portable() {
  return {FASTCONV_F64_ROWS(portable_gather_kernel), 4, 8, "f64-gather-gemm-4x8-portable"};
}

#undef FASTCONV_F32_ROWS
#undef FASTCONV_F64_ROWS

}  // namespace fastconv
