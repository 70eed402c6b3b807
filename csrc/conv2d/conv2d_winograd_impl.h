// Winograd F(4x4, 3x3) for 3x3, stride-1, dilation-1, ungrouped float32
// convolutions (Lavin & Gray). Each 4x4 output tile costs 36 multiplies per
// (input, output) channel pair instead of 144: the element-wise products of the
// 36 transformed positions are 36 GEMMs on the project's GEMM,
//   M[xi] (tiles x K) = V[xi]^T (tiles x C) @ U[xi] (C x K),
// with tiles on the GEMM's M side: every chunk of tiles reuses the whole
// transformed filter as its B operand, and the K output channels fill the
// micro-kernel's vector width however few tiles an image has.
//
// The transforms interpolate at 0, 1, -1, 1/2, -2 and infinity rather than the
// usual 0, +-1, +-2: the transformed-domain GEMMs' rounding errors dominate, and
// the output transform amplifies them less (max error over the dense 3x3 layers
// of the layer set 1.5e-5 -> 5.8e-6, against 5e-7 for direct convolution;
// benchmarks/winograd_error.py measures every variant).
//
// Two schedules (winograd_forward picks one): small filter banks are
// transformed once and each thread runs its own chunks of tile rows
// (independent); large filter banks or few tiles (narrow planes, whose chunks
// span many images) have all threads work on every chunk, each job
// transforming one L2-sized block of filters right before its GEMMs
// (cooperative).
//
// The input transform runs on whole rows of tiles at once: each input row is
// split by column (iw mod 4, and the next tile's first two), so tile j's six
// inputs are P0[j] .. P5[j] -- contiguous runs over j -- and writes its result
// straight into the GEMM's packed A panels (no separate packing pass). The
// filter and output transforms are vectorised over output channels. The
// compiler vectorises all three (this header is compiled once per ISA); the
// AVX-512 build splits the input rows with permutes.
//
// Included by exactly one translation unit per ISA; everything lives in an
// anonymous namespace so the builds never share a symbol.
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "common/transpose.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_common.h"
#include "gemm/gemm.h"

namespace fastconv {
namespace {

constexpr int kTile = 4, kInTile = 6, kPositions = 36;
// Output channels per step of the filter and output transforms.
constexpr int64_t kLanes = 16;

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }  // slices start on cache lines

// The distance between the 36 positions' matrices (U, V, M): whole cache lines
// plus one, so that the positions fall in different L1 sets. Sizes such as
// 256 x 32 floats are multiples of 4 KB, and 36 streams 4 KB apart all
// compete for one set.
int64_t position_stride(int64_t n) { return round16(n) + 16; }

constexpr int64_t kFilterRun = 8;  // input channels gathered at once
// The run's taps in float, then G g in double (18 rows of kn).
int64_t filter_scratch_floats(int64_t kn) { return (9 * kFilterRun + 36) * kn; }

// G of F(4, 3) applied to three vectors g0..g2 of n lanes, r_a = sum_j G[a][j] g_j,
// G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1]
// (the interpolation points named at the top of this file), in double precision:
// U = G g G^T is computed exactly enough to be rounded once to float. Its
// rounding is the one error Winograd repeats for every tile -- an effective
// filter off by the same amount everywhere -- so it adds up coherently through
// training's sums: a train-mode ResNet-18's float32 gradients measured 1.9e-3
// from the float64 truth with U in float, 1.7e-5 with U in double (per-layer max
// error unchanged at 5.5e-6). The transform is a few percent of the layer.
template <typename Src, typename Dst>
inline void filter_transform_1d(int64_t n, const Src* g0, const Src* g1, const Src* g2, Dst* r0,
                                Dst* r1, Dst* r2, Dst* r3, Dst* r4, Dst* r5) {
  constexpr double third = 1.0 / 3;
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    const double a = g0[k], b = g1[k], c = g2[k];
    r0[k] = static_cast<Dst>(a);
    r1[k] = static_cast<Dst>(third * (a + b + c));
    r2[k] = static_cast<Dst>(third * (b - a - c));
    r3[k] = static_cast<Dst>((-16.0 / 15) * a + (-8.0 / 15) * b + (-4.0 / 15) * c);
    r4[k] = static_cast<Dst>((1.0 / 15) * a + (-2.0 / 15) * b + (4.0 / 15) * c);
    r5[k] = static_cast<Dst>(c);
  }
}

// U[xi] ((c1 - c0) x kn) = (G g G^T)[xi] for input channels [c0, c1) and
// output channels [k0, k0 + kn), written straight into columns
// [col0, col0 + kn) of the GEMM's pre-packed B layout (position xi at
// u + xi * u_stride; col0 and kn whole slivers unless the block ends B);
// vectorised over k. `scratch` holds filter_scratch_floats(kn) floats.
void winograd_filter_transform(const FilterView& weight, int64_t c0, int64_t c1, int64_t k0,
                               int64_t kn, const PackedBLayout& layout, int64_t col0, float* u,
                               int64_t u_stride, float* scratch) {
  // Runs of kFilterRun input channels, each gathered and transformed while
  // its weights are in L1.
  float* gt = scratch;  // gt[((c - s0) * 9 + tap) * kn + k]
  // gg[a][j][k] = (G g)[a][j]; 9 * kFilterRun * kn floats is a whole number of doubles.
  double* gg = reinterpret_cast<double*>(gt + 9 * kFilterRun * kn);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t s0 = c0 + (c - c0) / kFilterRun * kFilterRun;
    if (c == s0) {
      // The weights of the run, tap-major, by 4x4 transposes: forward weights
      // hold each output channel's taps of the run contiguously; the flipped
      // view of conv2d_input holds the taps of one (c, k) pair contiguously
      // in reverse, so rows are written backwards.
      const int64_t run = std::min(kFilterRun, c1 - s0);
      const float* first = weight.base + s0 * weight.c_stride + k0 * weight.k_stride;
      if (weight.tap_stride == 1 && weight.c_stride == 9) {
        transpose_into(first, weight.k_stride, kn, 9 * run, gt, kn);
      } else {
        for (int64_t j = 0; j < run; ++j)
          transpose_into(first + j * weight.c_stride + 8 * weight.tap_stride, weight.k_stride, kn,
                         9, gt + (j * 9 + 8) * kn, -kn);
      }
    }
    const float* g = gt + (c - s0) * 9 * kn;  // g[tap * kn + k]
    for (int j = 0; j < 3; ++j) {
      double* r = gg + j * kn;  // row a at r + a * 3 * kn
      filter_transform_1d(kn, g + j * kn, g + (3 + j) * kn, g + (6 + j) * kn, r, r + 3 * kn,
                          r + 6 * kn, r + 9 * kn, r + 12 * kn, r + 15 * kn);
    }
    // Where row c - c0 of column col0 lives, and the step between slivers.
    const int64_t row = layout.index(c - c0, col0);
    const int64_t sliver = layout.index(c - c0, col0 + layout.nr) - row;
    // One contiguous run per nr-column sliver; padding columns zero.
    for (int64_t j0 = 0; j0 < kn; j0 += layout.nr) {
      const int64_t n = std::min(layout.nr, kn - j0);
      float* run = u + row + (j0 / layout.nr) * sliver;
      for (int a = 0; a < 6; ++a) {
        const double* h = gg + a * 3 * kn + j0;
        float* dst = run + a * 6 * u_stride;
        filter_transform_1d(n, h, h + kn, h + 2 * kn, dst, dst + u_stride, dst + 2 * u_stride,
                            dst + 3 * u_stride, dst + 4 * u_stride, dst + 5 * u_stride);
        if (n < layout.nr)
          for (int b = 0; b < 6; ++b)
            std::fill(dst + b * u_stride + n, dst + b * u_stride + layout.nr, 0.0f);
      }
    }
  }
}

// B^T of F(4, 3) applied to six vectors d0..d5 of n lanes: t_a = sum_i B^T[a][i] d_i,
// B^T = [1 -3/2 -2 3/2 1 0; 0 -1 1/2 5/2 1 0; 0 1 -5/2 1/2 1 0;
//        0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0; 0 1 -3/2 -2 3/2 1] (all exact in binary).
inline void input_transform_1d(int64_t n, const float* d0, const float* d1, const float* d2,
                               const float* d3, const float* d4, const float* d5, float* t0,
                               float* t1, float* t2, float* t3, float* t4, float* t5) {
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const float a = d1[j], b = d2[j], c = d3[j], e = d4[j];
    const float ca = c - a, eb = e - b;
    t0[j] = (d0[j] + e) + 1.5f * ca - 2.0f * b;
    t1[j] = (e + 0.5f * b) + (2.5f * c - a);
    t2[j] = (e + 0.5f * c) + (a - 2.5f * b);
    t3[j] = 2.0f * ca + eb;
    t4[j] = eb - 0.5f * ca;
    t5[j] = (d5[j] + a) + 1.5f * eb - 2.0f * c;
  }
}

struct WinogradPlan {
  const ConvParams& p;
  int64_t tiles_h, tiles_w;
  int64_t mr;       // the GEMM micro-kernel's rows: V is packed in mr-tile panels
  int64_t c_block;  // input channels per GEMM K block (the blocks of the packed V)
};

// Where the transformed inputs of a chunk of `tiles` tiles live: per position
// xi, the GEMM's packed A of V[xi]^T (tiles x C), cut into input-channel
// blocks of plan.c_block, each a run of mr-tile panels (c-major, mr lanes).
struct PackedV {
  float* data;
  int64_t tiles_padded, channels, mr, c_block, stride;
  PackedV(float* data_, const WinogradPlan& plan, int64_t tiles)
      : data(data_),
        tiles_padded((tiles + plan.mr - 1) / plan.mr * plan.mr),
        channels(plan.p.in_channels),
        mr(plan.mr),
        c_block(plan.c_block),
        stride(position_stride(tiles_padded * channels)) {}
  static int64_t size(const WinogradPlan& plan, int64_t tiles) {
    return kPositions *
           position_stride((tiles + plan.mr - 1) / plan.mr * plan.mr * plan.p.in_channels);
  }
  // Packed A of position xi, channels [c0, c0 + c_block), tiles from t0 (a
  // multiple of mr) on.
  float* block(int xi, int64_t c0, int64_t t0) const {
    const int64_t width = std::min(c_block, channels - c0);
    return data + xi * stride + c0 * tiles_padded + t0 * width;
  }
};

// Input channels per input-transform job of the cooperative schedule: their
// results are scattered together, so every (position, panel) of its
// L2-overflowing V receives one contiguous run of 8 * mr values instead of a
// short run per channel (measured: 14x14 planes about 10% faster). The independent
// schedule's V stays in L2: one channel at a time there keeps the group's
// transformed tiles in L1 (measured: 56-wide planes 10% faster).
constexpr int64_t kCooperativeGroup = 8;

// Copies the group's transformed tiles vt[c][xi][tile] (`count` channels,
// `tiles` tile-major values per position) into the mr lanes of each panel of
// V.block(xi, c0, ...) at channel offset `offset`; lanes past the last tile
// are zeroed. A constant mr makes each copy a vector move or two.
template <int64_t kMr>
void scatter_group(const float* vt, int64_t count, int64_t tiles, const PackedV& V, int64_t c0,
                   int64_t offset) {
  const int64_t mr = kMr > 0 ? kMr : V.mr;
  const int64_t width = std::min(V.c_block, V.channels - c0), step = mr * width;
  const int64_t full = tiles / mr * mr;
  for (int xi = 0; xi < kPositions; ++xi) {
    float* dst = V.block(xi, c0, 0) + offset * mr;
    for (int64_t t = 0; t < full; t += mr, dst += step)
      for (int64_t j = 0; j < count; ++j) {
        const float* src = vt + (j * kPositions + xi) * tiles + t;
        for (int64_t l = 0; l < mr; ++l) dst[j * mr + l] = src[l];
      }
    if (full < tiles)
      for (int64_t j = 0; j < count; ++j) {
        const float* src = vt + (j * kPositions + xi) * tiles + full;
        for (int64_t l = 0; l < mr; ++l) dst[j * mr + l] = full + l < tiles ? src[l] : 0.0f;
      }
  }
}

// Splits input rows by tile column, dst[j * stride + m] = row[4 * m + j -
// pad_left] (zero outside the row) for j < 6 and m < tiles_w: tile m's six
// inputs in six contiguous runs. Rows are short (tens of columns) and there
// are many, so the cost per row matters more than the cost per element.
#if defined(FASTCONV_WINOGRAD_AVX512)
// AVX-512: each group of 16 tiles is five masked loads straight from the row
// (lanes outside it read as zero, and are never touched), 14 permutes and six
// stores.
class RowSplitter {
 public:
  RowSplitter(const ConvParams& p, int64_t tw) : tw_(tw), pad_(p.pad_left), width_(p.in_w) {}
  void split(const float* row, float* dst, int64_t stride) const {
    // Lanes 0-7 of phase j from a pair of vectors: entries 4m + j.
    const __m512i pick0 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i one = _mm512_set1_epi32(1);
    // Lanes 0-7 of two vectors side by side; a vector moved on by one lane
    // with lane 0 or lane 1 of a second one shifted in. (All permutes: GCC 12
    // warns inside its own headers for the unmasked shuffle and align forms.)
    const __m512i halves =
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i shift_in0 =
        _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    const __m512i shift_in1 = _mm512_add_epi32(
        shift_in0, _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1));
    for (int64_t m0 = 0; m0 < tw_; m0 += 16) {
      // Entry e of the group is column 4 * m0 - pad + e.
      const int64_t first = 4 * m0 - pad_;
      const __m512 v0 = load(row, first), v1 = load(row, first + 16);
      const __m512 v2 = load(row, first + 32), v3 = load(row, first + 48);
      const __m512 v4 = load(row, first + 64);  // entries 64, 65 of the next group
      const __mmask16 mask = tw_ - m0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (tw_ - m0)) - 1);
      __m512i pick = pick0;
      __m512 phase[4];
      for (int j = 0; j < 4; ++j, pick = _mm512_add_epi32(pick, one)) {
        const __m512 lo = _mm512_permutex2var_ps(v0, pick, v1);
        const __m512 hi = _mm512_permutex2var_ps(v2, pick, v3);
        phase[j] = _mm512_permutex2var_ps(lo, halves, hi);
        _mm512_mask_storeu_ps(dst + j * stride + m0, mask, phase[j]);
      }
      // Phases 4 and 5 are phases 0 and 1 one tile on: shift in entries 64, 65.
      const __m512 p4 = _mm512_permutex2var_ps(phase[0], shift_in0, v4);
      const __m512 p5 = _mm512_permutex2var_ps(phase[1], shift_in1, v4);
      _mm512_mask_storeu_ps(dst + 4 * stride + m0, mask, p4);
      _mm512_mask_storeu_ps(dst + 5 * stride + m0, mask, p5);
    }
  }

 private:
  // Columns [col, col + 16) of the row, zero outside [0, width). The address
  // is formed as an integer: col may lie before the row (its lanes masked).
  __m512 load(const float* row, int64_t col) const {
    const int64_t lo = std::clamp<int64_t>(-col, 0, 16);
    const int64_t hi = std::clamp<int64_t>(width_ - col, lo, 16);
    const __mmask16 mask = __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
    const auto* at = reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(row) +
                                                    static_cast<uintptr_t>(col * 4));
    return _mm512_maskz_loadu_ps(mask, at);
  }

  int64_t tw_, pad_, width_;
};
#else
// Portable: phases 0-3, then phases 0-3 one tile on (of which 4 and 5 are
// used; dst holds 8 runs).
class RowSplitter {
 public:
  RowSplitter(const ConvParams& p, int64_t tw)
      : width_(p.in_w), phases_(kTile, p.pad_left, tw), shifted_(kTile, p.pad_left - kTile, tw) {}
  void split(const float* row, float* dst, int64_t stride) const {
    fill_phase_row(row, width_, phases_, dst, stride);
    fill_phase_row(row, width_, shifted_, dst + kTile * stride, stride);
  }

 private:
  int64_t width_;
  PhaseLayout phases_, shifted_;
};
#endif

// Input transform of channels [c_first, c_first + count) (within one of V's
// channel blocks) for global tile rows [row0, row1) (row r is tile row
// r % tiles_h of image r / tiles_h) into the packed V. Both passes run over
// all tiles of the chunk at once, as long vectors: the six input rows of
// every tile row are split by column into P[i][j][tile] = input[row i][4 * m
// + j - pad_left] (RowSplitter); the row pass gives RT[i][b][tile], the
// column pass VT[c][a * 6 + b][tile], which is scattered into the panels.
// `scratch` holds input_scratch_floats(tiles, count) floats.
void winograd_input_transform(const float* input, const WinogradPlan& plan, int64_t c_first,
                              int64_t count, int64_t row0, int64_t row1, const PackedV& V,
                              float* scratch) {
  const ConvParams& p = plan.p;
  const int64_t C = p.in_channels, tw = plan.tiles_w;
  const int64_t span = (row1 - row0) * tw;  // the chunk's tiles
  float* P = scratch;                       // [i][j < 8][span]
  float* RT = P + kInTile * 8 * span;       // [i][b][span]
  float* VT = RT + kPositions * span;       // [c][a * 6 + b][span]
  const RowSplitter splitter(p, tw);
  for (int64_t c = c_first; c < c_first + count; ++c) {
    for (int64_t r = row0; r < row1; ++r) {
      const int64_t n = r / plan.tiles_h, ty = r % plan.tiles_h;
      const float* plane = input + (n * C + c) * p.in_plane();
      for (int i = 0; i < kInTile; ++i) {
        const int64_t ih = ty * kTile - p.pad_top + i;
        float* dst = P + i * 8 * span + (r - row0) * tw;
        if (ih < 0 || ih >= p.in_h) {
          for (int j = 0; j < kInTile; ++j) std::fill(dst + j * span, dst + j * span + tw, 0.0f);
        } else {
          splitter.split(plane + ih * p.in_w, dst, span);
        }
      }
    }
    // Row pass (along the width).
    for (int i = 0; i < kInTile; ++i) {
      const float* in = P + i * 8 * span;
      float* o = RT + i * kInTile * span;
      input_transform_1d(span, in, in + span, in + 2 * span, in + 3 * span, in + 4 * span,
                         in + 5 * span, o, o + span, o + 2 * span, o + 3 * span, o + 4 * span,
                         o + 5 * span);
    }
    // Column pass (across the six rows).
    float* vt = VT + (c - c_first) * kPositions * span;
    for (int b = 0; b < kInTile; ++b) {
      const float* d[6];
      for (int i = 0; i < kInTile; ++i) d[i] = RT + (i * kInTile + b) * span;
      float* out[6];
      for (int a = 0; a < kInTile; ++a) out[a] = vt + (a * 6 + b) * span;
      input_transform_1d(span, d[0], d[1], d[2], d[3], d[4], d[5], out[0], out[1], out[2], out[3],
                         out[4], out[5]);
    }
  }
  const int64_t c0 = c_first / V.c_block * V.c_block;
  switch (V.mr) {
    case 12:
      return scatter_group<12>(VT, count, span, V, c0, c_first - c0);
    case 6:
      return scatter_group<6>(VT, count, span, V, c0, c_first - c0);
    default:
      return scatter_group<0>(VT, count, span, V, c0, c_first - c0);
  }
}

int64_t input_scratch_floats(int64_t tiles, int64_t count) {
  return (48 + 36 + 36 * count) * tiles;
}

// Input channels in groups of `group` within each of V's channel blocks (the
// last group of a block may be smaller): the number of groups, and group g's
// channels [first, first + count) (count 0 past a short last block).
int64_t channel_groups(const WinogradPlan& plan, int64_t group) {
  const int64_t per_block = (plan.c_block + group - 1) / group;
  return per_block * ((plan.p.in_channels + plan.c_block - 1) / plan.c_block);
}
void channel_group(const WinogradPlan& plan, int64_t group, int64_t g, int64_t& first,
                   int64_t& count) {
  const int64_t per_block = (plan.c_block + group - 1) / group;
  const int64_t c0 = g / per_block * plan.c_block;
  const int64_t c1 = std::min(plan.p.in_channels, c0 + plan.c_block);
  first = std::min(c1, c0 + g % per_block * group);
  count = std::min(group, c1 - first);
}

// Output transform y = A^T m A of one tile for output channels [k0, k0 + lanes),
// A^T of F(4, 3) = [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1].
// m[xi] = M[xi][tile][k0 ...] (stride `position_stride` between positions);
// y[(i * 4 + j) * kLanes + l] receives output pixel (i, j) of channel k0 + l.
inline void output_transform_tile(const float* m, int64_t position_stride, int64_t lanes,
                                  float* y) {
  float s[kTile][6][kLanes];  // column pass: s[i][b] = sum_a A^T[i][a] m[a][b]
  for (int b = 0; b < 6; ++b) {
    const float* m0 = m + (0 * 6 + b) * position_stride;
    const float* m1 = m + (1 * 6 + b) * position_stride;
    const float* m2 = m + (2 * 6 + b) * position_stride;
    const float* m3 = m + (3 * 6 + b) * position_stride;
    const float* m4 = m + (4 * 6 + b) * position_stride;
    const float* m5 = m + (5 * 6 + b) * position_stride;
#pragma GCC ivdep
    for (int64_t l = 0; l < lanes; ++l) {
      const float s12 = m1[l] + m2[l], d12 = m1[l] - m2[l];
      s[0][b][l] = (m0[l] + s12) + (m3[l] + m4[l]);
      s[1][b][l] = d12 + 0.5f * m3[l] - 2.0f * m4[l];
      s[2][b][l] = s12 + 0.25f * m3[l] + 4.0f * m4[l];
      s[3][b][l] = (d12 + m5[l]) + 0.125f * m3[l] - 8.0f * m4[l];
    }
  }
  for (int i = 0; i < kTile; ++i) {
    const float(*r)[kLanes] = s[i];
    float* y0 = y + (i * kTile + 0) * kLanes;
    float* y1 = y0 + kLanes;
    float* y2 = y1 + kLanes;
    float* y3 = y2 + kLanes;
#pragma GCC ivdep
    for (int64_t l = 0; l < lanes; ++l) {
      const float s12 = r[1][l] + r[2][l], d12 = r[1][l] - r[2][l];
      y0[l] = (r[0][l] + s12) + (r[3][l] + r[4][l]);
      y1[l] = d12 + 0.5f * r[3][l] - 2.0f * r[4][l];
      y2[l] = s12 + 0.25f * r[3][l] + 4.0f * r[4][l];
      y3[l] = (d12 + r[5][l]) + 0.125f * r[3][l] - 8.0f * r[4][l];
    }
  }
}

// Output transform of the chunk's tiles [t0, t1) (chunk tile t is tile column
// t % tiles_w of global tile row row0 + t / tiles_w) for output channels
// [k0, k0 + kn): M[xi][t - t0][k - k0] at M + xi * m_stride, `ldm` apart per
// tile.
void winograd_output_tiles(const float* M, int64_t m_stride, int64_t ldm, const float* bias,
                           float* output, const WinogradPlan& plan, int64_t row0, int64_t t0,
                           int64_t t1, int64_t k0, int64_t kn) {
  const ConvParams& p = plan.p;
  const int64_t K = p.out_channels, tw = plan.tiles_w;
  alignas(64) float y[kTile * kTile * kLanes];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = row0 + t / tw, tx = t % tw;
    const int64_t n = r / plan.tiles_h, ty = r % plan.tiles_h;
    const int64_t rows = std::min<int64_t>(kTile, p.out_h - ty * kTile);
    const int64_t cols = std::min<int64_t>(kTile, p.out_w - tx * kTile);
    for (int64_t l0 = 0; l0 < kn; l0 += kLanes) {
      const int64_t lanes = std::min(kLanes, kn - l0);
      output_transform_tile(M + (t - t0) * ldm + l0, m_stride, lanes, y);
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t k = k0 + l0 + l;
        const float b0 = bias != nullptr ? bias[k] : 0.0f;
        float* out = output + (n * K + k) * p.out_plane() + (ty * kTile) * p.out_w + tx * kTile;
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j)
            out[i * p.out_w + j] = y[(i * kTile + j) * kLanes + l] + b0;
      }
    }
  }
}

// The calling thread's workspace, kept for its next call: fresh pages for
// these tens of MB would cost more than the transforms. Grown before the
// parallel region (an allocation failure must not escape it).
float* winograd_workspace(int64_t floats) {
  static thread_local AlignedBuffer<float> buffer;
  buffer.resize(static_cast<size_t>(floats));
  return buffer.data();
}

// Small filters (all 36 x C x K transformed filters within a few MB) and
// enough tiles: the filters are transformed once, and each thread runs whole
// chunks of tile rows on its own -- transform, GEMMs (M[xi] = V[xi]^T @ U[xi],
// all K at once), output transform -- so a chunk's data stay in its core's L2.
void winograd_independent(const float* input, const FilterView& weight, const float* bias,
                          float* output, const WinogradPlan& plan, int threads) {
  const ConvParams& p = plan.p;
  const int64_t C = p.in_channels, K = p.out_channels;
  const int64_t total_rows = p.batch * plan.tiles_h;
  const int64_t c_block = plan.c_block;
  const int64_t k_pad = gemm_packed_b_layout<float>(C, K).n_padded;
  const int64_t kb = 32;  // output channels per filter-transform job
  // Chunks: V and M of about 1 MB (measured: 1 MB beats 2 MB by ~10% on the
  // 56- and 112-wide layers), at least one per thread, all equal.
  const int64_t per_tile_bytes = kPositions * (C + K) * 4;
  const int64_t target_rows =
      std::max<int64_t>(1, ((int64_t(1) << 20) / per_tile_bytes) / plan.tiles_w);
  const int64_t chunks = std::max<int64_t>(threads, (total_rows + target_rows - 1) / target_rows);
  const int64_t chunk_rows = (total_rows + chunks - 1) / chunks;
  const int64_t max_tiles = chunk_rows * plan.tiles_w;
  const int64_t c_jobs = (C + c_block - 1) / c_block;
  const int64_t u_stride = position_stride(c_block * k_pad);
  const int64_t u_size = c_jobs * kPositions * u_stride;
  const int64_t filter_scratch = filter_scratch_floats(kb);
  const int64_t m_stride = position_stride(max_tiles * K);
  const int64_t v_size = PackedV::size(plan, max_tiles), m_size = kPositions * m_stride;
  const int64_t in_size = input_scratch_floats(max_tiles, 1);
  const int64_t per_thread =
      round16(filter_scratch) + round16(v_size) + round16(m_size) + round16(in_size);
  float* const U = winograd_workspace(round16(u_size) + threads * per_thread);
  const auto block_u = [&](int64_t c0) { return U + (c0 / c_block) * kPositions * u_stride; };
#pragma omp parallel num_threads(threads)
  {
    float* const mine = U + round16(u_size) + omp_get_thread_num() * per_thread;
    float* const V = mine + round16(filter_scratch);
    float* const M = V + round16(v_size);
    float* const in_scratch = M + round16(m_size);
    // 1. Filters, per (input-channel block, output-channel block): U for
    //    input-channel block c0 holds 36 pre-packed (c1 - c0) x K matrices.
    const int64_t k_jobs = (K + kb - 1) / kb;
#pragma omp for schedule(static)
    for (int64_t job = 0; job < k_jobs * c_jobs; ++job) {
      const int64_t c0 = (job / k_jobs) * c_block, c1 = std::min(C, c0 + c_block);
      const int64_t k0 = (job % k_jobs) * kb;
      const PackedBLayout layout = gemm_packed_b_layout<float>(c1 - c0, K);
      winograd_filter_transform(weight, c0, c1, k0, std::min(kb, K - k0), layout, k0, block_u(c0),
                                u_stride, mine);
    }
    // 2. Chunks, each on one thread.
#pragma omp for schedule(static)
    for (int64_t row0 = 0; row0 < total_rows; row0 += chunk_rows) {
      const int64_t row1 = std::min(total_rows, row0 + chunk_rows);
      const int64_t tiles = (row1 - row0) * plan.tiles_w;
      const PackedV packed(V, plan, tiles);
      for (int64_t c = 0; c < C; ++c)
        winograd_input_transform(input, plan, c, 1, row0, row1, packed, in_scratch);
      for (int64_t c0 = 0; c0 < C; c0 += c_block) {
        const int64_t c1 = std::min(C, c0 + c_block);
        for (int xi = 0; xi < kPositions; ++xi) {
          GemmProblem<float> pr;
          pr.m = tiles;
          pr.n = K;
          pr.k = c1 - c0;
          pr.beta = c0 == 0 ? 0.0f : 1.0f;
          pr.packed_a = packed.block(xi, c0, 0);
          pr.packed_b = block_u(c0) + xi * u_stride;
          pr.c = {M + xi * m_stride, K, 1};
          gemm(pr, 1);
        }
      }
      winograd_output_tiles(M, m_stride, K, bias, output, plan, row0, 0, tiles, 0, K);
    }
  }
}

// Large filters or few tiles (narrow planes): all threads work on every chunk
// of tile rows (which may span many images) in phases -- input transform split
// by channel, packing split by position, then jobs of (output-channel block,
// tile part) that each transform their block of filters into an L2-sized
// pre-packed B and run its 36 GEMMs and output transform, so the transformed
// filters never travel through memory.
void winograd_cooperative(const float* input, const FilterView& weight, const float* bias,
                          float* output, const WinogradPlan& plan, int threads) {
  const ConvParams& p = plan.p;
  const int64_t C = p.in_channels, K = p.out_channels;
  const int64_t total_rows = p.batch * plan.tiles_h;
  const GemmKernelInfo<float> kernel = gemm_kernel<float>();
  const int64_t mr = kernel.mr, kb = std::min(K, std::max<int64_t>(kernel.nr, 32));
  const int64_t k_blocks = (K + kb - 1) / kb;
  // Tile parts per chunk: enough jobs for every thread when K is narrow.
  const int64_t parts = std::max<int64_t>(1, (threads + k_blocks - 1) / k_blocks);
  // Tile rows per chunk: transformed tiles V within ~4 MB, and at least ~96
  // tiles (8 micro-tile rows of the GEMM) per part. Equal chunks (never a
  // full one and a sliver: each chunk transforms the filters anew).
  const int64_t per_tile_bytes = kPositions * C * 4;
  const int64_t chunk_tiles = std::max<int64_t>((int64_t(4) << 20) / per_tile_bytes, 96 * parts);
  const int64_t chunks =
      std::max<int64_t>(1, total_rows / std::max<int64_t>(1, chunk_tiles / plan.tiles_w));
  const int64_t chunk_rows = (total_rows + chunks - 1) / chunks;
  const int64_t max_tiles = chunk_rows * plan.tiles_w;
  // Parts are cut on whole micro-tiles (mr tiles): one may exceed an equal
  // share by mr.
  const int64_t max_part = (max_tiles + parts - 1) / parts + mr;
  const int64_t c_block = plan.c_block;
  const PackedBLayout layout = gemm_packed_b_layout<float>(c_block, kb);
  const int64_t v_size = PackedV::size(plan, max_tiles);
  const int64_t u_stride = position_stride(layout.size());
  const int64_t u_size = kPositions * u_stride + filter_scratch_floats(kb);
  const int64_t m_stride = position_stride(max_part * kb);
  const int64_t m_size = kPositions * m_stride;
  const int64_t in_size = input_scratch_floats(max_tiles, kCooperativeGroup);
  const int64_t per_thread = round16(u_size) + round16(m_size) + round16(in_size);
  float* const V = winograd_workspace(round16(v_size) + threads * per_thread);
  float* const scratch = V + round16(v_size);
#pragma omp parallel num_threads(threads)
  {
    float* const U = scratch + omp_get_thread_num() * per_thread;
    float* const M = U + round16(u_size);
    float* const in_scratch = M + round16(m_size);
    for (int64_t row0 = 0; row0 < total_rows; row0 += chunk_rows) {
      const int64_t row1 = std::min(total_rows, row0 + chunk_rows);
      const int64_t tiles = (row1 - row0) * plan.tiles_w;
      // Part q holds tiles [bound(q), bound(q + 1)), cut on whole micro-tiles.
      const auto bound = [&](int64_t q) {
        return std::min(tiles, (tiles * q / parts + mr - 1) / mr * mr);
      };
      const PackedV packed(V, plan, tiles);
      // 1. Input transform, split by channel group, straight into the packed V.
#pragma omp for schedule(static)
      for (int64_t g = 0; g < channel_groups(plan, kCooperativeGroup); ++g) {
        int64_t first, count;
        channel_group(plan, kCooperativeGroup, g, first, count);
        if (count > 0)
          winograd_input_transform(input, plan, first, count, row0, row1, packed, in_scratch);
      }
      // 2. Per (block of output channels, part): filter transform, 36 GEMMs
      //    M[xi] (part tiles x kb) = V[xi]^T @ U[xi], output transform. One
      //    K block of the GEMMs at a time (V's input-channel blocks):
      //    the transformed filters of a block stay in L2 for its 36 GEMMs.
#pragma omp for schedule(dynamic, 1)
      for (int64_t job = 0; job < k_blocks * parts; ++job) {
        const int64_t k0 = (job / parts) * kb, kn = std::min(kb, K - k0);
        const int64_t q = job % parts, t0 = bound(q), t1 = bound(q + 1);
        if (t0 >= t1) continue;
        for (int64_t c0 = 0; c0 < C; c0 += c_block) {
          const int64_t c1 = std::min(C, c0 + c_block);
          const PackedBLayout block = gemm_packed_b_layout<float>(c1 - c0, kb);
          winograd_filter_transform(weight, c0, c1, k0, kn, block, 0, U, u_stride,
                                    U + kPositions * u_stride);
          for (int xi = 0; xi < kPositions; ++xi) {
            GemmProblem<float> pr;
            pr.m = t1 - t0;
            pr.n = kn;
            pr.k = c1 - c0;
            pr.beta = c0 == 0 ? 0.0f : 1.0f;
            pr.packed_a = packed.block(xi, c0, t0);
            pr.packed_b = U + xi * u_stride;
            pr.c = {M + xi * m_stride, kb, 1};
            gemm(pr, 1);
          }
        }
        winograd_output_tiles(M, m_stride, kb, bias, output, plan, row0, t0, t1, k0, kn);
      }
    }
  }
}

void winograd_forward(const float* input, const FilterView& weight, const float* bias,
                      float* output, const ConvParams& p) {
  // V's input-channel blocks are the K blocks the GEMM cuts its depth into.
  const WinogradPlan plan{p, (p.out_h + kTile - 1) / kTile, (p.out_w + kTile - 1) / kTile,
                          gemm_kernel<float>().mr,
                          gemm_packed_b_layout<float>(p.in_channels, 1).kc};
  const int threads = threads_for(static_cast<int64_t>(p.flops()), int64_t(1) << 21);
  const int64_t filter_bytes = kPositions * p.in_channels * p.out_channels * 4;
  const int64_t tiles = p.batch * plan.tiles_h * plan.tiles_w;
  if (filter_bytes <= (int64_t(4) << 20) && tiles >= 64 * threads)
    winograd_independent(input, weight, bias, output, plan, threads);
  else
    winograd_cooperative(input, weight, bias, output, plan, threads);
}

}  // namespace
}  // namespace fastconv
