// Portable micro-kernels: they fill every dispatch slot before ISA-specific
// kernels override. Written with GNU vector extensions (GCC and Clang lower
// them to the target's 16-byte SIMD -- SSE2 on x86-64 -- without intrinsics):
// an auto-vectorised scalar tile spilled its accumulators and ran at a sixth
// of this speed. The tiles (6 x 8 float, 6 x 4 double) keep 12 accumulators
// plus the B vectors within SSE2's 16 registers.
#include <cstring>

#include "gemm/gemm.h"
#include "gemm/gemm_small_n_impl.h"

namespace fastconv {
namespace {

// (Spelled per type: GCC drops vector_size on a dependent alias template.)
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(16)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = 16 / sizeof(T);
static_assert(sizeof(Vec<float>) == 16 && sizeof(Vec<double>) == 16);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

// ROWS x (NV vectors) accumulators; step() adds a(i) * b for one k.
template <typename T, int ROWS, int NV>
struct Tile {
  Vec<T> acc[ROWS][NV] = {};
  template <typename AValue>
  void step(AValue&& a_of_row, const T* b) {
    Vec<T> bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = load(b + j * kLanes<T>);
    for (int i = 0; i < ROWS; ++i) {
      const Vec<T> ai = Vec<T>{} + a_of_row(i);
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
    }
  }
  // C[0:ROWS] = alpha * acc + beta * C (beta == 0: C not read).
  void store_to(T* c, int64_t ldc, T alpha, T beta) const {
    for (int i = 0; i < ROWS; ++i)
      for (int j = 0; j < NV; ++j) {
        T* out = c + i * ldc + j * kLanes<T>;
        const Vec<T> scaled = alpha * acc[i][j];
        store(out, beta == T(0) ? scaled : scaled + beta * load(out));
      }
  }
};

template <typename T, int MR, int NV, int ROWS>
void portable_kernel(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta) {
  Tile<T, ROWS, NV> tile;
  for (int64_t p = 0; p < kc; ++p, a += MR, b += NV * kLanes<T>)
    tile.step([a](int i) { return a[i]; }, b);
  tile.store_to(c, ldc, alpha, beta);
}

template <typename T, int MR, int NV, int ROWS>
void portable_indirect_kernel(int64_t kc, const T* a, const T* const* rows, int64_t offset, T* c,
                              int64_t ldc, T beta) {
  Tile<T, ROWS, NV> tile;
  for (int64_t p = 0; p < kc; ++p, a += MR)
    tile.step([a](int i) { return a[i]; }, rows[p] + offset);
  tile.store_to(c, ldc, T(1), beta);
}

template <typename T, int MR, int NV, int ROWS>
void portable_pixel_kernel(int64_t kc, const T* const* rows, int64_t offset, const T* b, T* c,
                           int64_t ldc, T beta) {
  Tile<T, ROWS, NV> tile;
  for (int64_t p = 0; p < kc; ++p, b += NV * kLanes<T>) {
    const T* pixels = rows[p] + offset;
    tile.step([pixels](int i) { return pixels[i]; }, b);
  }
  tile.store_to(c, ldc, T(1), beta);
}

template <typename T, int MR, int NV, int ROWS>
void portable_gather_kernel(int64_t segments, int64_t width, const T* const* rows, const T* b, T* c,
                            int64_t ldc, T beta) {
  Tile<T, ROWS, NV> tile;
  for (int64_t s = 0; s < segments; ++s)
    for (int64_t w = 0; w < width; ++w, b += NV * kLanes<T>) {
      const T* const* a = rows + s * MR;
      tile.step([a, w](int i) { return a[i][w]; }, b);
    }
  tile.store_to(c, ldc, T(1), beta);
}

}  // namespace

// Every row count of a 6 x 8 float tile (two 4-lane vectors per row) and a
// 6 x 4 double tile (two 2-lane vectors per row).
#define FASTCONV_F32_ROWS(K)                                \
  {K<float, 6, 2, 1>, K<float, 6, 2, 2>, K<float, 6, 2, 3>, \
   K<float, 6, 2, 4>, K<float, 6, 2, 5>, K<float, 6, 2, 6>}
#define FASTCONV_F64_ROWS(K)                                   \
  {K<double, 6, 2, 1>, K<double, 6, 2, 2>, K<double, 6, 2, 3>, \
   K<double, 6, 2, 4>, K<double, 6, 2, 5>, K<double, 6, 2, 6>}

GemmKernelInfo<float> gemm_f32_6x8_portable() {
  return {FASTCONV_F32_ROWS(portable_kernel),
          6,
          8,
          "f32-gemm-6x8-portable",
          {256, 144, 3072, 8, false}};
}

GemmKernelInfo<double> gemm_f64_6x4_portable() {
  return {
      FASTCONV_F64_ROWS(portable_kernel), 6, 4, "f64-gemm-6x4-portable", {256, 72, 1536, 4, false}};
}

IgemmKernelInfo<float> igemm_f32_6x8_portable() {
  return {FASTCONV_F32_ROWS(portable_indirect_kernel), 6, 8, "f32-igemm-6x8-portable"};
}

IgemmKernelInfo<double> igemm_f64_6x4_portable() {
  return {FASTCONV_F64_ROWS(portable_indirect_kernel), 6, 4, "f64-igemm-6x4-portable"};
}

PixelIgemmKernelInfo<float> pixel_igemm_f32_6x8_portable() {
  return {FASTCONV_F32_ROWS(portable_pixel_kernel), 6, 8, "f32-pixel-igemm-6x8-portable"};
}

PixelIgemmKernelInfo<double> pixel_igemm_f64_6x4_portable() {
  return {FASTCONV_F64_ROWS(portable_pixel_kernel), 6, 4, "f64-pixel-igemm-6x4-portable"};
}

GatherGemmKernelInfo<float> gather_gemm_f32_6x8_portable() {
  return {FASTCONV_F32_ROWS(portable_gather_kernel), 6, 8, "f32-gather-gemm-6x8-portable"};
}

GatherGemmKernelInfo<double> gather_gemm_f64_6x4_portable() {
  return {FASTCONV_F64_ROWS(portable_gather_kernel), 6, 4, "f64-gather-gemm-6x4-portable"};
}

#undef FASTCONV_F32_ROWS
#undef FASTCONV_F64_ROWS

// The small-N kernel over the same 16-byte vectors.
template <typename Scalar>
struct PortableOps {
  using T = Scalar;
  using V = Vec<Scalar>;
  static constexpr int kLanes = fastconv::kLanes<Scalar>;
  static V zero() { return V{}; }
  static V load(const T* p) { return fastconv::load(p); }
  static void store(T* p, V v) { fastconv::store(p, v); }
  static V fma(V a, V b, V c) { return a * b + c; }
};

SmallNKernelInfo<float> small_n_f32_portable() {
  return small_n_info<PortableOps<float>>("f32-small-n-portable");
}
SmallNKernelInfo<double> small_n_f64_portable() {
  return small_n_info<PortableOps<double>>("f64-small-n-portable");
}

}  // namespace fastconv
