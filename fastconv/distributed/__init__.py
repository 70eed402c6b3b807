"""``fastconv.distributed``: data-parallel training of ``fastconv.nn`` models over MPI.

Start N processes with any MPI launcher (``mpiexec -n 4 python train.py``, Slurm's
``srun``); each trains a replica on its shard of the data, and gradients are averaged
with MPI allreduces (mpi4py: ``pip install 'fastconv[distributed]'``)::

    from fastconv import distributed as dist, nn, optim

    dist.init()                                   # a world of one without MPI
    model = dist.convert_sync_batchnorm(build_model())
    ddp = dist.DistributedDataParallel(model)     # rank 0's weights, checked alike
    optimizer = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    loader = dist.sharded_loader(x, y, batch_size=32, shuffle=True, seed=0)
    for xb, yb in loader:                         # this rank's shard, equal batch counts
        loss = criterion(ddp(xb), yb)
        ddp.backward(criterion.backward())        # gradients averaged over the ranks
        optimizer.step(); optimizer.zero_grad()
    correct = dist.all_reduce(local_correct)      # metrics: sums over the ranks
    dist.save_checkpoint("run.npz", model, optimizer)   # rank 0 writes

Importing fastconv (or this module) does not import mpi4py; :func:`init` does.
"""

from .batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .checkpoint import load_checkpoint, save_checkpoint, shared_file
from .data import check_same, fingerprint, shard, sharded_loader
from .parallel import DistributedDataParallel
from .runtime import (
    DistributedError,
    DistributedTimeoutError,
    MismatchError,
    abort,
    all_gather_object,
    all_reduce,
    barrier,
    broadcast_object,
    init,
    is_initialized,
    local_world_size,
    rank,
    world_size,
)

__all__ = [
    "DistributedDataParallel",
    "DistributedError",
    "DistributedTimeoutError",
    "MismatchError",
    "SyncBatchNorm",
    "abort",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_object",
    "check_same",
    "convert_sync_batchnorm",
    "fingerprint",
    "init",
    "is_initialized",
    "load_checkpoint",
    "local_world_size",
    "rank",
    "save_checkpoint",
    "shard",
    "sharded_loader",
    "shared_file",
    "world_size",
]
