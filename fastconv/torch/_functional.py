"""fastconv's kernels as ``torch.autograd.Function``s, behind ``torch.nn.functional``'s
signatures.

Routing, per call (``route``):
* CPU tensors of one float dtype (float32 or float64): fastconv's CPU kernels on
  ``tensor.numpy()`` views, results wrapped with ``torch.from_numpy`` (no copy either
  way; strided and channels_last inputs are read correctly, the kernels copy them to
  NCHW where they need it);
* CUDA tensors of one float dtype on one device: fastconv's CUDA backend through
  ``__cuda_array_interface__`` (numba-cuda), on torch's current stream;
* anything else -- half, bfloat16, complex, mixed dtypes or devices, other devices,
  sparse tensors, tensor subclasses and tracers (``__torch_function__``), code under
  ``torch.autocast`` -- runs torch's own op, so a converted model keeps working
  wherever the original did.

Gradients: only those ``ctx.needs_input_grad`` asks for are computed; without grad
mode (``torch.no_grad``, ``torch.inference_mode``) or without a tensor that requires
grad, the forward runs without recording anything. Backward is once-differentiable:
``create_graph=True`` raises.

Threads: fastconv's CPU kernels run on ``torch.get_num_threads()`` threads (or the
count given to ``set_num_threads``); see ``set_num_threads``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastconv

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "conv2d",
    "get_num_threads",
    "linear",
    "max_pool2d",
    "route",
    "set_num_threads",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# The routes that run fastconv (the third, "torch", runs torch's own op).
HOST, DEVICE, TORCH = "cpu", "cuda", "torch"

# --------------------------------------------------------------------------- threads

_thread_override: int | None = None


def set_num_threads(n: int | None) -> None:
    """Threads fastconv's CPU kernels use when called through ``fastconv.torch``.

    ``None`` (the default) follows ``torch.get_num_threads()`` at each call, so
    ``torch.set_num_threads`` governs both libraries. fastconv's own setting
    (``fastconv.set_num_threads``) is process-wide: a call whose count differs from it
    sets it for the duration of the kernel and restores it afterwards; when the counts
    agree (the usual case: both default to the machine's cores) nothing is changed.
    """
    global _thread_override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be None or a positive int, got {n!r}")
    _thread_override = n


def get_num_threads() -> int:
    """The thread count the next fastconv CPU call through ``fastconv.torch`` will use."""
    return _thread_override or torch.get_num_threads()


def _run_on_host(fn, *args, **kwargs):
    wanted, current = get_num_threads(), fastconv.get_num_threads()
    if wanted == current:
        return fn(*args, **kwargs)
    try:
        fastconv.set_num_threads(wanted)
    except ValueError:  # above fastconv's bound on this machine: keep its count
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    finally:
        fastconv.set_num_threads(current)


# --------------------------------------------------------------------------- routing


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def route(*tensors) -> str:
    """Where an op on ``tensors`` (None entries ignored) runs: ``"cpu"`` or ``"cuda"``
    (fastconv's kernels) or ``"torch"`` (torch's own op)."""
    present = [t for t in tensors if t is not None]
    if torch.overrides.has_torch_function(present):
        return TORCH
    first = present[0]
    dtype, device = first.dtype, first.device
    if dtype not in _FLOAT_DTYPES or device.type not in (HOST, DEVICE):
        return TORCH
    for t in present:
        if t.dtype != dtype or t.device != device or t.layout != torch.strided:
            return TORCH
    if _autocast_enabled(device.type):
        return TORCH
    return device.type


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------- tensors <-> arrays


def _cuda_runtime():
    """numba's CUDA module, or a RuntimeError saying why fastconv cannot run on CUDA."""
    try:
        from numba import cuda

        import fastconv.cuda  # noqa: F401  (the backend fastconv's functional API calls)
    except ImportError as exc:
        raise RuntimeError(
            "fastconv.torch got CUDA tensors, but fastconv's CUDA backend needs numba-cuda "
            f"({exc}): pip install 'fastconv[cuda]', or keep these layers on torch's ops "
            "(fastconv.torch.revert, or convert(..., layers=...) without them)"
        ) from exc
    if not cuda.is_available():
        raise RuntimeError(
            "fastconv.torch got CUDA tensors, but numba sees no usable CUDA device or "
            "driver, so fastconv's CUDA backend cannot run; keep these layers on torch's "
            "ops (fastconv.torch.revert, or convert(..., layers=...) without them)"
        )
    return cuda


def _array(kind: str, t: torch.Tensor):
    """A NumPy (CPU) or Numba device (CUDA) array viewing ``t``'s memory."""
    if kind == HOST:
        return t.detach().resolve_neg().numpy()
    cuda = _cuda_runtime()
    t = t.detach().resolve_neg()  # the interface would expose a negative view's raw values
    desc = dict(t.__cuda_array_interface__)
    stream = torch.cuda.current_stream(t.device).cuda_stream
    if stream:  # 0 is the legacy default stream, which the interface leaves out
        desc.update(stream=stream, version=3)
    return cuda.from_cuda_array_interface(desc, owner=t, sync=False)


def _tensor(kind: str, array, device: torch.device) -> torch.Tensor:
    if kind == HOST:
        return torch.from_numpy(array)
    return torch.as_tensor(array, device=device)


def _run(kind: str, device: torch.device, fn, *args, **kwargs):
    if kind == HOST:
        return _run_on_host(fn, *args, **kwargs)
    with _cuda_runtime().gpus[device.index or 0]:
        return fn(*args, **kwargs)


def _suggests_channels_last(t: torch.Tensor) -> bool:
    """torch's ``suggest_memory_format(t) == channels_last`` for a 4-D tensor: strides
    ordered C, W, H, N (``c10::is_channels_last_strides_2d``), ambiguous cases NCHW."""
    if t.dim() != 4 or t.is_contiguous():  # NCHW-contiguous strides never suggest it
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def _in_layout(out: torch.Tensor, *like: torch.Tensor) -> torch.Tensor:
    """``out`` in channels_last when torch's own op would return it so: when an input's
    strides suggest channels_last."""
    if out.dim() == 4 and any(t is not None and _suggests_channels_last(t) for t in like):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _refuse_double_backward(op: str) -> None:
    # The engine runs backward in grad mode exactly when create_graph=True.
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"fastconv.torch.{op} has no double backward: its backward ran with "
            "create_graph=True (a gradient of a gradient, as in gradient penalties or "
            f"Hessian-vector products). Run {op} on torch's own op for this: "
            "fastconv.torch.revert(model), or convert(model, layers=...) leaving it out"
        )


# --------------------------------------------------------------------------- conv2d


def _conv2d_forward(kind, input, weight, bias, geometry):
    b = None if bias is None else _array(kind, bias)
    out = _run(
        kind,
        input.device,
        fastconv.conv2d,
        _array(kind, input),
        _array(kind, weight),
        b,
        *geometry,
    )
    return _in_layout(_tensor(kind, out, input.device), input, weight)


def _save_conv_operands(ctx, input, weight, geometry, kind) -> None:
    """What a convolution's backward needs: the input only for the weight gradient,
    the weight only for the input gradient, and the shapes and geometry."""
    need_input, need_weight = ctx.needs_input_grad[:2]
    ctx.save_for_backward(input if need_weight else None, weight if need_input else None)
    ctx.geometry, ctx.kind = geometry, kind
    ctx.input_shape, ctx.weight_shape = tuple(input.shape), tuple(weight.shape)


def _conv_gradients(ctx, grad_output, input_grad, weight_grad):
    """(grad_input, grad_weight, grad_bias) of a convolution saved by
    ``_save_conv_operands``, each computed only if asked for:
    ``input_grad(input_shape, weight, gy, *geometry)``,
    ``weight_grad(input, weight_shape, gy, *geometry)`` and ``conv2d_bias_grad(gy)``."""
    input, weight = ctx.saved_tensors
    kind, device = ctx.kind, grad_output.device
    gy = _array(kind, grad_output)

    def run(fn, *args):
        return _tensor(kind, _run(kind, device, fn, *args), device)

    wanted = ctx.needs_input_grad
    grad_input = grad_weight = grad_bias = None
    if wanted[0]:
        grad_input = run(input_grad, ctx.input_shape, _array(kind, weight), gy, *ctx.geometry)
    if wanted[1]:
        grad_weight = run(weight_grad, _array(kind, input), ctx.weight_shape, gy, *ctx.geometry)
    if wanted[2]:
        grad_bias = run(fastconv.conv2d_bias_grad, gy)
    return grad_input, grad_weight, grad_bias


class Conv2dFunction(torch.autograd.Function):
    """conv2d through fastconv: forward ``fastconv.conv2d``, backward
    ``conv2d_input`` / ``conv2d_weight`` / ``conv2d_bias_grad``, each only if needed."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups, kind):
        geometry = (stride, padding, dilation, groups)
        _save_conv_operands(ctx, input, weight, geometry, kind)
        return _conv2d_forward(kind, input, weight, bias, geometry)

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward("conv2d")
        grads = _conv_gradients(ctx, grad_output, fastconv.conv2d_input, fastconv.conv2d_weight)
        return (*grads, None, None, None, None, None)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``torch.nn.functional.conv2d`` on fastconv's kernels (see the module doc)."""
    kind = route(input, weight, bias)
    if kind == TORCH:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if _needs_graph(input, weight, bias):
        return Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups, kind)
    return _conv2d_forward(kind, input, weight, bias, (stride, padding, dilation, groups))


# --------------------------------------------------------------------------- conv_transpose2d
# fastconv's transposed convolution runs on the CPU kernels only: CUDA tensors take
# torch's op.


def _conv_transpose2d_forward(input, weight, bias, geometry):
    b = None if bias is None else _array(HOST, bias)
    out = _run(
        HOST,
        input.device,
        fastconv.conv_transpose2d,
        _array(HOST, input),
        _array(HOST, weight),
        b,
        *geometry,
    )
    return _in_layout(_tensor(HOST, out, input.device), input, weight)


class ConvTranspose2dFunction(torch.autograd.Function):
    """conv_transpose2d through fastconv (CPU): forward ``fastconv.conv_transpose2d``,
    backward ``conv_transpose2d_input`` / ``conv_transpose2d_weight`` /
    ``conv2d_bias_grad``, each only if needed."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, output_padding, groups, dilation):
        geometry = (stride, padding, output_padding, groups, dilation)
        _save_conv_operands(ctx, input, weight, geometry, HOST)
        return _conv_transpose2d_forward(input, weight, bias, geometry)

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward("conv_transpose2d")
        grads = _conv_gradients(
            ctx, grad_output, fastconv.conv_transpose2d_input, fastconv.conv_transpose2d_weight
        )
        return (*grads, None, None, None, None, None)


def conv_transpose2d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """``torch.nn.functional.conv_transpose2d`` on fastconv's CPU kernels (CUDA tensors
    and other dtypes run torch's op)."""
    if route(input, weight, bias) != HOST:
        return F.conv_transpose2d(
            input, weight, bias, stride, padding, output_padding, groups, dilation
        )
    if _needs_graph(input, weight, bias):
        return ConvTranspose2dFunction.apply(
            input, weight, bias, stride, padding, output_padding, groups, dilation
        )
    return _conv_transpose2d_forward(
        input, weight, bias, (stride, padding, output_padding, groups, dilation)
    )


# --------------------------------------------------------------------------- pooling


def _max_pool2d_forward(kind, input, window, with_indices):
    result = _run(
        kind, input.device, fastconv.max_pool2d, _array(kind, input), *window, with_indices
    )
    if not with_indices:
        return _in_layout(_tensor(kind, result, input.device), input)
    out, indices = (_in_layout(_tensor(kind, a, input.device), input) for a in result)
    return out, indices


class MaxPool2dFunction(torch.autograd.Function):
    """max_pool2d through fastconv; backward scatters to the forward's indices."""

    @staticmethod
    def forward(ctx, input, kernel_size, stride, padding, dilation, ceil_mode, kind):
        out, indices = _max_pool2d_forward(
            kind, input, (kernel_size, stride, padding, dilation, ceil_mode), True
        )
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        ctx.kind, ctx.input_shape = kind, tuple(input.shape)
        return out, indices

    @staticmethod
    def backward(ctx, grad_output, grad_indices):
        _refuse_double_backward("max_pool2d")
        (indices,) = ctx.saved_tensors
        kind, device = ctx.kind, grad_output.device
        gx = _run(
            kind,
            device,
            fastconv.max_pool2d_backward,
            _array(kind, grad_output),
            _array(kind, indices),
            ctx.input_shape,
        )
        return _tensor(kind, gx, device), None, None, None, None, None, None


def max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """``torch.nn.functional.max_pool2d`` on fastconv's kernels (see the module doc)."""
    kind = route(input)
    if kind == TORCH:
        return F.max_pool2d(
            input,
            kernel_size,
            stride,
            padding,
            dilation,
            ceil_mode=ceil_mode,
            return_indices=return_indices,
        )
    if _needs_graph(input):
        out, indices = MaxPool2dFunction.apply(
            input, kernel_size, stride, padding, dilation, ceil_mode, kind
        )
        return (out, indices) if return_indices else out
    window = (kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool2d_forward(kind, input, window, bool(return_indices))


def _avg_pool2d_forward(kind, input, window):
    out = _run(kind, input.device, fastconv.avg_pool2d, _array(kind, input), *window)
    return _in_layout(_tensor(kind, out, input.device), input)


class AvgPool2dFunction(torch.autograd.Function):
    """avg_pool2d through fastconv; backward ``fastconv.avg_pool2d_backward``."""

    @staticmethod
    def forward(
        ctx, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor, kind
    ):
        window = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor)
        ctx.window, ctx.kind, ctx.input_shape = window, kind, tuple(input.shape)
        return _avg_pool2d_forward(kind, input, window)

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward("avg_pool2d")
        kind, device = ctx.kind, grad_output.device
        gx = _run(
            kind,
            device,
            fastconv.avg_pool2d_backward,
            _array(kind, grad_output),
            ctx.input_shape,
            *ctx.window,
        )
        return _tensor(kind, gx, device), None, None, None, None, None, None, None


def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """``torch.nn.functional.avg_pool2d`` on fastconv's kernels (see the module doc)."""
    kind = route(input)
    if kind == TORCH:
        return F.avg_pool2d(
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
    window = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    if _needs_graph(input):
        return AvgPool2dFunction.apply(input, *window, kind)
    return _avg_pool2d_forward(kind, input, window)


def _uniform_window(size, output_size):
    """The (kh, kw) window whose stride-k average pooling equals adaptive average
    pooling of ``size`` (H, W) to ``output_size``, or None when the adaptive windows
    are not all one size and a step apart (an output size that does not divide the
    input's)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    try:
        oh, ow = output_size
    except (TypeError, ValueError):
        return None
    window = []
    for n, o in zip(size, (oh, ow)):
        o = n if o is None else o
        if isinstance(o, bool) or not isinstance(o, int) or o < 1 or n % o:
            return None
        window.append(n // o)
    return tuple(window)


def adaptive_avg_pool2d(input, output_size):
    """``torch.nn.functional.adaptive_avg_pool2d``: when the output size divides the
    input's (global pooling included), fastconv's ``avg_pool2d`` with a window of
    input/output pixels; otherwise (uneven windows) torch's own op."""
    window = None if input.dim() not in (3, 4) else _uniform_window(input.shape[-2:], output_size)
    if window is None or min(input.shape[-3:]) == 0:
        return F.adaptive_avg_pool2d(input, output_size)
    return avg_pool2d(input, window, window)


# --------------------------------------------------------------------------- linear


def _linear_forward(kind, input, weight, bias):
    b = None if bias is None else _array(kind, bias)
    out = _run(kind, input.device, fastconv.linear, _array(kind, input), _array(kind, weight), b)
    return _tensor(kind, out, input.device)


class LinearFunction(torch.autograd.Function):
    """linear through fastconv's GEMM: forward ``fastconv.linear``; backward
    ``grad @ weight`` and ``grad.T @ input`` (``fastconv.gemm``), bias: column sums."""

    @staticmethod
    def forward(ctx, input, weight, bias, kind):
        need_input, need_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(input if need_weight else None, weight if need_input else None)
        ctx.kind, ctx.input_shape = kind, tuple(input.shape)
        return _linear_forward(kind, input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward("linear")
        input, weight = ctx.saved_tensors
        kind, device = ctx.kind, grad_output.device
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        gy = _array(kind, rows)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            gx = _run(kind, device, fastconv.gemm, gy, _array(kind, weight))
            grad_input = _tensor(kind, gx, device).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            x = _array(kind, input.reshape(-1, input.shape[-1]))
            gw = _run(kind, device, fastconv.gemm, gy, x, trans_a=True)
            grad_weight = _tensor(kind, gw, device)
        if ctx.needs_input_grad[2]:
            # the bias gradient sums grad over its rows: conv2d's bias gradient on
            # (rows, out_features, 1, 1)
            columns = _array(kind, rows[:, :, None, None])
            gb = _run(kind, device, fastconv.conv2d_bias_grad, columns)
            grad_bias = _tensor(kind, gb, device)
        return grad_input, grad_weight, grad_bias, None


def linear(input, weight, bias=None):
    """``torch.nn.functional.linear`` on fastconv's GEMM (see the module doc)."""
    kind = route(input, weight, bias)
    if kind == TORCH:
        return F.linear(input, weight, bias)
    if _needs_graph(input, weight, bias):
        return LinearFunction.apply(input, weight, bias, kind)
    return _linear_forward(kind, input, weight, bias)
