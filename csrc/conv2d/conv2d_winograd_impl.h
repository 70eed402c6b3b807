// Winograd F(4x4, 3x3) for 3x3, stride-1, dilation-1, ungrouped float32
// convolutions (Lavin & Gray). Each 4x4 output tile costs 36 multiplies per
// (input, output) channel pair instead of 144: the element-wise products of the
// 36 transformed positions are 36 GEMMs (K x C) @ (C x tiles) on the project's
// GEMM, with the filter transform packed once per call and reused by every
// image.
//
// Input and output transforms run on whole rows of tiles at once: each input
// row is split by column phase (iw mod 4), so tile j's six inputs are
// P0[j], P1[j], P2[j], P3[j], P0[j+1], P1[j+1] -- contiguous runs over j that
// the compiler vectorises (this header is compiled twice: baseline and AVX2).
//
// Included by exactly one translation unit per ISA; everything lives in an
// anonymous namespace so the two builds never share a symbol.
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/parallel.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_common.h"
#include "gemm/gemm.h"

namespace fastconv {
namespace {

constexpr int kTile = 4, kInTile = 6, kPositions = 36;

// U[xi][k][c] = (G g G^T)[xi] for the 6x3 G of F(4, 3). Vectorised over c:
// the weights are first regrouped as g[k][tap][c].
std::vector<float> winograd_filter_transform(const float* weight, int64_t k_count,
                                             int64_t c_count) {
  static const float G[6][3] = {{1.0f / 4, 0, 0},
                                {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                                {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                {1.0f / 24, -1.0f / 12, 1.0f / 6},
                                {0, 0, 1}};
  std::vector<float> u(static_cast<size_t>(kPositions * k_count * c_count));
  std::vector<float> g(static_cast<size_t>(9 * c_count)), gg(static_cast<size_t>(18 * c_count));
  for (int64_t k = 0; k < k_count; ++k) {
    for (int64_t c = 0; c < c_count; ++c)
      for (int t = 0; t < 9; ++t) g[t * c_count + c] = weight[(k * c_count + c) * 9 + t];
    // gg[a][j] = sum_i G[a][i] g[i][j]  (G g, 6x3), each entry a vector over c
    for (int a = 0; a < 6; ++a)
      for (int j = 0; j < 3; ++j) {
        float* dst = gg.data() + (a * 3 + j) * c_count;
        const float *g0 = g.data() + j * c_count, *g1 = g0 + 3 * c_count, *g2 = g0 + 6 * c_count;
#pragma GCC ivdep
        for (int64_t c = 0; c < c_count; ++c)
          dst[c] = G[a][0] * g0[c] + G[a][1] * g1[c] + G[a][2] * g2[c];
      }
    // U[a][b] = sum_j gg[a][j] G[b][j]
    for (int a = 0; a < 6; ++a)
      for (int b = 0; b < 6; ++b) {
        float* dst = u.data() + ((a * 6 + b) * k_count + k) * c_count;
        const float* h0 = gg.data() + (a * 3) * c_count;
        const float *h1 = h0 + c_count, *h2 = h0 + 2 * c_count;
#pragma GCC ivdep
        for (int64_t c = 0; c < c_count; ++c)
          dst[c] = h0[c] * G[b][0] + h1[c] * G[b][1] + h2[c] * G[b][2];
      }
  }
  return u;
}

// B^T of F(4, 3) applied to six vectors d0..d5 of n lanes: t_a = sum_i B^T[a][i] d_i.
inline void input_transform_1d(int64_t n, const float* d0, const float* d1, const float* d2,
                               const float* d3, const float* d4, const float* d5, float* t0,
                               float* t1, float* t2, float* t3, float* t4, float* t5) {
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const float a = d1[j], b = d2[j], c = d3[j], e = d4[j];
    t0[j] = 4.0f * d0[j] - 5.0f * b + e;
    t1[j] = -4.0f * (a + b) + (c + e);
    t2[j] = 4.0f * (a - b) + (e - c);
    t3[j] = 2.0f * (c - a) + (e - b);
    t4[j] = 2.0f * (a - c) + (e - b);
    t5[j] = 4.0f * a - 5.0f * c + d5[j];
  }
}

struct WinogradPlan {
  const ConvParams& p;
  int64_t tiles_h, tiles_w;
  int64_t block_rows;  // rows of tiles per task
  int64_t phase_len;   // entries per column phase of a split input row
};

// One task: rows [ty0, ty1) of tiles of image n.
void winograd_block(const float* input, const float* packed_u, const float* bias, float* output,
                    const WinogradPlan& plan, int64_t n, int64_t ty0, int64_t ty1,
                    AlignedBuffer<float>& v_buf, AlignedBuffer<float>& m_buf,
                    std::vector<float>& rows, std::vector<float>& row_t,
                    std::vector<float>& out_t) {
  const ConvParams& p = plan.p;
  const int64_t C = p.in_channels, K = p.out_channels, tw = plan.tiles_w;
  const int64_t tiles = (ty1 - ty0) * tw;
  const int64_t L = plan.phase_len;
  const PhaseLayout phase4(kTile, p.pad_left, L);  // input rows split by iw mod 4
  v_buf.resize(static_cast<size_t>(kPositions * C * tiles));
  m_buf.resize(static_cast<size_t>(kPositions * K * tiles));
  float* V = v_buf.data();
  float* M = m_buf.data();
  rows.resize(static_cast<size_t>(kInTile * kTile * L));
  row_t.resize(static_cast<size_t>(kInTile * kInTile * tw));
  out_t.resize(static_cast<size_t>(28 * tw));

  // 1. Input transform: V[xi][c][tile].
  for (int64_t c = 0; c < C; ++c) {
    const float* plane = input + (n * C + c) * p.in_plane();
    for (int64_t ty = ty0; ty < ty1; ++ty) {
      // Six input rows of this tile row, each split by column phase iw mod 4.
      for (int i = 0; i < kInTile; ++i) {
        const int64_t ih = ty * kTile - p.pad_top + i;
        float* dst = rows.data() + i * kTile * L;
        if (ih < 0 || ih >= p.in_h) {
          std::fill(dst, dst + kTile * L, 0.0f);
        } else {
          fill_phase_row(plane + ih * p.in_w, p.in_w, phase4, dst);
        }
      }
      // Row transforms (along the width): row i's six outputs go to
      // row_t[(i * 6 + b) * tw + j].
      float* rowt = row_t.data();
      for (int i = 0; i < kInTile; ++i) {
        const float* r = rows.data() + i * kTile * L;
        float* o = rowt + i * kInTile * tw;
        input_transform_1d(tw, r, r + L, r + 2 * L, r + 3 * L, r + 1, r + L + 1, o, o + tw,
                           o + 2 * tw, o + 3 * tw, o + 4 * tw, o + 5 * tw);
      }
      // Column transforms (across the six rows) straight into V.
      const int64_t tile0 = (ty - ty0) * tw;
      for (int b = 0; b < kInTile; ++b) {
        const float* d[6];
        for (int i = 0; i < kInTile; ++i) d[i] = rowt + (i * kInTile + b) * tw;
        float* out[6];
        for (int a = 0; a < kInTile; ++a) out[a] = V + ((a * 6 + b) * C + c) * tiles + tile0;
        input_transform_1d(tw, d[0], d[1], d[2], d[3], d[4], d[5], out[0], out[1], out[2], out[3],
                           out[4], out[5]);
      }
    }
  }

  // 2. 36 GEMMs: M[xi] (K x tiles) = U[xi] (K x C) @ V[xi] (C x tiles).
  const int64_t packed_size = gemm_packed_a_size<float>(K, C);
  for (int xi = 0; xi < kPositions; ++xi) {
    GemmProblem<float> pr;
    pr.m = K;
    pr.n = tiles;
    pr.k = C;
    pr.packed_a = packed_u + xi * packed_size;
    pr.b = {V + xi * C * tiles, tiles, 1};
    pr.c = {M + xi * K * tiles, tiles, 1};
    gemm(pr, 1);
  }

  // 3. Output transform: y = A^T m A per tile, with A^T of F(4, 3):
  //   [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
  std::vector<float>& ot = out_t;  // 4 x 6 column-pass rows, then 4 phases of y
  for (int64_t k = 0; k < K; ++k) {
    const float b0 = bias ? bias[k] : 0.0f;
    float* plane = output + (n * K + k) * p.out_plane();
    for (int64_t ty = ty0; ty < ty1; ++ty) {
      const int64_t tile0 = (ty - ty0) * tw;
      // Column pass: for each b, the 4 combinations of the 6 rows a.
      for (int b = 0; b < 6; ++b) {
        const float* m[6];
        for (int a = 0; a < 6; ++a) m[a] = M + ((a * 6 + b) * K + k) * tiles + tile0;
        float* o0 = ot.data() + (0 * 6 + b) * tw;
        float* o1 = ot.data() + (1 * 6 + b) * tw;
        float* o2 = ot.data() + (2 * 6 + b) * tw;
        float* o3 = ot.data() + (3 * 6 + b) * tw;
#pragma GCC ivdep
        for (int64_t j = 0; j < tw; ++j) {
          const float s12 = m[1][j] + m[2][j], d12 = m[1][j] - m[2][j];
          const float s34 = m[3][j] + m[4][j], d34 = m[3][j] - m[4][j];
          o0[j] = m[0][j] + s12 + s34;
          o1[j] = d12 + 2.0f * d34;
          o2[j] = s12 + 4.0f * s34;
          o3[j] = d12 + 8.0f * d34 + m[5][j];
        }
      }
      // Row pass per output row i, then interleave the 4 column phases.
      float* y = ot.data() + 24 * tw;  // 4 phases x tw
      for (int i = 0; i < kTile; ++i) {
        const int64_t oh = ty * kTile + i;
        if (oh >= p.out_h) break;
        const float* r[6];
        for (int b = 0; b < 6; ++b) r[b] = ot.data() + (i * 6 + b) * tw;
#pragma GCC ivdep
        for (int64_t j = 0; j < tw; ++j) {
          const float s12 = r[1][j] + r[2][j], d12 = r[1][j] - r[2][j];
          const float s34 = r[3][j] + r[4][j], d34 = r[3][j] - r[4][j];
          y[j] = r[0][j] + s12 + s34 + b0;
          y[tw + j] = d12 + 2.0f * d34 + b0;
          y[2 * tw + j] = s12 + 4.0f * s34 + b0;
          y[3 * tw + j] = d12 + 8.0f * d34 + r[5][j] + b0;
        }
        float* out_row = plane + oh * p.out_w;
        const int64_t full = p.out_w / kTile;
        for (int64_t j = 0; j < full; ++j)
          for (int q = 0; q < kTile; ++q) out_row[j * kTile + q] = y[q * tw + j];
        for (int64_t ow = full * kTile; ow < p.out_w; ++ow)
          out_row[ow] = y[(ow % kTile) * tw + ow / kTile];
      }
    }
  }
}

void winograd_forward(const float* input, const float* weight, const float* bias, float* output,
                      const ConvParams& p) {
  const int64_t C = p.in_channels, K = p.out_channels;
  // Filter transform once per call, shared by every image and thread.
  const std::vector<float> u = winograd_filter_transform(weight, K, C);
  const int64_t packed_size = gemm_packed_a_size<float>(K, C);
  std::vector<float> packed(static_cast<size_t>(kPositions * packed_size));
  for (int xi = 0; xi < kPositions; ++xi)
    gemm_pack_a<float>({u.data() + xi * K * C, C, 1}, K, C, packed.data() + xi * packed_size);

  WinogradPlan plan{p, (p.out_h + kTile - 1) / kTile, (p.out_w + kTile - 1) / kTile, 1, 0};
  plan.phase_len = plan.tiles_w + 2;
  // Tiles per task: enough for the GEMMs' N (>= ~64), transformed data within ~1 MB.
  const int64_t per_tile_bytes = kPositions * (C + K) * 4;
  const int64_t target_tiles = std::clamp<int64_t>((int64_t(1) << 20) / per_tile_bytes, 16, 256);
  plan.block_rows = std::clamp<int64_t>(target_tiles / plan.tiles_w, 1, plan.tiles_h);
  const int64_t blocks_per_image = (plan.tiles_h + plan.block_rows - 1) / plan.block_rows;
  const int64_t tasks = p.batch * blocks_per_image;
  const int threads = static_cast<int>(
      std::min<int64_t>(threads_for(static_cast<int64_t>(p.flops()), int64_t(1) << 21), tasks));
  // Per-thread buffers at their largest sizes, allocated before the parallel
  // region (an allocation failure must not escape it).
  const int64_t max_tiles = plan.block_rows * plan.tiles_w;
  std::vector<AlignedBuffer<float>> v_bufs(static_cast<size_t>(threads)),
      m_bufs(static_cast<size_t>(threads));
  std::vector<std::vector<float>> rows_bufs(static_cast<size_t>(threads)),
      row_t_bufs(static_cast<size_t>(threads)), out_t_bufs(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    v_bufs[t].resize(static_cast<size_t>(kPositions * C * max_tiles));
    m_bufs[t].resize(static_cast<size_t>(kPositions * K * max_tiles));
    rows_bufs[t].resize(static_cast<size_t>(kInTile * kTile * plan.phase_len));
    row_t_bufs[t].resize(static_cast<size_t>(kInTile * kInTile * plan.tiles_w));
    out_t_bufs[t].resize(static_cast<size_t>(28 * plan.tiles_w));
  }
#pragma omp parallel num_threads(threads)
  {
    const size_t me = static_cast<size_t>(omp_get_thread_num());
    AlignedBuffer<float>& v_buf = v_bufs[me];
    AlignedBuffer<float>& m_buf = m_bufs[me];
    std::vector<float>& rows = rows_bufs[me];
    std::vector<float>& row_t = row_t_bufs[me];
    std::vector<float>& out_t = out_t_bufs[me];
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n = task / blocks_per_image, b = task % blocks_per_image;
      const int64_t ty0 = b * plan.block_rows;
      const int64_t ty1 = std::min(plan.tiles_h, ty0 + plan.block_rows);
      winograd_block(input, packed.data(), bias, output, plan, n, ty0, ty1, v_buf, m_buf, rows,
                     row_t, out_t);
    }
  }
}

}  // namespace
}  // namespace fastconv
