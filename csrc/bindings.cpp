// The only C++ that knows about Python. Arguments arrive validated and
// normalised by fastconv.functional; outputs are allocated there too. Each
// binding checks only what memory safety needs, then drops the GIL.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/peak_probe.h"
#include "conv2d/conv2d.h"
#include "gemm/gemm.h"
#include "norm/batch_norm.h"
#include "pool2d/pool2d.h"

namespace py = pybind11;
using fastconv::PoolParams;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

template <typename T>
void require_shape(const CArray<T>& a, std::initializer_list<int64_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int axis = 0;
  for (int64_t extent : shape) ok = ok && a.shape(axis++) == extent;
  if (!ok) throw std::invalid_argument(std::string("internal: unexpected shape for ") + name);
}

// Pool arrays are passed as (planes, H, W) views.
PoolParams pool_params(py::ssize_t planes, py::ssize_t in_h, py::ssize_t in_w, py::ssize_t out_h,
                       py::ssize_t out_w, py::tuple window) {
  require(window.size() == 10, "internal: pooling window needs 10 integers");
  PoolParams p;
  p.planes = planes;
  p.in_h = in_h;
  p.in_w = in_w;
  p.out_h = out_h;
  p.out_w = out_w;
  p.kernel_h = window[0].cast<int64_t>();
  p.kernel_w = window[1].cast<int64_t>();
  p.stride_h = window[2].cast<int64_t>();
  p.stride_w = window[3].cast<int64_t>();
  p.pad_h = window[4].cast<int64_t>();
  p.pad_w = window[5].cast<int64_t>();
  p.dilation_h = window[6].cast<int64_t>();
  p.dilation_w = window[7].cast<int64_t>();
  p.count_include_pad = window[8].cast<bool>();
  p.divisor_override = window[9].cast<int64_t>();
  require(p.kernel_h > 0 && p.kernel_w > 0 && p.stride_h > 0 && p.stride_w > 0 &&
              p.dilation_h > 0 && p.dilation_w > 0 && p.pad_h >= 0 && p.pad_w >= 0,
          "internal: invalid pooling window");
  return p;
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
        py::gil_scoped_release release;
        fastconv::batch_norm_stats<T>(in, s, mu, v);
      },
      py::arg("x"), py::arg("mean"), py::arg("var"));
  m.def(
      "batch_norm_apply",
      [shape_of](const CArray<T>& x, const CArray<T>& mean, const CArray<T>& invstd,
                 std::optional<CArray<T>> weight, std::optional<CArray<T>> bias, CArray<T>& xhat,
                 CArray<T>& out) {
        const fastconv::BatchNormShape s = shape_of(x);
        require_shape(mean, {s.c}, "mean");
        require_shape(invstd, {s.c}, "invstd");
        if (weight) require_shape(*weight, {s.c}, "weight");
        if (bias) require_shape(*bias, {s.c}, "bias");
        require_shape(xhat, {s.n, s.c, s.s}, "xhat");
        require_shape(out, {s.n, s.c, s.s}, "out");
        const T *in = x.data(), *mu = mean.data(), *is = invstd.data();
        const T* w = weight ? weight->data() : nullptr;
        const T* b = bias ? bias->data() : nullptr;
        T *h = xhat.mutable_data(), *o = out.mutable_data();
        py::gil_scoped_release release;
        fastconv::batch_norm_apply<T>(in, s, mu, is, w, b, h, o);
      },
      py::arg("x"), py::arg("mean"), py::arg("invstd"), py::arg("weight"), py::arg("bias"),
      py::arg("xhat"), py::arg("out"));
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
        py::gil_scoped_release release;
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
         py::tuple window) {
        require(input.ndim() == 3 && output.ndim() == 3, "internal: pooling arrays must be 3-D");
        const PoolParams p = pool_params(input.shape(0), input.shape(1), input.shape(2),
                                         output.shape(1), output.shape(2), window);
        require_shape(output, {p.planes, p.out_h, p.out_w}, "output");
        if (indices) require_shape(*indices, {p.planes, p.out_h, p.out_w}, "indices");
        const T* in = input.data();
        T* out = output.mutable_data();
        int64_t* idx = indices ? indices->mutable_data() : nullptr;
        py::gil_scoped_release release;
        fastconv::max_pool2d_forward<T>(in, out, idx, p);
      },
      py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("window"));
  m.def(
      "max_pool2d_backward",
      [](const CArray<T>& grad_output, const CArray<int64_t>& indices, CArray<T>& grad_input) {
        require(grad_output.ndim() == 3 && grad_input.ndim() == 3,
                "internal: pooling arrays must be 3-D");
        PoolParams p;
        p.planes = grad_input.shape(0);
        p.in_h = grad_input.shape(1);
        p.in_w = grad_input.shape(2);
        p.out_h = grad_output.shape(1);
        p.out_w = grad_output.shape(2);
        require_shape(grad_output, {p.planes, p.out_h, p.out_w}, "grad_output");
        require_shape(indices, {p.planes, p.out_h, p.out_w}, "indices");
        const T* gout = grad_output.data();
        const int64_t* idx = indices.data();
        T* gin = grad_input.mutable_data();
        py::gil_scoped_release release;
        fastconv::max_pool2d_backward<T>(gout, idx, gin, p);
      },
      py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"));
  m.def(
      "avg_pool2d_forward",
      [](const CArray<T>& input, CArray<T>& output, py::tuple window) {
        require(input.ndim() == 3 && output.ndim() == 3, "internal: pooling arrays must be 3-D");
        const PoolParams p = pool_params(input.shape(0), input.shape(1), input.shape(2),
                                         output.shape(1), output.shape(2), window);
        require_shape(output, {p.planes, p.out_h, p.out_w}, "output");
        const T* in = input.data();
        T* out = output.mutable_data();
        py::gil_scoped_release release;
        fastconv::avg_pool2d_forward<T>(in, out, p);
      },
      py::arg("input"), py::arg("output"), py::arg("window"));
  m.def(
      "avg_pool2d_backward",
      [](const CArray<T>& grad_output, CArray<T>& grad_input, py::tuple window) {
        require(grad_output.ndim() == 3 && grad_input.ndim() == 3,
                "internal: pooling arrays must be 3-D");
        const PoolParams p =
            pool_params(grad_input.shape(0), grad_input.shape(1), grad_input.shape(2),
                        grad_output.shape(1), grad_output.shape(2), window);
        require_shape(grad_output, {p.planes, p.out_h, p.out_w}, "grad_output");
        const T* gout = grad_output.data();
        T* gin = grad_input.mutable_data();
        py::gil_scoped_release release;
        fastconv::avg_pool2d_backward<T>(gout, gin, p);
      },
      py::arg("grad_output"), py::arg("grad_input"), py::arg("window"));
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
        pr.c = {c.mutable_data(), element_stride<T>(c, 0, "c"), element_stride<T>(c, 1, "c")};
        pr.alpha = static_cast<T>(alpha);
        pr.beta = static_cast<T>(beta);
        const int count = fastconv::gemm_kernel_count<T>();
        require(kernel_index >= -1 && kernel_index < count, "internal: no such gemm kernel");
        const fastconv::GemmKernelInfo<T> info = kernel_index < 0
                                                     ? fastconv::gemm_kernel<T>()
                                                     : fastconv::gemm_kernel_at<T>(kernel_index);
        const int threads = fastconv::get_num_threads();
        py::gil_scoped_release release;
        fastconv::gemm_with_kernel<T>(pr, threads, info);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("alpha"), py::arg("beta"),
      py::arg("trans_a"), py::arg("trans_b"), py::arg("kernel_index") = -1);
}

// Convolution geometry beyond the array shapes:
// (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups).
fastconv::ConvParams conv_params(py::ssize_t n, py::ssize_t c, py::ssize_t h, py::ssize_t w,
                                 py::ssize_t k, py::ssize_t cg, py::ssize_t r, py::ssize_t s,
                                 py::ssize_t oh, py::ssize_t ow, py::tuple geometry) {
  require(geometry.size() == 7, "internal: conv geometry needs 7 integers");
  fastconv::ConvParams p;
  p.batch = n;
  p.in_channels = c;
  p.in_h = h;
  p.in_w = w;
  p.out_channels = k;
  p.kernel_h = r;
  p.kernel_w = s;
  p.out_h = oh;
  p.out_w = ow;
  p.stride_h = geometry[0].cast<int64_t>();
  p.stride_w = geometry[1].cast<int64_t>();
  p.pad_top = geometry[2].cast<int64_t>();
  p.pad_left = geometry[3].cast<int64_t>();
  p.dilation_h = geometry[4].cast<int64_t>();
  p.dilation_w = geometry[5].cast<int64_t>();
  p.groups = geometry[6].cast<int64_t>();
  require(p.stride_h > 0 && p.stride_w > 0 && p.dilation_h > 0 && p.dilation_w > 0 &&
              p.groups > 0 && p.pad_top >= 0 && p.pad_left >= 0,
          "internal: invalid conv geometry");
  require(c % p.groups == 0 && k % p.groups == 0 && cg * p.groups == c,
          "internal: channels do not match groups");
  // Bottom/right padding is implied by the output size; the kernels bounds-check
  // every input access, so any output size is memory-safe.
  require(oh >= 0 && ow >= 0, "internal: negative output size");
  return p;
}

// The same, from shape tuples (for the selector queries, which have no arrays).
fastconv::ConvParams conv_params_from_shapes(py::tuple input_shape, py::tuple weight_shape,
                                             py::tuple output_hw, py::tuple geometry,
                                             bool single_precision) {
  const auto dim = [](py::tuple t, int i) { return t[i].cast<py::ssize_t>(); };
  fastconv::ConvParams p = conv_params(
      dim(input_shape, 0), dim(input_shape, 1), dim(input_shape, 2), dim(input_shape, 3),
      dim(weight_shape, 0), dim(weight_shape, 1), dim(weight_shape, 2), dim(weight_shape, 3),
      dim(output_hw, 0), dim(output_hw, 1), geometry);
  p.single_precision = single_precision;
  return p;
}

fastconv::ConvAlgorithm algorithm_from_index(int index, const fastconv::ConvParams& p) {
  if (index < 0) return fastconv::select_conv_algorithm(p);
  require(index <= static_cast<int>(fastconv::ConvAlgorithm::kWinograd),
          "internal: no such algorithm");
  return static_cast<fastconv::ConvAlgorithm>(index);
}

template <typename T>
void bind_conv(py::module_& m) {
  m.def(
      "conv2d_forward",
      [](const CArray<T>& input, const CArray<T>& weight, std::optional<CArray<T>> bias,
         CArray<T>& output, py::tuple geometry, int algorithm_index) {
        require(input.ndim() == 4 && weight.ndim() == 4 && output.ndim() == 4,
                "internal: conv arrays must be 4-D");
        fastconv::ConvParams p =
            conv_params(input.shape(0), input.shape(1), input.shape(2), input.shape(3),
                        weight.shape(0), weight.shape(1), weight.shape(2), weight.shape(3),
                        output.shape(2), output.shape(3), geometry);
        p.single_precision = std::is_same_v<T, float>;
        require_shape(output, {p.batch, p.out_channels, p.out_h, p.out_w}, "output");
        if (bias) require_shape(*bias, {p.out_channels}, "bias");
        const fastconv::ConvAlgorithm algorithm = algorithm_from_index(algorithm_index, p);
        if (!fastconv::conv_algorithm_supports(algorithm, p))
          throw std::invalid_argument(std::string("algorithm '") +
                                      fastconv::conv_algorithm_name(algorithm) +
                                      "' does not support this convolution");
        const T* x = input.data();
        const T* w = weight.data();
        const T* b = bias ? bias->data() : nullptr;
        T* y = output.mutable_data();
        {
          py::gil_scoped_release release;
          fastconv::conv2d_forward<T>(x, w, b, y, p, algorithm);
        }
        return std::string(fastconv::conv_algorithm_name(algorithm));
      },
      py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"), py::arg("geometry"),
      py::arg("algorithm") = -1);
  m.def(
      "conv2d_backward_input",
      [](const CArray<T>& grad_output, const CArray<T>& weight, CArray<T>& grad_input,
         py::tuple geometry) {
        require(grad_output.ndim() == 4 && weight.ndim() == 4 && grad_input.ndim() == 4,
                "internal: conv arrays must be 4-D");
        fastconv::ConvParams p =
            conv_params(grad_input.shape(0), grad_input.shape(1), grad_input.shape(2),
                        grad_input.shape(3), weight.shape(0), weight.shape(1), weight.shape(2),
                        weight.shape(3), grad_output.shape(2), grad_output.shape(3), geometry);
        p.single_precision = std::is_same_v<T, float>;
        require_shape(grad_output, {p.batch, p.out_channels, p.out_h, p.out_w}, "grad_output");
        const T* dy = grad_output.data();
        const T* w = weight.data();
        T* dx = grad_input.mutable_data();
        py::gil_scoped_release release;
        fastconv::conv2d_backward_input<T>(dy, w, dx, p);
      },
      py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"), py::arg("geometry"));
  m.def(
      "conv2d_backward_weight",
      [](const CArray<T>& input, const CArray<T>& grad_output, CArray<T>& grad_weight,
         py::tuple geometry) {
        require(input.ndim() == 4 && grad_output.ndim() == 4 && grad_weight.ndim() == 4,
                "internal: conv arrays must be 4-D");
        const fastconv::ConvParams p =
            conv_params(input.shape(0), input.shape(1), input.shape(2), input.shape(3),
                        grad_weight.shape(0), grad_weight.shape(1), grad_weight.shape(2),
                        grad_weight.shape(3), grad_output.shape(2), grad_output.shape(3), geometry);
        require_shape(grad_output, {p.batch, p.out_channels, p.out_h, p.out_w}, "grad_output");
        const T* x = input.data();
        const T* dy = grad_output.data();
        T* dw = grad_weight.mutable_data();
        py::gil_scoped_release release;
        fastconv::conv2d_backward_weight<T>(x, dy, dw, p);
      },
      py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"), py::arg("geometry"));
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
  m.def("openmp_version", [] { return static_cast<int>(_OPENMP); });
  m.def("get_num_threads", &fastconv::get_num_threads);
  m.def(
      "fma_peak_gflops",
      [](int threads, int64_t iterations) {
        require(threads > 0 && iterations > 0, "threads and iterations must be positive");
        py::gil_scoped_release release;
        return fastconv::fma_peak_gflops(threads, iterations);
      },
      py::arg("threads"), py::arg("iterations") = 20000000);
  m.def(
      "gemm_kernel_peak_gflops",
      [](int threads, int64_t calls) {
        require(threads > 0 && calls > 0, "threads and calls must be positive");
        py::gil_scoped_release release;
        return fastconv::gemm_kernel_peak_gflops(threads, calls);
      },
      py::arg("threads"), py::arg("calls") = 20000);
  m.def("set_num_threads", &fastconv::set_num_threads, py::arg("n"));
  bind_pool<float>(m);
  bind_pool<double>(m);
  bind_batch_norm<float>(m);
  bind_batch_norm<double>(m);
  bind_gemm<float>(m);
  bind_conv<float>(m);
  bind_conv<double>(m);
  m.def(
      "conv2d_algorithm",
      [](py::tuple input_shape, py::tuple weight_shape, py::tuple output_hw, py::tuple geometry,
         bool single_precision) {
        const fastconv::ConvParams p = conv_params_from_shapes(input_shape, weight_shape, output_hw,
                                                               geometry, single_precision);
        return std::string(fastconv::conv_algorithm_name(fastconv::select_conv_algorithm(p)));
      },
      py::arg("input_shape"), py::arg("weight_shape"), py::arg("output_hw"), py::arg("geometry"),
      py::arg("single_precision") = true);
  m.def(
      "conv2d_algorithm_supports",
      [](int algorithm_index, py::tuple input_shape, py::tuple weight_shape, py::tuple output_hw,
         py::tuple geometry, bool single_precision) {
        const fastconv::ConvParams p = conv_params_from_shapes(input_shape, weight_shape, output_hw,
                                                               geometry, single_precision);
        return fastconv::conv_algorithm_supports(algorithm_from_index(algorithm_index, p), p);
      },
      py::arg("algorithm"), py::arg("input_shape"), py::arg("weight_shape"), py::arg("output_hw"),
      py::arg("geometry"), py::arg("single_precision"));
  m.def(
      "conv2d_backward_algorithm",
      [](const std::string& direction, py::tuple input_shape, py::tuple weight_shape,
         py::tuple output_hw, py::tuple geometry, bool single_precision) {
        const fastconv::ConvParams p = conv_params_from_shapes(input_shape, weight_shape, output_hw,
                                                               geometry, single_precision);
        if (direction == "input") return fastconv::conv_backward_input_algorithm(p);
        require(direction == "weight", "direction must be 'input' or 'weight'");
        return fastconv::conv_backward_weight_algorithm(p);
      },
      py::arg("direction"), py::arg("input_shape"), py::arg("weight_shape"), py::arg("output_hw"),
      py::arg("geometry"), py::arg("single_precision"));
  m.attr("conv2d_algorithms") =
      py::make_tuple("pointwise_gemm", "depthwise", "direct", "implicit_gemm", "winograd");
  bind_gemm<double>(m);
  // Registry of micro-kernels usable on this CPU, in dispatch order (last = chosen).
  m.def("gemm_kernels", [](const std::string& dtype) {
    if (dtype == "float32") return gemm_kernel_names<float>();
    if (dtype == "float64") return gemm_kernel_names<double>();
    throw std::invalid_argument("dtype must be 'float32' or 'float64'");
  });
}
