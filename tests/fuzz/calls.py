"""Hostile calls of the public ops, each one a pure function of ``(seed, index)``.

Most calls start from a consistent set of arguments (small random shapes, so that valid
calls run the kernels) and then spoil some of them: wrong dtypes, ndims or shapes, views
(Fortran order, negative and non-unit strides, zero strides, unaligned data, read-only),
masked arrays, lists and scalars, NaN/Inf/huge/denormal values, zero-size arrays whose
other dims are huge, hostile ints (0, negative, 2**31, 2**63, floats, bools, strings),
wrong tuple lengths, outputs that alias inputs, and requests for far more memory than
any machine has. ``Call.spoiled`` says which arguments were spoiled, for the report.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

import fastconv
from fastconv import nn, reference
from fastconv.functional import BatchNormSaved

# Ints that overflow 32 or 64 bits, or are zero or negative.
HOSTILE_INTS = [
    0,
    -1,
    -3,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32 + 1,
    2**40,
    2**62,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64 + 5,
    10**30,
]
# Values of the wrong kind where an int, bool or float is expected.
HOSTILE_SCALARS = [
    True,
    False,
    1.0,
    2.5,
    float("nan"),
    float("inf"),
    -0.0,
    "2",
    "",
    None,
    b"1",
    1 + 2j,
    np.int32(2),
    np.int64(-1),
    np.uint64(2**63),
    np.uint8(255),
    np.float32(2.0),
    np.bool_(True),
    np.array(2),
    np.array([2, 2]),
    np.array([]),
    (),
    (1,),
    (1, 2, 3),
    [2, 2],
    (2, "a"),
    (2, None),
    ((1, 1), (1, 1)),
    {"h": 1},
    object(),
]
HOSTILE_DTYPES = [
    np.float16,
    np.longdouble,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
    np.complex64,
    np.complex128,
    object,
    "U3",
    "V8",
    "M8[s]",
    ">f4",
    ">f8",
]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-40, -0.0, 1e300]
HUGE_DIMS = [2**31 - 1, 2**31 + 1, 2**33, 2**40, 2**62]


@dataclasses.dataclass
class Call:
    op: str
    fn: Callable[..., Any]
    args: dict[str, Any]
    writes: tuple[str, ...] = ()  # arguments the op may write to (gemm's c, ...)
    spoiled: list[str] = dataclasses.field(default_factory=list)

    def run(self) -> Any:
        return self.fn(**self.args)


class Draw:
    """Random choices of one call, and the hostile versions of its arguments."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.spoiled: list[str] = []

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def int_in(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    # ----------------------------------------------------------------- scalars

    def hostile_scalar(self) -> Any:
        return self.pick(HOSTILE_INTS) if self.chance(0.5) else self.pick(HOSTILE_SCALARS)

    def int_arg(self, name: str, value: int, p: float = 0.08) -> Any:
        if self.chance(p):
            self.spoiled.append(name)
            return self.hostile_scalar()
        return np.int64(value) if self.chance(0.1) else value

    def pair_arg(self, name: str, pair: tuple[int, int], p: float = 0.08) -> Any:
        if self.chance(p):
            self.spoiled.append(name)
            kind = self.int_in(0, 3)
            if kind == 0:
                return self.hostile_scalar()
            if kind == 1:
                return (pair[0], self.hostile_scalar())
            if kind == 2:
                return (self.pick(HOSTILE_INTS), pair[1])
            return self.pick([(pair[0],), (*pair, 1), np.array(pair), "ab", list(pair)])
        if pair[0] == pair[1] and self.chance(0.5):
            return pair[0]
        return list(pair) if self.chance(0.1) else pair

    def flag_arg(self, name: str, value: bool, p: float = 0.05) -> Any:
        if self.chance(p):
            self.spoiled.append(name)
            return self.pick([np.array([True, False]), "no", None, 2, np.bool_(value), [value]])
        return value

    def float_arg(self, name: str, value: float, p: float = 0.08) -> Any:
        if self.chance(p):
            self.spoiled.append(name)
            return self.pick(
                [np.nan, np.inf, -np.inf, 1e308, -1.0, 0.0, "1", None, 1j, np.float32(2), [1.0]]
            )
        return value

    # ------------------------------------------------------------------ arrays

    def values(self, shape, dtype) -> np.ndarray:
        """Small integer-valued or normal floats, now and then with special values."""
        if self.chance(0.5):
            x = self.rng.integers(-3, 4, size=shape).astype(dtype)
        else:
            x = self.rng.standard_normal(shape).astype(dtype)
        if x.size and self.chance(0.15):
            flat = x.reshape(-1)
            with np.errstate(over="ignore"):  # 1e300 becomes inf in float32
                for _ in range(self.int_in(1, 3)):
                    flat[self.int_in(0, flat.size - 1)] = self.pick(SPECIAL_VALUES)
        return x

    def spoil_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = list(shape)
        kind = self.int_in(0, 4)
        if kind == 0 and shape:  # one dim changed
            shape[self.int_in(0, len(shape) - 1)] = self.int_in(0, 9)
        elif kind == 1 and shape:  # one dim dropped
            del shape[self.int_in(0, len(shape) - 1)]
        elif kind == 2:  # one dim added
            shape.insert(self.int_in(0, len(shape)), self.int_in(1, 3))
        elif kind == 3 and len(shape) >= 2:  # a zero-size array whose other dims are huge
            i, j = self.rng.choice(len(shape), size=2, replace=False)
            shape[i], shape[j] = 0, self.pick([2**31 + 1, 2**33, 2**40])
        else:  # dims swapped
            shape = shape[::-1]
        return tuple(shape)

    def array(self, name: str, shape, dtype, p: float = 0.1) -> Any:
        """An array of ``shape`` and ``dtype``, spoiled with probability ``p`` (its kind,
        dtype, shape or values) and given a hostile layout with probability 0.3."""
        shape = tuple(shape)
        if self.chance(p):
            self.spoiled.append(name)
            what = self.int_in(0, 3)
            if what == 0:
                shape = self.spoil_shape(shape)
            elif what == 1:
                dtype = self.pick(HOSTILE_DTYPES)
            elif what == 2:
                return self.not_an_array(shape, dtype)
            else:
                dtype = np.float64 if np.dtype(dtype) == np.float32 else np.float32
        if any(d > 2**20 for d in shape) and 0 not in shape:
            shape = tuple(min(d, 3) for d in shape)  # only empty arrays may be huge
        while math.prod(d for d in shape if d) * np.dtype(dtype).itemsize >= 2**62:
            # NumPy refuses even an empty array whose other dims overflow its size
            # type: keep one huge dim (a spoiled shape may have made two)
            largest = max(range(len(shape)), key=lambda i: shape[i])
            shape = (*shape[:largest], 2**20, *shape[largest + 1 :])
        x = self.typed_values(shape, dtype)
        return self.layout(x) if self.chance(0.3) else x

    def typed_values(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype.kind in "fc" and dtype.byteorder in "=|<":
            return self.values(shape, dtype)
        if dtype.kind in "VMU":
            return np.zeros(shape, dtype)
        return self.values(shape, np.float64).astype(dtype)

    def not_an_array(self, shape, dtype) -> Any:
        x = self.values(shape, np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float64)
        kind = self.int_in(0, 5)
        if kind == 0 and x.size:
            return x.tolist()
        if kind == 1:
            return np.ma.masked_array(x, mask=x > 0)
        if kind == 2:
            return float(x.reshape(-1)[0]) if x.size else 0.0
        if kind == 3:
            return None
        if kind == 4:
            return np.asarray(x[(0,) * x.ndim]) if x.size else x  # a 0-d array
        return memoryview(np.ascontiguousarray(x)) if x.size else "x"

    def layout(self, x: np.ndarray) -> np.ndarray:
        """The same values (or a read-only broadcast of some) in a hostile layout."""
        kind = self.int_in(0, 7)
        if x.ndim == 0 or x.size == 0:
            kind = 7
        if kind == 0:
            return np.asfortranarray(x)
        if kind == 1:  # negative strides
            return np.ascontiguousarray(x[..., ::-1])[..., ::-1]
        if kind == 2:  # every other element of a larger buffer
            big = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype)
            big[..., ::2] = x
            return big[..., ::2]
        if kind == 3 and x.ndim >= 2:  # the last two axes transposed in memory
            return np.ascontiguousarray(np.swapaxes(x, -1, -2)).swapaxes(-1, -2)
        if kind == 4:  # zero strides, read-only
            return np.broadcast_to(x[..., :1], x.shape)
        if kind == 5 and x.dtype.hasobject is False:  # data one byte off alignment
            buffer = np.zeros(x.nbytes + 1, np.uint8)
            y = buffer[1:].view(x.dtype).reshape(x.shape)
            y[...] = x
            return y
        if kind == 6 and x.ndim == 2:
            return np.asmatrix(x)
        y = x.copy()
        y.flags.writeable = False
        return y


# --------------------------------------------------------------------------- geometry


def _dtype(d: Draw):
    return np.float32 if d.chance(0.7) else np.float64


def _conv_problem(d: Draw) -> dict[str, Any]:
    """A consistent convolution: shapes of input, weight and grad_output, and geometry."""
    groups = d.pick([1, 1, 1, 2, 3])
    depthwise = d.chance(0.2)
    cg = 1 if depthwise else d.int_in(1, 3)
    c = cg * (d.int_in(1, 4) if depthwise else groups)
    if depthwise:
        groups = c
    k = groups * d.int_in(1, 3)
    r, s = d.int_in(1, 5), d.int_in(1, 5)
    stride = (d.int_in(1, 3), d.int_in(1, 3))
    dilation = (d.pick([1, 1, 2, 3]), d.pick([1, 1, 2]))
    padding: Any = (d.int_in(0, 3), d.int_in(0, 3))
    if d.chance(0.1):
        padding = d.pick(["same", "valid"])
        if padding == "same":
            stride = (1, 1)
    h = (r - 1) * dilation[0] + 1 + d.int_in(0, 12)
    w = (s - 1) * dilation[1] + 1 + d.int_in(0, 12)
    n = d.pick([0, 1, 1, 2, 3, 5])
    if d.chance(0.05):  # the far-reaching windows that run the per-tap kernels
        padding = (d.pick([2**20, 2**24, 2**30]), d.int_in(0, 2))
        stride = (d.pick([2**20, 2**25, 2**31 - 1]), stride[1])
        dilation = (d.pick([1, 2**24, 2**25]), dilation[1])
    pads = (
        reference.conv_padding(padding, (r, s), dilation)
        if isinstance(padding, str)
        else ((padding[0], padding[0]), (padding[1], padding[1]))
    )
    out_h = reference.conv_output_size(h, r, stride[0], pads[0], dilation[0])
    out_w = reference.conv_output_size(w, s, stride[1], pads[1], dilation[1])
    return dict(
        n=n, c=c, h=h, w=w, k=k, cg=cg, r=r, s=s, groups=groups, stride=stride,
        padding=padding, dilation=dilation, out=(max(out_h, 1), max(out_w, 1)),
    )  # fmt: skip


def _geometry_args(d: Draw, p: dict[str, Any]) -> dict[str, Any]:
    padding = p["padding"]
    if not isinstance(padding, str):
        padding = d.pair_arg("padding", padding)
    return dict(
        stride=d.pair_arg("stride", p["stride"]),
        padding=padding,
        dilation=d.pair_arg("dilation", p["dilation"]),
        groups=d.int_arg("groups", p["groups"]),
    )


def _maybe_unbatched(d: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if shape[0] == 1 and d.chance(0.2) else shape


def _algorithm(d: Draw, names: tuple[str, ...], args: dict[str, Any]) -> None:
    if d.chance(0.2):
        args["algorithm"] = d.pick([*names, "", "WINOGRAD", "auto", None, 3])


# --------------------------------------------------------------------------- ops


def conv2d(d: Draw) -> Call:
    p = _conv_problem(d)
    dt = _dtype(d)
    x_shape = _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"]))
    w_shape = (p["k"], p["cg"], p["r"], p["s"])
    if d.chance(0.03):  # the input is the weight (same array)
        x = w = d.array("weight", w_shape, dt)
        d.spoiled.append("input is weight")
    else:
        x = d.array("input", x_shape, dt)
        w = d.array("weight", w_shape, dt)
    bias = d.array("bias", (p["k"],), dt) if d.chance(0.5) else None
    if d.chance(0.05):  # outputs far larger than memory
        x, w = d.array("input", (1, 1, 1, 1), dt, 0), d.array("weight", (1, 1, 1, 1), dt, 0)
        bias = None
        pad = d.pick([2**16, 2**20, 2**31 - 1])
        p = dict(p, stride=(1, 1), dilation=(1, 1), groups=1, padding=(pad, pad))
        d.spoiled.append("huge output")
    args = dict(input=x, weight=w, bias=bias, **_geometry_args(d, p))
    _algorithm(d, fastconv.CONV2D_ALGORITHMS, args)
    return Call("conv2d", fastconv.conv2d, args)


def conv2d_input(d: Draw) -> Call:
    p = _conv_problem(d)
    dt = _dtype(d)
    size: Any = _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"]))
    w = d.array("weight", (p["k"], p["cg"], p["r"], p["s"]), dt)
    g = d.array("grad_output", (*size[:-3], p["k"], *p["out"]), dt)
    geometry = _geometry_args(d, p)
    if d.chance(0.05):  # a grad_input far larger than memory, one output per window
        big = d.pick(HUGE_DIMS)
        size = (1, 1, big, big)
        w = d.array("weight", (1, 1, 1, 1), dt, 0)
        g = d.array("grad_output", (1, 1, 1, 1), dt, 0)
        geometry = dict(stride=(big, big), padding=0, dilation=1, groups=1)
        d.spoiled.append("huge input_size")
    elif d.chance(0.1):
        size = _spoil_size(d, size, "input_size")
    args = dict(input_size=size, weight=w, grad_output=g, **geometry)
    _algorithm(d, fastconv.CONV2D_INPUT_ALGORITHMS, args)
    return Call("conv2d_input", fastconv.conv2d_input, args)


def conv2d_weight(d: Draw) -> Call:
    p = _conv_problem(d)
    dt = _dtype(d)
    x_shape = _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"]))
    x = d.array("input", x_shape, dt)
    g = d.array("grad_output", (*x_shape[:-3], p["k"], *p["out"]), dt)
    size: Any = (p["k"], p["cg"], p["r"], p["s"])
    geometry = _geometry_args(d, p)
    if d.chance(0.05):  # a weight gradient far larger than memory
        big = d.pick(HUGE_DIMS[:2])
        x = d.array("input", (1, 1, 1, 1), dt, 0)
        g = d.array("grad_output", (1, 1, 1, 1), dt, 0)
        size = (1, 1, big, big)
        geometry = dict(stride=1, padding=big // 2, dilation=1, groups=1)
        d.spoiled.append("huge weight_size")
    elif d.chance(0.1):
        size = _spoil_size(d, size, "weight_size")
    args = dict(input=x, weight_size=size, grad_output=g, **geometry)
    _algorithm(d, fastconv.CONV2D_WEIGHT_ALGORITHMS, args)
    return Call("conv2d_weight", fastconv.conv2d_weight, args)


def conv2d_bias_grad(d: Draw) -> Call:
    shape = (d.int_in(0, 3), d.int_in(1, 5), d.int_in(1, 9), d.int_in(1, 9))
    g = d.array("grad_output", _maybe_unbatched(d, shape), _dtype(d), p=0.3)
    return Call("conv2d_bias_grad", fastconv.conv2d_bias_grad, dict(grad_output=g))


def _spoil_size(d: Draw, size, name: str) -> Any:
    d.spoiled.append(name)
    kind = d.int_in(0, 4)
    if kind == 0:
        return list(size)
    if kind == 1:
        return size[:-1]
    if kind == 2:
        return (*size, 1)
    if kind == 3:
        i = d.int_in(0, len(size) - 1)
        return (*size[:i], d.hostile_scalar(), *size[i + 1 :])
    return np.array(size)


def _pool_problem(d: Draw, dilated: bool) -> dict[str, Any]:
    kernel = (d.int_in(1, 5), d.int_in(1, 5))
    stride = (d.int_in(1, 4), d.int_in(1, 4))
    padding = (d.int_in(0, kernel[0] // 2), d.int_in(0, kernel[1] // 2))
    dilation = (d.pick([1, 1, 2, 3]), d.pick([1, 1, 2])) if dilated else (1, 1)
    ceil_mode = d.chance(0.3)
    h = (kernel[0] - 1) * dilation[0] + 1 + d.int_in(0, 12)
    w = (kernel[1] - 1) * dilation[1] + 1 + d.int_in(0, 12)
    if d.chance(0.05):  # windows far larger than the input
        kernel = (d.pick([2**20, 2**30, 2**31 - 1]), kernel[1])
        padding = (kernel[0] // 2, padding[1])
        h = d.int_in(1, 3)
        stride = (d.pick([1, kernel[0]]), stride[1])
    n, c = d.pick([0, 1, 2, 3]), d.int_in(1, 4)
    out = reference.pool_output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_w = reference.pool_output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    return dict(
        n=n, c=c, h=h, w=w, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, ceil_mode=ceil_mode, out=(max(out, 1), max(out_w, 1)),
    )  # fmt: skip


def _window_args(d: Draw, p: dict[str, Any], dilated: bool) -> dict[str, Any]:
    stride = p["stride"] if d.chance(0.8) else d.pick([None, (), p["kernel"]])
    args = dict(
        kernel_size=d.pair_arg("kernel_size", p["kernel"]),
        stride=stride if stride is None or stride == () else d.pair_arg("stride", stride),
        padding=d.pair_arg("padding", p["padding"]),
        ceil_mode=d.flag_arg("ceil_mode", p["ceil_mode"]),
    )
    if dilated:
        args["dilation"] = d.pair_arg("dilation", p["dilation"])
    return args


def max_pool2d(d: Draw) -> Call:
    p = _pool_problem(d, dilated=True)
    x = d.array("input", _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"])), _dtype(d))
    args = _window_args(d, p, dilated=True)
    args.update(input=x, return_indices=d.flag_arg("return_indices", d.chance(0.5)))
    return Call("max_pool2d", fastconv.max_pool2d, args)


def max_pool2d_backward(d: Draw) -> Call:
    p = _pool_problem(d, dilated=True)
    dt = _dtype(d)
    shape = _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"]))
    size: Any = shape
    x = d.values(shape, dt)
    try:
        _, indices = fastconv.max_pool2d(
            x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], True
        )
    except ValueError:  # a window max_pool2d refuses: indices of the output's shape
        indices = np.zeros((*shape[:-2], *p["out"]), np.int64)
    out_shape = indices.shape
    kind = d.int_in(0, 9)
    if kind == 0 and indices.size:  # indices out of the plane, negative or huge
        indices = indices.copy()
        indices.reshape(-1)[d.int_in(0, indices.size - 1)] = d.pick(
            [-1, p["h"] * p["w"], 2**31, 2**62, -(2**63)]
        )
        d.spoiled.append("indices out of range")
    elif kind == 1:
        indices = d.array("indices", out_shape, np.int64, p=0.5)
        if isinstance(indices, np.ndarray) and indices.dtype.kind in "biuf":
            indices = indices.astype(d.pick([np.int32, np.float64, np.int64, np.uint64]))
        d.spoiled.append("indices dtype")
    elif kind == 2 and indices.size:
        indices = d.layout(indices)
    g: Any = d.array("grad_output", out_shape, dt)
    if kind == 3 and dt == np.float64 and isinstance(indices, np.ndarray):
        g = indices.view(np.float64)  # grad_output is the indices' memory
        d.spoiled.append("grad_output aliases indices")
    if kind == 4:  # a grad_input far larger than memory
        big = d.pick(HUGE_DIMS)
        size = (*shape[:-2], big, big)
        d.spoiled.append("huge input_size")
    elif kind == 5:
        size = _spoil_size(d, size, "input_size")
    args = dict(grad_output=g, indices=indices, input_size=size)
    return Call("max_pool2d_backward", fastconv.max_pool2d_backward, args)


def avg_pool2d(d: Draw) -> Call:
    p = _pool_problem(d, dilated=False)
    x = d.array("input", _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"])), _dtype(d))
    args = _window_args(d, p, dilated=False)
    args.update(
        input=x,
        count_include_pad=d.flag_arg("count_include_pad", d.chance(0.5)),
        divisor_override=_divisor(d),
    )
    return Call("avg_pool2d", fastconv.avg_pool2d, args)


def _divisor(d: Draw) -> Any:
    if d.chance(0.7):
        return None
    return d.int_arg("divisor_override", d.pick([1, 3, -2, 7]), p=0.3)


def avg_pool2d_backward(d: Draw) -> Call:
    p = _pool_problem(d, dilated=False)
    dt = _dtype(d)
    size: Any = _maybe_unbatched(d, (p["n"], p["c"], p["h"], p["w"]))
    g = d.array("grad_output", (*size[:-2], *p["out"]), dt)
    args = _window_args(d, p, dilated=False)
    if d.chance(0.05):  # one window per huge plane: a grad_input far larger than memory
        big = d.pick(HUGE_DIMS[:2])
        size = (1, 1, big, big)
        g = d.array("grad_output", (1, 1, 1, 1), dt, 0)
        args.update(kernel_size=big, stride=big, padding=0)
        d.spoiled.append("huge input_size")
    elif d.chance(0.1):
        size = _spoil_size(d, size, "input_size")
    args.update(
        grad_output=g,
        input_size=size,
        count_include_pad=d.flag_arg("count_include_pad", d.chance(0.5)),
        divisor_override=_divisor(d),
    )
    return Call("avg_pool2d_backward", fastconv.avg_pool2d_backward, args)


def gemm(d: Draw) -> Call:
    dt = _dtype(d)
    m, k, n = (d.pick([0, 1, 2, 5, 8, 17, 33, 70]) for _ in range(3))
    trans_a, trans_b = d.chance(0.3), d.chance(0.3)
    a = d.array("a", (k, m) if trans_a else (m, k), dt)
    b = d.array("b", (n, k) if trans_b else (k, n), dt)
    c = d.array("c", (m, n), dt) if d.chance(0.5) else None
    kind = d.int_in(0, 19)
    if kind == 0 and isinstance(a, np.ndarray) and a.shape == (m, n):
        c = a  # the output is an input
        d.spoiled.append("c is a")
    elif kind == 1 and isinstance(b, np.ndarray) and b.shape == (m, n):
        c = b
        d.spoiled.append("c is b")
    elif kind == 2 and isinstance(a, np.ndarray) and a.ndim == 2 and a.T.shape == (m, n):
        c = a.T
        d.spoiled.append("c is a.T")
    elif kind == 3:  # empty operands whose other dims are huge: an output beyond memory
        big = d.pick([2**31 + 1, 2**33, 2**40])
        a, b, c = np.empty((big, 0), dt), np.empty((0, big), dt), None
        trans_a = trans_b = False
        d.spoiled.append("huge output")
    args = dict(
        a=a,
        b=b,
        c=c,
        alpha=d.float_arg("alpha", d.pick([1.0, 2.0, -0.5, 0.0])),
        beta=d.float_arg("beta", d.pick([0.0, 1.0, -1.0, 0.5])),
        trans_a=d.flag_arg("trans_a", trans_a),
        trans_b=d.flag_arg("trans_b", trans_b),
    )
    return Call("gemm", fastconv.gemm, args, writes=("c",))


def matmul(d: Draw) -> Call:
    dt = _dtype(d)
    m, k, n = (d.pick([0, 1, 3, 8, 17, 40]) for _ in range(3))
    args = dict(a=d.array("a", (m, k), dt), b=d.array("b", (k, n), dt))
    return Call("matmul", fastconv.matmul, args)


def linear(d: Draw) -> Call:
    dt = _dtype(d)
    features, out = d.int_in(1, 9), d.int_in(1, 7)
    lead = tuple(d.int_in(0, 4) for _ in range(d.int_in(0, 3)))
    x = d.array("input", (*lead, features), dt)
    w = d.array("weight", (out, features), dt)
    if d.chance(0.03) and isinstance(w, np.ndarray):
        x = w  # the input is the weight
        d.spoiled.append("input is weight")
    bias = d.array("bias", (out,), dt) if d.chance(0.5) else None
    return Call("linear", fastconv.linear, dict(input=x, weight=w, bias=bias))


def batch_norm(d: Draw) -> Call:
    dt = _dtype(d)
    c = d.int_in(1, 5)
    shape = (d.pick([0, 1, 2, 3]), c, *(d.int_in(1, 6) for _ in range(d.int_in(0, 2))))
    x = d.array("input", shape, dt)
    stats: dict[str, Any] = dict(running_mean=None, running_var=None)
    if d.chance(0.6):
        stats = dict(
            running_mean=d.array("running_mean", (c,), dt),
            running_var=np.abs(d.array("running_var", (c,), dt, 0)) + 1,
        )
        if d.chance(0.05):
            stats["running_var"] = stats["running_mean"]  # one array for both
            d.spoiled.append("running_var is running_mean")
    weight = d.array("weight", (c,), dt) if d.chance(0.5) else None
    bias = d.array("bias", (c,), dt) if d.chance(0.5) else None
    if weight is not None and d.chance(0.05):
        bias = weight
        d.spoiled.append("bias is weight")
    args = dict(
        input=x,
        weight=weight,
        bias=bias,
        training=d.flag_arg("training", d.chance(0.6)),
        momentum=d.float_arg("momentum", 0.1),
        eps=d.float_arg("eps", 1e-5),
        return_saved=d.chance(0.3),
        **stats,
    )
    return Call("batch_norm", fastconv.batch_norm, args, writes=("running_mean", "running_var"))


def batch_norm_backward(d: Draw) -> Call:
    dt = _dtype(d)
    c = d.int_in(1, 5)
    shape = (d.pick([1, 2, 3]), c, d.int_in(2, 5), d.int_in(1, 5))
    x = d.values(shape, dt)
    _, saved = fastconv.batch_norm(x, None, None, training=True, return_saved=True)
    kind = d.int_in(0, 5)
    if kind == 0:  # a hand-made one: any arrays, any shapes
        saved = BatchNormSaved(
            d.array("saved.xhat", saved.xhat.shape, dt, p=0.5),
            d.array("saved.invstd", saved.invstd.shape, dt, p=0.5),
            d.flag_arg("saved.batch_statistics", True, p=0.3),
        )
    elif kind == 1:
        saved = d.pick([tuple(saved), None, saved.xhat, list(saved)])
        d.spoiled.append("saved")
    weight = d.array("weight", (c,), dt) if d.chance(0.5) else None
    args = dict(
        grad_output=d.array("grad_output", shape, dt),
        saved=saved,
        weight=weight,
        input_grad=d.flag_arg("input_grad", d.chance(0.8)),
    )
    return Call("batch_norm_backward", fastconv.batch_norm_backward, args)


def _selector(name: str) -> Callable[[Draw], Call]:
    def build(d: Draw) -> Call:
        p = _conv_problem(d)
        shapes: list[Any] = [(p["n"], p["c"], p["h"], p["w"]), (p["k"], p["cg"], p["r"], p["s"])]
        for i, arg in enumerate(("input_shape", "weight_shape")):
            if d.chance(0.15):
                shapes[i] = _spoil_size(d, shapes[i], arg)
            elif d.chance(0.05):
                shapes[i] = tuple(d.pick(HUGE_DIMS) for _ in shapes[i])
                d.spoiled.append(f"huge {arg}")
        args = dict(input_shape=shapes[0], weight_shape=shapes[1], **_geometry_args(d, p))
        if d.chance(0.1):
            args["dtype"] = d.pick([np.float64, np.int32, "float16", None, "nonsense"])
        return Call(name, getattr(fastconv, name), args)

    return build


def set_num_threads(d: Draw) -> Call:
    # Valid counts stay small: a pool of workers shares a couple of CPUs.
    n = d.int_arg("n", d.int_in(1, 4), p=0.5)
    if isinstance(n, (int, np.integer)) and 4 < n <= fastconv._cpu.max_num_threads():
        n = 4
    return Call("set_num_threads", fastconv.set_num_threads, dict(n=n))


def set_float32_conv_precision(d: Draw) -> Call:
    value = d.pick(["high", "highest", "medium", "HIGH", "", None, 1, b"high"])
    return Call(
        "set_float32_conv_precision", fastconv.set_float32_conv_precision, dict(precision=value)
    )


def _layer(name: str, make: Callable[[Draw], tuple[Any, tuple[int, ...]]]):
    """A layer of fastconv.nn: forward on a hostile ndarray, then maybe backward."""

    def build(d: Draw) -> Call:
        layer, shape = make(d)
        dt = _dtype(d)
        x = d.typed_values(shape, dt)
        if d.chance(0.15):
            d.spoiled.append("input")
            x = d.typed_values(d.spoil_shape(shape), d.pick([dt, *HOSTILE_DTYPES]))
        if d.chance(0.3) and x.size:
            x = d.layout(x)
        backward = d.chance(0.5)
        spoil_grad = d.chance(0.15)

        def run(layer, input):
            out = layer(input)
            if backward:
                out = out[0] if isinstance(out, tuple) else out
                grad = np.ones_like(out)
                if spoil_grad:
                    grad = grad[..., :-1] if grad.ndim and grad.shape[-1] else grad.T
                layer.backward(grad)
            return out

        return Call(f"nn.{name}", run, dict(layer=layer, input=x))

    return build


def _nchw(d: Draw, c: int) -> tuple[int, ...]:
    return (d.int_in(1, 3), c, d.int_in(3, 9), d.int_in(3, 9))


LAYERS = {
    "Conv2d": lambda d: (nn.Conv2d(2, 3, 3, padding=1, groups=d.pick([1])), _nchw(d, 2)),
    "Linear": lambda d: (nn.Linear(4, 3), (d.int_in(1, 3), 4)),
    "MaxPool2d": lambda d: (nn.MaxPool2d(2, return_indices=d.chance(0.5)), _nchw(d, 2)),
    "AvgPool2d": lambda d: (nn.AvgPool2d(3, 2, 1), _nchw(d, 2)),
    "BatchNorm2d": lambda d: (nn.BatchNorm2d(3), _nchw(d, 3)),
}

# --------------------------------------------------------------------------- more ops


def _shape_of(fn, *args, **kwargs) -> tuple[int, ...] | None:
    """The shape of a clean call's result (None when the op refuses it): the consistent
    shape of a gradient argument."""
    try:
        return fn(*args, **kwargs).shape
    except ValueError:
        return None


def _conv1d_problem(d: Draw) -> dict[str, Any]:
    groups = d.pick([1, 1, 2])
    cg, kg = d.int_in(1, 3), d.int_in(1, 3)
    r, stride, dilation = d.int_in(1, 5), d.int_in(1, 3), d.pick([1, 1, 2])
    padding: Any = d.int_in(0, 3)
    if d.chance(0.1):
        padding, stride = d.pick(["same", "valid"]), 1
    n, length = d.pick([0, 1, 2, 3]), (r - 1) * dilation + 1 + d.int_in(0, 12)
    return dict(
        n=n, c=cg * groups, k=kg * groups, cg=cg, r=r, length=length, stride=stride,
        padding=padding, dilation=dilation, groups=groups,
    )  # fmt: skip


def _conv1d_geometry(d: Draw, p: dict[str, Any]) -> dict[str, Any]:
    padding = p["padding"]
    return dict(
        stride=d.int_arg("stride", p["stride"]),
        padding=padding if isinstance(padding, str) else d.int_arg("padding", padding),
        dilation=d.int_arg("dilation", p["dilation"]),
        groups=d.int_arg("groups", p["groups"]),
    )


def _conv1d_family(d: Draw, op: str) -> Call:
    p = _conv1d_problem(d)
    dt = _dtype(d)
    x = d.values((p["n"], p["c"], p["length"]), dt)
    w = d.values((p["k"], p["cg"], p["r"]), dt)
    geometry = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"])
    y_shape = _shape_of(fastconv.conv1d, x, w, groups=p["groups"], **geometry) or x.shape
    if op == "conv1d":
        args = dict(
            input=d.array("input", x.shape, dt),
            weight=d.array("weight", w.shape, dt),
            bias=d.array("bias", (p["k"],), dt) if d.chance(0.5) else None,
        )
    elif op == "conv1d_input":
        size = _spoil_size(d, x.shape, "input_size") if d.chance(0.1) else x.shape
        args = dict(
            input_size=size,
            weight=d.array("weight", w.shape, dt),
            grad_output=d.array("grad_output", y_shape, dt),
        )
    else:
        size = _spoil_size(d, w.shape, "weight_size") if d.chance(0.1) else w.shape
        args = dict(
            input=d.array("input", x.shape, dt),
            weight_size=size,
            grad_output=d.array("grad_output", y_shape, dt),
        )
    args.update(_conv1d_geometry(d, p))
    return Call(op, getattr(fastconv, op), args)


def _transpose_family(d: Draw, op: str) -> Call:
    groups = d.pick([1, 1, 2])
    cg, kg = d.int_in(1, 3), d.int_in(1, 3)
    r, s = d.int_in(1, 4), d.int_in(1, 4)
    stride = (d.int_in(1, 3), d.int_in(1, 3))
    dilation = (d.pick([1, 1, 2]), 1)
    padding = (d.int_in(0, 2), d.int_in(0, 2))
    output_padding = tuple(d.int_in(0, max(st, di) - 1) for st, di in zip(stride, dilation))
    dt = _dtype(d)
    x = d.values((d.pick([0, 1, 2]), cg * groups, d.int_in(1, 7), d.int_in(1, 7)), dt)
    w = d.values((cg * groups, kg, r, s), dt)
    geometry = dict(
        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    y_shape = _shape_of(fastconv.conv_transpose2d, x, w, groups=groups, **geometry) or x.shape
    if d.chance(0.05):  # an output far larger than memory
        geometry["stride"] = (2**31 - 1, 2**31 - 1)
        d.spoiled.append("huge output")
    if op == "conv_transpose2d":
        args = dict(
            input=d.array("input", x.shape, dt),
            weight=d.array("weight", w.shape, dt),
            bias=d.array("bias", (kg * groups,), dt) if d.chance(0.5) else None,
        )
    elif op == "conv_transpose2d_input":
        size = _spoil_size(d, x.shape, "input_size") if d.chance(0.1) else x.shape
        args = dict(
            input_size=size,
            weight=d.array("weight", w.shape, dt),
            grad_output=d.array("grad_output", y_shape, dt),
        )
    else:
        size = _spoil_size(d, w.shape, "weight_size") if d.chance(0.1) else w.shape
        args = dict(
            input=d.array("input", x.shape, dt),
            weight_size=size,
            grad_output=d.array("grad_output", y_shape, dt),
        )
    args.update(
        stride=d.pair_arg("stride", geometry["stride"]),
        padding=d.pair_arg("padding", padding),
        output_padding=d.pair_arg("output_padding", output_padding),
        groups=d.int_arg("groups", groups),
        dilation=d.pair_arg("dilation", dilation),
    )
    return Call(op, getattr(fastconv, op), args)


def _pool1d_family(d: Draw, op: str) -> Call:
    kernel, stride = d.int_in(1, 5), d.int_in(1, 4)
    padding, dilation = d.int_in(0, kernel // 2), d.pick([1, 1, 2])
    ceil_mode = d.chance(0.3)
    dt = _dtype(d)
    length = (kernel - 1) * dilation + 1 + d.int_in(0, 12)
    x = d.values((d.pick([0, 1, 2]), d.int_in(1, 4), length), dt)
    window = dict(
        kernel_size=d.int_arg("kernel_size", kernel),
        stride=d.int_arg("stride", stride),
        padding=d.int_arg("padding", padding),
        ceil_mode=d.flag_arg("ceil_mode", ceil_mode),
    )
    if op.startswith("max"):
        try:
            out, indices = fastconv.max_pool1d(
                x, kernel, stride, padding, dilation, ceil_mode, return_indices=True
            )
        except ValueError:
            out = indices = np.zeros((*x.shape[:2], 1), np.int64)
        if op == "max_pool1d":
            args = dict(input=d.array("input", x.shape, dt), dilation=d.int_arg("dilation", 1))
            args.update(window, return_indices=d.chance(0.5))
            return Call(op, fastconv.max_pool1d, args)
        if d.chance(0.2) and indices.size:
            indices = indices.copy()
            indices.reshape(-1)[0] = d.pick([-1, length, 2**40])
            d.spoiled.append("indices out of range")
        size = _spoil_size(d, x.shape, "input_size") if d.chance(0.1) else x.shape
        args = dict(
            grad_output=d.array("grad_output", out.shape, dt), indices=indices, input_size=size
        )
        return Call(op, fastconv.max_pool1d_backward, args)
    include = d.flag_arg("count_include_pad", d.chance(0.5))
    if op == "avg_pool1d":
        args = dict(input=d.array("input", x.shape, dt), count_include_pad=include, **window)
        return Call(op, fastconv.avg_pool1d, args)
    out_shape = _shape_of(fastconv.avg_pool1d, x, kernel, stride, padding, ceil_mode) or x.shape
    size = _spoil_size(d, x.shape, "input_size") if d.chance(0.1) else x.shape
    args = dict(
        grad_output=d.array("grad_output", out_shape, dt),
        input_size=size,
        count_include_pad=include,
        **window,
    )
    return Call(op, fastconv.avg_pool1d_backward, args)


def _norm_family(d: Draw, op: str) -> Call:
    dt = _dtype(d)
    c = d.pick([1, 2, 4, 6])
    shape = (d.pick([0, 1, 2, 3]), c, *(d.int_in(1, 5) for _ in range(d.int_in(0, 2))))
    if d.chance(0.03):
        shape = (2**40, c, 0)  # empty, with a huge batch
        d.spoiled.append("huge empty input")
    x = d.array("input", shape, dt)
    affine = dict(
        weight=d.array("weight", (c,), dt) if d.chance(0.5) else None,
        bias=d.array("bias", (c,), dt) if d.chance(0.5) else None,
        eps=d.float_arg("eps", 1e-5),
        return_saved=d.chance(0.3),
    )
    if op == "group_norm":
        groups = d.int_arg("num_groups", d.pick([g for g in (1, 2, 3) if c % g == 0]))
        return Call(op, fastconv.group_norm, dict(input=x, num_groups=groups, **affine))
    if op == "instance_norm":
        stats: dict[str, Any] = dict(running_mean=None, running_var=None)
        if d.chance(0.4):
            stats = dict(
                running_mean=d.array("running_mean", (c,), dt),
                running_var=np.abs(d.array("running_var", (c,), dt, 0)) + 1,
            )
        args = dict(
            input=x,
            use_input_stats=d.flag_arg("use_input_stats", d.chance(0.7)),
            momentum=d.float_arg("momentum", 0.1),
            **stats,
            **affine,
        )
        return Call(op, fastconv.instance_norm, args, writes=("running_mean", "running_var"))
    trailing = shape[len(shape) - d.int_in(1, len(shape) - 1) :]
    normalized: Any = trailing
    if d.chance(0.15):
        normalized = _spoil_size(d, trailing, "normalized_shape")
    elif len(trailing) == 1 and d.chance(0.5):
        normalized = trailing[0]
    for name in ("weight", "bias"):
        if affine[name] is not None:
            affine[name] = d.array(name, trailing, dt)
    return Call(op, fastconv.layer_norm, dict(input=x, normalized_shape=normalized, **affine))


def _interpolate_family(d: Draw, op: str) -> Call:
    dt = _dtype(d)
    mode = d.pick([*fastconv.INTERPOLATE_MODES, "bicubic", "", None])
    spatial = 1 if mode == "linear" else 2 if mode == "bilinear" else d.pick([1, 2])
    x = d.values((d.pick([0, 1, 2]), d.int_in(1, 3), *(d.int_in(1, 6) for _ in range(spatial))), dt)
    resize: dict[str, Any] = {}
    if d.chance(0.5):
        size: Any = tuple(d.int_in(1, 9) for _ in range(spatial))
        resize["size"] = size[0] if spatial == 1 and d.chance(0.5) else size
    else:
        resize["scale_factor"] = d.pick([0.5, 1.5, 2.0, 3.0])
        if d.chance(0.3):
            resize["recompute_scale_factor"] = d.chance(0.5)
    corners = d.pick([None, None, True, False]) if mode in ("linear", "bilinear") else None
    args: dict[str, Any] = dict(mode=mode, align_corners=corners, **resize)
    out_shape = None
    if op == "interpolate_backward":
        try:  # the shape of a consistent grad_output, before the arguments are spoiled
            out_shape = fastconv.interpolate(x, **args).shape
        except (TypeError, ValueError):
            out_shape = x.shape
    if d.chance(0.1):  # sizes beyond memory, or zero or negative
        args["size"] = tuple(d.pick([0, -1, 2**31 - 1, 2**40]) for _ in range(spatial))
        args.pop("scale_factor", None)
        args.pop("recompute_scale_factor", None)
        d.spoiled.append("size")
    elif d.chance(0.1):
        args["scale_factor"] = d.pick([0.0, -1.0, np.nan, np.inf, 1e10, 2**40])
        args.pop("size", None)
        d.spoiled.append("scale_factor")
    elif d.chance(0.05):
        args.update(size=(2, 2), scale_factor=2.0)  # both: refused
        d.spoiled.append("size and scale_factor")
    if op == "interpolate":
        return Call(op, fastconv.interpolate, dict(input=d.array("input", x.shape, dt), **args))
    size_arg = _spoil_size(d, x.shape, "input_size") if d.chance(0.1) else x.shape
    args.update(grad_output=d.array("grad_output", out_shape, dt), input_size=size_arg)
    return Call(op, fastconv.interpolate_backward, args)


def _shuffle_family(d: Draw, op: str) -> Call:
    factor = d.int_in(1, 3)
    dt = _dtype(d)
    c = d.int_in(1, 3) * (factor * factor if op == "pixel_shuffle" else 1)
    hw = (d.int_in(1, 4), d.int_in(1, 4))
    if op == "pixel_unshuffle":
        hw = (hw[0] * factor, hw[1] * factor)
    shape = (*((d.int_in(0, 2),) if d.chance(0.7) else ()), c, *hw)
    name = "upscale_factor" if op == "pixel_shuffle" else "downscale_factor"
    args = {"input": d.array("input", shape, dt), name: d.int_arg(name, factor)}
    return Call(op, getattr(fastconv, op), args)


def _clamp_family(d: Draw, op: str) -> Call:
    dt = _dtype(d)
    shape = tuple(d.int_in(0, 5) for _ in range(d.int_in(1, 4)))
    if op in ("relu", "relu6"):  # out of place: the harness checks inputs stay as they were
        args = {"input": d.array("input", shape, dt)}
    else:
        args = {
            "grad_output": d.array("grad_output", shape, dt),
            "output": d.array("output", d.spoil_shape(shape) if d.chance(0.05) else shape, dt),
        }
    return Call(op, getattr(fastconv, op), args)


def _family(build: Callable[[Draw, str], Call], op: str) -> Callable[[Draw], Call]:
    return lambda d: build(d, op)


MORE_OPS = {
    **{op: _conv1d_family for op in ("conv1d", "conv1d_input", "conv1d_weight")},
    **{
        op: _transpose_family
        for op in ("conv_transpose2d", "conv_transpose2d_input", "conv_transpose2d_weight")
    },
    **{
        op: _pool1d_family
        for op in ("max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward")
    },
    **{op: _norm_family for op in ("group_norm", "instance_norm", "layer_norm")},
    **{op: _interpolate_family for op in ("interpolate", "interpolate_backward")},
    **{op: _shuffle_family for op in ("pixel_shuffle", "pixel_unshuffle")},
    **{op: _clamp_family for op in ("relu", "relu6", "relu_backward", "relu6_backward")},
}

BUILDERS: dict[str, Callable[[Draw], Call]] = {
    "conv2d": conv2d,
    "conv2d_input": conv2d_input,
    "conv2d_weight": conv2d_weight,
    "conv2d_bias_grad": conv2d_bias_grad,
    "max_pool2d": max_pool2d,
    "max_pool2d_backward": max_pool2d_backward,
    "avg_pool2d": avg_pool2d,
    "avg_pool2d_backward": avg_pool2d_backward,
    "gemm": gemm,
    "matmul": matmul,
    "linear": linear,
    "batch_norm": batch_norm,
    "batch_norm_backward": batch_norm_backward,
    "conv2d_algorithm": _selector("conv2d_algorithm"),
    "conv2d_input_algorithm": _selector("conv2d_input_algorithm"),
    "conv2d_weight_algorithm": _selector("conv2d_weight_algorithm"),
    "set_num_threads": set_num_threads,
    "set_float32_conv_precision": set_float32_conv_precision,
    **{f"nn.{name}": _layer(name, make) for name, make in LAYERS.items()},
    **{op: _family(build, op) for op, build in MORE_OPS.items()},
}
# How often each op is drawn: the kernels' ops most, the setters least.
WEIGHTS = {name: 3.0 for name in BUILDERS}
WEIGHTS.update({"set_num_threads": 0.3, "set_float32_conv_precision": 0.3})
WEIGHTS.update({name: 1.0 for name in BUILDERS if name.startswith(("nn.", "conv2d_a"))})
WEIGHTS.update({"conv2d_input_algorithm": 1.0, "conv2d_weight_algorithm": 1.0})
_NAMES = list(BUILDERS)
_PROBABILITIES = np.array([WEIGHTS[name] for name in _NAMES]) / sum(WEIGHTS.values())


def _draw_op(rng: np.random.Generator) -> str:
    return _NAMES[int(rng.choice(len(_NAMES), p=_PROBABILITIES))]


def op_of(seed: int, index: int) -> str:
    """The op of call ``index`` (without building its arguments)."""
    return _draw_op(np.random.default_rng([seed, index]))


def make_call(seed: int, index: int) -> Call:
    """Call number ``index`` of the run with ``seed`` (the same call every time)."""
    rng = np.random.default_rng([seed, index])
    op = _draw_op(rng)
    draw = Draw(rng)
    call = BUILDERS[op](draw)
    call.spoiled = draw.spoiled
    return call


# --------------------------------------------------------------------------- reports


def describe_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        kind = type(value).__name__
        flags = [
            name
            for name, on in (
                ("C", value.flags.c_contiguous),
                ("F", value.flags.f_contiguous),
                ("readonly", not value.flags.writeable),
                ("unaligned", not value.flags.aligned),
            )
            if on
        ]
        special = ""
        if value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
            special = " non-finite"
        return (
            f"{kind}(shape={value.shape}, dtype={value.dtype}, strides={value.strides}, "
            f"{'/'.join(flags) or 'strided'}{special})"
        )
    if isinstance(value, BatchNormSaved):
        return (
            f"BatchNormSaved({describe_value(value.xhat)}, {describe_value(value.invstd)}, "
            f"{value.batch_statistics!r})"
        )
    if isinstance(value, (list, memoryview)) and len(value) > 4:
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(call: Call) -> str:
    args = ", ".join(f"{name}={describe_value(value)}" for name, value in call.args.items())
    spoiled = f"  [spoiled: {', '.join(call.spoiled)}]" if call.spoiled else ""
    return f"{call.op}({args}){spoiled}"
