// 2-D convolution (cross-correlation) on contiguous NCHW arrays: forward,
// gradient wrt input, gradient wrt weight. Arguments are validated in Python
// (fastconv.functional) before these run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/cpu_features.h"

namespace fastconv {

struct ConvParams {
  int64_t batch = 0;
  int64_t in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 1, kernel_w = 1;
  int64_t out_h = 0, out_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0;  // bottom/right padding is implied by out_h/out_w
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  bool single_precision = true;  // float32 (some algorithms exist only for it)
  // Precision "high": the selectors may choose transform algorithms (Winograd),
  // whose error is several times direct convolution's. Filled from
  // conv_transforms_allowed() where the params are made.
  bool allow_transforms = true;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t in_plane() const { return in_h * in_w; }
  int64_t out_plane() const { return out_h * out_w; }
  int64_t taps() const { return kernel_h * kernel_w; }
  // Reduction length of one output element: the GEMM K of the im2col view.
  int64_t reduction() const { return in_per_group() * taps(); }
  double flops() const {
    return 2.0 * batch * out_channels * out_plane() * static_cast<double>(reduction());
  }

  bool is_pointwise() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_top == 0 &&
           pad_left == 0 && out_h == in_h && out_w == in_w;
  }
  bool is_depthwise() const { return groups > 1 && groups == in_channels; }
  bool is_unit_stride() const { return stride_h == 1 && stride_w == 1; }
  bool is_winograd_shape() const {
    return single_precision && kernel_h == 3 && kernel_w == 3 && is_unit_stride() &&
           dilation_h == 1 && dilation_w == 1 && groups == 1;
  }
};

// The float32 convolution precision (PyTorch's vocabulary): kHighest runs only
// algorithms with direct convolution's accuracy, kHigh also transform ones. A
// process-wide default and a per-thread override (the Python context manager).
enum class ConvPrecision : int { kHighest = 0, kHigh = 1 };
void set_default_conv_precision(ConvPrecision precision);
ConvPrecision default_conv_precision();
// Overrides the default on the calling thread; nullopt removes the override.
void set_thread_conv_precision(std::optional<ConvPrecision> precision);
std::optional<ConvPrecision> thread_conv_precision();
// Whether convolutions made on the calling thread may use transform algorithms.
bool conv_transforms_allowed();

// Forward algorithms. kGemm is the general path and accepts every valid
// problem. Their names (what Python sees) come from kConvAlgorithms below.
enum class ConvAlgorithm : int {
  kPointwiseGemm = 0,  // 1x1, stride 1, no padding: out = W @ X per image, no im2col
  kDepthwise = 1,      // groups == in_channels: direct kernel vectorised along the width
  kDirect = 2,         // indirect GEMM on phase-split input rows: few channels or wide rows
  kGemm = 3,           // implicit GEMM: im2col panels packed on the fly, never materialised
  kWinograd = 4,       // F(4x4, 3x3) for 3x3 stride-1 ungrouped float32 layers
  kTapwise = 5,        // per-tap loops over the outputs each tap reads: exact next to
                       // padding, cost bounded by the output however far the reach
};

struct ConvAlgorithmInfo {
  ConvAlgorithm algorithm;
  const char* name;
  const char* requirement;  // what a problem needs for it ("" when it takes every problem)
};
// In enum order.
inline constexpr ConvAlgorithmInfo kConvAlgorithms[] = {
    {ConvAlgorithm::kPointwiseGemm, "pointwise_gemm",
     "it needs a 1x1, stride-1, unpadded convolution"},
    {ConvAlgorithm::kDepthwise, "depthwise", ""},
    {ConvAlgorithm::kDirect, "direct", ""},
    {ConvAlgorithm::kGemm, "implicit_gemm", ""},
    {ConvAlgorithm::kWinograd, "winograd",
     "it needs a 3x3, stride-1, dilation-1, groups=1, float32 convolution"},
    {ConvAlgorithm::kTapwise, "tapwise", ""},
};

// p without the kernel rows and columns whose taps read only padding for every
// output pixel (a 3x3 kernel on a 1x1 plane keeps its centre tap), or p itself
// when every tap reads the input somewhere. The output is the same: a padded
// tap contributes nothing. Every pass runs on the live taps.
ConvParams live_taps(const ConvParams& p);
// p with the geometry that cannot change the result made plain: stride 1 along a
// dimension with one output, dilation 1 along one with a one-tap kernel (a huge
// stride with one output would otherwise size the direct kernels' buffers).
// live_taps and every pass apply it first.
ConvParams canonical_geometry(const ConvParams& p);

const char* conv_algorithm_name(ConvAlgorithm a);
// Empty when algorithm `a` can run p, else what p lacks: its kConvAlgorithms
// requirement, or (direct, depthwise) a window that reaches far beyond the input.
std::string conv_algorithm_refusal(ConvAlgorithm a, const ConvParams& p);
// Pure: the algorithm the forward pass runs for p.
ConvAlgorithm select_conv_algorithm(const ConvParams& p);
// The selectors' thresholds by name (the built-in values with defaults), and
// replacing some of them (unknown names and negative values: invalid_argument,
// nothing changed). Replace them only while no kernel runs.
std::vector<std::pair<std::string, int64_t>> conv_tuning_values(bool defaults);
void set_conv_tuning_values(const std::vector<std::pair<std::string, int64_t>>& values);

// How the input gradient runs.
enum class InputGradPlan {
  kPointwiseGemm,        // dX = W^T @ dY per image
  kDepthwise,            // depthwise on channel blocks: dY scattered through the taps
  kDepthwiseTransposed,  // stride 1, multiplier 1: the depthwise forward kernel
  kDirect,               // few output channels per group: direct scatter
  kTransposed,           // stride 1: forward conv of dY with the flipped kernel
  kCol2im,               // GEMM into column tiles, then col2im
  kTapwise,              // the tapwise scatter (see ConvAlgorithm::kTapwise)
};
// Pure: the plan conv2d_backward_input runs for p.
InputGradPlan select_input_grad_plan(const ConvParams& p);
// Its name, e.g. "winograd (transposed)": a transposed plan names the forward
// algorithm it runs.
std::string input_grad_plan_name(InputGradPlan plan, const ConvParams& p);

// An input-gradient algorithm a caller can force: a plan, and for kTransposed
// the forward algorithm it runs on the flipped problem. Named as
// input_grad_plan_name names the selector's choice.
struct InputGradAlgorithm {
  InputGradPlan plan;
  ConvAlgorithm transposed = ConvAlgorithm::kGemm;
};
// Every name conv2d_backward_input accepts, in a fixed order.
std::vector<std::string> input_grad_algorithm_names();
// Throws std::invalid_argument for an unknown name.
InputGradAlgorithm input_grad_algorithm_by_name(const std::string& name);
// Empty when `a` can run p, else what p lacks.
std::string input_grad_algorithm_refusal(const InputGradAlgorithm& a, const ConvParams& p);

// How the weight gradient runs.
enum class WeightGradPlan {
  kDepthwise,  // one thread per channel, rows of taps
  kDirectDot,  // short reductions, few output channels: plane-wide dot-product tiles
  kDirect,     // gathered GEMM reading im2col in place along output rows
  kGemm,       // implicit GEMM, pixel tiles spanning images
  kTapwise,    // per-tap sums over the outputs each tap reads (see ConvAlgorithm::kTapwise)
};
// Pure: the plan conv2d_backward_weight runs for p on ISA tier isa (the width of
// the dot-product tile depends on it).
WeightGradPlan select_weight_grad_plan(const ConvParams& p);
const char* weight_grad_plan_name(WeightGradPlan plan);
// Every name conv2d_backward_weight accepts, in enum order.
std::vector<std::string> weight_grad_algorithm_names();
// Throws std::invalid_argument for an unknown name.
WeightGradPlan weight_grad_plan_by_name(const std::string& name);
// Empty when `plan` can run p, else what p lacks.
std::string weight_grad_plan_refusal(WeightGradPlan plan, const ConvParams& p);

// Each returns the name of what it ran. conv2d_forward runs `algorithm` on p as
// given; conv2d_forward_selected and the two backward passes run `forced` (or,
// without it, the selector's choice) on p's live taps where it can run them, and
// refuse (std::invalid_argument) a forced algorithm that cannot run p before
// touching any array.
template <typename T>
const char* conv2d_forward(const T* input, const T* weight, const T* bias, T* output,
                           const ConvParams& p, ConvAlgorithm algorithm);
template <typename T>
const char* conv2d_forward_selected(const T* input, const T* weight, const T* bias, T* output,
                                    const ConvParams& p,
                                    std::optional<ConvAlgorithm> forced = std::nullopt);
template <typename T>
std::string conv2d_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                  const ConvParams& p,
                                  std::optional<InputGradAlgorithm> forced = std::nullopt);
template <typename T>
const char* conv2d_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                   const ConvParams& p,
                                   std::optional<WeightGradPlan> forced = std::nullopt);

// Whether some tap of some output reads outside the input (padding or beyond).
bool reads_padding(const ConvParams& p);
// Whether the windows' reach (padding, stride and dilation included) is far
// larger than the input and output: every pass then runs tapwise, whose cost
// does not grow with the reach.
bool is_far_reaching(const ConvParams& p);
// Whether every one of `count` values is finite. When a selected algorithm's
// result holds a NaN and its weights (forward, input gradient) or its output
// gradient next to padding (weight gradient) are not all finite, the pass runs
// again tapwise, where a padded tap contributes nothing rather than
// 0 * Inf = NaN (zero padding, the transposed plans' padded dY and Winograd's
// transforms can all make one). A forced algorithm runs as asked.
template <typename T>
bool all_finite(const T* values, int64_t count);

// Algorithm implementations (one file each).
template <typename T>
void conv2d_tapwise_forward(const T* input, const T* weight, const T* bias, T* output,
                            const ConvParams& p);
template <typename T>
void conv2d_tapwise_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                   const ConvParams& p);
template <typename T>
void conv2d_tapwise_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                    const ConvParams& p);
template <typename T>
void conv2d_gemm_forward(const T* input, const T* weight, const T* bias, T* output,
                         const ConvParams& p);
template <typename T>
void conv2d_pointwise_forward(const T* input, const T* weight, const T* bias, T* output,
                              const ConvParams& p);
template <typename T>
void conv2d_depthwise_forward(const T* input, const T* weight, const T* bias, T* output,
                              const ConvParams& p);
template <typename T>
void conv2d_direct_forward(const T* input, const T* weight, const T* bias, T* output,
                           const ConvParams& p);
// Depthwise kernels on blocks of 64 bytes of channels (channels innermost), one
// build per ISA (conv2d_depthwise_blocked_impl.h); depthwise_uses_blocks says
// when they run instead of the row kernels.
template <typename T>
struct DepthwiseBlockedKernels {
  void (*forward)(const T* input, const T* weight, const T* bias, T* output, const ConvParams& p);
  void (*backward_input)(const T* grad_output, const T* weight, T* grad_input, const ConvParams& p);
  void (*backward_weight)(const T* input, const T* grad_output, T* grad_weight,
                          const ConvParams& p);
};
DepthwiseBlockedKernels<float> depthwise_blocked_f32_portable();
DepthwiseBlockedKernels<double> depthwise_blocked_f64_portable();
DepthwiseBlockedKernels<float> depthwise_blocked_f32_avx2();
DepthwiseBlockedKernels<double> depthwise_blocked_f64_avx2();
DepthwiseBlockedKernels<float> depthwise_blocked_f32_avx512();
DepthwiseBlockedKernels<double> depthwise_blocked_f64_avx512();
bool depthwise_uses_blocks(const ConvParams& p);
// A depthwise layer that is one product per output (conv2d_depthwise.cpp).
bool is_channel_scale(const ConvParams& p);
template <typename T>
void channel_scale_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                  const ConvParams& p);

// How the Winograd kernel reads its 3x3 filters: element (k, c, tap) of the
// K x C x 9 filter bank at base[k * k_stride + c * c_stride + tap * tap_stride]
// (tap = 3 * r + s), so conv2d_input can read the forward weights flipped and
// transposed in place.
struct FilterView {
  const float* base;
  int64_t k_stride, c_stride, tap_stride;
};
void conv2d_winograd_forward_f32_portable(const float* input, const FilterView& weight,
                                          const float* bias, float* output, const ConvParams& p);
void conv2d_winograd_forward_f32_avx2(const float* input, const FilterView& weight,
                                      const float* bias, float* output, const ConvParams& p);
void conv2d_winograd_forward_f32_avx512(const float* input, const FilterView& weight,
                                        const float* bias, float* output, const ConvParams& p);
template <typename T>
void conv2d_gemm_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                const ConvParams& p);
template <typename T>
void conv2d_gemm_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                 const ConvParams& p);
template <typename T>
void conv2d_direct_backward_input(const T* grad_output, const T* weight, T* grad_input,
                                  const ConvParams& p);
template <typename T>
void conv2d_direct_dot_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                       const ConvParams& p);
template <typename T>
void conv2d_direct_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                   const ConvParams& p);
template <typename T>
void conv2d_depthwise_backward_weight(const T* input, const T* grad_output, T* grad_weight,
                                      const ConvParams& p);

}  // namespace fastconv
