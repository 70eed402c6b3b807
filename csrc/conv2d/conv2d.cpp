// Algorithm selection and dispatch for conv2d forward and backward.
#include "conv2d/conv2d.h"

#include <algorithm>
#include <atomic>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_features.h"
#include "kernel_table.h"

namespace fastconv {
namespace {

// The selectors' thresholds, all in one place, with what each was measured on.
// benchmarks/fit_selector.py times every algorithm on a corpus sample and
// scores candidate values of each through set_conv_tuning_values.
struct ConvTuning {
  // At most this many input channels per group: the direct kernel beats
  // implicit GEMM, whose packing cost is amortised over too short a reduction.
  int64_t direct_max_in_per_group = 4;
  // Output rows at least this wide also run direct: it skips GEMM's im2col
  // packing, which costs most on small planes with big kernels. Measured on the
  // corpus layers implicit GEMM chose before (batch 8, forward, GEMM time /
  // direct time): 5x5 and 7x7 kernels 1.3-2.9x (AVX-512) and 1.1-1.9x (AVX2);
  // 3x3 on 4x4 to 28x28 outputs 0.93-1.39x (AVX-512), 0.79-1.22x (AVX2); 3x3 on
  // 2x2 outputs 0.47x, so those stay GEMM. Not for 1x1 kernels (strided or
  // padded): their im2col is a plain strided copy, and GEMM measured faster
  // (0.37-1.18x, geomean 0.76x).
  int64_t direct_min_out_w = 3;
  // ...except on small planes over a batch of at least this many output pixels,
  // where implicit GEMM's small-plane path (an explicit im2col of several
  // images) wins: strided layers with outputs at most 4 wide, and layers with
  // outputs at most 8 wide and at least 256 input channels per group. Measured
  // on a grid (one thread, Intel Xeon; direct time / GEMM time): 4x4 outputs,
  // stride 2, C32-512, batch 8 and 32: 1.31-1.96; stride 1: C32-128 0.79-0.97,
  // C256-512 1.12-1.90; 8x8 outputs, stride 2: C32-128 0.69-0.98, C256-512
  // 1.11-1.59; stride 1: C32-512 0.40-0.98. Batch 1's 16 pixels stay direct
  // (N1 C512 8x8 -> 4x4 stride 2: 2.2 against 2.7 ms).
  int64_t small_plane_gemm_min_pixels = 128;
  // 1x1 layers with fewer output pixels per image than this (but more than the
  // one the single-pixel path batches) run implicit GEMM, whose small-plane
  // path puts several images in one GEMM; one GEMM per image would have a few
  // columns. Measured on the corpus sample (2 threads, Intel Xeon; pointwise
  // time / implicit GEMM time): 2x2 planes, batch 8-32, 80-480 channels
  // 1.71-2.54; 4x4, batch 32: 1.13-1.44, batch 8: 0.90, batch 1: 0.29.
  int64_t pointwise_gemm_min_pixels = 16;
  int64_t strided_gemm_max_out_w = 4;
  int64_t wide_gemm_max_out_w = 8;
  int64_t wide_gemm_min_in_per_group = 256;
  // Winograd F(4x4, 3x3) where it wins: its GEMMs put the tiles of several
  // images on the M side, so planes down to 7x7 (2 x 2 tiles) win against
  // implicit GEMM and direct (measured on the layer set with the AVX2 and
  // AVX-512 kernels); the 36 GEMMs need channels.
  int64_t winograd_min_channels = 32;  // both in and out
  int64_t winograd_min_out_w = 7;
  int64_t winograd_min_out_h = 7;
  // The input gradient at stride 1 runs as a forward convolution of the
  // flipped problem (channel roles swapped) over at least this many input
  // pixels (batch x plane); on fewer, the forward kernels' rows are a few
  // pixels wide and GEMM + col2im wins. Measured on the corpus sample (2
  // threads, Intel Xeon; transposed time / col2im time): batch 1 VGG 2x2-8x8
  // with 128-512 channels 2.2-4.2, 8 images of 2x2 1.2-2.3, 144 pixels
  // 1.2-2.6; 169-196 pixels 0.6-0.99. The input-gradient scatter ("direct")
  // is never picked: on few outputs per group, where it was, the flipped
  // forward beat it 2-8x (ResNeXt's 4 per group, N8 C128 56x56: 6.1 against
  // 24 ms).
  int64_t input_grad_transposed_min_pixels = 160;
  // Weight gradient: the gathered-A kernel reads im2col in place, one output
  // row at a time, so it wants rows at least this wide; 1x1 kernels (and
  // narrower rows) run as GEMM, whose pixel tiles span images...
  int64_t direct_weight_grad_min_out_w = 10;
  // ...except over several images with at least this many output pixels in
  // all, on rows at least this wide: there the GEMM's tiles are not enough to
  // amortise its packing. Measured on the corpus sample (2 threads, Intel
  // Xeon, direct time / GEMM time): N32 8x8 0.55-0.81, N32 4x4 C256 0.85,
  // N8 8x8 0.79; N8 7x7 C192-512 1.06-1.17, N8 4x4 C256-512 1.30-1.35 (AVX2)
  // stay GEMM; the held-out half's regret went from 1.037 to 1.034.
  int64_t direct_weight_grad_min_pixels = 512;
  // Problems under small_max_flops run direct from rows of this width, one
  // image or several: GEMM's packing does not pay there (the digits demo's 8x8
  // layers train 10% slower with GEMM; N1 C344 29x29 K16 5x5 stride 2 groups 8:
  // 1.1 against 3.5 ms). Held-out regret 1.034 -> 1.033 on the corpus samples.
  int64_t direct_weight_grad_min_out_w_small = 7;
  int64_t direct_weight_grad_min_out_w_many_pixels = 4;
  // A single image: the direct kernel's tasks are bands of one plane, and on
  // 14x14 planes implicit GEMM wins (2 threads, Intel Xeon, direct against GEMM:
  // C144 -> 288 1.92 against 1.57 ms, C256 -> 256 2.72 against 2.14; 28x28:
  // 1.38 against 1.75, so those stay direct; batch 8 on 14x14: 5.8 against 7.7).
  int64_t direct_weight_grad_min_out_w_single_image = 16;
  // Shorter reductions with at most this many output channels per group
  // (LeNet's 6) sum dot products over whole planes in vector lanes (LeNet's
  // first layer, N32: 0.17 ms against 0.29 direct and 0.37 as GEMM). On more
  // outputs the gathered-A kernel wins, short reduction or not (N128 C3 32x32
  // K32 3x3: 2.2 against 3.7 ms; N32 C3 224x224: 25 against 35), on either
  // dot tile (AVX-512's 4 x 6, AVX2's 3 x 4).
  int64_t dot_weight_grad_max_reduction = 64;
  int64_t narrow_weight_grad_max_out = 8;
  // Kernels with at least this many taps (5x5, 7x7) run the gathered-A kernel
  // on narrow rows too, for more than one image: implicit GEMM's columns there
  // are mostly padding (direct against GEMM: N8 C48 7x7 K128 5x5 1.2 against
  // 2.3 ms, N32 2x; N8 C32 7x7 K64 7x7 0.9 against 3.5; N32 C96 5x5 K48 5x5 3.0
  // against 8.9).
  int64_t direct_weight_grad_min_taps_any_width = 25;
  // Below this many FLOPs (a small CNN's layers: 32 images of 8x8 or 4x4),
  // Winograd's filter transform and phases and implicit GEMM's batched packing
  // cost more than they save: such layers run direct (measured 2x faster on
  // the digits demo's 32->32 8x8 and 32->64 4x4 layers).
  int64_t small_max_flops = 64000000;
  // Depthwise layers with output rows narrower than this run on channel blocks
  // (every lane busy on small planes); wider rows keep the row kernels, which
  // pack nothing. Measured with 8-pixel tiles (AVX-512) and 4 (AVX2), one
  // thread, Intel Xeon, alternating with torch (torch time / ours, blocks
  // against rows): forward N8 C144 56x56 1.67 against 1.31, C240 5x5 56x56
  // 4.9 against 0.77, N32 C144 28x28 1.53 against 0.95, AVX2 1.2-1.5; input
  // gradient at stride 1 5.0 against 7.9 ms (56x56), 7.2 against 11.7 ms
  // (28x28); weight gradient even; 112x112 even (1.45 against 1.51).
  int64_t depthwise_blocks_max_out_w = 64;
  // ...and whose padded block holds at most this many pixels (1 MB of float32
  // lanes per thread; the networks' layers need a few thousand).
  int64_t depthwise_blocks_max_pixels = 16384;
  // Depthwise layers with a channel multiplier (outputs per input channel) above
  // these run the general kernels, whose work per input pixel grows with the
  // outputs they share it with: measured on 16 channels, 3x3, batch 4, one
  // thread (Intel Xeon), multiplier 1 to 20:
  //  - forward: blocks beat direct up to 8 (14x14: 0.091 against 0.111 ms; 16:
  //    0.169 against 0.122), rows up to 4 (56x56: 0.48 against 0.50; 6: 0.63
  //    against 0.53; 20: 2.1 against 1.2);
  //  - input gradient: blocks and the direct scatter up to 6, GEMM + col2im
  //    above (56x56, 8: 2.2 against 2.4 ms; 20: 3.6 against 9.9);
  //  - weight gradient: the depthwise rows only for multiplier 1; from 2 on the
  //    general rules pick the dot-product tiles (56x56, 4: 0.85 against 0.37 ms;
  //    28x28, 8: 0.80 against 0.21; 14x14, 2: even).
  int64_t depthwise_blocks_max_multiplier = 8;
  int64_t depthwise_rows_max_multiplier = 4;
  int64_t depthwise_input_grad_max_multiplier = 6;
  int64_t depthwise_weight_grad_max_multiplier = 1;
};
constexpr std::pair<const char*, int64_t ConvTuning::*> kTuningFields[] = {
    {"direct_max_in_per_group", &ConvTuning::direct_max_in_per_group},
    {"direct_min_out_w", &ConvTuning::direct_min_out_w},
    {"small_plane_gemm_min_pixels", &ConvTuning::small_plane_gemm_min_pixels},
    {"pointwise_gemm_min_pixels", &ConvTuning::pointwise_gemm_min_pixels},
    {"strided_gemm_max_out_w", &ConvTuning::strided_gemm_max_out_w},
    {"wide_gemm_max_out_w", &ConvTuning::wide_gemm_max_out_w},
    {"wide_gemm_min_in_per_group", &ConvTuning::wide_gemm_min_in_per_group},
    {"winograd_min_channels", &ConvTuning::winograd_min_channels},
    {"winograd_min_out_w", &ConvTuning::winograd_min_out_w},
    {"winograd_min_out_h", &ConvTuning::winograd_min_out_h},
    {"input_grad_transposed_min_pixels", &ConvTuning::input_grad_transposed_min_pixels},
    {"direct_weight_grad_min_out_w", &ConvTuning::direct_weight_grad_min_out_w},
    {"direct_weight_grad_min_pixels", &ConvTuning::direct_weight_grad_min_pixels},
    {"direct_weight_grad_min_out_w_small", &ConvTuning::direct_weight_grad_min_out_w_small},
    {"direct_weight_grad_min_out_w_many_pixels",
     &ConvTuning::direct_weight_grad_min_out_w_many_pixels},
    {"direct_weight_grad_min_out_w_single_image",
     &ConvTuning::direct_weight_grad_min_out_w_single_image},
    {"dot_weight_grad_max_reduction", &ConvTuning::dot_weight_grad_max_reduction},
    {"narrow_weight_grad_max_out", &ConvTuning::narrow_weight_grad_max_out},
    {"direct_weight_grad_min_taps_any_width", &ConvTuning::direct_weight_grad_min_taps_any_width},
    {"small_max_flops", &ConvTuning::small_max_flops},
    {"depthwise_blocks_max_out_w", &ConvTuning::depthwise_blocks_max_out_w},
    {"depthwise_blocks_max_pixels", &ConvTuning::depthwise_blocks_max_pixels},
    {"depthwise_blocks_max_multiplier", &ConvTuning::depthwise_blocks_max_multiplier},
    {"depthwise_rows_max_multiplier", &ConvTuning::depthwise_rows_max_multiplier},
    {"depthwise_input_grad_max_multiplier", &ConvTuning::depthwise_input_grad_max_multiplier},
    {"depthwise_weight_grad_max_multiplier", &ConvTuning::depthwise_weight_grad_max_multiplier},
};

// Read by the selectors and the kernels they pick during a call; replaced only
// while no kernel runs (the bindings hold the tier lock exclusively for it).
ConvTuning& mutable_tuning() {
  static ConvTuning values;
  return values;
}
const ConvTuning& tuning() { return mutable_tuning(); }

// The input gradient of a stride-1 convolution is a stride-1 convolution of
// grad_output with the kernel flipped and in/out channels swapped per group.
ConvParams transposed_stride1_params(const ConvParams& p) {
  ConvParams t = p;
  t.in_channels = p.out_channels;
  t.in_h = p.out_h;
  t.in_w = p.out_w;
  t.out_channels = p.in_channels;
  t.out_h = p.in_h;
  t.out_w = p.in_w;
  // May be negative (padding wider than the dilated kernel): the kernels treat
  // pad_top/pad_left as plain offsets with bounds checks, so that is fine.
  t.pad_top = (p.kernel_h - 1) * p.dilation_h - p.pad_top;
  t.pad_left = (p.kernel_w - 1) * p.dilation_w - p.pad_left;
  return t;
}

void run_winograd(const float* input, const FilterView& weight, const float* bias, float* output,
                  const ConvParams& p) {
  cpu_kernels().winograd_f32(input, weight, bias, output, p);
}

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The first and last kernel index along one dimension whose tap reads the input
// (index o * stride + t * dilation - pad in [0, in)) for some output o < out;
// first > last when none does. Walks the shorter of the outputs and the taps, so
// a kernel far larger than the plane costs no more than its outputs.
std::pair<int64_t, int64_t> live_range(int64_t in, int64_t out, int64_t kernel, int64_t stride,
                                       int64_t pad, int64_t dilation) {
  int64_t first = kernel, last = -1;
  if (kernel <= out) {
    for (int64_t t = 0; t < kernel; ++t) {
      const int64_t offset = t * dilation - pad;
      const int64_t lo = std::max<int64_t>(0, -floor_div(offset, stride));
      const int64_t hi = std::min(out - 1, floor_div(in - 1 - offset, stride));
      if (lo <= hi) {
        first = std::min(first, t);
        last = t;
      }
    }
    return {first, last};
  }
  for (int64_t o = 0; o < out; ++o) {
    // Output o's taps read input indices o * stride - pad + t * dilation: the
    // first and last t that land in [0, in).
    const int64_t base = o * stride - pad;
    const int64_t t0 = std::max<int64_t>(0, -floor_div(base, dilation));
    const int64_t t1 = std::min(kernel - 1, floor_div(in - 1 - base, dilation));
    if (t0 <= t1) {
      first = std::min(first, t0);
      last = std::max(last, t1);
    }
  }
  return {first, last};
}

// Visits every tap of `live`'s kernel window: fn(index in the window's filters,
// index of the same tap in p's filters).
template <typename Fn>
void for_each_live_tap(const ConvParams& p, const ConvParams& live, Fn&& fn) {
  const int64_t r0 = (p.pad_top - live.pad_top) / p.dilation_h;
  const int64_t s0 = (p.pad_left - live.pad_left) / p.dilation_w;
  const int64_t filters = p.out_channels * p.in_per_group();
  for (int64_t f = 0; f < filters; ++f)
    for (int64_t r = 0; r < live.kernel_h; ++r)
      for (int64_t s = 0; s < live.kernel_w; ++s)
        fn((f * live.kernel_h + r) * live.kernel_w + s,
           (f * p.kernel_h + r0 + r) * p.kernel_w + s0 + s);
}

// The kernel window of `live` cut out of p's weights.
template <typename T>
std::vector<T> live_weight(const T* weight, const ConvParams& p, const ConvParams& live) {
  std::vector<T> w(static_cast<size_t>(p.out_channels * p.in_per_group() * live.taps()));
  for_each_live_tap(
      p, live, [&](int64_t in_window, int64_t in_kernel) { w[in_window] = weight[in_kernel]; });
  return w;
}

bool has_dead_taps(const ConvParams& p, const ConvParams& live) {
  return live.kernel_h != p.kernel_h || live.kernel_w != p.kernel_w;
}

template <typename T>
std::vector<T> flipped_transposed_weight(const T* weight, const ConvParams& p) {
  const int64_t kg = p.out_per_group(), cg = p.in_per_group(), taps = p.taps();
  std::vector<T> w(static_cast<size_t>(p.out_channels * cg * taps));
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t k = 0; k < kg; ++k)
      for (int64_t c = 0; c < cg; ++c)
        for (int64_t t = 0; t < taps; ++t)
          w[((g * cg + c) * kg + k) * taps + (taps - 1 - t)] =
              weight[((g * kg + k) * cg + c) * taps + t];
  return w;
}

}  // namespace

ConvParams canonical_geometry(const ConvParams& given) {
  ConvParams p = given;
  if (p.out_h == 1) p.stride_h = 1;
  if (p.out_w == 1) p.stride_w = 1;
  if (p.kernel_h == 1) p.dilation_h = 1;
  if (p.kernel_w == 1) p.dilation_w = 1;
  return p;
}

ConvParams live_taps(const ConvParams& given) {
  const ConvParams p = canonical_geometry(given);
  const auto [r0, r1] =
      live_range(p.in_h, p.out_h, p.kernel_h, p.stride_h, p.pad_top, p.dilation_h);
  const auto [s0, s1] =
      live_range(p.in_w, p.out_w, p.kernel_w, p.stride_w, p.pad_left, p.dilation_w);
  if (r0 > r1 || s0 > s1) return p;  // no tap reads the input: nothing to gain
  ConvParams live = p;
  live.kernel_h = r1 - r0 + 1;
  live.kernel_w = s1 - s0 + 1;
  live.pad_top = p.pad_top - r0 * p.dilation_h;
  live.pad_left = p.pad_left - s0 * p.dilation_w;
  // The kernels take non-negative padding; a window that would need less stays.
  if (live.pad_top < 0 || live.pad_left < 0) return p;
  return canonical_geometry(live);
}

bool depthwise_uses_blocks(const ConvParams& p) {
  const int64_t lanes = p.single_precision ? 16 : 8;  // a 64-byte block
  // The padded block spans every row and column a tap reads: with a large stride,
  // padding or dilation that is far more than the output (computed in double: it
  // may not fit in 64 bits); such layers keep the row kernels.
  const double rows = (p.out_h - 1) * static_cast<double>(p.stride_h) +
                      (p.kernel_h - 1) * static_cast<double>(p.dilation_h) + 1;
  const double cols = (p.out_w - 1) * static_cast<double>(p.stride_w) +
                      (p.kernel_w - 1) * static_cast<double>(p.dilation_w) + 1;
  return p.is_depthwise() && p.out_per_group() <= lanes &&
         p.out_w < tuning().depthwise_blocks_max_out_w &&
         rows * cols <= tuning().depthwise_blocks_max_pixels;
}

std::vector<std::pair<std::string, int64_t>> conv_tuning_values(bool defaults) {
  const ConvTuning source = defaults ? ConvTuning{} : tuning();
  std::vector<std::pair<std::string, int64_t>> values;
  for (const auto& [name, field] : kTuningFields) values.emplace_back(name, source.*field);
  return values;
}

void set_conv_tuning_values(const std::vector<std::pair<std::string, int64_t>>& values) {
  ConvTuning updated = tuning();
  for (const auto& [name, value] : values) {
    const auto* found = std::find_if(std::begin(kTuningFields), std::end(kTuningFields),
                                     [&](const auto& entry) { return name == entry.first; });
    if (found == std::end(kTuningFields))
      throw std::invalid_argument("unknown selector threshold '" + name + "'");
    if (value < 0)
      throw std::invalid_argument("selector threshold '" + name + "' must be non-negative");
    updated.*(found->second) = value;
  }
  mutable_tuning() = updated;
}

namespace {
// "high" by default: Winograd's error (README, numerics) is far below what float32
// training notices, and PyTorch's own default for convolutions on GPUs (TF32)
// is looser still.
std::atomic<int> default_precision{static_cast<int>(ConvPrecision::kHigh)};
thread_local std::optional<ConvPrecision> thread_precision;
}  // namespace

void set_default_conv_precision(ConvPrecision precision) {
  default_precision.store(static_cast<int>(precision), std::memory_order_relaxed);
}
ConvPrecision default_conv_precision() {
  return static_cast<ConvPrecision>(default_precision.load(std::memory_order_relaxed));
}
void set_thread_conv_precision(std::optional<ConvPrecision> precision) {
  thread_precision = precision;
}
std::optional<ConvPrecision> thread_conv_precision() { return thread_precision; }
bool conv_transforms_allowed() {
  return thread_precision.value_or(default_conv_precision()) == ConvPrecision::kHigh;
}

const char* conv_algorithm_name(ConvAlgorithm a) {
  return kConvAlgorithms[static_cast<int>(a)].name;
}

namespace {
// Whether p meets algorithm a's kConvAlgorithms requirement.
bool meets_requirement(ConvAlgorithm a, const ConvParams& p) {
  switch (a) {
    case ConvAlgorithm::kPointwiseGemm:
      return p.is_pointwise();
    case ConvAlgorithm::kDepthwise:  // the direct kernels are general,
    case ConvAlgorithm::kDirect:     // only slow where they are not chosen
    case ConvAlgorithm::kGemm:
    case ConvAlgorithm::kTapwise:
      return true;
    case ConvAlgorithm::kWinograd:
      return p.is_winograd_shape();
  }
  return false;
}
}  // namespace

// The direct and depthwise kernels size their phase-split or padded rows by the
// windows' reach; on a far-reaching window that is unbounded memory. (The
// implicit GEMM's panels and the tapwise loops are sized by the output.)
constexpr const char* kFarReachingRefusal =
    "its windows reach far beyond the input and output (stride, padding or dilation), "
    "and this algorithm's buffers grow with the reach";

std::string conv_algorithm_refusal(ConvAlgorithm a, const ConvParams& p) {
  if (!meets_requirement(a, p)) return kConvAlgorithms[static_cast<int>(a)].requirement;
  const bool sized_by_reach = a == ConvAlgorithm::kDirect || a == ConvAlgorithm::kDepthwise;
  if (sized_by_reach && is_far_reaching(p)) return kFarReachingRefusal;
  return "";
}

ConvAlgorithm select_conv_algorithm(const ConvParams& p) {
  if (is_far_reaching(p)) return ConvAlgorithm::kTapwise;
  // Depthwise first: a 1x1 depthwise layer is a per-channel scale, not a GEMM.
  if (p.is_depthwise() &&
      (p.taps() == 1 ||
       p.out_per_group() <= (depthwise_uses_blocks(p) ? tuning().depthwise_blocks_max_multiplier
                                                      : tuning().depthwise_rows_max_multiplier)))
    return ConvAlgorithm::kDepthwise;
  if (p.is_pointwise() &&
      (p.batch == 1 || p.out_plane() == 1 || p.out_plane() >= tuning().pointwise_gemm_min_pixels))
    return ConvAlgorithm::kPointwiseGemm;
  // At most kSmallNDotColumns output pixels over the whole batch (batch-1 VGG at
  // 2x2): implicit GEMM streams the weights once, in place, through the GEMM's
  // small-N path; the other kernels pack or transpose them first (C512 2x2 ->
  // 512 at batch 1: 2.5 ms direct, 0.38 ms so, 0.76 ms torch).
  if (p.groups == 1 && p.taps() > 1 && p.batch * p.out_plane() <= kSmallNDotColumns)
    return ConvAlgorithm::kGemm;
  const bool small = p.flops() < tuning().small_max_flops;
  // Winograd wins on every ISA tier (portable SSE2 kernels: resnet_3x3_28
  // 6.4 ms against 19 ms implicit GEMM and 23 ms direct).
  if (p.is_winograd_shape() && p.allow_transforms && !small &&
      std::min(p.in_channels, p.out_channels) >= tuning().winograd_min_channels &&
      p.out_w >= tuning().winograd_min_out_w && p.out_h >= tuning().winograd_min_out_h)
    return ConvAlgorithm::kWinograd;
  const bool small_plane_gemm =
      p.batch * p.out_plane() >= tuning().small_plane_gemm_min_pixels &&
      ((!p.is_unit_stride() && p.out_w <= tuning().strided_gemm_max_out_w) ||
       (p.out_w <= tuning().wide_gemm_max_out_w &&
        p.in_per_group() >= tuning().wide_gemm_min_in_per_group));
  if (p.in_per_group() <= tuning().direct_max_in_per_group ||
      ((p.out_w >= tuning().direct_min_out_w || small) && p.taps() > 1 && !small_plane_gemm))
    return ConvAlgorithm::kDirect;
  return ConvAlgorithm::kGemm;
}

template <typename T>
const char* conv2d_forward(const T* input, const T* weight, const T* bias, T* output,
                           const ConvParams& p, ConvAlgorithm algorithm) {
  const std::string refusal = conv_algorithm_refusal(algorithm, p);
  if (!refusal.empty())
    throw std::invalid_argument(std::string("algorithm='") + conv_algorithm_name(algorithm) +
                                "' does not support this convolution: " + refusal);
  switch (algorithm) {
    case ConvAlgorithm::kPointwiseGemm:
      conv2d_pointwise_forward(input, weight, bias, output, p);
      break;
    case ConvAlgorithm::kDepthwise:
      conv2d_depthwise_forward(input, weight, bias, output, p);
      break;
    case ConvAlgorithm::kDirect:
      conv2d_direct_forward(input, weight, bias, output, p);
      break;
    case ConvAlgorithm::kGemm:
      conv2d_gemm_forward(input, weight, bias, output, p);
      break;
    case ConvAlgorithm::kTapwise:
      conv2d_tapwise_forward(input, weight, bias, output, p);
      break;
    case ConvAlgorithm::kWinograd:
      if constexpr (std::is_same_v<T, float>) {
        const int64_t c = p.in_channels;
        run_winograd(input, {weight, 9 * c, 9, 1}, bias, output, p);
      }
      break;
  }
  return conv_algorithm_name(algorithm);
}

InputGradPlan select_input_grad_plan(const ConvParams& p) {
  if (is_far_reaching(p)) return InputGradPlan::kTapwise;
  if (p.is_pointwise() && !p.is_depthwise()) return InputGradPlan::kPointwiseGemm;
  // Stride 1, multiplier 1: the forward kernel on the flipped filters (blocks or
  // rows) gathers; the blocked scatter is for the others.
  if (p.is_depthwise() && p.taps() > 1 &&
      p.out_per_group() > tuning().depthwise_input_grad_max_multiplier)
    return InputGradPlan::kCol2im;
  if (depthwise_uses_blocks(p) && !(p.is_unit_stride() && p.out_per_group() == 1))
    return InputGradPlan::kDepthwise;
  if (p.is_unit_stride() && p.is_depthwise() && p.out_per_group() == 1)
    return InputGradPlan::kDepthwiseTransposed;
  if (p.is_unit_stride() && p.batch * p.in_plane() >= tuning().input_grad_transposed_min_pixels)
    return InputGradPlan::kTransposed;
  return InputGradPlan::kCol2im;
}

std::string input_grad_plan_name(InputGradPlan plan, const ConvParams& p) {
  switch (plan) {
    case InputGradPlan::kPointwiseGemm:
      return "pointwise_gemm";
    case InputGradPlan::kDepthwise:
      return "depthwise";
    case InputGradPlan::kDepthwiseTransposed:
      return "depthwise (transposed)";
    case InputGradPlan::kDirect:
      return "direct";
    case InputGradPlan::kTransposed:
      return std::string(conv_algorithm_name(select_conv_algorithm(transposed_stride1_params(p)))) +
             " (transposed)";
    case InputGradPlan::kTapwise:
      return "tapwise";
    case InputGradPlan::kCol2im:
      break;
  }
  return "implicit_gemm (col2im)";
}

WeightGradPlan select_weight_grad_plan(const ConvParams& p) {
  if (is_far_reaching(p)) return WeightGradPlan::kTapwise;
  if (p.is_depthwise() &&
      (p.taps() == 1 || p.out_per_group() <= tuning().depthwise_weight_grad_max_multiplier))
    return WeightGradPlan::kDepthwise;
  const bool short_reduction = p.reduction() < tuning().dot_weight_grad_max_reduction;
  if (p.taps() > 1 && p.out_per_group() <= tuning().narrow_weight_grad_max_out && short_reduction)
    return WeightGradPlan::kDirectDot;
  const int64_t min_out_w = p.flops() < tuning().small_max_flops
                                ? tuning().direct_weight_grad_min_out_w_small
                            : p.batch == 1 ? tuning().direct_weight_grad_min_out_w_single_image
                                           : tuning().direct_weight_grad_min_out_w;
  const bool many_pixels = p.batch > 1 &&
                           p.batch * p.out_plane() >= tuning().direct_weight_grad_min_pixels &&
                           p.out_w >= tuning().direct_weight_grad_min_out_w_many_pixels;
  const bool wide_enough =
      p.out_w >= min_out_w || many_pixels ||
      (p.batch > 1 && p.taps() >= tuning().direct_weight_grad_min_taps_any_width);
  if (p.taps() > 1 && wide_enough) return WeightGradPlan::kDirect;
  return WeightGradPlan::kGemm;
}

const char* weight_grad_plan_name(WeightGradPlan plan) {
  switch (plan) {
    case WeightGradPlan::kDepthwise:
      return "depthwise";
    case WeightGradPlan::kDirectDot:
      return "direct_dot";
    case WeightGradPlan::kDirect:
      return "direct";
    case WeightGradPlan::kTapwise:
      return "tapwise";
    case WeightGradPlan::kGemm:
      break;
  }
  return "implicit_gemm";
}

// The forward algorithms an input gradient can run on the flipped problem (the
// depthwise and tapwise ones have input-gradient plans of their own).
bool runs_transposed(ConvAlgorithm a) {
  return a != ConvAlgorithm::kDepthwise && a != ConvAlgorithm::kTapwise;
}

std::vector<std::string> input_grad_algorithm_names() {
  std::vector<std::string> names = {"pointwise_gemm", "depthwise", "depthwise (transposed)",
                                    "direct"};
  for (const ConvAlgorithmInfo& info : kConvAlgorithms)
    if (runs_transposed(info.algorithm)) names.push_back(std::string(info.name) + " (transposed)");
  names.emplace_back("implicit_gemm (col2im)");
  names.emplace_back("tapwise");
  return names;
}

InputGradAlgorithm input_grad_algorithm_by_name(const std::string& name) {
  if (name == "pointwise_gemm") return {InputGradPlan::kPointwiseGemm};
  if (name == "depthwise") return {InputGradPlan::kDepthwise};
  if (name == "depthwise (transposed)") return {InputGradPlan::kDepthwiseTransposed};
  if (name == "direct") return {InputGradPlan::kDirect};
  if (name == "implicit_gemm (col2im)") return {InputGradPlan::kCol2im};
  if (name == "tapwise") return {InputGradPlan::kTapwise};
  for (const ConvAlgorithmInfo& info : kConvAlgorithms)
    if (runs_transposed(info.algorithm) && name == std::string(info.name) + " (transposed)")
      return {InputGradPlan::kTransposed, info.algorithm};
  throw std::invalid_argument("no conv2d_input algorithm named '" + name + "'");
}

std::string input_grad_algorithm_refusal(const InputGradAlgorithm& a, const ConvParams& p) {
  if (a.plan == InputGradPlan::kDirect && is_far_reaching(p)) return kFarReachingRefusal;
  switch (a.plan) {
    case InputGradPlan::kPointwiseGemm:
      return p.is_pointwise() ? "" : "it needs a 1x1, stride-1, unpadded convolution";
    case InputGradPlan::kDepthwise:
      return depthwise_uses_blocks(p) ? ""
                                      : "it needs a depthwise convolution with outputs under 64 "
                                        "wide, a multiplier of at most 16 (float32) or 8 "
                                        "(float64) and a compact window";
    case InputGradPlan::kDepthwiseTransposed:
      // The flipped forward on the transposed problem, when that is depthwise: what the
      // selector's transposed plan also names "depthwise (transposed)" (groups 2 with
      // two input channels per group and one output each transposes to depthwise).
      return p.is_unit_stride() &&
                     conv_algorithm_refusal(ConvAlgorithm::kDepthwise, transposed_stride1_params(p))
                         .empty()
                 ? ""
                 : "it needs a stride-1 convolution whose transposed problem is depthwise";
    case InputGradPlan::kDirect:
    case InputGradPlan::kCol2im:
    case InputGradPlan::kTapwise:
      return "";
    case InputGradPlan::kTransposed:
      if (!p.is_unit_stride()) return "it needs a stride-1 convolution";
      return conv_algorithm_refusal(a.transposed, transposed_stride1_params(p));
  }
  return "";
}

std::vector<std::string> weight_grad_algorithm_names() {
  std::vector<std::string> names;
  for (WeightGradPlan plan :
       {WeightGradPlan::kDepthwise, WeightGradPlan::kDirectDot, WeightGradPlan::kDirect,
        WeightGradPlan::kGemm, WeightGradPlan::kTapwise})
    names.emplace_back(weight_grad_plan_name(plan));
  return names;
}

WeightGradPlan weight_grad_plan_by_name(const std::string& name) {
  for (WeightGradPlan plan :
       {WeightGradPlan::kDepthwise, WeightGradPlan::kDirectDot, WeightGradPlan::kDirect,
        WeightGradPlan::kGemm, WeightGradPlan::kTapwise})
    if (name == weight_grad_plan_name(plan)) return plan;
  throw std::invalid_argument("no conv2d_weight algorithm named '" + name + "'");
}

std::string weight_grad_plan_refusal(WeightGradPlan plan, const ConvParams& p) {
  const bool sized_by_reach = plan == WeightGradPlan::kDirect || plan == WeightGradPlan::kDirectDot;
  if (sized_by_reach && is_far_reaching(p)) return kFarReachingRefusal;
  if (plan == WeightGradPlan::kDepthwise && !p.is_depthwise())
    return "it needs a depthwise convolution (groups == in_channels)";
  return "";
}

int64_t weight_count(const ConvParams& p) { return p.out_channels * p.in_per_group() * p.taps(); }
int64_t input_count(const ConvParams& p) { return p.batch * p.in_channels * p.in_plane(); }
int64_t output_count(const ConvParams& p) { return p.batch * p.out_channels * p.out_plane(); }

template <typename T>
const char* conv2d_forward_chosen(const T* input, const T* weight, const T* bias, T* output,
                                  const ConvParams& p, std::optional<ConvAlgorithm> forced) {
  // A forced algorithm runs on the live taps when it can (the same sums as the
  // selector's run of it, which may have chosen it for them), else on the whole
  // kernel, where conv2d_forward refuses it if it cannot run that either.
  const ConvParams live = live_taps(p);
  if (!has_dead_taps(p, live) || (forced && !conv_algorithm_refusal(*forced, live).empty()))
    return conv2d_forward(input, weight, bias, output, p,
                          forced ? *forced : select_conv_algorithm(p));
  const std::vector<T> w = live_weight(weight, p, live);
  return conv2d_forward(input, w.data(), bias, output, live,
                        forced ? *forced : select_conv_algorithm(live));
}

template <typename T>
std::string conv2d_backward_input_chosen(const T* grad_output, const T* weight, T* grad_input,
                                         const ConvParams& p,
                                         std::optional<InputGradAlgorithm> forced) {
  const ConvParams live = live_taps(p);
  // As in the forward pass: a forced algorithm runs on the live taps when it
  // can, else on the whole kernel, where it is refused if it cannot run that.
  if (has_dead_taps(p, live) && (!forced || input_grad_algorithm_refusal(*forced, live).empty())) {
    const std::vector<T> w = live_weight(weight, p, live);
    return conv2d_backward_input_chosen(grad_output, w.data(), grad_input, live, forced);
  }
  if (forced) {
    const std::string refusal = input_grad_algorithm_refusal(*forced, p);
    if (!refusal.empty()) {
      const std::string name =
          forced->plan == InputGradPlan::kTransposed
              ? std::string(conv_algorithm_name(forced->transposed)) + " (transposed)"
              : input_grad_plan_name(forced->plan, p);
      throw std::invalid_argument("algorithm='" + name +
                                  "' does not support this convolution: " + refusal);
    }
  }
  const InputGradAlgorithm algorithm =
      forced ? *forced : InputGradAlgorithm{select_input_grad_plan(p)};
  const InputGradPlan plan = algorithm.plan;
  switch (plan) {
    case InputGradPlan::kPointwiseGemm:
    case InputGradPlan::kCol2im:
      conv2d_gemm_backward_input(grad_output, weight, grad_input, p);
      break;
    case InputGradPlan::kDirect:
      conv2d_direct_backward_input(grad_output, weight, grad_input, p);
      break;
    case InputGradPlan::kTapwise:
      conv2d_tapwise_backward_input(grad_output, weight, grad_input, p);
      break;
    case InputGradPlan::kDepthwise:
      if (is_channel_scale(p))
        channel_scale_backward_input(grad_output, weight, grad_input, p);
      else
        kernel_table<T>().depthwise_blocked.backward_input(grad_output, weight, grad_input, p);
      break;
    case InputGradPlan::kDepthwiseTransposed:
    case InputGradPlan::kTransposed: {
      const ConvParams t = transposed_stride1_params(p);
      const ConvAlgorithm run = forced ? algorithm.transposed : select_conv_algorithm(t);
      if (plan == InputGradPlan::kTransposed && run == ConvAlgorithm::kWinograd) {
        if constexpr (std::is_same_v<T, float>) {
          // Winograd reads the forward weights flipped and transposed in place:
          // w'[k'][c'][tap] = w[c'][k'][8 - tap] (groups == 1).
          run_winograd(grad_output, {weight + 8, 9, 9 * t.out_channels, -1}, nullptr, grad_input,
                       t);
        }
        return std::string(conv_algorithm_name(run)) + " (transposed)";
      }
      const std::vector<T> w = flipped_transposed_weight(weight, p);
      if (plan == InputGradPlan::kDepthwiseTransposed) {
        conv2d_depthwise_forward(grad_output, w.data(), static_cast<const T*>(nullptr), grad_input,
                                 t);
        break;
      }
      conv2d_forward(grad_output, w.data(), static_cast<const T*>(nullptr), grad_input, t, run);
      return std::string(conv_algorithm_name(run)) + " (transposed)";
    }
  }
  return input_grad_plan_name(plan, p);
}

template <typename T>
const char* conv2d_backward_weight_chosen(const T* input, const T* grad_output, T* grad_weight,
                                          const ConvParams& p,
                                          std::optional<WeightGradPlan> forced) {
  if (forced) {
    const std::string refusal = weight_grad_plan_refusal(*forced, p);
    if (!refusal.empty())
      throw std::invalid_argument("algorithm='" + std::string(weight_grad_plan_name(*forced)) +
                                  "' does not support this convolution: " + refusal);
  }
  const ConvParams live = live_taps(p);
  if (has_dead_taps(p, live)) {
    // Dead taps' gradients are zero; the live window's go to their place.
    std::vector<T> dw(static_cast<size_t>(p.out_channels * p.in_per_group() * live.taps()));
    const char* ran = conv2d_backward_weight_chosen(input, grad_output, dw.data(), live, forced);
    std::fill(grad_weight, grad_weight + p.out_channels * p.in_per_group() * p.taps(), T(0));
    for_each_live_tap(p, live, [&](int64_t in_window, int64_t in_kernel) {
      grad_weight[in_kernel] = dw[in_window];
    });
    return ran;
  }
  const WeightGradPlan plan = forced ? *forced : select_weight_grad_plan(p);
  switch (plan) {
    case WeightGradPlan::kDepthwise:
      conv2d_depthwise_backward_weight(input, grad_output, grad_weight, p);
      break;
    case WeightGradPlan::kDirectDot:
      conv2d_direct_dot_backward_weight(input, grad_output, grad_weight, p);
      break;
    case WeightGradPlan::kDirect:
      conv2d_direct_backward_weight(input, grad_output, grad_weight, p);
      break;
    case WeightGradPlan::kGemm:
      conv2d_gemm_backward_weight(input, grad_output, grad_weight, p);
      break;
    case WeightGradPlan::kTapwise:
      conv2d_tapwise_backward_weight(input, grad_output, grad_weight, p);
      break;
  }
  return weight_grad_plan_name(plan);
}

template <typename T>
bool has_nan(const T* values, int64_t count) {
  int nan = 0;
  for (int64_t i = 0; i < count; ++i) nan |= values[i] != values[i];
  return nan != 0;
}

// Whether a selected algorithm's result must be computed again tapwise: only
// when it holds a NaN and `operand` (what a padded or transformed tap may have
// multiplied into 0 * Inf) is not all finite. Without a NaN the extra products
// were all zeros and the sums are the spec's. The smaller array is read first:
// the check costs a pass over the smaller of the two, and nothing more unless
// both hold non-finite values.
template <typename T>
bool needs_tapwise_rerun(const T* result, int64_t result_count, const T* operand,
                         int64_t operand_count) {
  if (result_count <= operand_count)
    return has_nan(result, result_count) && !all_finite(operand, operand_count);
  return !all_finite(operand, operand_count) && has_nan(result, result_count);
}

template <typename T>
const char* conv2d_forward_selected(const T* input, const T* weight, const T* bias, T* output,
                                    const ConvParams& given, std::optional<ConvAlgorithm> forced) {
  const ConvParams p = canonical_geometry(given);
  const char* ran = conv2d_forward_chosen(input, weight, bias, output, p, forced);
  // Not only next to padding: Winograd's transforms also mix an Inf weight into NaNs.
  if (!forced && std::string_view(ran) != conv_algorithm_name(ConvAlgorithm::kTapwise) &&
      needs_tapwise_rerun(output, output_count(p), weight, weight_count(p)))
    return conv2d_forward(input, weight, bias, output, p, ConvAlgorithm::kTapwise);
  return ran;
}

template <typename T>
std::string conv2d_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                  const ConvParams& given,
                                  std::optional<InputGradAlgorithm> forced) {
  const ConvParams p = canonical_geometry(given);
  std::string ran = conv2d_backward_input_chosen(grad_output, weight, grad_input, p, forced);
  // Not only next to padding: the transposed plans pad dY by the kernel's reach.
  if (!forced && ran != "tapwise" &&
      needs_tapwise_rerun(grad_input, input_count(p), weight, weight_count(p))) {
    conv2d_tapwise_backward_input(grad_output, weight, grad_input, p);
    return "tapwise";
  }
  return ran;
}

template <typename T>
const char* conv2d_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                   const ConvParams& given, std::optional<WeightGradPlan> forced) {
  const ConvParams p = canonical_geometry(given);
  const char* ran = conv2d_backward_weight_chosen(input, grad_output, grad_weight, p, forced);
  if (!forced && std::string_view(ran) != weight_grad_plan_name(WeightGradPlan::kTapwise) &&
      reads_padding(p) &&
      needs_tapwise_rerun(grad_weight, weight_count(p), grad_output, output_count(p))) {
    conv2d_tapwise_backward_weight(input, grad_output, grad_weight, p);
    return weight_grad_plan_name(WeightGradPlan::kTapwise);
  }
  return ran;
}

#define FASTCONV_INSTANTIATE(T)                                                               \
  template const char* conv2d_forward<T>(const T*, const T*, const T*, T*, const ConvParams&, \
                                         ConvAlgorithm);                                      \
  template const char* conv2d_forward_selected<T>(                                            \
      const T*, const T*, const T*, T*, const ConvParams&, std::optional<ConvAlgorithm>);     \
  template std::string conv2d_backward_input<T>(const T*, const T*, T*, const ConvParams&,    \
                                                std::optional<InputGradAlgorithm>);           \
  template const char* conv2d_backward_weight<T>(const T*, const T*, T*, const ConvParams&,   \
                                                 std::optional<WeightGradPlan>);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
