// AVX2 row kernels for float32 pooling. Interior columns run 8 outputs at a time
// with every tap kept in registers: strided loads for stride 1 and 2 (the common
// 2x2/2, 3x3/1 and 3x3/2 layers), and for max pooling gathers for larger strides
// (4x4/4, 8x8/8), where the scalar compare-and-select chain costs several cycles a
// tap. Border columns take the scalar path, which visits taps in the same order.
#include <immintrin.h>

#include "pool2d/pool2d.h"
#include "pool2d/pool2d_row_scalar.h"

// clang-format off
#include "common/isa_avx2_begin.h"  // after every other include: AVX2 code from here on
// clang-format on

namespace fastconv {
namespace {

// Stride-2 loads deinterleave 16 floats with one in-lane shuffle, which leaves
// the 8 results in the order 0 1 4 5 2 3 6 7. Pooling is element-wise across
// output columns, so blocks work in that order and restore it once at the end.
template <bool take_odd>
inline __m256 load_alternate_lanes_shuffled(const float* p) {
  const __m256 lo = _mm256_loadu_ps(p);
  const __m256 hi = _mm256_loadu_ps(p + 8);
  return take_odd ? _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))
                  : _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
}

inline __m256 unshuffle(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256i unshuffle(__m256i v) { return _mm256_permute4x64_epi64(v, _MM_SHUFFLE(3, 1, 2, 0)); }

// x[0], x[stride], ..., x[7 * stride] for stride 1, or for stride 2 in the
// shuffled order above. Reads stay inside [x - 1, x + 14] when `from_left`
// (nothing past the last tap is touched) and inside [x, x + 15] otherwise.
template <int64_t stride>
inline __m256 load_strided(const float* x, bool from_left) {
  if (stride == 1) return _mm256_loadu_ps(x);
  return from_left ? load_alternate_lanes_shuffled<true>(x - 1)
                   : load_alternate_lanes_shuffled<false>(x);
}

// Columns 0, stride, ..., 7 * stride as gather offsets (other strides than 1 and 2).
inline __m256i gather_offsets(int64_t stride) {
  return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                            _mm256_set1_epi32(static_cast<int32_t>(stride)));
}

// The 8 columns of one tap: strided loads for a compile-time stride of 1 or 2,
// a gather for the others (kStride == 0: the row's stride, in `offsets`).
template <int64_t kStride>
inline __m256 load_columns(const float* x, bool from_left, __m256i offsets) {
  if constexpr (kStride == 0) {
    return _mm256_i32gather_ps(x, offsets, 4);
  } else {
    (void)offsets;
    return load_strided<kStride>(x, from_left);
  }
}

inline const float* row_ptr(const PoolRow& row, int64_t i) {
  return static_cast<const float*>(row.rows[i]);
}

// Blocks of 8 interior columns: [begin, begin+8), ..., and, for a ragged end, one
// last block ending at `end` that overlaps the previous one. Each block computes
// and stores complete windows, so recomputing overlapped columns is harmless.
template <typename Block>
inline void for_each_block(ColumnRange interior, Block&& block) {
  if (interior.end - interior.begin < 8) return;
  int64_t ow = interior.begin;
  for (; ow + 8 <= interior.end; ow += 8) block(ow);
  if (ow < interior.end) block(interior.end - 8);
}

inline ColumnRange vector_columns(const PoolRow& row) {
  const ColumnRange interior = interior_columns(row);
  // A stride-2 tap starting at column 0 reads columns 0..15 (see load_strided);
  // gathers take 32-bit offsets.
  const bool stride_loads = row.stride_w == 1 || (row.stride_w == 2 && row.in_w >= 16);
  const bool gathers = row.stride_w > 2 && 7 * row.stride_w < (int64_t(1) << 31);
  const bool vectorizable = (stride_loads || gathers) && interior.end - interior.begin >= 8;
  return vectorizable ? interior : ColumnRange{0, 0};
}

template <int64_t stride>
inline void max_block(const PoolRow& row, float* best, int32_t* tap, int64_t ow, __m256i offsets) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  __m256i t = _mm256_set1_epi32(-1);
  const int64_t w0 = ow * (stride == 0 ? row.stride_w : stride) - row.pad_w;
  for (int64_t i = 0; i < row.row_count; ++i) {
    const float* in = row_ptr(row, i) + w0;
    for (int64_t s = 0; s < row.kernel_w; ++s) {
      const bool from_left = w0 + s * row.dilation_w >= 1;
      const __m256 x = load_columns<stride>(in + s * row.dilation_w, from_left, offsets);
      const __m256 take =
          _mm256_or_ps(_mm256_cmp_ps(x, m, _CMP_GT_OQ), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
      m = _mm256_blendv_ps(m, x, take);
      const __m256i id = _mm256_set1_epi32(row.row_taps[i] + static_cast<int32_t>(s));
      t = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(t), _mm256_castsi256_ps(id), take));
    }
  }
  if (stride == 2) {
    m = unshuffle(m);
    t = unshuffle(t);
  }
  _mm256_storeu_ps(best + ow, m);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tap + ow), t);
}

template <int64_t stride>
inline void sum_block(const PoolRow& row, float* acc, int64_t ow) {
  __m256 sum = _mm256_setzero_ps();
  const int64_t w0 = ow * stride - row.pad_w;
  for (int64_t i = 0; i < row.row_count; ++i) {
    const float* in = row_ptr(row, i) + w0;
    for (int64_t s = 0; s < row.kernel_w; ++s)
      sum = _mm256_add_ps(sum, load_strided<stride>(in + s, w0 + s >= 1));
  }
  _mm256_storeu_ps(acc + ow, stride == 2 ? unshuffle(sum) : sum);
}

void max_row_avx2(const PoolRow& row, float* best, int32_t* tap) {
  const ColumnRange vec = vector_columns(row);
  for (int64_t ow = 0; ow < vec.begin; ++ow) max_pool_column<float>(row, best, tap, ow);
  const __m256i offsets = gather_offsets(row.stride_w);
  if (row.stride_w == 1) {
    for_each_block(vec, [&](int64_t ow) { max_block<1>(row, best, tap, ow, offsets); });
  } else if (row.stride_w == 2) {
    for_each_block(vec, [&](int64_t ow) { max_block<2>(row, best, tap, ow, offsets); });
  } else {
    for_each_block(vec, [&](int64_t ow) { max_block<0>(row, best, tap, ow, offsets); });
  }
  const int64_t tail = vec.end > vec.begin ? vec.end : 0;
  for (int64_t ow = tail; ow < row.out_w; ++ow) max_pool_column<float>(row, best, tap, ow);
}

void sum_row_avx2(const PoolRow& row, float* acc) {
  // Sums need no gathers: the scalar loop over a larger stride's taps is as fast.
  const ColumnRange vec = row.stride_w <= 2 ? vector_columns(row) : ColumnRange{0, 0};
  for (int64_t ow = 0; ow < vec.begin; ++ow) sum_pool_column<float>(row, acc, ow);
  if (row.stride_w == 1) {
    for_each_block(vec, [&](int64_t ow) { sum_block<1>(row, acc, ow); });
  } else {
    for_each_block(vec, [&](int64_t ow) { sum_block<2>(row, acc, ow); });
  }
  const int64_t tail = vec.end > vec.begin ? vec.end : 0;
  for (int64_t ow = tail; ow < row.out_w; ++ow) sum_pool_column<float>(row, acc, ow);
}

}  // namespace

PoolRowKernels<float> pool_row_kernels_f32_avx2() { return {max_row_avx2, sum_row_avx2}; }

}  // namespace fastconv

#include "common/isa_avx2_end.h"
