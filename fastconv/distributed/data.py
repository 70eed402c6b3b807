"""Data across ranks: sharded loaders, evaluation shards, and the check that every rank
loaded the same data and options."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..data import DataLoader
from . import runtime

__all__ = ["check_same", "fingerprint", "shard", "sharded_loader"]


def fingerprint(array: np.ndarray) -> str:
    """Shape, dtype and a BLAKE2 digest of the contents: equal arrays, equal strings."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(array.view(np.uint8).reshape(-1), digest_size=16).hexdigest()
    return f"{array.dtype}{list(array.shape)}:{digest}"


def check_same(what: str, **values: Any) -> None:
    """Raise :class:`MismatchError` on every rank unless every rank passed equal values.

    Arrays are compared by :func:`fingerprint`, other values (options, seeds) as they
    are; the error names the first value that differs and the ranks that disagree with
    rank 0.  ``what`` says what is compared ("the training data").
    """
    if runtime.world_size() == 1:
        return
    mine = {
        name: fingerprint(value) if isinstance(value, np.ndarray) else value
        for name, value in values.items()
    }
    everyone = runtime.all_gather_object(mine, f"the check of {what}")
    for name in values:
        reference = everyone[0].get(name)
        differ = [r for r, theirs in enumerate(everyone) if theirs.get(name) != reference]
        if differ:
            shown = ", ".join(str(r) for r in differ)
            raise runtime.MismatchError(
                f"the ranks disagree on {what}: {name} differs between rank 0 and rank(s) "
                f"{shown} ({everyone[differ[0]].get(name)!r} there, {reference!r} on rank 0)"
            )


def sharded_loader(
    *arrays: np.ndarray,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A :class:`~fastconv.data.DataLoader` over this rank's shard of ``arrays``.

    Every rank must pass the same arrays and options (checked: a clear
    :class:`MismatchError` otherwise); each then iterates over a disjoint shard of
    equal size, reshuffled every epoch from ``seed`` as every other rank is.
    """
    check_same(
        "the data loader",
        **{f"array {i}": a for i, a in enumerate(arrays)},
        batch_size=int(batch_size),
        shuffle=bool(shuffle),
        seed=seed,
        drop_last=bool(drop_last),
    )
    return DataLoader(
        *arrays,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        num_replicas=runtime.world_size(),
        rank=runtime.rank(),
    )


def shard(array: np.ndarray) -> np.ndarray:
    """This rank's disjoint share of ``array`` for evaluation: every world_size()-th row
    from row rank(), no padding (shares differ by at most one row; reduce sums over
    ranks with :func:`all_reduce`, not means)."""
    return array[runtime.rank() :: runtime.world_size()]
