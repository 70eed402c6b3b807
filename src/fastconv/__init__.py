"""fastconv: hand-written CNN kernels for NumPy with PyTorch's API."""

from . import _C
from .functional import (
    avg_pool2d,
    avg_pool2d_backward,
    get_num_threads,
    max_pool2d,
    max_pool2d_backward,
    set_num_threads,
)

__version__ = _C.__version__
