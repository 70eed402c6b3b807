"""Argument validation shared by every backend.

Everything a user can get wrong is caught here, in Python, with a TypeError or
ValueError that names the argument, before any kernel runs. The backends then
trust their arguments.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(x: Any) -> bool:
    """True for arrays that live on a CUDA device.

    Objects exposing ``__cuda_array_interface__`` (CuPy, torch CUDA tensors,
    Numba device arrays) and, under the Numba CUDA simulator, Numba's fake device
    arrays. Numba is consulted only if something already imported it, so a
    CPU-only program never pays for importing numba.
    """
    if hasattr(x, "__cuda_array_interface__"):
        return True
    numba_cuda = sys.modules.get("numba.cuda")
    if numba_cuda is not None:
        is_cuda_array = getattr(numba_cuda, "is_cuda_array", None)  # not in the simulator
        return bool(
            (is_cuda_array is not None and is_cuda_array(x)) or _is_simulated_device_array(x)
        )
    return False


def _is_simulated_device_array(x: Any) -> bool:
    devicearray = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return devicearray is not None and isinstance(x, devicearray.FakeCUDAArray)


def check_host_array(x: Any, name: str) -> None:
    """A NumPy array, not a masked one (nor a list, scalar or other array-like)."""
    check_not_masked(x, name)
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray, got {type(x).__name__}; "
            "convert explicitly, e.g. np.asarray(x, dtype=np.float32)"
        )


def check_layer_input(x: Any, name: str = "input") -> None:
    """A layer's input: a NumPy array (see check_host_array) or a CUDA device array.

    The layers' functional ops check dtype and shape; this names the argument for
    what they would otherwise trip over first (a list has no ``ndim``).
    """
    if not is_device_array(x):
        check_host_array(x, name)


def check_array(x: Any, name: str, *, device: bool = False) -> Any:
    """An input tensor: a NumPy array (or a device array when ``device``) of float32/64.

    Lists, tuples, scalars and other array-likes are refused rather than guessed
    at: PyTorch's functional API takes tensors only, and a silent conversion
    would hide dtype mistakes (a list of ints is not a float tensor).
    """
    if device:
        if not is_device_array(x):
            raise TypeError(
                f"{name} must be a CUDA device array like the other arguments, "
                f"got {type(x).__name__}"
            )
    else:
        check_host_array(x, name)
    dtype = np.dtype(x.dtype)
    if dtype.kind == "c":
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {dtype}: the ops are "
            f"real-valued; pass {name}.real (or np.abs({name})) explicitly"
        )
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {dtype}")
    return x


def check_not_masked(x: Any, name: str) -> None:
    """Refuse a numpy.ma.MaskedArray: it passes for an ndarray, but every kernel (and
    NumPy's own conversions) would read its masked entries as data."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray, whose mask fastconv cannot honour; "
            f"fill the masked entries explicitly: np.ma.filled({name}, fill_value)"
        )


def check_real_array(x: Any, name: str) -> np.ndarray:
    """A real numeric array to copy into a float one (a state dict's values): bools,
    ints and floats; masked, complex, object and string arrays are refused rather
    than cast (a complex value would silently lose its imaginary part)."""
    check_not_masked(x, name)
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers (bool, int or float), got dtype {array.dtype}"
        )
    return array


def check_same_dtype(**arrays: Any) -> np.dtype:
    present = {name: np.dtype(a.dtype) for name, a in arrays.items() if a is not None}
    dtypes = set(present.values())
    if len(dtypes) > 1:
        described = ", ".join(f"{name}={dt}" for name, dt in present.items())
        raise TypeError(f"all arguments must have the same dtype, got {described}")
    return dtypes.pop()


def check_ndim(x: Any, name: str, allowed: tuple[int, ...], layout: str) -> None:
    if x.ndim not in allowed:
        options = " or ".join(f"{n}-D" for n in allowed)
        raise ValueError(f"{name} must be {options} ({layout}), got shape {tuple(x.shape)}")


# Window arguments (kernel, stride, padding, dilation, divisor) are 32-bit in
# PyTorch too; larger values are refused here, before they can overflow native
# index math.
INT32_MAX = 2**31 - 1


def as_int(value: Any, name: str, *, limit: int = INT32_MAX, expected: str = "an int") -> int:
    """value as a Python int: an int or a NumPy integer (floats, even 2.0, are refused
    rather than rounded). ``expected`` says what the argument accepts, for the message."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {expected}, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be {expected} (Python or NumPy integers; floats are not rounded), "
            f"got {type(value).__name__} {value!r}"
        ) from None
    if not -limit <= v <= limit:
        raise ValueError(f"{name} must lie in [-{limit}, {limit}], got {v}")
    return v


_INT_OR_PAIR = "an int or a pair of ints"


def int_pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints, as PyTorch's _pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be {_INT_OR_PAIR}, got {value!r}")
        first, second = (as_int(v, name, expected=_INT_OR_PAIR) for v in value)
        return first, second
    v = as_int(value, name, expected=_INT_OR_PAIR)
    return v, v


def positive_pair(value: Any, name: str) -> tuple[int, int]:
    pair = int_pair(value, name)
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def non_negative_pair(value: Any, name: str) -> tuple[int, int]:
    pair = int_pair(value, name)
    if min(pair) < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return pair


def positive_int(value: Any, name: str) -> int:
    v = as_int(value, name)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return v


def size_tuple(value: Any, name: str, allowed: tuple[int, ...]) -> tuple[int, ...]:
    """A shape argument such as input_size / weight_size."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}")
    shape = tuple(as_int(v, f"{name}[{i}]", limit=2**62) for i, v in enumerate(value))
    if len(shape) not in allowed:
        options = " or ".join(str(n) for n in allowed)
        raise ValueError(f"{name} must have {options} entries, got {shape}")
    if min(shape) < 0:
        raise ValueError(f"{name} must not contain negative sizes, got {shape}")
    return shape


def check_shape(x: Any, expected: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(expected)}")


# The largest array NumPy can make, in bytes.
MAX_BYTES = 2**63 - 1


def check_fits_an_array(shape: tuple[int, ...], itemsize: int, name: str) -> None:
    """A shape argument that no array could have is refused: the kernels' index
    arithmetic assumes every extent product fits in 64 bits. As NumPy's rule, the
    nonzero extents times the itemsize must stay within 2**63 - 1 bytes (an empty array
    included: one of (0, 2**62) is refused too)."""
    size = 1
    for extent in shape:
        size *= max(extent, 1)
    if size * itemsize > MAX_BYTES:
        raise ValueError(
            f"{name} {tuple(shape)} has extents whose product is {size} elements of "
            f"{itemsize} bytes: more than any array holds (2**63 - 1 bytes)"
        )
