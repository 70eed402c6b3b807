"""fastconv inside PyTorch: autograd ops and drop-in modules on fastconv's kernels.

    import fastconv.torch
    model = fastconv.torch.convert(model)                 # a converted deep copy
    model = fastconv.torch.convert(model, autotune=True)  # per layer: the faster of the two

Ops (``torch.nn.functional``'s names and signatures, autograd included): ``conv2d``,
``conv_transpose2d`` (CPU), ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``,
``linear``. Modules (subclasses of the torch ones, same parameters, ``state_dict`` and
``repr``): ``Conv2d``, ``Conv1d`` (on one-row planes), ``ConvTranspose2d``, ``Linear``,
``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``.
``convert`` swaps them into any model, ``revert`` swaps them back.

CPU float32/float64 tensors run fastconv's CPU kernels without a copy, CUDA tensors
its CUDA backend (numba-cuda); other dtypes and devices run torch's own op. See
``fastconv.torch._functional`` for the routing, gradients and threads.

Importing this module imports torch (``import fastconv`` never does).
"""

from __future__ import annotations

try:
    import torch  # noqa: F401  (the real PyTorch: absolute import)
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        f"fastconv.torch needs PyTorch, which could not be imported ({exc}); install it "
        "(python -m pip install 'fastconv[torch]', or a torch build from pytorch.org)"
    ) from exc

from ._functional import (
    AvgPool2dFunction,
    Conv2dFunction,
    ConvTranspose2dFunction,
    LinearFunction,
    MaxPool2dFunction,
    adaptive_avg_pool2d,
    avg_pool2d,
    conv2d,
    conv_transpose2d,
    get_num_threads,
    linear,
    max_pool2d,
    route,
    set_num_threads,
)
from ._modules import (
    CONVERSIONS,
    AdaptiveAvgPool2d,
    AvgPool2d,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    MaxPool2d,
    autotune_choices,
    convert,
    revert,
)

__all__ = [
    "CONVERSIONS",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "AvgPool2dFunction",
    "Conv1d",
    "Conv2d",
    "Conv2dFunction",
    "ConvTranspose2d",
    "ConvTranspose2dFunction",
    "Linear",
    "LinearFunction",
    "MaxPool2d",
    "MaxPool2dFunction",
    "adaptive_avg_pool2d",
    "autotune_choices",
    "avg_pool2d",
    "conv2d",
    "conv_transpose2d",
    "convert",
    "get_num_threads",
    "linear",
    "max_pool2d",
    "revert",
    "route",
    "set_num_threads",
]
