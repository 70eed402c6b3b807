// The only C++ that knows about Python. Arguments arrive validated and
// normalised by fastconv.functional; outputs are allocated there too. Each
// binding checks only what memory safety needs, then drops the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "gemm/gemm.h"
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

template <typename T>
void bind_pool(py::module_& m) {
  m.def(
      "max_pool2d_forward",
      [](const CArray<T>& input, CArray<T>& output, CArray<int64_t>& indices, py::tuple window) {
        require(input.ndim() == 3 && output.ndim() == 3, "internal: pooling arrays must be 3-D");
        const PoolParams p = pool_params(input.shape(0), input.shape(1), input.shape(2),
                                         output.shape(1), output.shape(2), window);
        require_shape(output, {p.planes, p.out_h, p.out_w}, "output");
        require_shape(indices, {p.planes, p.out_h, p.out_w}, "indices");
        const T* in = input.data();
        T* out = output.mutable_data();
        int64_t* idx = indices.mutable_data();
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
    throw std::invalid_argument(std::string(name) + " has strides that are not a multiple of its itemsize");
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
        const fastconv::GemmKernelInfo<T> info =
            kernel_index < 0 ? fastconv::gemm_kernel<T>() : fastconv::gemm_kernel_at<T>(kernel_index);
        const int threads = fastconv::get_num_threads();
        py::gil_scoped_release release;
        fastconv::gemm_with_kernel<T>(pr, threads, info);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("alpha"), py::arg("beta"),
      py::arg("trans_a"), py::arg("trans_b"), py::arg("kernel_index") = -1);
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
  m.def("set_num_threads", &fastconv::set_num_threads, py::arg("n"));
  bind_pool<float>(m);
  bind_pool<double>(m);
  bind_gemm<float>(m);
  bind_gemm<double>(m);
  // Registry of micro-kernels usable on this CPU, in dispatch order (last = chosen).
  m.def("gemm_kernels", [](const std::string& dtype) {
    if (dtype == "float32") return gemm_kernel_names<float>();
    if (dtype == "float64") return gemm_kernel_names<double>();
    throw std::invalid_argument("dtype must be 'float32' or 'float64'");
  });
}
