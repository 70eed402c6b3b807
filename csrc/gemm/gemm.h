// General matrix multiply C = alpha * A @ B + beta * C on strided operands.
//
// BLIS-style: five loops around an MR x NR register-blocked micro-kernel with A
// and B packed into aligned per-thread panels. Any strides are accepted (a
// transpose is a swap of strides), so callers never copy operands into a
// contiguous matrix first. The B operand may also be produced by a packing
// callback, which lets convolution run as an implicit GEMM without an im2col
// buffer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

namespace fastconv {

template <typename T>
struct MatrixView {
  const T* data = nullptr;
  int64_t row_stride = 0;  // in elements
  int64_t col_stride = 1;
  const T& at(int64_t i, int64_t j) const { return data[i * row_stride + j * col_stride]; }
};

template <typename T>
struct MutableMatrixView {
  T* data = nullptr;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
};

// Fills a packed B panel: rows [k0, k0 + kc) and columns [j0, j0 + nc) of B,
// laid out as ceil(nc / nr) slivers of kc x nr values, sliver-major, each row of
// a sliver contiguous, columns past the end of B zero.
template <typename T>
using PackB =
    std::function<void(int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t nr, T* dst)>;

template <typename T>
struct GemmProblem {
  int64_t m = 0, n = 0, k = 0;
  T alpha = T(1), beta = T(0);  // beta == 0: C is not read
  MatrixView<T> a;              // m x k
  MatrixView<T> b;              // k x n; ignored when pack_b is set
  PackB<T> pack_b;              // optional producer of packed B panels
  const T* packed_a = nullptr;  // optional: A already packed by gemm_pack_a (then `a` is unused)
  const T* packed_b = nullptr;  // optional: B already in gemm_packed_b_layout (then `b` is unused)
  MutableMatrixView<T> c;       // m x n
};

// Runs on up to `threads` OpenMP threads (1: on the calling thread only, for
// callers that are already parallel). Deterministic: each C element is reduced
// over k in the same order whatever the thread count.
template <typename T>
void gemm(const GemmProblem<T>& problem, int threads);

// Small-N GEMM: C = alpha * A @ B + beta * C for n up to kSmallNDotColumns
// columns, A read in place (its rows unit-stride along k, any row stride), B
// packed here (as B^T: tiny), threads splitting the rows of A. gemm() takes
// this path itself where it applies (C^T = B^T A^T when m is the narrow side).
constexpr int kSmallNDotColumns = 4, kSmallNDotRows = 4;
// out (rows x NC) = the first `rows` rows of a (kSmallNDotRows at most) times the
// NC columns of B, given as bt (NC rows of k).
template <typename T>
using SmallNDotKernel = void (*)(int64_t k, const T* a, int64_t lda, int rows, const T* bt, T* out);
template <typename T>
struct SmallNKernelInfo {
  SmallNDotKernel<T> dot_kernels[kSmallNDotColumns];  // for 1 .. kSmallNDotColumns columns
  const char* name;
};
template <typename T>
SmallNKernelInfo<T> small_n_kernel();  // the active ISA tier's (kernel_table.h)
template <typename T>
void gemm_small_n(const GemmProblem<T>& problem, int threads);

// Pre-packing A for the default kernel, for callers that multiply the same A
// many times (convolution weights over a batch): gemm_pack_a writes
// gemm_packed_a_size(m, k) elements.
template <typename T>
int64_t gemm_packed_a_size(int64_t m, int64_t k);
template <typename T>
void gemm_pack_a(const MatrixView<T>& a, int64_t m, int64_t k, T* dst);
// Whether an m x n C with plain operands runs as C^T = B^T A^T (n a poor multiple
// of the kernel's columns): pre-packing A gives that up, so callers that could
// pre-pack ask first.
template <typename T>
bool gemm_runs_narrow_c_transposed(int64_t m, int64_t n);

// Pre-packed B for callers that produce B themselves (Winograd's transformed
// filters): element (p, j) of the k x n matrix lives at index(p, j); columns
// n .. n_padded - 1 must be zero. The layout is the default kernel's packing
// of the whole matrix: per K block, nr-column slivers, each kc x nr, k-major.
struct PackedBLayout {
  int64_t k, n_padded, kc, nr;
  int64_t size() const { return k * n_padded; }
  int64_t index(int64_t p, int64_t j) const {
    const int64_t p0 = p / kc * kc, depth = std::min(kc, k - p0);
    return p0 * n_padded + (j / nr) * nr * depth + (p - p0) * nr + j % nr;
  }
};
template <typename T>
PackedBLayout gemm_packed_b_layout(int64_t k, int64_t n);

// Micro-kernel: C[0:mr, 0:nr] = alpha * (A_panel @ B_panel) + beta * C, for a
// kc-deep packed A sliver (kc x mr, k-major) and B sliver (kc x nr, k-major).
// C has unit column stride and row stride ldc; beta == 0 means C is not read.
template <typename T>
using GemmMicroKernel = void (*)(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha,
                                 T beta);

// kernels[r - 1] writes only the first r rows of C (r = mr is the full tile);
// the partial ones serve the bottom edge of C.
constexpr int kMaxMR = 12;

// Cache blocking that goes with a micro-kernel (BLIS keeps block sizes in the
// kernel's context too), in one of two loop orders. B-sliver order: a kc x nr
// sliver of B stays in L1 while mr x kc slivers of A stream from an mc x kc
// block in L2; the kc x nc panel of B lives in L3. A-sliver order: an mr x kc
// sliver of A stays in L1 while the kc x nc panel of B streams from L2, sliver
// by sliver (for kernels whose B sliver would crowd L1: AVX-512's 12 x 32 with
// kc = 256 has a 32 KB B sliver in a 48 KB L1); taken for K blocks whose B
// sliver is at least 24 KB. fma_lanes: scalar FMAs a core
// retires per cycle with this kernel (the thread-grid cost model weighs
// compute against packing with it).
struct GemmBlocking {
  int64_t kc, mc, nc;
  int fma_lanes;
  bool a_sliver_in_l1;
};

template <typename T>
struct GemmKernelInfo {
  GemmMicroKernel<T> kernels[kMaxMR];
  int mr, nr;
  const char* name;
  GemmBlocking blocking;
};

// The active ISA tier's micro-kernel (from the kernel table, kernel_table.h).
template <typename T>
GemmKernelInfo<T> gemm_kernel();

// The GEMM micro-kernels of every ISA tier up to the active one, lowest first
// (tests and benchmarks run each).
template <typename T>
int gemm_kernel_count();
template <typename T>
GemmKernelInfo<T> gemm_kernel_at(int index);
template <typename T>
void gemm_with_kernel(const GemmProblem<T>& problem, int threads, const GemmKernelInfo<T>& info);

// Indirect micro-kernel (XNNPACK's IGEMM): as GemmMicroKernel, but row p of the
// B sliver is read from rows[p] + offset (nr contiguous values), so a
// convolution can point each tap at an input row instead of packing im2col.
template <typename T>
using IgemmMicroKernel = void (*)(int64_t kc, const T* a, const T* const* rows, int64_t offset,
                                  T* c, int64_t ldc, T beta);

// A family of micro-kernels for one register tile: kernels[r - 1] computes and
// writes the first r rows of C (r = mr is the full tile).
template <typename Kernel>
struct KernelSet {
  Kernel kernels[kMaxMR];
  int mr, nr;
  const char* name;
};

template <typename T>
using IgemmKernelInfo = KernelSet<IgemmMicroKernel<T>>;

template <typename T>
IgemmKernelInfo<T> igemm_kernel();

// Pixel-indirect micro-kernel (the transpose of IGEMM, as oneDNN's direct
// convolutions block it): C[i][j] = sum_p rows[p][offset + i] * b[p * nr + j]
// + beta * C[i][j] (beta == 0: C not read). Output pixels (mr of them,
// contiguous in an input row under tap p) are broadcast and output channels
// (nr, packed weights) fill the vectors.
template <typename T>
using PixelIgemmMicroKernel = void (*)(int64_t kc, const T* const* rows, int64_t offset, const T* b,
                                       T* c, int64_t ldc, T beta);

template <typename T>
using PixelIgemmKernelInfo = KernelSet<PixelIgemmMicroKernel<T>>;

template <typename T>
PixelIgemmKernelInfo<T> pixel_igemm_kernel();

// Gathered-A micro-kernel, for weight gradients: C[0:mr, 0:nr] = sum over
// `segments` x `width` steps of a (mr values) x b (nr values), where step
// (s, w) reads A value i at rows[s * mr + i][w] and B at b[(s * width + w) * nr].
// Row i of A is thus a list of contiguous runs (input rows under one tap), read
// in place; only the first r pointers of each segment are read by kernels[r - 1].
template <typename T>
using GatherGemmMicroKernel = void (*)(int64_t segments, int64_t width, const T* const* rows,
                                       const T* b, T* c, int64_t ldc, T beta);

template <typename T>
using GatherGemmKernelInfo = KernelSet<GatherGemmMicroKernel<T>>;

template <typename T>
GatherGemmKernelInfo<T> gather_gemm_kernel();

// GFLOP/s of the float32 GEMM micro-kernel alone on `threads` threads, each
// making `calls` calls on operands that stay in L1: the rate no blocking can
// beat (the benchmark reports GEMM speed against it).
double gemm_kernel_peak_gflops(int threads, int64_t calls);

// Declared per ISA file.
PixelIgemmKernelInfo<float> pixel_igemm_f32_12x32_avx512();
PixelIgemmKernelInfo<double> pixel_igemm_f64_12x16_avx512();
PixelIgemmKernelInfo<float> pixel_igemm_f32_6x16_avx2_fma();
PixelIgemmKernelInfo<double> pixel_igemm_f64_6x8_avx2_fma();
PixelIgemmKernelInfo<float> pixel_igemm_f32_6x8_portable();
PixelIgemmKernelInfo<double> pixel_igemm_f64_6x4_portable();
GatherGemmKernelInfo<float> gather_gemm_f32_8x32_avx512();
GatherGemmKernelInfo<double> gather_gemm_f64_8x16_avx512();
GatherGemmKernelInfo<float> gather_gemm_f32_6x16_avx2_fma();
GatherGemmKernelInfo<double> gather_gemm_f64_6x8_avx2_fma();
GatherGemmKernelInfo<float> gather_gemm_f32_6x8_portable();
GatherGemmKernelInfo<double> gather_gemm_f64_6x4_portable();
IgemmKernelInfo<float> igemm_f32_6x16_avx2_fma();
IgemmKernelInfo<double> igemm_f64_6x8_avx2_fma();
IgemmKernelInfo<float> igemm_f32_6x8_portable();
IgemmKernelInfo<double> igemm_f64_6x4_portable();
IgemmKernelInfo<float> igemm_f32_12x32_avx512();
IgemmKernelInfo<double> igemm_f64_12x16_avx512();
GemmKernelInfo<float> gemm_f32_12x32_avx512();
GemmKernelInfo<double> gemm_f64_12x16_avx512();
GemmKernelInfo<float> gemm_f32_6x16_avx2_fma();
GemmKernelInfo<double> gemm_f64_6x8_avx2_fma();
SmallNKernelInfo<float> small_n_f32_avx512();
SmallNKernelInfo<double> small_n_f64_avx512();
SmallNKernelInfo<float> small_n_f32_avx2_fma();
SmallNKernelInfo<double> small_n_f64_avx2_fma();
SmallNKernelInfo<float> small_n_f32_portable();
SmallNKernelInfo<double> small_n_f64_portable();
GemmKernelInfo<float> gemm_f32_6x8_portable();
GemmKernelInfo<double> gemm_f64_6x4_portable();

}  // namespace fastconv
