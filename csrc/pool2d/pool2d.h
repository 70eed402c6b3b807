// 2-D max and average pooling over contiguous NCHW planes, forward and backward.
// Arguments are validated in Python (fastconv.functional) before these run.
#pragma once

#include <cstdint>

namespace fastconv {

struct PoolParams {
  int64_t planes = 0;  // N * C
  int64_t in_h = 0, in_w = 0;
  int64_t out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;  // max pooling only
  bool count_include_pad = true;           // average pooling only
  int64_t divisor_override = 0;            // average pooling only; 0 means none

  int64_t in_plane() const { return in_h * in_w; }
  int64_t out_plane() const { return out_h * out_w; }
  bool is_empty() const { return planes == 0 || out_h == 0 || out_w == 0; }
};

// indices: flat h*W+w position inside each input plane (PyTorch's convention);
// may be null (values only). kernel_h * kernel_w must fit in int32 (the
// functional layer checks it): taps are numbered in 32 bits.
template <typename T>
void max_pool2d_forward(const T* input, T* output, int64_t* indices, const PoolParams& p);
template <typename T>
void max_pool2d_backward(const T* grad_output, const int64_t* indices, T* grad_input,
                         const PoolParams& p);
template <typename T>
void avg_pool2d_forward(const T* input, T* output, const PoolParams& p);
template <typename T>
void avg_pool2d_backward(const T* grad_output, T* grad_input, const PoolParams& p);

// One output row of a plane, the unit the ISA dispatch swaps. `rows` holds the
// in-bounds input rows of the window (in kernel order) and `row_taps` the tap
// number r * kernel_w of each. For every output column ow, taps are visited in
// row-major order, as PyTorch's scalar loop visits them:
//   max: if (x > best[ow] || isnan(x)) { best[ow] = x; tap[ow] = r * kernel_w + s; }
//        (best starts at -inf and tap at -1)
//   sum: acc[ow] += x   (acc starts at 0; dilation is 1 for average pooling)
struct PoolRow {
  const void* const* rows;
  const int32_t* row_taps;
  int64_t row_count;
  int64_t kernel_w, stride_w, pad_w, dilation_w;
  int64_t in_w, out_w;
};
template <typename T>
struct PoolRowKernels {
  void (*max_row)(const PoolRow& row, T* best, int32_t* tap);
  void (*sum_row)(const PoolRow& row, T* acc);
};

// Output columns whose whole window lies inside the row: [begin, end).
struct ColumnRange {
  int64_t begin, end;
};
// The taps [begin, end) of a window whose tap j reads index start + j * dilation
// that land inside [0, size): the loops run over these only, so a window's cost
// is what it reads, however far its padding reaches.
inline ColumnRange in_bounds_taps(int64_t start, int64_t dilation, int64_t kernel, int64_t size) {
  const int64_t begin = start >= 0 ? 0 : (-start + dilation - 1) / dilation;
  const int64_t last = size - 1 - start;  // tap j is inside when j * dilation <= last
  int64_t end = last < 0 ? 0 : last / dilation + 1;
  if (end > kernel) end = kernel;
  return {begin, begin < end ? end : begin};
}
inline ColumnRange interior_columns(const PoolRow& row) {
  const int64_t span = (row.kernel_w - 1) * row.dilation_w;
  int64_t begin = (row.pad_w + row.stride_w - 1) / row.stride_w;
  const int64_t last = row.in_w - 1 - span + row.pad_w;  // ow * stride_w <= last
  int64_t end = last < 0 ? 0 : last / row.stride_w + 1;
  if (end > row.out_w) end = row.out_w;
  if (begin > end) begin = end;
  return {begin, end};
}

// Row kernels for the kernel table: scalar ones for every dtype, AVX2 ones
// (pool2d_rows_f32_avx2.cpp) for float32.
template <typename T>
PoolRowKernels<T> pool_row_kernels_portable();
PoolRowKernels<float> pool_row_kernels_f32_avx2();

}  // namespace fastconv
