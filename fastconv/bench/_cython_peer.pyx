# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The Cython peer's loops: im2col, col2im and max pooling over typed memoryviews,
without the GIL, parallel over independent outputs with OpenMP (``prange``).

Column layout (one GEMM for the whole batch): row ``(c * kh + i) * kw + j``, column
``(n * oh + y) * ow + x``, so that ``weight.reshape(K, -1) @ cols`` is the convolution.
Compiled on first use by ``peers_cython.py``; the GEMMs are NumPy's.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset

ctypedef fused real:
    float
    double


cdef inline Py_ssize_t _first_valid(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """The first output position x with x * stride + offset >= 0."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t _end_valid(
    Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t count
) noexcept nogil:
    """One past the last output position x < count with x * stride + offset < size."""
    if size - 1 - offset < 0:
        return 0
    cdef Py_ssize_t end = (size - 1 - offset) // stride + 1
    return end if end < count else count


def im2col(
    const real[:, :, :, ::1] x,
    real[:, ::1] cols,
    Py_ssize_t kh,
    Py_ssize_t kw,
    Py_ssize_t stride,
    Py_ssize_t pad,
    Py_ssize_t dilation,
    Py_ssize_t oh,
    Py_ssize_t ow,
    int num_threads,
):
    """Fill ``cols`` (C*kh*kw, N*oh*ow) with the patches of ``x`` (N, C, H, W); padding
    reads as zero. One task per (row, image): every task writes its own stretch."""
    cdef Py_ssize_t n_img = x.shape[0], height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t rows = cols.shape[0]
    cdef Py_ssize_t task, row, n, c, i, j, y, xo, hy, col, x_off, lo, hi
    for task in prange(rows * n_img, nogil=True, schedule="static", num_threads=num_threads):
        row = task // n_img
        n = task % n_img
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        x_off = j * dilation - pad
        lo = _first_valid(x_off, stride)
        hi = _end_valid(x_off, stride, width, ow)
        if hi < lo:
            hi = lo
        for y in range(oh):
            hy = y * stride + i * dilation - pad
            col = (n * oh + y) * ow
            if hy < 0 or hy >= height:
                for xo in range(ow):
                    cols[row, col + xo] = 0
                continue
            for xo in range(lo):
                cols[row, col + xo] = 0
            for xo in range(lo, hi):
                cols[row, col + xo] = x[n, c, hy, xo * stride + x_off]
            for xo in range(hi, ow):
                cols[row, col + xo] = 0


def col2im(
    const real[:, ::1] cols,
    real[:, :, :, ::1] out,
    Py_ssize_t kh,
    Py_ssize_t kw,
    Py_ssize_t stride,
    Py_ssize_t pad,
    Py_ssize_t dilation,
    Py_ssize_t oh,
    Py_ssize_t ow,
    int num_threads,
):
    """The adjoint of ``im2col``: zero ``out`` (N, C, H, W) and add every column entry
    back to the pixel it was read from (entries that read padding are dropped). One task
    per (image, channel) plane, so no two threads add to the same pixel."""
    cdef Py_ssize_t n_img = out.shape[0], channels = out.shape[1]
    cdef Py_ssize_t height = out.shape[2], width = out.shape[3]
    cdef Py_ssize_t task, row, n, c, i, j, y, xo, hy, col, x_off, lo, hi
    for task in prange(n_img * channels, nogil=True, schedule="static", num_threads=num_threads):
        n = task // channels
        c = task % channels
        memset(&out[n, c, 0, 0], 0, height * width * sizeof(real))
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                x_off = j * dilation - pad
                lo = _first_valid(x_off, stride)
                hi = _end_valid(x_off, stride, width, ow)
                for y in range(oh):
                    hy = y * stride + i * dilation - pad
                    if hy < 0 or hy >= height:
                        continue
                    col = (n * oh + y) * ow
                    for xo in range(lo, hi):
                        out[n, c, hy, xo * stride + x_off] += cols[row, col + xo]


def max_pool2d(
    const real[:, :, :, ::1] x,
    real[:, :, :, ::1] out,
    int64_t[:, :, :, ::1] indices,
    Py_ssize_t kh,
    Py_ssize_t kw,
    Py_ssize_t sh,
    Py_ssize_t sw,
    Py_ssize_t ph,
    Py_ssize_t pw,
    int num_threads,
):
    """Max pooling of ``x`` into ``out`` (and the flat argmax ``h * W + w`` into
    ``indices`` unless it is None), PyTorch's rule: scan the window row-major from -inf
    and take an element when it is greater or NaN. One task per plane."""
    cdef Py_ssize_t n_img = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t oh = out.shape[2], ow = out.shape[3]
    cdef bint want_indices = indices is not None
    cdef Py_ssize_t task, n, c, y, xo, h0, w0, h, w, h_first, w_first, h_end, w_end
    cdef int64_t best_index
    cdef real best, v
    for task in prange(n_img * channels, nogil=True, schedule="static", num_threads=num_threads):
        n = task // channels
        c = task % channels
        for y in range(oh):
            h0 = y * sh - ph
            h_first = h0 if h0 > 0 else 0
            h_end = h0 + kh if h0 + kh < height else height
            for xo in range(ow):
                w0 = xo * sw - pw
                w_first = w0 if w0 > 0 else 0
                w_end = w0 + kw if w0 + kw < width else width
                best = -INFINITY
                best_index = h_first * width + w_first
                for h in range(h_first, h_end):
                    for w in range(w_first, w_end):
                        v = x[n, c, h, w]
                        if v > best or v != v:
                            best = v
                            best_index = h * width + w
                out[n, c, y, xo] = best
                if want_indices:
                    indices[n, c, y, xo] = best_index


def max_pool2d_backward(
    const real[:, :, :, ::1] grad_output,
    const int64_t[:, :, :, ::1] indices,
    real[:, :, :, ::1] grad_input,
    int num_threads,
):
    """Zero ``grad_input`` and add every output gradient to the input pixel its index
    names (indices outside the plane are skipped). One task per plane."""
    cdef Py_ssize_t n_img = grad_output.shape[0], channels = grad_output.shape[1]
    cdef Py_ssize_t oh = grad_output.shape[2], ow = grad_output.shape[3]
    cdef Py_ssize_t width = grad_input.shape[3]
    cdef Py_ssize_t plane = grad_input.shape[2] * width
    cdef Py_ssize_t task, n, c, y, xo
    cdef int64_t index
    for task in prange(n_img * channels, nogil=True, schedule="static", num_threads=num_threads):
        n = task // channels
        c = task % channels
        memset(&grad_input[n, c, 0, 0], 0, plane * sizeof(real))
        for y in range(oh):
            for xo in range(ow):
                index = indices[n, c, y, xo]
                if 0 <= index < plane:
                    grad_input[n, c, index // width, index % width] += grad_output[n, c, y, xo]
