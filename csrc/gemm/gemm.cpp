#include "gemm/gemm.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "common/transpose.h"

namespace fastconv {
namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The block size (a multiple of `unit`, at most about `target`) that cuts
// `extent` into equal pieces.
int64_t balanced_block(int64_t extent, int64_t target, int64_t unit) {
  const int64_t pieces = std::max<int64_t>(1, (extent + target - 1) / target);
  return round_up((extent + pieces - 1) / pieces, unit);
}

// Packs rows [i0, i0+mc) x cols [k0, k0+kc) of A into mr-row slivers, k-major,
// rows past the end of A zero.
template <typename T>
void pack_a(const MatrixView<T>& a, int64_t m, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            int mr, T* dst) {
  for (int64_t ir = 0; ir < mc; ir += mr) {
    const int64_t rows = std::min<int64_t>(mr, std::min(mc - ir, m - i0 - ir));
    T* sliver = dst + ir * kc;
    if (rows < mr) std::fill(sliver, sliver + kc * mr, T(0));
    if (a.col_stride == 1) {
      transpose_into(a.data + (i0 + ir) * a.row_stride + k0, a.row_stride, rows, kc, sliver, mr);
    } else if (a.row_stride != 1) {
      for (int64_t i = 0; i < rows; ++i) {
        const T* src = a.data + (i0 + ir + i) * a.row_stride + k0 * a.col_stride;
        const int64_t cs = a.col_stride;
        for (int64_t p = 0; p < kc; ++p) sliver[p * mr + i] = src[p * cs];
      }
    } else {  // A stored transposed: a column of A is contiguous
      for (int64_t p = 0; p < kc; ++p) {
        const T* src = a.data + (i0 + ir) + (k0 + p) * a.col_stride;
        for (int64_t i = 0; i < rows; ++i) sliver[p * mr + i] = src[i];
      }
    }
  }
}

// Packs rows [k0, k0+kc) x cols [j0, j0+nc) of B into nr-column slivers.
template <typename T>
void pack_b_view(const MatrixView<T>& b, int64_t n, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                 int64_t nr, T* dst) {
  for (int64_t jr = 0; jr < nc; jr += nr) {
    const int64_t cols = std::min<int64_t>(nr, std::min(nc - jr, n - j0 - jr));
    T* sliver = dst + jr * kc;
    if (cols < nr) std::fill(sliver, sliver + kc * nr, T(0));
    if (b.col_stride == 1) {
      for (int64_t p = 0; p < kc; ++p) {
        const T* src = b.data + (k0 + p) * b.row_stride + (j0 + jr);
        std::memcpy(sliver + p * nr, src, static_cast<size_t>(cols) * sizeof(T));
      }
    } else if (b.row_stride == 1) {  // a column of B is contiguous
      transpose_into(b.data + k0 + (j0 + jr) * b.col_stride, b.col_stride, cols, kc, sliver, nr);
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        const T* src = b.data + k0 * b.row_stride + (j0 + jr + j) * b.col_stride;
        const int64_t rs = b.row_stride;
        for (int64_t p = 0; p < kc; ++p) sliver[p * nr + j] = src[p * rs];
      }
    }
  }
}

// Prefetches (toward L2) rows [i0, i0+rows) x cols [k0, k0+kc) of a
// row-major A, to be packed next. Each row segment starts a new 4 KB page,
// which the hardware prefetcher reaches too late. Issued a few lines at a
// time, one batch per micro-tile, so the requests never crowd the fill
// buffers.
class RowPrefetch {
 public:
  RowPrefetch() = default;
  template <typename T>
  RowPrefetch(const MatrixView<T>& a, int64_t i0, int64_t rows, int64_t k0, int64_t kc)
      : row_(reinterpret_cast<const char*>(a.data + i0 * a.row_stride + k0)),
        rows_(rows),
        row_stride_(a.row_stride * static_cast<int64_t>(sizeof(T))) {
    // Line starts from the first row's line; +1: the start may be unaligned.
    row_ -= reinterpret_cast<uintptr_t>(row_) % 64;
    lines_per_row_ = (kc * static_cast<int64_t>(sizeof(T)) + 63) / 64 + 1;
  }
  int64_t lines() const { return rows_ * lines_per_row_; }
  // The next `count` lines.
  void issue(int64_t count) {
    for (; count > 0 && rows_ > 0; --count) {
      __builtin_prefetch(row_ + line_ * 64, 0, 2);
      if (++line_ == lines_per_row_) {
        line_ = 0;
        row_ += row_stride_;
        --rows_;
      }
    }
  }

 private:
  const char* row_ = nullptr;
  int64_t rows_ = 0, row_stride_ = 0, lines_per_row_ = 0, line_ = 0;
};

template <typename T>
struct Workspace {
  AlignedBuffer<T> a, b;
  std::vector<T> tile;
  AlignedBuffer<T> staged;  // C^T of a GEMM run transposed (at most kStagedMax elements)
};

template <typename T>
Workspace<T>& thread_workspace() {
  static thread_local Workspace<T> ws;
  return ws;
}

// C[0:rows, 0:cols] = alpha * tile + beta * C for a partial or strided tile.
template <typename T>
void merge_tile(const T* tile, int nr, int64_t rows, int64_t cols, T* c, int64_t rs, int64_t cs,
                T beta) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      T& out = c[i * rs + j * cs];
      out = beta == T(0) ? tile[i * nr + j] : tile[i * nr + j] + beta * out;
    }
  }
}

// One thread's share: rows [m0, m1) x cols [n0, n1) of C, all of K.
template <typename T>
void gemm_block(const GemmProblem<T>& pr, const GemmKernelInfo<T>& kinfo, int64_t m0, int64_t m1,
                int64_t n0, int64_t n1) {
  const GemmBlocking& blk = kinfo.blocking;
  const int mr = kinfo.mr, nr = kinfo.nr;
  Workspace<T>& ws = thread_workspace<T>();
  // Equal-sized blocks (never one full block and a sliver): K = 576 runs as
  // 2 x 288, not 256 + 256 + 64.
  const int64_t kc_max = balanced_block(pr.k, blk.kc, 1);
  const int64_t mc_max = balanced_block(m1 - m0, blk.mc, mr);
  const int64_t nc_max = balanced_block(n1 - n0, blk.nc, nr);
  ws.a.resize(static_cast<size_t>(mc_max * kc_max));
  if (pr.packed_b == nullptr) ws.b.resize(static_cast<size_t>(nc_max * kc_max));
  ws.tile.resize(static_cast<size_t>(mr * nr));
  T* abuf = ws.a.data();
  T* bbuf = ws.b.data();
  T* tile = ws.tile.data();
  const MutableMatrixView<T>& c = pr.c;
  const bool unit_cols = c.col_stride == 1;

  for (int64_t jc = n0; jc < n1; jc += nc_max) {
    const int64_t nc = std::min<int64_t>(nc_max, n1 - jc);
    for (int64_t pc = 0; pc < pr.k; pc += kc_max) {
      const int64_t kc = std::min<int64_t>(kc_max, pr.k - pc);
      const T* bpanel = bbuf;
      if (pr.packed_b != nullptr) {  // whole-matrix layout: K block, then slivers
        bpanel = pr.packed_b + pc * round_up(pr.n, nr) + jc * kc;
      } else if (pr.pack_b) {
        pr.pack_b(pc, kc, jc, nc, nr, bbuf);
      } else {
        pack_b_view(pr.b, pr.n, pc, kc, jc, nc, nr, bbuf);
      }
      const T beta = pc == 0 ? pr.beta : T(1);  // later K blocks accumulate
      // Shallow K blocks (Winograd's 64- and 128-channel GEMMs) leave the B
      // sliver small: B-sliver order measured faster there.
      const bool a_sliver_order =
          blk.a_sliver_in_l1 && kc * nr * static_cast<int64_t>(sizeof(T)) >= (24 << 10);
      for (int64_t ic = m0; ic < m1; ic += mc_max) {
        const int64_t mc = std::min<int64_t>(mc_max, m1 - ic);
        // Pre-packed A is laid out per K block: [pc block][all m, in mr slivers].
        const T* apanel =
            pr.packed_a != nullptr ? pr.packed_a + pc * round_up(pr.m, mr) + ic * kc : abuf;
        // C[ic + ir .., jc + jr ..] += A sliver `as` (rows ir ..) @ B sliver jr.
        const auto micro_tile = [&](int64_t ir, const T* as, int64_t jr) {
          const int64_t rows = std::min<int64_t>(mr, mc - ir);
          const int64_t cols = std::min<int64_t>(nr, nc - jr);
          const T* bs = bpanel + jr * kc;
          T* cij = c.data + (ic + ir) * c.row_stride + (jc + jr) * c.col_stride;
          if (unit_cols && cols == nr) {
            kinfo.kernels[rows - 1](kc, as, bs, cij, c.row_stride, pr.alpha, beta);
          } else {
            kinfo.kernels[rows - 1](kc, as, bs, tile, nr, pr.alpha, T(0));
            merge_tile(tile, nr, rows, cols, cij, c.row_stride, c.col_stride, beta);
          }
        };
        // Row-major A in A-sliver order is packed one sliver at a time, just
        // before its sweep over the B panel, into a buffer that stays in L1,
        // while the next sliver's rows are prefetched a few lines per
        // micro-tile. Other layouts read their block as long runs: packed
        // whole, up front.
        const bool sliver_packing =
            a_sliver_order && pr.packed_a == nullptr && pr.a.col_stride == 1;
        if (pr.packed_a == nullptr && !sliver_packing) pack_a(pr.a, pr.m, ic, mc, pc, kc, mr, abuf);
        if (!a_sliver_order) {
          for (int64_t jr = 0; jr < nc; jr += nr)
            for (int64_t ir = 0; ir < mc; ir += mr) micro_tile(ir, apanel + ir * kc, jr);
          continue;
        }
        const int64_t tiles = (nc + nr - 1) / nr;
        for (int64_t ir = 0; ir < mc; ir += mr) {
          const T* as = apanel + ir * kc;
          RowPrefetch next;
          if (sliver_packing) {
            pack_a(pr.a, pr.m, ic + ir, std::min<int64_t>(mr, mc - ir), pc, kc, mr, abuf);
            as = abuf;
            const int64_t next_rows =
                std::min<int64_t>(mr, std::min(ic + mc, pr.m) - (ic + ir + mr));
            if (next_rows > 0) next = RowPrefetch(pr.a, ic + ir + mr, next_rows, pc, kc);
          }
          const int64_t per_tile = (next.lines() + tiles - 1) / tiles;
          for (int64_t jr = 0; jr < nc; jr += nr) {
            next.issue(per_tile);
            micro_tile(ir, as, jr);
          }
        }
      }
    }
  }
}

// C = beta * C when there is nothing to multiply.
template <typename T>
void scale_c(const GemmProblem<T>& pr) {
  for (int64_t i = 0; i < pr.m; ++i)
    for (int64_t j = 0; j < pr.n; ++j) {
      T& out = pr.c.data[i * pr.c.row_stride + j * pr.c.col_stride];
      out = pr.beta == T(0) ? T(0) : pr.beta * out;
    }
}

// Splits C into a grid of independent rectangles, one per thread, so that no
// thread waits on another. The grid minimises the slowest thread's cycles:
// micro-tiles (mr * nr * k FMAs at fma_lanes a cycle) plus packing its own copy of A
// (once per NC panel) and of B (~1 cycle per element). Tall-skinny, short-wide
// and square shapes each get their best cut; cuts fall on micro-tile edges.
struct Grid {
  int rows, cols;
};
Grid thread_grid(int64_t m, int64_t n, int64_t k, int mr, int nr, const GemmBlocking& blk,
                 int threads) {
  const int64_t mt = (m + mr - 1) / mr, nt = (n + nr - 1) / nr;
  Grid best{1, threads};
  double best_cost = 1e300;
  for (int r = 1; r <= threads; ++r) {
    if (threads % r != 0) continue;
    const int cc = threads / r;
    const double rows = static_cast<double>((mt + r - 1) / r) * mr;
    const double cols = static_cast<double>((nt + cc - 1) / cc) * nr;
    const double panels = std::ceil(cols / static_cast<double>(blk.nc));
    const double compute = rows * cols * static_cast<double>(k) / blk.fma_lanes;
    const double packing = rows * static_cast<double>(k) * panels + cols * static_cast<double>(k);
    const double cost = compute + packing;
    if (cost < best_cost) {
      best_cost = cost;
      best = {r, cc};
    }
  }
  return best;
}

int64_t split_point(int64_t extent, int unit, int parts, int index) {
  const int64_t units = (extent + unit - 1) / unit;
  return std::min(extent, (units * index / parts) * unit);
}

}  // namespace

template <typename T>
int64_t gemm_packed_a_size(int64_t m, int64_t k) {
  return round_up(m, gemm_kernel<T>().mr) * k;
}

template <typename T>
void gemm_pack_a(const MatrixView<T>& a, int64_t m, int64_t k, T* dst) {
  const GemmKernelInfo<T> kinfo = gemm_kernel<T>();
  const int mr = kinfo.mr;
  const int64_t kc_max = balanced_block(k, kinfo.blocking.kc, 1);
  for (int64_t pc = 0; pc < k; pc += kc_max) {
    const int64_t kc = std::min(kc_max, k - pc);
    pack_a(a, m, 0, round_up(m, mr), pc, kc, mr, dst + pc * round_up(m, mr));
  }
}

template <typename T>
PackedBLayout gemm_packed_b_layout(int64_t k, int64_t n) {
  const GemmKernelInfo<T> kinfo = gemm_kernel<T>();
  return {k, round_up(n, kinfo.nr), balanced_block(k, kinfo.blocking.kc, 1), kinfo.nr};
}

// Multiply-adds the micro-kernels spend on a rows x cols C: columns come in
// whole nr-wide slivers, while a remainder of rows costs only its own rows
// (there is a kernel per row count; below two rows, loads dominate).
double tile_cost(int64_t rows, int64_t cols, int mr, int nr) {
  const int64_t rest = rows % mr;
  const double row_cost = static_cast<double>(rows - rest) +
                          (rest > 0 ? static_cast<double>(std::max<int64_t>(rest, 2)) : 0.0);
  return row_cost * static_cast<double>(round_up(cols, nr));
}

// Narrow C (n a poor multiple of nr: n = 49 fills 64 columns) goes through
// C^T = B^T A^T, which puts n on the kernel's rows, staged in a buffer of at
// most kStagedMax elements so the kernels store it contiguously. Plain
// operands only (pre-packed layouts belong to one orientation); 10% margin for
// the staging copies.
constexpr int64_t kStagedMax = int64_t(1) << 16;

template <typename T>
bool narrow_c_runs_transposed(int64_t m, int64_t n, const GemmKernelInfo<T>& kinfo) {
  if (m * n > kStagedMax) return false;
  return 1.1 * tile_cost(n, m, kinfo.mr, kinfo.nr) < tile_cost(m, n, kinfo.mr, kinfo.nr);
}

template <typename T>
bool runs_transposed(const GemmProblem<T>& pr, const GemmKernelInfo<T>& kinfo) {
  if (pr.packed_a != nullptr || pr.packed_b != nullptr || pr.pack_b) return false;
  return narrow_c_runs_transposed(pr.m, pr.n, kinfo);
}

template <typename T>
void gemm_with_kernel(const GemmProblem<T>& pr, int threads, const GemmKernelInfo<T>& kinfo) {
  if (pr.m == 0 || pr.n == 0) return;
  if (pr.k == 0) {
    scale_c(pr);
    return;
  }
  if (runs_transposed(pr, kinfo)) {
    // The calling thread's buffer (gemm may run inside a caller's parallel
    // region, one call per thread).
    AlignedBuffer<T>& staged = thread_workspace<T>().staged;
    staged.resize(static_cast<size_t>(pr.m * pr.n));
    T* ct = staged.data();  // C^T, n x m, row-major
    const MutableMatrixView<T>& c = pr.c;
    if (pr.beta != T(0))
      for (int64_t i = 0; i < pr.m; ++i)
        for (int64_t j = 0; j < pr.n; ++j)
          ct[j * pr.m + i] = c.data[i * c.row_stride + j * c.col_stride];
    GemmProblem<T> t;
    t.m = pr.n;
    t.n = pr.m;
    t.k = pr.k;
    t.alpha = pr.alpha;
    t.beta = pr.beta;
    t.a = {pr.b.data, pr.b.col_stride, pr.b.row_stride};
    t.b = {pr.a.data, pr.a.col_stride, pr.a.row_stride};
    t.c = {ct, pr.m, 1};
    gemm_with_kernel(t, threads, kinfo);
    for (int64_t i = 0; i < pr.m; ++i)
      for (int64_t j = 0; j < pr.n; ++j)
        c.data[i * c.row_stride + j * c.col_stride] = ct[j * pr.m + i];
    return;
  }
  // Below ~64^3 multiply-adds per thread, waking a thread costs more than it
  // saves (and far more when the machine is oversubscribed).
  const int64_t work = pr.m * pr.n * pr.k;
  threads = std::max(1, std::min<int>(threads, static_cast<int>(work / (64 * 64 * 64) + 1)));
  const Grid grid = thread_grid(pr.m, pr.n, pr.k, kinfo.mr, kinfo.nr, kinfo.blocking, threads);
  const int used = grid.rows * grid.cols;
  if (used == 1) {
    gemm_block(pr, kinfo, 0, pr.m, 0, pr.n);
    return;
  }
#pragma omp parallel num_threads(used)
  {
    const int t = omp_get_thread_num();
    const int r = t / grid.cols, cidx = t % grid.cols;
    const int64_t m0 = split_point(pr.m, kinfo.mr, grid.rows, r);
    const int64_t m1 = split_point(pr.m, kinfo.mr, grid.rows, r + 1);
    const int64_t n0 = split_point(pr.n, kinfo.nr, grid.cols, cidx);
    const int64_t n1 = split_point(pr.n, kinfo.nr, grid.cols, cidx + 1);
    if (m0 < m1 && n0 < n1) gemm_block(pr, kinfo, m0, m1, n0, n1);
  }
}

template <typename T>
void gemm_small_n(const GemmProblem<T>& pr, int threads) {
  const int64_t m = pr.m, n = pr.n, k = pr.k;
  if (m == 0 || n == 0 || k == 0 || n > kSmallNDotColumns || pr.a.col_stride != 1)
    throw std::invalid_argument("internal: gemm_small_n needs 0 < n <= 4, k > 0 and A rows");
  const SmallNDotKernel<T> kernel = small_n_kernel<T>().dot_kernels[n - 1];
  AlignedBuffer<T> bt(static_cast<size_t>(n * k));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t p = 0; p < k; ++p) bt.data()[j * k + p] = pr.b.at(p, j);
  const int64_t rows = kSmallNDotRows, blocks = (m + rows - 1) / rows;
  threads = static_cast<int>(std::min<int64_t>(threads, blocks));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * rows;
    const int count = static_cast<int>(std::min<int64_t>(rows, m - i0));
    T out[kSmallNDotRows * kSmallNDotColumns];
    kernel(k, pr.a.data + i0 * pr.a.row_stride, pr.a.row_stride, count, bt.data(), out);
    for (int i = 0; i < count; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T& c = pr.c.data[(i0 + i) * pr.c.row_stride + j * pr.c.col_stride];
        const T v = pr.alpha * out[i * n + j];
        c = pr.beta == T(0) ? v : v + pr.beta * c;
      }
  }
}

namespace {

// Where the small-N path beats packing: a plain problem with a narrow side of at
// most kSmallNDotColumns, whose other operand is large enough that packing it would
// cost more than reading it once (64 K values) and is read along k in place.
// Returns the problem to run (C^T = B^T A^T when the narrow side is m), or none.
template <typename T>
std::optional<GemmProblem<T>> small_n_problem(const GemmProblem<T>& pr) {
  if (pr.pack_b || pr.packed_a != nullptr || pr.packed_b != nullptr || pr.k == 0) return {};
  const int64_t most = kSmallNDotColumns;
  if (pr.n <= most && pr.a.col_stride == 1 && pr.m * pr.k >= (int64_t(1) << 16)) return pr;
  if (pr.m <= most && pr.b.row_stride == 1 && pr.n * pr.k >= (int64_t(1) << 16)) {
    GemmProblem<T> t = pr;
    t.m = pr.n;
    t.n = pr.m;
    t.a = {pr.b.data, pr.b.col_stride, 1};
    t.b = {pr.a.data, pr.a.col_stride, pr.a.row_stride};
    t.c = {pr.c.data, pr.c.col_stride, pr.c.row_stride};
    return t;
  }
  return {};
}

}  // namespace

template <typename T>
void gemm(const GemmProblem<T>& pr, int threads) {
  if (const std::optional<GemmProblem<T>> small = small_n_problem(pr)) {
    gemm_small_n(*small, threads);
    return;
  }
  gemm_with_kernel(pr, threads, gemm_kernel<T>());
}

template <typename T>
bool gemm_runs_narrow_c_transposed(int64_t m, int64_t n) {
  return narrow_c_runs_transposed(m, n, gemm_kernel<T>());
}

double gemm_kernel_peak_gflops(int threads, int64_t calls) {
  const GemmKernelInfo<float> kinfo = gemm_kernel<float>();
  const int mr = kinfo.mr, nr = kinfo.nr;
  // Deep enough that storing C is a small part of a call, shallow enough that
  // the A and B slivers (mr x kc and kc x nr) sit in a 32 KB L1 together.
  const int64_t kc =
      std::max<int64_t>(16, (24 << 10) / (static_cast<int64_t>(sizeof(float)) * (mr + nr)));
  // Each thread's A, B and C, allocated (and filled) outside the region.
  const int64_t a_size = mr * kc, b_size = kc * nr, per_thread = a_size + b_size + mr * nr;
  std::vector<AlignedBuffer<float>> buffers(static_cast<size_t>(threads));
  for (AlignedBuffer<float>& buffer : buffers) {
    buffer.resize(static_cast<size_t>(per_thread));
    std::fill(buffer.data(), buffer.data() + a_size + b_size, 1e-3f);
    std::fill(buffer.data() + a_size + b_size, buffer.data() + per_thread, 0.0f);
  }
  const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    float* a = buffers[static_cast<size_t>(omp_get_thread_num())].data();
    for (int64_t i = 0; i < calls; ++i)
      kinfo.kernels[mr - 1](kc, a, a + a_size, a + a_size + b_size, nr, 1.0f, 1.0f);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 2.0 * mr * nr * kc * static_cast<double>(calls) * threads / seconds / 1e9;
}

#define FASTCONV_INSTANTIATE_GEMM(T)                                                       \
  template void gemm<T>(const GemmProblem<T>&, int);                                       \
  template void gemm_small_n<T>(const GemmProblem<T>&, int);                               \
  template void gemm_with_kernel<T>(const GemmProblem<T>&, int, const GemmKernelInfo<T>&); \
  template int64_t gemm_packed_a_size<T>(int64_t, int64_t);                                \
  template bool gemm_runs_narrow_c_transposed<T>(int64_t, int64_t);                        \
  template void gemm_pack_a<T>(const MatrixView<T>&, int64_t, int64_t, T*);                \
  template PackedBLayout gemm_packed_b_layout<T>(int64_t, int64_t);
FASTCONV_INSTANTIATE_GEMM(float)
FASTCONV_INSTANTIATE_GEMM(double)
#undef FASTCONV_INSTANTIATE_GEMM

}  // namespace fastconv
