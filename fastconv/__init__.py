"""fastconv: hand-written CNN kernels for NumPy with PyTorch's API.

NumPy arrays run the C++/OpenMP kernels; CUDA device arrays run the Numba CUDA
kernels (``pip install fastconv[cuda]``). ``fastconv.reference`` holds the NumPy
reference of every op, the executable spec the kernels are tested against.
"""

from . import _cpu, autotune, reference
from .autotune import is_enabled as get_conv_autotune
from .autotune import set_enabled as set_conv_autotune
from .functional import (
    CONV2D_ALGORITHMS,
    CONV2D_INPUT_ALGORITHMS,
    CONV2D_WEIGHT_ALGORITHMS,
    INTERPOLATE_MODES,
    avg_pool1d,
    avg_pool1d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    batch_norm,
    batch_norm_backward,
    conv1d,
    conv1d_input,
    conv1d_weight,
    conv2d,
    conv2d_algorithm,
    conv2d_bias_grad,
    conv2d_input,
    conv2d_input_algorithm,
    conv2d_weight,
    conv2d_weight_algorithm,
    conv_transpose2d,
    conv_transpose2d_input,
    conv_transpose2d_weight,
    gemm,
    get_num_threads,
    group_norm,
    instance_norm,
    interpolate,
    interpolate_backward,
    last_algorithms,
    layer_norm,
    linear,
    matmul,
    max_pool1d,
    max_pool1d_backward,
    max_pool2d,
    max_pool2d_backward,
    pixel_shuffle,
    pixel_unshuffle,
    relu,
    relu6,
    relu6_backward,
    relu_backward,
    set_num_threads,
)
from .precision import (
    float32_conv_precision,
    get_float32_conv_precision,
    set_float32_conv_precision,
)

__version__ = _cpu.__version__

__all__ = [
    "CONV2D_ALGORITHMS",
    "CONV2D_INPUT_ALGORITHMS",
    "CONV2D_WEIGHT_ALGORITHMS",
    "INTERPOLATE_MODES",
    "autotune",
    "avg_pool1d",
    "avg_pool1d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "conv1d",
    "conv1d_input",
    "conv1d_weight",
    "conv2d",
    "conv2d_algorithm",
    "conv2d_bias_grad",
    "conv2d_input",
    "conv2d_input_algorithm",
    "conv2d_weight",
    "conv2d_weight_algorithm",
    "conv_transpose2d",
    "conv_transpose2d_input",
    "conv_transpose2d_weight",
    "float32_conv_precision",
    "gemm",
    "get_conv_autotune",
    "get_float32_conv_precision",
    "get_num_threads",
    "group_norm",
    "instance_norm",
    "interpolate",
    "interpolate_backward",
    "last_algorithms",
    "layer_norm",
    "linear",
    "matmul",
    "max_pool1d",
    "max_pool1d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "pixel_shuffle",
    "pixel_unshuffle",
    "reference",
    "relu",
    "relu6",
    "relu6_backward",
    "relu_backward",
    "set_conv_autotune",
    "set_float32_conv_precision",
    "set_num_threads",
]


def __getattr__(name):
    # The layer library, optimizers, data loaders and the torch interop load on first
    # use, so that `import fastconv` stays a thin import of the kernels (and never
    # imports torch).
    if name in ("nn", "optim", "data", "training", "cuda", "torch"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
