"""``DistributedDataParallel``: one model replica per rank, gradients averaged over ranks.

The wrapped module's forward and backward run as they are; what the wrapper adds:

* at wrap time, every rank checks that it holds the same parameters and buffers as rank 0
  (names, shapes, dtypes, ``requires_grad``), then takes rank 0's values;
* the trainable parameters are split into buckets of about ``bucket_mb`` megabytes, in
  reverse registration order (roughly the order the backward pass finishes them);
* during ``backward`` each layer that owns parameters reports when its last backward
  call of the pass returns; a bucket whose parameters are all final starts a
  non-blocking allreduce (``MPI_Iallreduce``) at once, while earlier layers still
  compute.  Buckets start in index order on every rank, which MPI requires of
  collectives on one communicator;
* when the wrapped backward returns, the buckets still pending start, every
  allreduce is waited for, and each ``param.grad`` becomes the mean over ranks.

A parameter that received no gradient on a rank contributes zeros there; one that
received none on any rank keeps ``grad = None``.  Inside ``no_sync()`` backward passes
only accumulate local gradients; the first backward after it averages the sum.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..nn.module import Module, Parameter, is_grad_enabled
from . import runtime

__all__ = ["DistributedDataParallel"]

DEFAULT_BUCKET_MB = 25.0


def _describe(module: Module) -> list[tuple[str, str, tuple[int, ...], str, bool]]:
    """(kind, name, shape, dtype, requires_grad) of every parameter and buffer."""
    entries = [
        ("parameter", name, tuple(p.shape), str(p.dtype), p.requires_grad)
        for name, p in module.named_parameters()
    ]
    entries += [
        ("buffer", name, tuple(b.shape), str(b.dtype), False) for name, b in module.named_buffers()
    ]
    return entries


def _first_difference(reference: list, other: list) -> str | None:
    """How ``other`` (a rank's description) first differs from rank 0's, or None."""
    mine = {(kind, name): rest for kind, name, *rest in other}
    theirs = {(kind, name): rest for kind, name, *rest in reference}
    for kind, name, *rest in reference:
        if (kind, name) not in mine:
            return f"has no {kind} {name!r}"
        shape, dtype, grad = mine[(kind, name)]
        if tuple(shape) != tuple(rest[0]):
            return f"has {kind} {name!r} of shape {tuple(shape)} where rank 0's is {rest[0]}"
        if dtype != rest[1]:
            return f"has {kind} {name!r} of dtype {dtype} where rank 0's is {rest[1]}"
        if grad != rest[2]:
            return f"has {kind} {name!r} with requires_grad={grad} where rank 0's is {rest[2]}"
    for kind, name, *_ in other:
        if (kind, name) not in theirs:
            return f"has a {kind} {name!r} that rank 0 lacks"
    if [e[:2] for e in other] != [e[:2] for e in reference]:
        return "registers its parameters and buffers in another order than rank 0"
    return None


class _Bucket:
    def __init__(self, index: int, params: list[Parameter]) -> None:
        self.index = index
        self.params = params
        self.dtype = params[0].dtype
        self.sizes = [p.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.buffer: np.ndarray | None = None
        self.waiting = 0  # parameters of this pass not yet final

    def pack(self) -> np.ndarray:
        """The gradients, then one flag per parameter: 1 where this rank has a gradient."""
        total = int(self.offsets[-1])
        buffer = np.zeros(total + len(self.params), self.dtype)
        for i, param in enumerate(self.params):
            if param.grad is not None:
                buffer[self.offsets[i] : self.offsets[i + 1]] = param.grad.reshape(-1)
                buffer[total + i] = 1
        self.buffer = buffer
        return buffer

    def unpack(self, world: int) -> None:
        buffer = self.buffer
        assert buffer is not None
        total = int(self.offsets[-1])
        grads = buffer[:total]
        grads /= world
        for i, (param, start, stop) in enumerate(
            zip(self.params, self.offsets[:-1], self.offsets[1:])
        ):
            if buffer[total + i] > 0:  # some rank had a gradient
                param.grad = grads[start:stop].reshape(param.shape)
        self.buffer = None


class DistributedDataParallel(Module):
    """Data parallelism over the MPI world: ``ddp = DistributedDataParallel(model)``.

    Use it as the model: ``out = ddp(x)``, ``ddp.backward(grad)``, ``ddp.parameters()``
    for the optimizer; after ``backward`` every rank holds the same averaged gradients,
    so the same optimizer step keeps the replicas identical.  ``state_dict()`` and
    ``load_state_dict()`` are the wrapped module's (no ``module.`` prefix), so
    checkpoints load into the plain model at any world size.

    ``bucket_mb``: gradient megabytes per allreduce (smaller buckets start earlier,
    larger ones pay the latency less often).  ``broadcast_buffers``: before every
    training-mode forward pass, rank 0's buffers (BatchNorm running statistics)
    replace the others', as in PyTorch (not needed with :class:`SyncBatchNorm`, whose
    statistics agree already).  In a world of one it only runs the module.

    ``last_sync`` describes the latest averaging backward: buckets, bytes, how many
    buckets started before the wrapped backward returned, how many of the ``layers``
    with parameters had finished their backward when the first bucket started, and
    ``wait_s``, the time spent waiting for allreduces after it returned (communication
    not hidden).
    """

    def __init__(
        self,
        module: Module,
        *,
        bucket_mb: float = DEFAULT_BUCKET_MB,
        broadcast_buffers: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a Module, got {type(module).__name__}")
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
        runtime.init()
        self.module = module
        object.__setattr__(self, "bucket_mb", float(bucket_mb))
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "world_size", runtime.world_size())
        object.__setattr__(self, "require_backward_grad_sync", True)
        object.__setattr__(self, "last_sync", {})
        if self.world_size > 1:
            self._check_same_model()
            self._broadcast_state()
            world = runtime._require_world()
            object.__setattr__(self, "_comm", world.comm.Dup())
        self._build_buckets()
        self._install_hooks()

    # ----------------------------------------------------------------- wrap time

    def _check_same_model(self) -> None:
        descriptions = runtime.all_gather_object(
            _describe(self.module), "DistributedDataParallel's model check"
        )
        for other_rank, description in enumerate(descriptions[1:], start=1):
            difference = _first_difference(descriptions[0], description)
            if difference is not None:
                raise runtime.MismatchError(
                    f"the ranks built different models: rank {other_rank} {difference} "
                    "(every rank must build the same model)"
                )

    def _arrays(self) -> list[tuple[Any, str, np.ndarray]]:
        """(owner, name, array) of every parameter and buffer, in registration order."""
        out = []
        for module in self.module.modules():
            for name, param in module._parameters.items():
                if param is not None:
                    out.append((module, name, param.data))
            for name, buf in module._buffers.items():
                if buf is not None:
                    out.append((module, name, buf))
        return out

    def _broadcast_state(self, buffers_only: bool = False) -> None:
        """Rank 0's parameters and buffers (or buffers only) into every rank's, by dtype."""
        entries = self._arrays()
        if buffers_only:
            entries = [e for e in entries if e[1] in e[0]._buffers]
        by_dtype: dict[np.dtype, list] = {}
        for entry in entries:
            by_dtype.setdefault(entry[2].dtype, []).append(entry)
        for dtype, group in sorted(by_dtype.items(), key=lambda item: item[0].str):
            flat = np.concatenate([a.reshape(-1) for _, _, a in group]) if group else None
            if flat is None or flat.size == 0:
                continue
            flat = np.ascontiguousarray(flat, dtype=dtype)
            runtime.broadcast_array(flat, 0, "DistributedDataParallel's broadcast from rank 0")
            offset = 0
            for owner, name, array in group:
                value = flat[offset : offset + array.size].reshape(array.shape)
                offset += array.size
                if name in owner._parameters:
                    owner._parameters[name].data = value.copy()
                else:
                    owner._buffers[name][...] = value

    def sync_buffers(self) -> None:
        """Rank 0's buffers (running statistics) into every rank's, now."""
        if self.world_size > 1:
            self._broadcast_state(buffers_only=True)

    def _build_buckets(self) -> None:
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        limit = self.bucket_mb * 1e6
        buckets: list[_Bucket] = []
        current: list[Parameter] = []
        size = 0.0
        for param in reversed(trainable):  # the backward pass finishes the last layers first
            nbytes = param.size * param.dtype.itemsize
            if current and (size + nbytes > limit or param.dtype != current[0].dtype):
                buckets.append(_Bucket(len(buckets), current))
                current, size = [], 0.0
            current.append(param)
            size += nbytes
        if current:
            buckets.append(_Bucket(len(buckets), current))
        object.__setattr__(self, "_buckets", buckets)
        object.__setattr__(self, "_bucket_of", {id(p): b for b in buckets for p in b.params})

    def _install_hooks(self) -> None:
        """Count each parameter-owning layer's forward calls, and hear its backward end.

        The layer's ``backward`` is shadowed by an instance attribute that calls the
        original, then tells this wrapper; nn.Module itself is untouched.
        """
        owners = []
        for layer in self.module.modules():
            params = [p for p in layer._parameters.values() if p is not None and p.requires_grad]
            if not params:
                continue
            owners.append((layer, params))
            layer.register_forward_hook(self._count_forward)
            original = layer.backward

            def backward(grad_output: Any, _layer=layer, _original=original) -> Any:
                result = _original(grad_output)
                self._layer_done(_layer)
                return result

            object.__setattr__(layer, "backward", backward)
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_params_of", {id(layer): params for layer, params in owners})
        object.__setattr__(self, "_forward_calls", {})
        object.__setattr__(self, "_pass", None)

    # ----------------------------------------------------------------- calling

    def _count_forward(self, layer: Module, inputs: Any, output: Any) -> None:
        if is_grad_enabled():
            self._forward_calls[id(layer)] = self._forward_calls.get(id(layer), 0) + 1

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if is_grad_enabled():  # a new pass to count (an evaluation in between is not one)
            self._forward_calls.clear()
        if self.world_size > 1 and self.broadcast_buffers and self.training and is_grad_enabled():
            self.sync_buffers()
        return self.module(*inputs, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside only accumulate local gradients (gradient accumulation);
        the first backward after the block averages everything accumulated."""
        previous = self.require_backward_grad_sync
        object.__setattr__(self, "require_backward_grad_sync", False)
        try:
            yield
        finally:
            object.__setattr__(self, "require_backward_grad_sync", previous)

    def backward(self, grad_output: Any) -> Any:
        if self.world_size == 1 or not self.require_backward_grad_sync:
            return self.module.backward(grad_output)
        pending: dict[int, int] = {}
        for layer, params in self._owners:
            calls = self._forward_calls.get(id(layer), 0)
            for param in params:
                pending[id(param)] = pending.get(id(param), 0) + calls
        held = set()  # buckets with a parameter no counted forward call used: final at the end
        for bucket in self._buckets:
            bucket.waiting = sum(1 for p in bucket.params if pending.get(id(p), 0) > 0)
            if bucket.waiting < len(bucket.params):
                held.add(bucket.index)
        state = {"pending": pending, "held": held, "ready": set(), "next": 0, "requests": []}
        state.update(layers_done=0, layers_done_at_first_start=None)
        object.__setattr__(self, "_pass", state)
        try:
            result = self.module.backward(grad_output)
            early = state["next"]
            state["ready"].update(b.index for b in self._buckets)
            self._launch_ready()
            start = time.perf_counter()
            runtime.wait(state["requests"], "DistributedDataParallel's gradient allreduce")
            waited = time.perf_counter() - start
        finally:
            object.__setattr__(self, "_pass", None)
        for bucket in self._buckets:
            bucket.unpack(self.world_size)
        self.last_sync.clear()
        self.last_sync.update(
            buckets=len(self._buckets),
            started_during_backward=early,
            layers=len(self._owners),
            layers_done_at_first_start=state["layers_done_at_first_start"],
            bytes=int(sum(b.offsets[-1] * b.dtype.itemsize for b in self._buckets)),
            wait_s=waited,
        )
        return result

    def _layer_done(self, layer: Module) -> None:
        state = self._pass
        if state is None:
            return
        state["layers_done"] += 1
        for param in self._params_of[id(layer)]:
            left = state["pending"].get(id(param), 0)
            if left <= 0:
                continue
            state["pending"][id(param)] = left - 1
            if left == 1:
                bucket = self._bucket_of[id(param)]
                bucket.waiting -= 1
                if bucket.waiting == 0 and bucket.index not in state["held"]:
                    state["ready"].add(bucket.index)
        self._launch_ready()
        runtime.poke(state["requests"])

    def _launch_ready(self) -> None:
        state = self._pass
        assert state is not None
        world = runtime._require_world()
        while state["next"] < len(self._buckets) and state["next"] in state["ready"]:
            bucket = self._buckets[state["next"]]
            buffer = bucket.pack()
            state["requests"].append(self._comm.Iallreduce(world.mpi.IN_PLACE, buffer))
            state["next"] += 1
            if state["layers_done_at_first_start"] is None:
                state["layers_done_at_first_start"] = state["layers_done"]

    # ----------------------------------------------------------------- the wrapped module

    def state_dict(self, prefix: str = "") -> Any:
        return self.module.state_dict(prefix)

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> Any:
        return self.module.load_state_dict(state_dict, strict)

    def summary(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.summary(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"world_size={self.world_size}, bucket_mb={self.bucket_mb:g}"
