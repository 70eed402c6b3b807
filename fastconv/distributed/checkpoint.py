"""Checkpoints in a data-parallel run: rank 0 writes, every rank reads rank 0's file.

The replicas are identical (weights, optimizer state, the shared shuffling), so one
copy is the whole state, and it is the state of any world size: a checkpoint written
by N ranks resumes on M ranks, or in one process with :func:`fastconv.checkpoint
.load_checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as _checkpoint
from . import runtime

__all__ = ["load_checkpoint", "save_checkpoint", "shared_file"]


def save_checkpoint(path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """:func:`fastconv.checkpoint.save_checkpoint` on rank 0; every rank returns once it
    is written (a barrier), so any rank may read it next."""
    if runtime.rank() == 0:
        _checkpoint.save_checkpoint(path, *args, **kwargs)
    runtime.barrier("save_checkpoint")


@contextlib.contextmanager
def shared_file(path: str | os.PathLike) -> Iterator[Path]:
    """Rank 0's file ``path`` as a local path on every rank (the ranks need not share a
    filesystem): rank 0 reads it and broadcasts its bytes; the others get a temporary
    copy, removed at the end of the block.  A file rank 0 cannot read raises the same
    FileNotFoundError on every rank."""
    if runtime.world_size() == 1:
        yield Path(path)
        return
    problem = None
    payload = b""
    if runtime.rank() == 0:
        try:
            payload = Path(path).read_bytes()
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
    problem = runtime.broadcast_object(problem, 0, f"reading {os.fspath(path)}")
    if problem is not None:
        raise FileNotFoundError(f"rank 0 cannot read {os.fspath(path)} ({problem})")
    size = runtime.broadcast_array(np.array([len(payload)], np.int64), 0, "the file's size")
    data = np.empty(int(size[0]), np.uint8)
    if runtime.rank() == 0:
        data[:] = np.frombuffer(payload, np.uint8)
    runtime.broadcast_array(data, 0, f"the contents of {os.fspath(path)}")
    if runtime.rank() == 0:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="fastconv-shared-") as directory:
        local = Path(directory) / Path(path).name
        local.write_bytes(data.tobytes())
        yield local


def load_checkpoint(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
    """:func:`fastconv.checkpoint.load_checkpoint` of rank 0's file, on every rank."""
    with shared_file(path) as local:
        return _checkpoint.load_checkpoint(local, *args, **kwargs)
