// The only C++ that knows about Python. Arguments arrive validated and
// normalised by fastconv.functional; outputs are allocated there too. Each
// binding checks only what memory safety needs, then drops the GIL.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/peak_probe.h"
#include "conv2d/conv2d.h"
#include "elementwise/clamp.h"
#include "gemm/gemm.h"
#include "kernel_table.h"
#include "norm/batch_norm.h"
#include "optim/optim.h"
#include "pool2d/pool2d.h"

namespace py = pybind11;
using fastconv::ConvParams;
using fastconv::PoolParams;

namespace {

// Kernels read the active ISA tier's table at several points of one call, so
// the tier may change only while no kernel runs: every kernel call holds this
// lock shared (taken after the GIL is released), set_isa holds it exclusively.
std::shared_mutex& tier_mutex() {
  static std::shared_mutex mutex;
  return mutex;
}

// What the calling thread's last call of each conv pass ran (fastconv.last_algorithms).
struct LastAlgorithms {
  std::string forward, input, weight;
};
LastAlgorithms& last_algorithms() {
  static thread_local LastAlgorithms record;
  return record;
}

// Drops the GIL and holds the tier lock shared, for the duration of a kernel call.
class KernelScope {
 public:
  KernelScope() : release_(), lock_(tier_mutex()) {}

 private:
  py::gil_scoped_release release_;
  std::shared_lock<std::shared_mutex> lock_;
};

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

// The kernels read T through T* (Python copies unaligned arrays first).
template <typename Array>
void require_aligned(const Array& a, const char* name) {
  using T = typename Array::value_type;
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0)
    throw std::invalid_argument(std::string("internal: unaligned data for ") + name);
}

template <typename T>
void require_shape(const CArray<T>& a, std::initializer_list<int64_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int axis = 0;
  for (int64_t extent : shape) ok = ok && a.shape(axis++) == extent;
  if (!ok) throw std::invalid_argument(std::string("internal: unexpected shape for ") + name);
  require_aligned(a, name);
}

// The parameter structs from their fields, checked for what the kernels need
// (Python validated every value; a wrong call never reaches a kernel).
ConvParams make_conv_params(int64_t batch, int64_t in_channels, int64_t in_h, int64_t in_w,
                            int64_t out_channels, int64_t kernel_h, int64_t kernel_w, int64_t out_h,
                            int64_t out_w, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                            int64_t pad_left, int64_t dilation_h, int64_t dilation_w,
                            int64_t groups, bool single_precision) {
  ConvParams p;
  p.batch = batch;
  p.in_channels = in_channels;
  p.in_h = in_h;
  p.in_w = in_w;
  p.out_channels = out_channels;
  p.kernel_h = kernel_h;
  p.kernel_w = kernel_w;
  p.out_h = out_h;
  p.out_w = out_w;
  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.pad_top = pad_top;
  p.pad_left = pad_left;
  p.dilation_h = dilation_h;
  p.dilation_w = dilation_w;
  p.groups = groups;
  p.single_precision = single_precision;
  p.allow_transforms = fastconv::conv_transforms_allowed();
  require(batch >= 0 && in_h >= 0 && in_w >= 0 && out_h >= 0 && out_w >= 0 && kernel_h > 0 &&
              kernel_w > 0 && stride_h > 0 && stride_w > 0 && dilation_h > 0 && dilation_w > 0 &&
              pad_top >= 0 && pad_left >= 0,
          "internal: invalid conv geometry");
  require(groups > 0 && in_channels > 0 && out_channels > 0 && in_channels % groups == 0 &&
              out_channels % groups == 0,
          "internal: channels do not match groups");
  return p;
}

PoolParams make_pool_params(int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
                            int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                            int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                            int64_t dilation_w, bool count_include_pad, int64_t divisor_override) {
  PoolParams p;
  p.planes = planes;
  p.in_h = in_h;
  p.in_w = in_w;
  p.out_h = out_h;
  p.out_w = out_w;
  p.kernel_h = kernel_h;
  p.kernel_w = kernel_w;
  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.pad_h = pad_h;
  p.pad_w = pad_w;
  p.dilation_h = dilation_h;
  p.dilation_w = dilation_w;
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override;
  require(planes >= 0 && in_h >= 0 && in_w >= 0 && out_h >= 0 && out_w >= 0 && kernel_h > 0 &&
              kernel_w > 0 && stride_h > 0 && stride_w > 0 && dilation_h > 0 && dilation_w > 0 &&
              pad_h >= 0 && pad_w >= 0,
          "internal: invalid pooling window");
  return p;
}

// Pool arrays are passed as (planes, H, W) views; their shapes must be the
// params' (memory safety: the kernels index by the params).
template <typename T>
void require_pool_shapes(const CArray<T>& input, const CArray<T>& output, const PoolParams& p) {
  require_shape(input, {p.planes, p.in_h, p.in_w}, "pooling input");
  require_shape(output, {p.planes, p.out_h, p.out_w}, "pooling output");
}

// Clamps (ReLU, ReLU6) over whole C-contiguous arrays of one shape; out may be x.
template <typename T>
void bind_clamp(py::module_& m) {
  const auto same_shape = [](const CArray<T>& a, const CArray<T>& b, const char* name) {
    bool ok = a.ndim() == b.ndim();
    for (py::ssize_t axis = 0; ok && axis < a.ndim(); ++axis) ok = a.shape(axis) == b.shape(axis);
    if (!ok) throw std::invalid_argument(std::string("internal: unexpected shape for ") + name);
    require_aligned(b, name);
  };
  m.def(
      "clamp_forward",
      [same_shape](const CArray<T>& x, CArray<T>& out, T lo, std::optional<T> hi) {
        require_aligned(x, "x");
        same_shape(x, out, "out");
        const T* in = x.data();
        T* o = out.mutable_data();
        const int64_t n = x.size();
        KernelScope scope;
        fastconv::clamp_forward<T>(in, o, n, lo, hi.has_value(), hi.value_or(T(0)));
      },
      py::arg("x"), py::arg("out"), py::arg("lo"), py::arg("hi"));
  m.def(
      "clamp_backward",
      [same_shape](const CArray<T>& grad, const CArray<T>& out, CArray<T>& grad_input, T lo,
                   std::optional<T> hi) {
        require_aligned(grad, "grad");
        same_shape(grad, out, "out");
        same_shape(grad, grad_input, "grad_input");
        const T *g = grad.data(), *o = out.data();
        T* gi = grad_input.mutable_data();
        const int64_t n = grad.size();
        KernelScope scope;
        fastconv::clamp_backward<T>(g, o, gi, n, lo, hi.has_value(), hi.value_or(T(0)));
      },
      py::arg("grad"), py::arg("out"), py::arg("grad_input"), py::arg("lo"), py::arg("hi"));
}

// BatchNorm2d kernels on (N, C, S) arrays; per-channel vectors are (C,).
template <typename T>
void bind_batch_norm(py::module_& m) {
  const auto shape_of = [](const CArray<T>& x) {
    require(x.ndim() == 3, "internal: batch-norm arrays must be 3-D (N, C, S)");
    return fastconv::BatchNormShape{x.shape(0), x.shape(1), x.shape(2)};
  };
  m.def(
      "batch_norm_stats",
      [shape_of](const CArray<T>& x, CArray<T>& mean, CArray<T>& var) {
        const fastconv::BatchNormShape s = shape_of(x);
        require_shape(mean, {s.c}, "mean");
        require_shape(var, {s.c}, "var");
        const T* in = x.data();
        T *mu = mean.mutable_data(), *v = var.mutable_data();
        KernelScope scope;
        fastconv::batch_norm_stats<T>(in, s, mu, v);
      },
      py::arg("x"), py::arg("mean"), py::arg("var"));
  m.def(
      "batch_norm_apply",
      [shape_of](const CArray<T>& x, const CArray<T>& mean, const CArray<T>& invstd,
                 std::optional<CArray<T>> weight, std::optional<CArray<T>> bias,
                 std::optional<CArray<T>> xhat, CArray<T>& out, int clamp) {
        const fastconv::BatchNormShape s = shape_of(x);
        require_shape(mean, {s.c}, "mean");
        require_shape(invstd, {s.c}, "invstd");
        if (weight) require_shape(*weight, {s.c}, "weight");
        if (bias) require_shape(*bias, {s.c}, "bias");
        if (xhat) require_shape(*xhat, {s.n, s.c, s.s}, "xhat");
        require_shape(out, {s.n, s.c, s.s}, "out");
        const T *in = x.data(), *mu = mean.data(), *is = invstd.data();
        const T* w = weight ? weight->data() : nullptr;
        const T* b = bias ? bias->data() : nullptr;
        T* h = xhat ? xhat->mutable_data() : nullptr;
        T* o = out.mutable_data();
        require(clamp >= 0 && clamp <= 2, "internal: clamp must be 0 (none), 1 (relu), 2 (relu6)");
        const auto kind = static_cast<fastconv::BatchNormClamp>(clamp);
        KernelScope scope;
        fastconv::batch_norm_apply<T>(in, s, mu, is, w, b, h, o, kind);
      },
      py::arg("x"), py::arg("mean"), py::arg("invstd"), py::arg("weight"), py::arg("bias"),
      py::arg("xhat"), py::arg("out"), py::arg("clamp"));
  m.def(
      "batch_norm_backward",
      [shape_of](const CArray<T>& g, const CArray<T>& xhat, const CArray<T>& scale,
                 bool batch_statistics, CArray<T>& sum_g, CArray<T>& sum_gx,
                 std::optional<CArray<T>> grad_input) {
        const fastconv::BatchNormShape s = shape_of(g);
        require_shape(xhat, {s.n, s.c, s.s}, "xhat");
        require_shape(scale, {s.c}, "scale");
        require_shape(sum_g, {s.c}, "sum_g");
        require_shape(sum_gx, {s.c}, "sum_gx");
        if (grad_input) require_shape(*grad_input, {s.n, s.c, s.s}, "grad_input");
        const T *gp = g.data(), *h = xhat.data(), *k = scale.data();
        T *sg = sum_g.mutable_data(), *sgx = sum_gx.mutable_data();
        T* gi = grad_input ? grad_input->mutable_data() : nullptr;
        KernelScope scope;
        fastconv::batch_norm_backward<T>(gp, h, s, k, batch_statistics, sg, sgx, gi);
      },
      py::arg("g"), py::arg("xhat"), py::arg("scale"), py::arg("batch_statistics"),
      py::arg("sum_g"), py::arg("sum_gx"), py::arg("grad_input"));
}

template <typename T>
void bind_pool(py::module_& m) {
  m.def(
      "max_pool2d_forward",
      [](const CArray<T>& input, CArray<T>& output, std::optional<CArray<int64_t>> indices,
         const PoolParams& p) {
        require_pool_shapes(input, output, p);
        if (indices) require_shape(*indices, {p.planes, p.out_h, p.out_w}, "indices");
        const T* in = input.data();
        T* out = output.mutable_data();
        int64_t* idx = indices ? indices->mutable_data() : nullptr;
        KernelScope scope;
        fastconv::max_pool2d_forward<T>(in, out, idx, p);
      },
      py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("params"));
  m.def(
      "max_pool2d_backward",
      [](const CArray<T>& grad_output, const CArray<int64_t>& indices, CArray<T>& grad_input,
         const PoolParams& p) {
        require_pool_shapes(grad_input, grad_output, p);
        require_shape(indices, {p.planes, p.out_h, p.out_w}, "indices");
        const T* gout = grad_output.data();
        const int64_t* idx = indices.data();
        T* gin = grad_input.mutable_data();
        KernelScope scope;
        fastconv::max_pool2d_backward<T>(gout, idx, gin, p);
      },
      py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"), py::arg("params"));
  m.def(
      "avg_pool2d_forward",
      [](const CArray<T>& input, CArray<T>& output, const PoolParams& p) {
        require_pool_shapes(input, output, p);
        const T* in = input.data();
        T* out = output.mutable_data();
        KernelScope scope;
        fastconv::avg_pool2d_forward<T>(in, out, p);
      },
      py::arg("input"), py::arg("output"), py::arg("params"));
  m.def(
      "avg_pool2d_backward",
      [](const CArray<T>& grad_output, CArray<T>& grad_input, const PoolParams& p) {
        require_pool_shapes(grad_input, grad_output, p);
        const T* gout = grad_output.data();
        T* gin = grad_input.mutable_data();
        KernelScope scope;
        fastconv::avg_pool2d_backward<T>(gout, gin, p);
      },
      py::arg("grad_output"), py::arg("grad_input"), py::arg("params"));
}

// Any strides, same dtype (no forcecast: functional already chose the dtype).
template <typename T>
using StridedArray = py::array_t<T, 0>;

template <typename T>
int64_t element_stride(const py::array& a, int axis, const char* name) {
  const py::ssize_t bytes = a.strides(axis);
  if (bytes % static_cast<py::ssize_t>(sizeof(T)) != 0)
    throw std::invalid_argument(std::string(name) +
                                " has strides that are not a multiple of its itemsize");
  return bytes / static_cast<py::ssize_t>(sizeof(T));
}

template <typename T>
fastconv::MatrixView<T> matrix_view(const StridedArray<T>& a, bool transpose, const char* name) {
  require(a.ndim() == 2, "internal: gemm operands must be 2-D");
  require_aligned(a, name);
  fastconv::MatrixView<T> v{a.data(), element_stride<T>(a, 0, name), element_stride<T>(a, 1, name)};
  if (transpose) std::swap(v.row_stride, v.col_stride);
  return v;
}

template <typename T>
void bind_gemm(py::module_& m) {
  m.def(
      "gemm",
      [](const StridedArray<T>& a, const StridedArray<T>& b, StridedArray<T>& c, double alpha,
         double beta, bool trans_a, bool trans_b, int kernel_index) {
        fastconv::GemmProblem<T> pr;
        pr.a = matrix_view(a, trans_a, "a");
        pr.b = matrix_view(b, trans_b, "b");
        pr.m = trans_a ? a.shape(1) : a.shape(0);
        pr.k = trans_a ? a.shape(0) : a.shape(1);
        pr.n = trans_b ? b.shape(0) : b.shape(1);
        require((trans_b ? b.shape(1) : b.shape(0)) == pr.k, "internal: gemm inner dims differ");
        require(c.ndim() == 2 && c.shape(0) == pr.m && c.shape(1) == pr.n,
                "internal: gemm output has the wrong shape");
        require_aligned(c, "c");
        pr.c = {c.mutable_data(), element_stride<T>(c, 0, "c"), element_stride<T>(c, 1, "c")};
        pr.alpha = static_cast<T>(alpha);
        pr.beta = static_cast<T>(beta);
        const int count = fastconv::gemm_kernel_count<T>();
        require(kernel_index >= -1 && kernel_index < count, "internal: no such gemm kernel");
        const int threads = fastconv::get_num_threads();
        KernelScope scope;     // the kernel is looked up under the tier lock
        if (kernel_index < 0)  // the library's GEMM, small-N path included
          fastconv::gemm<T>(pr, threads);
        else
          fastconv::gemm_with_kernel<T>(pr, threads, fastconv::gemm_kernel_at<T>(kernel_index));
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("alpha"), py::arg("beta"),
      py::arg("trans_a"), py::arg("trans_b"), py::arg("kernel_index") = -1);
}

// Conv arrays must have the params' shapes (memory safety: the kernels index by
// the params).
template <typename T>
void require_conv_shapes(const CArray<T>& input, const CArray<T>& weight, const CArray<T>& output,
                         const ConvParams& p) {
  require_shape(input, {p.batch, p.in_channels, p.in_h, p.in_w}, "conv input");
  require_shape(weight, {p.out_channels, p.in_per_group(), p.kernel_h, p.kernel_w}, "conv weight");
  require_shape(output, {p.batch, p.out_channels, p.out_h, p.out_w}, "conv output");
  require(p.single_precision == std::is_same_v<T, float>, "internal: params' dtype differs");
}

fastconv::ConvAlgorithm algorithm_by_name(const std::string& name) {
  for (const fastconv::ConvAlgorithmInfo& info : fastconv::kConvAlgorithms)
    if (name == info.name) return info.algorithm;
  throw std::invalid_argument("no conv2d algorithm named '" + name + "'");
}

template <typename T>
void bind_conv(py::module_& m) {
  m.def(
      "conv2d_forward",
      [](const CArray<T>& input, const CArray<T>& weight, std::optional<CArray<T>> bias,
         CArray<T>& output, const ConvParams& p, std::optional<std::string> algorithm) {
        require_conv_shapes(input, weight, output, p);
        if (bias) require_shape(*bias, {p.out_channels}, "bias");
        // A forced algorithm that cannot run this problem is refused by
        // conv2d_forward before it touches any array.
        const std::optional<fastconv::ConvAlgorithm> forced =
            algorithm ? std::optional(algorithm_by_name(*algorithm)) : std::nullopt;
        const T* x = input.data();
        const T* w = weight.data();
        const T* b = bias ? bias->data() : nullptr;
        T* y = output.mutable_data();
        std::string ran;
        {
          KernelScope scope;
          ran = fastconv::conv2d_forward_selected<T>(x, w, b, y, p, forced);
        }
        last_algorithms().forward = ran;
      },
      py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"), py::arg("params"),
      py::arg("algorithm"));
  m.def(
      "conv2d_backward_input",
      [](const CArray<T>& grad_output, const CArray<T>& weight, CArray<T>& grad_input,
         const ConvParams& p, std::optional<std::string> algorithm) {
        require_conv_shapes(grad_input, weight, grad_output, p);
        const std::optional<fastconv::InputGradAlgorithm> forced =
            algorithm ? std::optional(fastconv::input_grad_algorithm_by_name(*algorithm))
                      : std::nullopt;
        const T* dy = grad_output.data();
        const T* w = weight.data();
        T* dx = grad_input.mutable_data();
        std::string ran;
        {
          KernelScope scope;
          ran = fastconv::conv2d_backward_input<T>(dy, w, dx, p, forced);
        }
        last_algorithms().input = ran;
      },
      py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"), py::arg("params"),
      py::arg("algorithm"));
  m.def(
      "conv2d_backward_weight",
      [](const CArray<T>& input, const CArray<T>& grad_output, CArray<T>& grad_weight,
         const ConvParams& p, std::optional<std::string> algorithm) {
        require_conv_shapes(input, grad_weight, grad_output, p);
        const std::optional<fastconv::WeightGradPlan> forced =
            algorithm ? std::optional(fastconv::weight_grad_plan_by_name(*algorithm))
                      : std::nullopt;
        const T* x = input.data();
        const T* dy = grad_output.data();
        T* dw = grad_weight.mutable_data();
        std::string ran;
        {
          KernelScope scope;
          ran = fastconv::conv2d_backward_weight<T>(x, dy, dw, p, forced);
        }
        last_algorithms().weight = ran;
      },
      py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"), py::arg("params"),
      py::arg("algorithm"));
}

// ---------------------------------------------------------------------------
// Plain calls in one step. A conv2d, max_pool2d or gemm call whose arguments are
// all of the plain, valid kind (exact NumPy arrays of one float dtype, C-contiguous
// and aligned where the kernel needs it; exact ints, 2-tuples of ints and bools;
// nothing empty, nothing out of range) runs here without a trip through Python's
// validation. Anything else -- every error included -- returns None and takes the
// Python path, which validates and raises the errors that name the argument. So
// these accept a subset of what the Python path accepts, and mean the same by it.

constexpr int64_t kInt32Max = 2147483647;

bool is_plain_array(py::handle h) {
  return Py_TYPE(h.ptr()) == py::detail::npy_api::get().PyArray_Type_;
}

// Whether a plain array has dtype T (float32 or float64) in native byte order.
template <typename T>
bool has_dtype(const py::array& a) {
  // The descriptor outlives every call (deliberately never released).
  static PyObject* const wanted = py::dtype::of<T>().release().ptr();
  return py::detail::npy_api::get().PyArray_EquivTypes_(py::detail::array_proxy(a.ptr())->descr,
                                                        wanted);
}

bool contiguous_aligned(const py::array& a) {
  const int flags = py::detail::array_proxy(a.ptr())->flags;
  constexpr int kWanted =
      py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  return (flags & kWanted) == kWanted;
}

// An exact int in [lo, kInt32Max].
std::optional<int64_t> plain_int(py::handle h, int64_t lo) {
  if (!PyLong_CheckExact(h.ptr())) return std::nullopt;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  if (overflow != 0 || v < lo || v > kInt32Max) return std::nullopt;
  return static_cast<int64_t>(v);
}

// An exact int, or an exact 2-tuple of them, each in [lo, kInt32Max].
std::optional<std::pair<int64_t, int64_t>> plain_pair(py::handle h, int64_t lo) {
  if (PyTuple_CheckExact(h.ptr())) {
    if (PyTuple_GET_SIZE(h.ptr()) != 2) return std::nullopt;
    const auto a = plain_int(PyTuple_GET_ITEM(h.ptr(), 0), lo);
    const auto b = plain_int(PyTuple_GET_ITEM(h.ptr(), 1), lo);
    if (!a || !b) return std::nullopt;
    return std::make_pair(*a, *b);
  }
  const auto v = plain_int(h, lo);
  if (!v) return std::nullopt;
  return std::make_pair(*v, *v);
}

std::optional<bool> plain_bool(py::handle h) {
  if (h.ptr() == Py_True) return true;
  if (h.ptr() == Py_False) return false;
  return std::nullopt;
}

template <typename T>
py::object conv2d_plain(py::handle input_h, py::handle weight_h, py::handle bias_h,
                        py::handle stride_h, py::handle padding_h, py::handle dilation_h,
                        py::handle groups_h) {
  if (!is_plain_array(input_h) || !is_plain_array(weight_h)) return py::none();
  const bool has_bias = !bias_h.is_none();
  if (has_bias && !is_plain_array(bias_h)) return py::none();
  const auto input = py::reinterpret_borrow<py::array>(input_h);
  const auto weight = py::reinterpret_borrow<py::array>(weight_h);
  if (!has_dtype<T>(input) || !has_dtype<T>(weight)) return py::none();
  if (!contiguous_aligned(input) || !contiguous_aligned(weight)) return py::none();
  const py::ssize_t ndim = input.ndim();
  if ((ndim != 3 && ndim != 4) || weight.ndim() != 4) return py::none();
  const int64_t n = ndim == 4 ? input.shape(0) : 1;
  const int64_t c = input.shape(ndim - 3), h = input.shape(ndim - 2), w = input.shape(ndim - 1);
  const int64_t k = weight.shape(0), cg = weight.shape(1), r = weight.shape(2), s = weight.shape(3);
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0 || k <= 0 || cg <= 0 || r <= 0 || s <= 0)
    return py::none();
  py::array bias;
  if (has_bias) {
    bias = py::reinterpret_borrow<py::array>(bias_h);
    if (!has_dtype<T>(bias) || !contiguous_aligned(bias) || bias.ndim() != 1 || bias.shape(0) != k)
      return py::none();
  }
  const auto stride = plain_pair(stride_h, 1);
  const auto padding = plain_pair(padding_h, 0);
  const auto dilation = plain_pair(dilation_h, 1);
  const auto groups = plain_int(groups_h, 1);
  if (!stride || !padding || !dilation || !groups) return py::none();
  const int64_t g = *groups;
  if (c % g != 0 || k % g != 0 || cg * g != c) return py::none();
  // Output size, as fastconv.geometry.conv_output_size (an empty output: the Python
  // path says why).
  const int64_t span_h = h + 2 * padding->first - dilation->first * (r - 1) - 1;
  const int64_t span_w = w + 2 * padding->second - dilation->second * (s - 1) - 1;
  if (span_h < 0 || span_w < 0) return py::none();
  const int64_t out_h = span_h / stride->first + 1, out_w = span_w / stride->second + 1;
  // An output no array can hold: the Python path raises the MemoryError.
  int64_t out_bytes = static_cast<int64_t>(sizeof(T));
  for (const int64_t extent : {n, k, out_h, out_w})
    if (__builtin_mul_overflow(out_bytes, extent, &out_bytes)) return py::none();
  const ConvParams p = make_conv_params(
      n, c, h, w, k, r, s, out_h, out_w, stride->first, stride->second, padding->first,
      padding->second, dilation->first, dilation->second, g, std::is_same_v<T, float>);
  std::vector<py::ssize_t> shape{k, out_h, out_w};
  if (ndim == 4) shape.insert(shape.begin(), n);
  py::array_t<T> output(shape);
  const T* x = static_cast<const T*>(input.data());
  const T* wp = static_cast<const T*>(weight.data());
  const T* b = has_bias ? static_cast<const T*>(bias.data()) : nullptr;
  T* y = output.mutable_data();
  std::string ran;
  {
    KernelScope scope;
    ran = fastconv::conv2d_forward_selected<T>(x, wp, b, y, p);
  }
  last_algorithms().forward = ran;
  return std::move(output);
}

template <typename T>
py::object max_pool2d_plain(py::handle input_h, py::handle kernel_h, py::handle stride_h,
                            py::handle padding_h, py::handle dilation_h, py::handle ceil_h,
                            py::handle indices_h) {
  if (!is_plain_array(input_h)) return py::none();
  const auto input = py::reinterpret_borrow<py::array>(input_h);
  if (!has_dtype<T>(input) || !contiguous_aligned(input)) return py::none();
  const py::ssize_t ndim = input.ndim();
  if (ndim != 3 && ndim != 4) return py::none();
  const int64_t n = ndim == 4 ? input.shape(0) : 1;
  const int64_t c = input.shape(ndim - 3), h = input.shape(ndim - 2), w = input.shape(ndim - 1);
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return py::none();
  const auto kernel = plain_pair(kernel_h, 1);
  const auto stride = stride_h.is_none() ? kernel : plain_pair(stride_h, 1);
  const auto padding = plain_pair(padding_h, 0);
  const auto dilation = plain_pair(dilation_h, 1);
  const auto ceil_mode = plain_bool(ceil_h);
  const auto return_indices = plain_bool(indices_h);
  if (!kernel || !stride || !padding || !dilation || !ceil_mode || !return_indices)
    return py::none();
  if (kernel->first * kernel->second > kInt32Max || padding->first > kernel->first / 2 ||
      padding->second > kernel->second / 2)
    return py::none();
  // PyTorch's pooling_output_shape, as fastconv.geometry.pool_output_size.
  const auto out_size = [&](int64_t size, int64_t k, int64_t st, int64_t pad, int64_t d) {
    const int64_t span = size + 2 * pad - d * (k - 1) - 1;
    if (!*ceil_mode) return span < 0 ? int64_t(0) : span / st + 1;
    if (span < 0) return int64_t(0);
    int64_t out = (span + st - 1) / st + 1;
    if ((out - 1) * st >= size + pad) --out;
    return out;
  };
  const int64_t out_h = out_size(h, kernel->first, stride->first, padding->first, dilation->first);
  const int64_t out_w =
      out_size(w, kernel->second, stride->second, padding->second, dilation->second);
  if (out_h < 1 || out_w < 1) return py::none();
  const PoolParams p = make_pool_params(
      n * c, h, w, out_h, out_w, kernel->first, kernel->second, stride->first, stride->second,
      padding->first, padding->second, dilation->first, dilation->second, true, 0);
  std::vector<py::ssize_t> shape{c, out_h, out_w};
  if (ndim == 4) shape.insert(shape.begin(), n);
  py::array_t<T> output(shape);
  py::array_t<int64_t> indices;
  if (*return_indices) indices = py::array_t<int64_t>(shape);
  const T* x = static_cast<const T*>(input.data());
  T* y = output.mutable_data();
  int64_t* idx = *return_indices ? indices.mutable_data() : nullptr;
  {
    KernelScope scope;
    fastconv::max_pool2d_forward<T>(x, y, idx, p);
  }
  if (*return_indices) return py::make_tuple(output, indices);
  return std::move(output);
}

// A gemm operand as the kernels read it: aligned, strides whole elements.
template <typename T>
std::optional<fastconv::MatrixView<T>> plain_matrix(const py::array& a, bool transpose) {
  if (a.ndim() != 2 || !has_dtype<T>(a)) return std::nullopt;
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0) return std::nullopt;
  const py::ssize_t item = static_cast<py::ssize_t>(sizeof(T));
  if (a.strides(0) % item != 0 || a.strides(1) % item != 0) return std::nullopt;
  fastconv::MatrixView<T> v{static_cast<const T*>(a.data()), a.strides(0) / item,
                            a.strides(1) / item};
  if (transpose) std::swap(v.row_stride, v.col_stride);
  return v;
}

std::optional<double> plain_number(py::handle h) {
  if (PyFloat_CheckExact(h.ptr())) return PyFloat_AS_DOUBLE(h.ptr());
  if (const auto v = plain_int(h, -kInt32Max)) return static_cast<double>(*v);
  return std::nullopt;
}

template <typename T>
py::object gemm_plain(py::handle a_h, py::handle b_h, py::handle alpha_h, py::handle trans_a_h,
                      py::handle trans_b_h) {
  if (!is_plain_array(a_h) || !is_plain_array(b_h)) return py::none();
  const auto trans_a = plain_bool(trans_a_h), trans_b = plain_bool(trans_b_h);
  const auto alpha = plain_number(alpha_h);
  if (!trans_a || !trans_b || !alpha) return py::none();
  const auto a = py::reinterpret_borrow<py::array>(a_h);
  const auto b = py::reinterpret_borrow<py::array>(b_h);
  const auto av = plain_matrix<T>(a, *trans_a), bv = plain_matrix<T>(b, *trans_b);
  if (!av || !bv) return py::none();
  fastconv::GemmProblem<T> pr;
  pr.a = *av;
  pr.b = *bv;
  pr.m = *trans_a ? a.shape(1) : a.shape(0);
  pr.k = *trans_a ? a.shape(0) : a.shape(1);
  pr.n = *trans_b ? b.shape(0) : b.shape(1);
  if ((*trans_b ? b.shape(1) : b.shape(0)) != pr.k || pr.m <= 0 || pr.n <= 0 || pr.k <= 0)
    return py::none();
  py::array_t<T> out({pr.m, pr.n});
  pr.c = {out.mutable_data(), pr.n, 1};
  pr.alpha = static_cast<T>(*alpha);
  pr.beta = T(0);
  const int threads = fastconv::get_num_threads();
  {
    KernelScope scope;  // the kernel is looked up under the tier lock
    fastconv::gemm<T>(pr, threads);
  }
  return std::move(out);
}

// Which instantiation runs: the first array's dtype (the others must match it).
enum class PlainDtype { kNone, kFloat32, kFloat64 };
PlainDtype plain_dtype(py::handle h) {
  if (!is_plain_array(h)) return PlainDtype::kNone;
  const auto a = py::reinterpret_borrow<py::array>(h);
  if (has_dtype<float>(a)) return PlainDtype::kFloat32;
  if (has_dtype<double>(a)) return PlainDtype::kFloat64;
  return PlainDtype::kNone;
}

void bind_plain_calls(py::module_& m) {
  m.def(
      "conv2d_plain",
      [](py::handle input, py::handle weight, py::handle bias, py::handle stride,
         py::handle padding, py::handle dilation, py::handle groups) -> py::object {
        switch (plain_dtype(input)) {
          case PlainDtype::kFloat32:
            return conv2d_plain<float>(input, weight, bias, stride, padding, dilation, groups);
          case PlainDtype::kFloat64:
            return conv2d_plain<double>(input, weight, bias, stride, padding, dilation, groups);
          case PlainDtype::kNone:
            break;
        }
        return py::none();
      },
      py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
      py::arg("dilation"), py::arg("groups"));
  m.def(
      "max_pool2d_plain",
      [](py::handle input, py::handle kernel_size, py::handle stride, py::handle padding,
         py::handle dilation, py::handle ceil_mode, py::handle return_indices) -> py::object {
        switch (plain_dtype(input)) {
          case PlainDtype::kFloat32:
            return max_pool2d_plain<float>(input, kernel_size, stride, padding, dilation, ceil_mode,
                                           return_indices);
          case PlainDtype::kFloat64:
            return max_pool2d_plain<double>(input, kernel_size, stride, padding, dilation,
                                            ceil_mode, return_indices);
          case PlainDtype::kNone:
            break;
        }
        return py::none();
      },
      py::arg("input"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
      py::arg("dilation"), py::arg("ceil_mode"), py::arg("return_indices"));
  m.def(
      "gemm_plain",
      [](py::handle a, py::handle b, py::handle alpha, py::handle trans_a,
         py::handle trans_b) -> py::object {
        switch (plain_dtype(a)) {
          case PlainDtype::kFloat32:
            return gemm_plain<float>(a, b, alpha, trans_a, trans_b);
          case PlainDtype::kFloat64:
            return gemm_plain<double>(a, b, alpha, trans_a, trans_b);
          case PlainDtype::kNone:
            break;
        }
        return py::none();
      },
      py::arg("a"), py::arg("b"), py::arg("alpha"), py::arg("trans_a"), py::arg("trans_b"));
  m.def("last_algorithms", [] {
    const LastAlgorithms& record = last_algorithms();
    py::dict out;
    if (!record.forward.empty()) out["conv2d"] = record.forward;
    if (!record.input.empty()) out["conv2d_input"] = record.input;
    if (!record.weight.empty()) out["conv2d_weight"] = record.weight;
    return out;
  });
}

// ---------------------------------------------------------------------------
// Fused optimizer steps over a group's parameters. Python passes C-contiguous,
// aligned, writeable arrays of one dtype, grouped by it; None where a state
// array is unused.

template <typename T>
T* optim_array(const py::handle& item, int64_t size, const char* name) {
  if (item.is_none()) return nullptr;
  require(py::isinstance<py::array>(item), name);
  py::array a = py::reinterpret_borrow<py::array>(item);
  require(a.dtype().is(py::dtype::of<T>()) && (a.flags() & py::array::c_style) && a.writeable() &&
              a.size() == size,
          name);
  require(reinterpret_cast<uintptr_t>(a.data()) % alignof(T) == 0, name);
  return static_cast<T*>(a.mutable_data());
}

// params, grads and up to three state lists, one entry per parameter.
template <typename T>
std::vector<fastconv::OptimTensor<T>> optim_tensors(const py::list& params, const py::list& grads,
                                                    std::vector<py::list> states,
                                                    const std::vector<double>& scalar0,
                                                    const std::vector<double>& scalar1,
                                                    const std::vector<bool>& first) {
  const size_t n = params.size();
  require(grads.size() == n, "internal: one gradient per parameter");
  for (const py::list& state : states) require(state.size() == n, "internal: one state each");
  std::vector<fastconv::OptimTensor<T>> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    fastconv::OptimTensor<T>& t = tensors[i];
    require(py::isinstance<py::array>(params[i]), "internal: a parameter is not an array");
    t.size = py::reinterpret_borrow<py::array>(params[i]).size();
    t.param = optim_array<T>(params[i], t.size, "internal: unusable parameter array");
    t.grad = optim_array<T>(grads[i], t.size, "internal: unusable gradient array");
    require(t.param != nullptr && t.grad != nullptr, "internal: missing parameter or gradient");
    for (size_t k = 0; k < 3; ++k)
      t.state[k] = k < states.size()
                       ? optim_array<T>(states[k][i], t.size, "internal: unusable state array")
                       : nullptr;
    t.scalar[0] = i < scalar0.size() ? scalar0[i] : 0.0;
    t.scalar[1] = i < scalar1.size() ? scalar1[i] : 0.0;
    t.first = i < first.size() && first[i];
  }
  return tensors;
}

template <typename T>
void bind_optim(py::module_& m, const std::string& suffix) {
  m.def(("sgd_step_" + suffix).c_str(),
        [](const py::list& params, const py::list& grads, const py::list& buffers,
           const std::vector<bool>& first, double lr, double momentum, double dampening,
           double weight_decay, bool nesterov, bool maximize) {
          auto tensors = optim_tensors<T>(params, grads, {buffers}, {}, {}, first);
          if (momentum != 0)
            for (const auto& t : tensors) require(t.state[0] != nullptr, "internal: no buffer");
          KernelScope scope;
          fastconv::sgd_step(tensors, {lr, momentum, dampening, weight_decay, nesterov, maximize});
        });
  m.def(("adam_step_" + suffix).c_str(),
        [](const py::list& params, const py::list& grads, const py::list& exp_avgs,
           const py::list& exp_avg_sqs, const py::list& max_exp_avg_sqs,
           const std::vector<double>& step_sizes, const std::vector<double>& bias_correction2_sqrts,
           double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
           bool maximize, bool decoupled) {
          auto tensors = optim_tensors<T>(params, grads, {exp_avgs, exp_avg_sqs, max_exp_avg_sqs},
                                          step_sizes, bias_correction2_sqrts, {});
          for (const auto& t : tensors)
            require(t.state[0] && t.state[1] && (!amsgrad || t.state[2]), "internal: no state");
          require(step_sizes.size() == tensors.size() &&
                      bias_correction2_sqrts.size() == tensors.size(),
                  "internal: one step size each");
          KernelScope scope;
          fastconv::adam_step(tensors,
                              {lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled});
        });
  m.def(("adagrad_step_" + suffix).c_str(),
        [](const py::list& params, const py::list& grads, const py::list& sums,
           const std::vector<double>& learning_rates, double weight_decay, double eps,
           bool maximize) {
          auto tensors = optim_tensors<T>(params, grads, {sums}, learning_rates, {}, {});
          for (const auto& t : tensors) require(t.state[0] != nullptr, "internal: no sum");
          require(learning_rates.size() == tensors.size(), "internal: one learning rate each");
          KernelScope scope;
          fastconv::adagrad_step(tensors, {weight_decay, eps, maximize});
        });
  m.def(("rmsprop_step_" + suffix).c_str(),
        [](const py::list& params, const py::list& grads, const py::list& square_avgs,
           const py::list& grad_avgs, const py::list& buffers, double lr, double alpha, double eps,
           double weight_decay, double momentum, bool centered, bool maximize) {
          auto tensors =
              optim_tensors<T>(params, grads, {square_avgs, grad_avgs, buffers}, {}, {}, {});
          for (const auto& t : tensors)
            require(t.state[0] && (!centered || t.state[1]) && (momentum <= 0 || t.state[2]),
                    "internal: no state");
          KernelScope scope;
          fastconv::rmsprop_step(tensors,
                                 {lr, alpha, eps, weight_decay, momentum, centered, maximize});
        });
}

// The parameter structs, bound with named (keyword-only) fields.
void bind_params(py::module_& m) {
  py::class_<ConvParams>(m, "ConvParams")
      .def(py::init(&make_conv_params), py::kw_only(), py::arg("batch"), py::arg("in_channels"),
           py::arg("in_h"), py::arg("in_w"), py::arg("out_channels"), py::arg("kernel_h"),
           py::arg("kernel_w"), py::arg("out_h"), py::arg("out_w"), py::arg("stride_h"),
           py::arg("stride_w"), py::arg("pad_top"), py::arg("pad_left"), py::arg("dilation_h"),
           py::arg("dilation_w"), py::arg("groups"), py::arg("single_precision"))
      .def_readonly("batch", &ConvParams::batch)
      .def_readonly("in_channels", &ConvParams::in_channels)
      .def_readonly("out_channels", &ConvParams::out_channels)
      .def_readonly("groups", &ConvParams::groups)
      .def_property_readonly("flops", &ConvParams::flops);
  py::class_<PoolParams>(m, "PoolParams")
      .def(py::init(&make_pool_params), py::kw_only(), py::arg("planes"), py::arg("in_h"),
           py::arg("in_w"), py::arg("out_h"), py::arg("out_w"), py::arg("kernel_h"),
           py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
           py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"),
           py::arg("count_include_pad"), py::arg("divisor_override"));
}

fastconv::ConvPrecision precision_by_name(const std::string& name) {
  if (name == "highest") return fastconv::ConvPrecision::kHighest;
  if (name == "high") return fastconv::ConvPrecision::kHigh;
  throw std::invalid_argument("no conv precision named '" + name + "'");
}

std::string precision_name(fastconv::ConvPrecision precision) {
  return precision == fastconv::ConvPrecision::kHighest ? "highest" : "high";
}

fastconv::Isa isa_by_name(const std::string& name) {
  for (fastconv::Isa isa :
       {fastconv::Isa::kBaseline, fastconv::Isa::kAvx2Fma, fastconv::Isa::kAvx512})
    if (name == fastconv::isa_name(isa)) return isa;
  throw std::invalid_argument("no ISA tier named '" + name + "'");
}

template <typename T>
py::list gemm_kernel_names() {
  py::list names;
  for (int i = 0; i < fastconv::gemm_kernel_count<T>(); ++i)
    names.append(fastconv::gemm_kernel_at<T>(i).name);
  return names;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastconv native kernels (private: use the fastconv package)";
  m.attr("__version__") = FASTCONV_VERSION;
  m.def("isa", [] { return std::string(fastconv::isa_name(fastconv::active_isa())); });
  m.def("isa_tiers", [] {
    py::list names;
    for (int tier = 0; tier <= static_cast<int>(fastconv::detected_isa()); ++tier)
      names.append(fastconv::isa_name(static_cast<fastconv::Isa>(tier)));
    return names;
  });
  m.def(
      "set_isa",
      [](const std::string& name) {
        const fastconv::Isa isa = isa_by_name(name);
        require(isa <= fastconv::detected_isa(), "this CPU does not run that ISA tier");
        py::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> lock(tier_mutex());
        fastconv::set_active_isa(isa);
      },
      py::arg("name"));
  m.def("openmp_version", [] { return static_cast<int>(_OPENMP); });
  m.def("get_num_threads", &fastconv::get_num_threads);
  m.def(
      "fma_peak_gflops",
      [](int threads, int64_t iterations) {
        require(threads > 0 && iterations > 0, "threads and iterations must be positive");
        KernelScope scope;
        return fastconv::fma_peak_gflops(threads, iterations);
      },
      py::arg("threads"), py::arg("iterations") = 20000000);
  m.def(
      "gemm_kernel_peak_gflops",
      [](int threads, int64_t calls) {
        require(threads > 0 && calls > 0, "threads and calls must be positive");
        KernelScope scope;
        return fastconv::gemm_kernel_peak_gflops(threads, calls);
      },
      py::arg("threads"), py::arg("calls") = 20000);
  m.def("set_num_threads", &fastconv::set_num_threads, py::arg("n"));
  bind_params(m);
  bind_plain_calls(m);
  bind_pool<float>(m);
  bind_pool<double>(m);
  bind_batch_norm<float>(m);
  bind_batch_norm<double>(m);
  bind_clamp<float>(m);
  bind_clamp<double>(m);
  bind_optim<float>(m, "f32");
  bind_optim<double>(m, "f64");
  bind_gemm<float>(m);
  bind_conv<float>(m);
  bind_conv<double>(m);
  // The selectors, pure: what each pass runs for a problem on the active tier
  // (under the tier lock, which also guards their thresholds).
  m.def(
      "select_conv_algorithm",
      [](const ConvParams& p) {
        KernelScope scope;
        const ConvParams live = fastconv::live_taps(p);
        return std::string(fastconv::conv_algorithm_name(fastconv::select_conv_algorithm(live)));
      },
      py::arg("params"));
  m.def(
      "select_input_grad_plan",
      [](const ConvParams& p) {
        KernelScope scope;
        const ConvParams live = fastconv::live_taps(p);
        return fastconv::input_grad_plan_name(fastconv::select_input_grad_plan(live), live);
      },
      py::arg("params"));
  m.def(
      "select_weight_grad_plan",
      [](const ConvParams& p) {
        KernelScope scope;
        return std::string(fastconv::weight_grad_plan_name(
            fastconv::select_weight_grad_plan(fastconv::live_taps(p))));
      },
      py::arg("params"));
  m.def(
      "conv_tuning",
      [](bool defaults) {
        std::vector<std::pair<std::string, int64_t>> values;
        {
          KernelScope scope;
          values = fastconv::conv_tuning_values(defaults);
        }
        py::dict named;
        for (const auto& [name, value] : values) named[py::str(name)] = value;
        return named;
      },
      py::arg("defaults") = false);
  m.def(
      "set_conv_tuning",
      [](const std::vector<std::pair<std::string, int64_t>>& values) {
        py::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> lock(tier_mutex());
        fastconv::set_conv_tuning_values(values);
      },
      py::arg("values"));
  py::tuple algorithms(std::size(fastconv::kConvAlgorithms));
  for (size_t i = 0; i < std::size(fastconv::kConvAlgorithms); ++i)
    algorithms[i] = fastconv::kConvAlgorithms[i].name;
  m.attr("conv2d_algorithms") = algorithms;
  m.attr("conv2d_input_algorithms") = py::tuple(py::cast(fastconv::input_grad_algorithm_names()));
  m.attr("conv2d_weight_algorithms") = py::tuple(py::cast(fastconv::weight_grad_algorithm_names()));
  // The float32 convolution precision: "highest" or "high".
  m.def(
      "set_default_conv_precision",
      [](const std::string& mode) {
        fastconv::set_default_conv_precision(precision_by_name(mode));
      },
      py::arg("mode"));
  m.def("default_conv_precision",
        [] { return precision_name(fastconv::default_conv_precision()); });
  m.def(
      "set_thread_conv_precision",
      [](std::optional<std::string> mode) {
        fastconv::set_thread_conv_precision(mode ? std::optional(precision_by_name(*mode))
                                                 : std::nullopt);
      },
      py::arg("mode"));
  m.def("thread_conv_precision", []() -> std::optional<std::string> {
    const std::optional<fastconv::ConvPrecision> mode = fastconv::thread_conv_precision();
    if (!mode) return std::nullopt;
    return precision_name(*mode);
  });
  bind_gemm<double>(m);
  // Registry of micro-kernels usable on this CPU, in dispatch order (last = chosen).
  m.def("gemm_kernels", [](const std::string& dtype) {
    if (dtype == "float32") return gemm_kernel_names<float>();
    if (dtype == "float64") return gemm_kernel_names<double>();
    throw std::invalid_argument("dtype must be 'float32' or 'float64'");
  });
}
