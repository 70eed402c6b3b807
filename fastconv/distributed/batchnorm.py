"""``SyncBatchNorm``: batch normalisation whose training statistics span every rank's batch.

Forward (training, world > 1): each rank computes its count, mean and sum of squared
deviations per channel; one allgather brings every rank's three to all, and each rank
combines them in rank order (Chan et al.'s pairwise formula, exact in the way a
two-pass variance is, where sum-of-squares minus square-of-sums cancels).  The batch is
normalised by these global statistics and the running statistics take them, so N ranks
with batch B normalise as one process with batch N * B does.

Backward: the input gradient needs the sums of ``g`` and ``g * xhat`` over the global
batch: one allreduce of the two.  Weight and bias gradients stay local sums, which
:class:`DistributedDataParallel` then averages like every other gradient.
Evaluation mode, and a world of one, run ``BatchNorm2d`` unchanged.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import check_layer_input
from ..nn.layers import BatchNorm2d
from ..nn.module import Module
from . import runtime

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]

_LOCAL = "local"  # what forward saves when it ran as BatchNorm2d


def _combine(stats: list[np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    """Total count, mean and sum of squared deviations from per-rank (count, mean, m2)."""
    count = 0.0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    for row in stats:
        n, mu, sq = float(row[0]), row[1::2], row[2::2]
        if n == 0:
            continue
        if mean is None:
            count, mean, m2 = n, mu.copy(), sq.copy()
            continue
        total = count + n
        delta = mu - mean
        mean = mean + delta * (n / total)
        m2 = m2 + sq + delta * delta * (count * n / total)
        count = total
    assert mean is not None
    assert m2 is not None
    return count, mean, m2


class SyncBatchNorm(BatchNorm2d):
    """``torch.nn.SyncBatchNorm`` for (N, C, H, W) inputs over the MPI world.

    Same constructor, parameters, buffers and state_dict keys as :class:`BatchNorm2d`;
    :func:`convert_sync_batchnorm` turns a model's BatchNorm2d layers into these.
    Every rank must call it in the same order (it runs collectives), as data-parallel
    training does.
    """

    @classmethod
    def convert_sync_batchnorm(cls, module: Module) -> Module:
        """PyTorch's spelling of :func:`convert_sync_batchnorm`."""
        return convert_sync_batchnorm(module)

    def forward(self, input: np.ndarray) -> np.ndarray:
        check_layer_input(input)
        if not self.training or runtime.world_size() == 1:
            out = super().forward(input)
            self.save_for_backward(_LOCAL)
            return out
        if input.ndim != 4:
            raise ValueError(f"expected 4D input (got {input.ndim}D input)")
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm({self.num_features}) got an input with {input.shape[1]} channels"
            )
        if input.dtype not in (np.float32, np.float64):
            raise TypeError(f"SyncBatchNorm: input must be float32 or float64, got {input.dtype}")
        channels = self.num_features
        rows = input.reshape(input.shape[0], channels, -1)
        local_count = rows.shape[0] * rows.shape[2]
        local = np.zeros(1 + 2 * channels, np.float64)
        local[0] = local_count
        if local_count:
            mean = rows.mean(axis=(0, 2), dtype=np.float64)
            centred = rows - mean.astype(input.dtype)[None, :, None]
            local[1::2] = mean
            local[2::2] = np.einsum("ncs,ncs->c", centred, centred, dtype=np.float64)
        gathered = np.zeros((runtime.world_size(), local.size), np.float64)
        world = runtime._require_world()
        request = world.comm.Iallgather(local, gathered)
        runtime.wait([request], "SyncBatchNorm's statistics")
        count, mean, m2 = _combine(list(gathered))
        if count <= 1:
            raise ValueError(
                f"expected more than 1 value per channel when training, got {int(count)} "
                "over all ranks"
            )
        var = m2 / count  # biased: what normalises
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked += 1
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            running_mean, running_var = self.running_mean, self.running_var
            running_mean *= 1.0 - factor
            running_mean += factor * mean.astype(running_mean.dtype)
            running_var *= 1.0 - factor
            running_var += (factor * count / (count - 1)) * var.astype(running_var.dtype)
        dtype = input.dtype
        weight = None if self.weight is None else self.weight.data.astype(dtype, copy=False)
        bias = None if self.bias is None else self.bias.data.astype(dtype, copy=False)
        # the global statistics given as "running" ones normalise exactly as a batch would
        out, saved = F.batch_norm(
            input,
            mean.astype(dtype),
            var.astype(dtype),
            weight,
            bias,
            training=False,
            eps=self.eps,
            return_saved=True,
        )
        self.save_for_backward(saved, weight, dtype, count)
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        entry = self.saved_tensors()
        if entry == (_LOCAL,):
            return super().backward(grad_output)
        saved, weight, dtype, count = entry
        grad = np.asarray(grad_output, dtype=dtype)
        # with frozen statistics the kernel gives scale * g, and the local sums
        scaled, sum_gx, sum_g = F.batch_norm_backward(grad, saved, weight)
        sums = np.ascontiguousarray(np.stack([sum_g, sum_gx]))
        world = runtime._require_world()
        request = world.comm.Iallreduce(world.mpi.IN_PLACE, sums, op=world.mpi.SUM)
        runtime.wait([request], "SyncBatchNorm's gradient sums")
        if self.weight is not None and self.weight.requires_grad:
            self.weight.accumulate_grad(sum_gx)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(sum_g)
        scale = saved.invstd if weight is None else weight * saved.invstd
        xhat = saved.xhat  # (N, C, S)
        mean_g = (sums[0] / count)[None, :, None]
        mean_gx = (sums[1] / count)[None, :, None]
        correction = scale[None, :, None] * (mean_g + xhat * mean_gx)
        return scaled - correction.reshape(scaled.shape)


def convert_sync_batchnorm(module: Module) -> Module:
    """``module`` with every ``BatchNorm2d`` replaced by a :class:`SyncBatchNorm` that
    keeps its parameters (the same objects: an optimizer built before still updates
    them), buffers, hyper-parameters and mode.  Returns the module (a new one when
    ``module`` itself is a BatchNorm2d)."""
    if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            affine=False,
            track_running_stats=False,
        )
        sync.affine = module.affine
        sync.track_running_stats = module.track_running_stats
        for name, param in module._parameters.items():
            sync.register_parameter(name, param)
        for name, buf in module._buffers.items():
            sync.register_buffer(name, buf, persistent=name not in module._non_persistent)
        sync.train(module.training)
        sync.needs_input_grad = module.needs_input_grad
        return sync
    for name, child in list(module._modules.items()):
        if child is not None:
            converted = convert_sync_batchnorm(child)
            if converted is not child:
                module._modules[name] = converted
    return module
