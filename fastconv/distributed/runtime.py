"""The MPI world: start-up, rank and size, collectives that time out, and failure handling.

Every collective here is non-blocking underneath and waited for with a deadline
(``init(timeout=...)``), so a rank that died, hung or left early turns into a
:class:`DistributedTimeoutError` on the others instead of a hang.  Without mpi4py, or
in a process that no MPI launcher started, the world is this one process and every
collective returns its input.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from typing import Any, NoReturn

import numpy as np

__all__ = [
    "DistributedError",
    "DistributedTimeoutError",
    "MismatchError",
    "abort",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_array",
    "broadcast_object",
    "init",
    "is_initialized",
    "local_world_size",
    "rank",
    "world_size",
]

DEFAULT_TIMEOUT_S = 300.0
# how long a failing rank waits to learn whether every rank failed (then one prints)
DEFAULT_ERROR_GRACE_S = 2.0
# what MPI launchers export: a process they started must not silently run alone
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


_yield_core = getattr(os, "sched_yield", lambda: time.sleep(0))


class DistributedError(RuntimeError):
    """A failure of the distributed run (raised on the rank that observed it)."""


class MismatchError(DistributedError, ValueError):
    """Ranks disagree (model, data or options); raised identically on every rank."""


class DistributedTimeoutError(DistributedError):
    """Another rank did not join a collective in time: it died, hung or left early."""


class _World:
    def __init__(self, mpi: Any, timeout: float, error_grace: float) -> None:
        self.mpi = mpi
        self.timeout = float(timeout)
        self.error_grace = float(error_grace)
        if mpi is None:
            self.comm = self.error_comm = None
            self.rank, self.size, self.local_size = 0, 1, 1
            return
        world = mpi.COMM_WORLD
        # private communicators: our collectives never interleave with a user's
        self.comm = world.Dup()
        self.error_comm = world.Dup()
        self.rank, self.size = world.Get_rank(), world.Get_size()
        node = world.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()


_world: _World | None = None


def _launched_size() -> int:
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def init(
    *,
    timeout: float | None = None,
    abort_on_exception: bool = True,
    error_grace: float | None = None,
) -> None:
    """Join the MPI world (``mpiexec -n N python script.py``); once joined, a later call
    only changes the settings it is given.

    ``timeout`` (default 300 s): seconds any collective waits for the other ranks
    before raising :class:`DistributedTimeoutError`.  ``abort_on_exception`` installs a
    ``sys.excepthook`` that prints an uncaught exception once and ends every rank
    (:func:`abort`; ``error_grace``, default 2 s, is how long a failing rank waits to
    learn whether all fail).  Without mpi4py, a process that no MPI launcher started
    becomes a world of one; one that a launcher started raises ImportError (it would
    otherwise train alone, N times over).
    """
    global _world
    for name, value in (("timeout", timeout), ("error_grace", error_grace)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if _world is not None:
        if timeout is not None:
            _world.timeout = float(timeout)
        if error_grace is not None:
            _world.error_grace = float(error_grace)
        return
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    error_grace = DEFAULT_ERROR_GRACE_S if error_grace is None else error_grace
    try:
        from mpi4py import MPI
    except ImportError as exc:
        launched = _launched_size()
        if launched > 1:
            raise ImportError(
                f"an MPI launcher started {launched} processes, but mpi4py is not "
                "installed: pip install 'fastconv[distributed]' (mpi4py and mpich)"
            ) from exc
        _world = _World(None, timeout, error_grace)
        return
    _world = _World(MPI, timeout, error_grace)
    if abort_on_exception and _world.size > 1:
        sys.excepthook = _abort_on_uncaught


def is_initialized() -> bool:
    """Whether :func:`init` ran in this process."""
    return _world is not None


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (0 before :func:`init`)."""
    return 0 if _world is None else _world.rank


def world_size() -> int:
    """How many processes train together (1 before :func:`init` or without MPI)."""
    return 1 if _world is None else _world.size


def local_world_size() -> int:
    """How many of the ranks run on this machine (they share its cores)."""
    return 1 if _world is None else _world.local_size


def _require_world() -> _World:
    if _world is None:
        init()
    assert _world is not None
    return _world


def _spread() -> bool:
    return _world is not None and _world.size > 1


# --------------------------------------------------------------------------- waiting


def wait(requests: list, what: str) -> None:
    """Wait for MPI requests, at most the world's timeout; ``what`` names them in errors.

    MPI progresses only inside its calls, so the wait polls: it yields the core every
    64 polls (a rank sharing a core with the rank it waits for lets it run), and after
    50 ms it sleeps between polls, growing to 1 ms.
    """
    world = _require_world()
    mpi = world.mpi
    if not requests or mpi.Request.Testall(requests):
        return
    start = time.monotonic()
    deadline = start + world.timeout
    pause = 0.0
    polls = 0
    while not mpi.Request.Testall(requests):
        polls += 1
        if polls % 64:
            continue
        now = time.monotonic()
        if now > deadline:
            raise DistributedTimeoutError(
                f"rank {world.rank}: waited {world.timeout:g} s for the other ranks in "
                f"{what}; a rank died, hung or left early"
            )
        if now - start > 0.05:
            pause = min(1e-3, pause * 2 or 1e-5)
            time.sleep(pause)
        else:
            _yield_core()


def poke(requests: list) -> None:
    """Let MPI advance outstanding transfers (it progresses only inside its calls)."""
    if requests and _world is not None and _world.mpi is not None:
        _world.mpi.Request.Testall(requests)


# --------------------------------------------------------------------------- collectives


def _mpi_op(op: str) -> Any:
    mpi = _require_world().mpi
    ops = {"sum": mpi.SUM, "mean": mpi.SUM, "max": mpi.MAX, "min": mpi.MIN}
    if op not in ops:
        raise ValueError(f"op must be one of {', '.join(ops)}, got {op!r}")
    return ops[op]


def all_reduce(value: Any, op: str = "sum", *, comm: Any = None) -> Any:
    """``op`` ('sum', 'mean', 'max', 'min') of a number or array over every rank.

    Numbers come back as floats (ints as ints for 'sum', 'max', 'min'), arrays as new
    arrays of their dtype; every rank gets the same result.
    """
    if op not in ("sum", "mean", "max", "min"):
        raise ValueError(f"op must be one of sum, mean, max, min, got {op!r}")
    scalar = np.ndim(value) == 0
    array = np.array(value, copy=True)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"all_reduce takes real numbers or arrays, got {array.dtype}")
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if _spread():
        world = _world
        assert world is not None
        array = np.ascontiguousarray(array)
        request = (world.comm if comm is None else comm).Iallreduce(
            world.mpi.IN_PLACE, array, op=_mpi_op(op)
        )
        wait([request], f"all_reduce({op})")
    if op == "mean":
        array = array / world_size()
    return array.item() if scalar else array


def barrier(what: str = "barrier") -> None:
    """Every rank reaches this point before any leaves it (with the world's timeout)."""
    if _spread():
        assert _world is not None
        wait([_world.comm.Ibarrier()], what)


def broadcast_array(array: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
    """Rank ``root``'s contiguous ``array`` written into every rank's (in place)."""
    if _spread():
        assert _world is not None
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError("broadcast_array needs a writable C-contiguous array")
        wait([_world.comm.Ibcast(array, root=root)], what)
    return array


def all_gather_object(value: Any, what: str = "all_gather_object") -> list[Any]:
    """Every rank's (picklable) ``value``, in rank order, on every rank."""
    if not _spread():
        return [value]
    world = _world
    assert world is not None
    payload = np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.zeros(world.size, np.int64)
    mine = np.array([payload.size], np.int64)
    wait([world.comm.Iallgather(mine, sizes)], what)
    gathered = np.empty(int(sizes.sum()), np.uint8)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    request = world.comm.Iallgatherv(payload, [gathered, sizes, offsets, world.mpi.BYTE])
    wait([request], what)
    return [
        pickle.loads(gathered[start : start + size].tobytes())
        for start, size in zip(offsets, sizes)
    ]


def broadcast_object(value: Any, root: int = 0, what: str = "broadcast_object") -> Any:
    """Rank ``root``'s (picklable) ``value`` on every rank."""
    if not _spread():
        return value
    world = _world
    assert world is not None
    payload = b""
    if world.rank == root:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    size = broadcast_array(np.array([len(payload)], np.int64), root, what)
    buffer = np.empty(int(size[0]), np.uint8)
    if world.rank == root:
        buffer[:] = np.frombuffer(payload, np.uint8)
    broadcast_array(buffer, root, what)
    return value if world.rank == root else pickle.loads(buffer.tobytes())


# --------------------------------------------------------------------------- failures


def abort(message: str, exit_code: int = 1) -> NoReturn:
    """Print ``message`` once and end every rank with ``exit_code``, within bounded time.

    A failing rank first waits up to the error grace (2 s by default) to learn whether
    every rank is failing too (a bad option, a mismatch found collectively): then only
    rank 0 prints, each distinct message once.  Otherwise it prints its own message,
    naming its rank, and calls MPI_Abort, which ends the ranks still at work.
    """
    if not _spread():
        print(message, file=sys.stderr, flush=True)
        sys.exit(exit_code)
    world = _world
    assert world is not None
    request = world.error_comm.Ibarrier()
    deadline = time.monotonic() + world.error_grace
    everyone = False
    while time.monotonic() < deadline:
        if request.Test():
            everyone = True
            break
        time.sleep(1e-3)
    if everyone:
        # every rank is here: they agree on what to print without risk of a hang
        messages = world.error_comm.gather(message, root=0)
        if world.rank == 0:
            distinct = list(dict.fromkeys(messages))
            for text in distinct:
                ranks = [str(r) for r, m in enumerate(messages) if m == text]
                where = "" if len(distinct) == 1 else f"[ranks {', '.join(ranks)}] "
                print(where + text, file=sys.stderr, flush=True)
            world.error_comm.Abort(exit_code)
        time.sleep(world.error_grace)  # rank 0's abort ends this process meanwhile
    else:
        print(f"[rank {world.rank} of {world.size}] {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    world.error_comm.Abort(exit_code)
    os._exit(exit_code)  # pragma: no cover - MPI_Abort does not return


def _abort_on_uncaught(kind: type, value: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        abort("KeyboardInterrupt", 130)
    abort("".join(traceback.format_exception(kind, value, tb)).rstrip(), 1)
