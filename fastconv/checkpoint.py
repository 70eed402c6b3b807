"""Training checkpoints: weights, optimizer state, epoch, random generators, in one file.

``save_checkpoint`` writes an ``.npz`` archive of plain arrays (it loads with
``allow_pickle=False``, so opening one runs no code): the model's ``state_dict``
under ``model:<key>``, the optimizer's per-parameter arrays under
``optimizer:<index>:<name>``, and one JSON document under ``meta`` with the rest --
the epoch, the optimizer's scalar state and parameter groups, the states of the given
NumPy generators, and any JSON-able ``extra`` (the training history, the run's
configuration).  The file is written next to its destination and renamed over it, so
an interrupted write leaves the previous checkpoint intact.

``load_checkpoint`` reads one back into a model and an optimizer built the same way,
and sets the given generators to their saved states::

    save_checkpoint("run.npz", model, optimizer, epoch=3, generators={"dropout": rng})
    state = load_checkpoint("run.npz", model, optimizer, generators={"dropout": rng})
    state.epoch  # 3
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .nn.module import Module
from .nn.utils import _CORRUPT_NPZ
from .optim import Optimizer

__all__ = ["Checkpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "fastconv-checkpoint-1"


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` read: the epoch and the ``extra`` given to save."""

    epoch: int
    extra: dict[str, Any]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_checkpoint(
    path: str | os.PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    epoch: int = 0,
    generators: dict[str, np.random.Generator] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the model, optimizer, epoch, generator states and ``extra`` to ``path``."""
    arrays: dict[str, np.ndarray] = {
        f"model:{key}": value for key, value in model.state_dict().items()
    }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "epoch": int(epoch),
        "generators": {name: gen.bit_generator.state for name, gen in (generators or {}).items()},
        "extra": extra or {},
        "optimizer": None,
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in state["state"].items():
            kept = {}
            for name, value in entry.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optimizer:{index}:{name}"] = value
                else:
                    kept[name] = value
            scalars[str(index)] = kept
        meta["optimizer"] = {
            "type": type(optimizer).__name__,
            "state": scalars,
            "param_groups": state["param_groups"],
        }
    arrays["meta"] = np.array(json.dumps(meta, default=_json_default))
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as fh:  # a file object: np.savez adds no ".npz" to its name
        np.savez(fh, **arrays)
    os.replace(partial, path)


def _read(path: str | os.PathLike, arrays: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The meta document and (with ``arrays``) every other entry of a checkpoint."""
    with open(path, "rb") as fh:  # np.load leaves a file it opened itself open on errors
        try:
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with data:
                if "meta" not in data.files:
                    raise ValueError("no 'meta' entry: not a fastconv checkpoint")
                meta = json.loads(str(data["meta"][()]))
                entries = {k: data[k] for k in data.files if k != "meta"} if arrays else {}
        except _CORRUPT_NPZ as exc:
            raise ValueError(f"{os.fspath(path)} is not a readable checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)}: unknown checkpoint format {meta.get('format')!r}")
    return meta, entries


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The epoch and ``extra`` of a checkpoint, without loading its arrays anywhere."""
    meta, _ = _read(path, arrays=False)
    return Checkpoint(int(meta["epoch"]), meta["extra"])


def load_checkpoint(
    path: str | os.PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    generators: dict[str, np.random.Generator] | None = None,
) -> Checkpoint:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``generators``) in place.

    The model and optimizer must be built as those that were saved (same layers, same
    optimizer type and parameter groups); anything else raises ValueError or the
    model's ``load_state_dict`` error.
    """
    meta, entries = _read(path, arrays=True)
    saved = meta["optimizer"]
    # everything is checked before anything is loaded, so a refused checkpoint changes nothing
    if optimizer is not None and (saved is None or saved["type"] != type(optimizer).__name__):
        found = None if saved is None else saved["type"]
        raise ValueError(
            f"{os.fspath(path)} holds the state of {found}, not {type(optimizer).__name__}"
        )
    for name in generators or {}:
        if name not in meta["generators"]:
            raise ValueError(f"{os.fspath(path)} holds no state for the generator {name!r}")
    model.load_state_dict(
        {k[len("model:") :]: v for k, v in entries.items() if k.startswith("model:")}
    )
    if optimizer is not None:
        state: dict[int, dict[str, Any]] = {
            int(index): dict(entry) for index, entry in saved["state"].items()
        }
        for key, value in entries.items():
            if key.startswith("optimizer:"):
                _, index, name = key.split(":", 2)
                state.setdefault(int(index), {})[name] = value
        groups = [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
            for g in saved["param_groups"]
        ]  # JSON turned tuples (Adam's betas) into lists
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    for name, generator in (generators or {}).items():
        generator.bit_generator.state = meta["generators"][name]
    return Checkpoint(int(meta["epoch"]), meta["extra"])
