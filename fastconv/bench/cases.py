"""Runnable cases built from the catalogue: for one GEMM shape, conv layer and
direction, pooling op or training step, the inputs, a zero-argument callable per
implementation present, and a check of every implementation against the reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import reference
from ..functional import conv2d_algorithm, gemm
from ..geometry import pair
from .catalogue import CONV_DIRECTIONS, POOL_DIRECTIONS, ConvLayer, GemmCase, PoolCase, TrainCase
from .ladder import conv_makers, pool_makers
from .machine import gemm_ceiling_probes
from .models import torch_runner
from .peers import (
    IMPLS,
    numpy_conv_call,
    torch_conv_call,
    torch_or_none,
    torch_pool_call,
)

__all__ = [
    "Case",
    "conv_backward_algorithm",
    "conv_case",
    "gemm_case",
    "max_error",
    "pool_case",
    "train_case",
]

EPS32 = float(np.finfo(np.float32).eps)


@dataclass
class Case:
    """One benchmark case, ready to time: zero-argument callables per implementation.

    ``check()`` runs every implementation once on the check inputs and returns
    {impl: max |result - reference| / max |reference|}; ``work`` is FLOPs (or bytes for
    ``unit == 'GB/s'``) per call of the timed callables.
    """

    op: str
    name: str
    direction: str
    shape: str
    impls: dict[str, Callable[[], Any]]
    check: Callable[[], dict[str, float]]
    work: float
    unit: str = "GFLOP/s"
    algorithm: str | None = None
    tolerance: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Ceilings timed in the same alternation as the implementations: zero-argument
    # callables that run a probe and return its rate; the result keeps each one's best.
    probes: dict[str, Callable[[], float]] = field(default_factory=dict)
    # Alternating rounds for this case when the run does not say (whole models: fewer).
    rounds: int | None = None

    @property
    def label(self) -> str:
        return f"{self.op} {self.name}" + (f" {self.direction}" if self.direction else "")


def _as_numpy(result: Any) -> np.ndarray:
    if hasattr(result, "detach"):
        result = result.detach().numpy()
    return np.asarray(result, dtype=np.float64)


def max_error(result: Any, expected: np.ndarray) -> float:
    """max |result - expected| / max |expected| (0 when both are all zero)."""
    got = _as_numpy(result)
    if got.shape != expected.shape:
        raise AssertionError(f"shape {got.shape} != reference shape {expected.shape}")
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not np.isfinite(err):
        return math.inf
    return err / scale if scale > 0 else err


def _select_impls(wanted: Sequence[str] | None, available: Iterable[str]) -> list[str]:
    available = list(available)
    if wanted is None:
        return available
    return [name for name in available if name in wanted]


# =========================================================================== convolution


def conv_backward_algorithm(layer: ConvLayer, direction: str) -> str:
    """Which kernel fastconv's CPU backward runs for ``layer`` (``direction`` dx or dw),
    as the library's own backward dispatch reports it."""
    import fastconv

    query = (
        fastconv.conv2d_input_algorithm if direction == "dx" else fastconv.conv2d_weight_algorithm
    )
    return str(
        query(layer.input_shape, layer.weight_shape, layer.stride, layer.pad, 1, layer.groups)
    )


def conv_case(
    layer: ConvLayer,
    direction: str,
    *,
    impls: Sequence[str] | None = None,
    check_batch: int = 2,
    seed: int = 0,
) -> Case:
    """``layer``'s ``direction`` (fwd | dx | dw) for each implementation present.

    The check runs every implementation on the first ``check_batch`` images against
    ``fastconv.reference`` in float64 (dw: the gradient of those images only).
    """
    if direction not in CONV_DIRECTIONS:
        raise ValueError(f"direction must be one of {CONV_DIRECTIONS}, got {direction!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(layer.input_shape, dtype=np.float32)
    w = rng.standard_normal(layer.weight_shape, dtype=np.float32)
    w *= np.float32(1.0 / math.sqrt(w[0].size))
    gy = rng.standard_normal(layer.output_shape, dtype=np.float32)
    st, pd, g = layer.stride, layer.pad, layer.groups

    # Makers take the arrays, so that the check can run each implementation on the
    # first images while the timed callables run on the whole batch.
    def fastconv_fn(x, w, gy):
        import fastconv

        if direction == "fwd":
            return lambda: fastconv.conv2d(x, w, None, st, pd, 1, g)
        if direction == "dx":
            return lambda: fastconv.conv2d_input(x.shape, w, gy, st, pd, 1, g)
        return lambda: fastconv.conv2d_weight(x, w.shape, gy, st, pd, 1, g)

    def numpy_fn(x, w, gy):
        return numpy_conv_call(direction, x, w, gy, st, pd, g)

    makers: dict[str, Callable] = {"fastconv": fastconv_fn, "numpy": numpy_fn}
    if torch_or_none() is not None:

        def torch_fn(x, w, gy):
            return torch_conv_call(direction, x, w, gy, st, pd, g)

        makers["torch"] = torch_fn
    makers.update(conv_makers(impls, direction, st, pd, g))
    names = _select_impls(impls, makers)

    def check() -> dict[str, float]:
        nb = min(layer.n, check_batch)
        xc, gyc = x[:nb], gy[:nb]
        x64, w64, gy64 = (a.astype(np.float64) for a in (xc, w, gyc))
        if direction == "fwd":
            ref = reference.conv2d(x64, w64, None, st, pd, 1, g)
        elif direction == "dx":
            ref = reference.conv2d_input(x64.shape, w64, gy64, st, pd, 1, g)
        else:
            ref = reference.conv2d_weight(x64, w.shape, gy64, st, pd, 1, g)
        return {name: max_error(makers[name](xc, w, gyc)(), ref) for name in names}

    if direction == "fwd":
        algorithm = conv2d_algorithm(layer.input_shape, layer.weight_shape, st, pd, 1, g)
    else:
        algorithm = conv_backward_algorithm(layer, direction)
    return Case(
        op="conv",
        name=layer.name,
        direction=direction,
        shape=layer.describe(),
        impls={name: makers[name](x, w, gy) for name in names},
        check=check,
        work=layer.flops,
        algorithm=algorithm,
        tolerance=32 * layer.reduced(check_batch).reduction_length(direction) * EPS32,
        extra={"layer": dataclasses.asdict(layer)},
    )


# =========================================================================== per-call overhead

# The smallest calls of each op family, where the time is all argument handling.
OVERHEAD_CALLS = ("conv2d", "max_pool2d", "gemm")


def overhead_case(call: str, *, impls: Sequence[str] | None = None) -> Case:
    """One tiny call (conv2d 1x8x4x4 with a 3x3 kernel, max_pool2d 2x2 on it, gemm 4x4);
    ``work`` is 1e3, so the rate column reads calls per microsecond."""
    import fastconv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 4, 4), dtype=np.float32)
    w = rng.standard_normal((8, 8, 3, 3), dtype=np.float32)
    a = rng.standard_normal((4, 4), dtype=np.float32)
    torch = torch_or_none()
    if call == "conv2d":
        shape = "N1 C8 4x4 K8 3x3 p1"
        makers = {"fastconv": lambda: fastconv.conv2d(x, w, padding=1)}
        expected = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            makers["torch"] = lambda: torch.nn.functional.conv2d(tx, tw, padding=1)
    elif call == "max_pool2d":
        shape = "N1 C8 4x4 2x2"
        makers = {"fastconv": lambda: fastconv.max_pool2d(x, 2)}
        expected = reference.max_pool2d(x.astype(np.float64), 2)
        if torch is not None:
            tx = torch.from_numpy(x)
            makers["torch"] = lambda: torch.nn.functional.max_pool2d(tx, 2)
    elif call == "gemm":
        shape = "4x4x4"
        makers = {"fastconv": lambda: fastconv.gemm(a, a), "numpy": lambda: a @ a}
        expected = a.astype(np.float64) @ a.astype(np.float64)
        if torch is not None:
            ta = torch.from_numpy(a)
            makers["torch"] = lambda: torch.mm(ta, ta)
    else:
        raise ValueError(f"call must be one of {OVERHEAD_CALLS}, got {call!r}")
    names = _select_impls(impls, makers)
    return Case(
        op="overhead",
        name=f"{call}_tiny",
        direction=call,
        shape=shape,
        impls={name: makers[name] for name in names},
        check=lambda: {name: max_error(makers[name](), expected) for name in names},
        work=1e3,
        unit="call/us",
        tolerance=1e-5,
    )


# =========================================================================== GEMM


def gemm_case(case: GemmCase, *, impls: Sequence[str] | None = None, seed: int = 0) -> Case:
    """C = A @ B into a preallocated C for each implementation (no allocation timed)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((case.m, case.k), dtype=np.float32)
    b = rng.standard_normal((case.k, case.n), dtype=np.float32)
    outs = {name: np.empty((case.m, case.n), np.float32) for name in IMPLS}

    def fastconv_run():
        return gemm(a, b, outs["fastconv"])

    def numpy_run():
        return np.matmul(a, b, out=outs["numpy"])

    makers: dict[str, Callable[[], Any]] = {"fastconv": fastconv_run, "numpy": numpy_run}
    torch = torch_or_none()
    if torch is not None:
        at, bt, ct = (torch.from_numpy(v) for v in (a, b, outs["torch"]))

        def torch_run():
            return torch.mm(at, bt, out=ct)

        makers["torch"] = torch_run
    names = _select_impls(impls, makers)

    def check() -> dict[str, float]:
        ref = a.astype(np.float64) @ b.astype(np.float64)
        return {name: max_error(makers[name](), ref) for name in names}

    return Case(
        op="gemm",
        name=case.name,
        direction="",
        shape=f"{case.m}x{case.n}x{case.k}",
        impls={name: makers[name] for name in names},
        check=check,
        work=case.flops,
        tolerance=32 * case.k * EPS32,
        extra={"m": case.m, "n": case.n, "k": case.k},
        probes=gemm_ceiling_probes() if "fastconv" in names else {},
    )


# =========================================================================== pooling


def pool_case(
    case: PoolCase,
    direction: str = "fwd",
    *,
    impls: Sequence[str] | None = None,
    check_batch: int = 2,
    seed: int = 0,
) -> Case:
    """Pooling forward or backward (``dx``); ``work`` is the bytes read and written."""
    if direction not in POOL_DIRECTIONS:
        raise ValueError(f"direction must be one of {POOL_DIRECTIONS}, got {direction!r}")
    import fastconv

    x = np.random.default_rng(seed).standard_normal(case.shape, dtype=np.float32)
    kw = dict(kernel_size=case.kernel, stride=case.stride, padding=case.pad)
    is_max = case.op == "max_pool2d"
    if is_max:
        y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    else:
        y, idx = fastconv.avg_pool2d(x, **kw), None
    gy = np.random.default_rng(seed + 1).standard_normal(y.shape, dtype=np.float32)
    if direction == "fwd":
        nbytes = x.nbytes + y.nbytes
    else:
        nbytes = gy.nbytes + x.nbytes + (idx.nbytes if is_max else 0)

    # fastconv and its NumPy reference (the numpy peer here) share one API.
    def lib_fn(lib):
        def make(x, gy, idx):
            if direction == "fwd":
                fn = getattr(lib, case.op)
                return lambda: fn(x, **kw)
            if is_max:
                return lambda: lib.max_pool2d_backward(gy, idx, x.shape)
            return lambda: lib.avg_pool2d_backward(gy, x.shape, **kw)

        return make

    makers: dict[str, Callable] = {"fastconv": lib_fn(fastconv), "numpy": lib_fn(reference)}
    if torch_or_none() is not None:

        def torch_fn(x, gy, idx):
            return torch_pool_call(
                case.op, direction, x, gy, idx, case.kernel, case.stride, case.pad
            )

        makers["torch"] = torch_fn
    makers.update(pool_makers(impls, case.op, direction, case.kernel, case.stride, case.pad))
    names = _select_impls(impls, makers)

    def check() -> dict[str, float]:
        nb = min(case.shape[0], check_batch)
        xc, gyc = x[:nb], gy[:nb]
        ic = None if idx is None else idx[:nb]
        ref = _as_numpy(lib_fn(reference)(xc.astype(np.float64), gyc.astype(np.float64), ic)())
        return {name: max_error(makers[name](xc, gyc, ic)(), ref) for name in names}

    return Case(
        op="pool",
        name=case.name,
        direction=direction,
        shape="x".join(map(str, case.shape)),
        impls={name: makers[name](x, gy, idx) for name in names},
        check=check,
        work=nbytes,
        unit="GB/s",
        # max_pool2d forward is exact; sums (avg, overlapping windows' gradients)
        # round differently in float32 than in the float64 reference
        tolerance=0.0 if is_max and direction == "fwd" else 1e-6,
        note="numpy = fastconv.reference",
    )


# =========================================================================== training


def _model_flops(model: Any, x: np.ndarray) -> float:
    """Forward FLOPs of the Conv2d and Linear layers of ``model`` on ``x`` (one forward
    pass is run with hooks under no_grad)."""
    from .. import nn

    total = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = pair(module.kernel_size)
            total[0] += 2.0 * output.size * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * output.size * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with nn.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def train_case(
    case: TrainCase,
    *,
    impls: Sequence[str] | None = None,
    seed: int = 0,
    lr: float = 0.01,
    momentum: float = 0.9,
) -> Case:
    """One training step (forward, cross-entropy, backward, SGD with momentum, zero_grad)
    of the demo CNN, fastconv vs the same model (same weights) in PyTorch eager.

    ``work`` is 3x the forward FLOPs of the conv and linear layers (forward, input
    gradient, weight gradient). The check runs one step of each with dropout off and
    compares every parameter gradient with a float64 run of the same step: PyTorch's
    when installed, else fastconv's own model in float64.
    Raises LookupError when fastconv.training has no ``build_model``.
    """
    try:
        from .. import nn, optim, training
    except ImportError as exc:  # the layer library is still in progress
        raise LookupError(f"fastconv.training cannot be imported: {exc}") from exc
    build = getattr(training, "build_model", None)
    if build is None:
        raise LookupError("fastconv.training has no build_model()")
    nn.manual_seed(seed)
    model = build(in_channels=case.in_channels, image_size=(case.image, case.image))
    model.train()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(
        (case.batch, case.in_channels, case.image, case.image), dtype=np.float32
    )
    y = rng.integers(0, 10, size=case.batch)
    criterion = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def fastconv_step():
        logits = model(x)
        loss = criterion(logits, y)
        model.backward(criterion.backward())
        opt.step()
        opt.zero_grad()
        return loss

    makers: dict[str, Callable[[], Any]] = {"fastconv": fastconv_step}
    torch = torch_or_none()
    tmodel = None
    if torch is not None:
        tmodel = nn.to_torch(model)
        tmodel.train()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        makers["torch"] = torch_runner(torch, tmodel, xt, yt, True, lr=lr, momentum=momentum)
    names = _select_impls(impls, makers)
    flops = 3 * _model_flops(model, x)

    def check() -> dict[str, float]:
        # One step's gradients, dropout off, against float64 PyTorch (when installed) or
        # fastconv's own float64 model (then the fastconv error is float32 vs float64).
        import copy

        nb = min(case.batch, 8)
        xc, yc = x[:nb], y[:nb]
        fc = copy.deepcopy(model)
        for m in fc.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        fc64 = copy.deepcopy(fc).double()
        crit = nn.CrossEntropyLoss()

        def fc_grads(mod, xin):
            mod.zero_grad()
            crit(mod(xin), yc)
            mod.backward(crit.backward())
            return {n: p.grad for n, p in mod.named_parameters()}

        got = {"fastconv": fc_grads(fc, xc)}
        if torch is not None:
            t64 = nn.to_torch(fc64)
            t64.zero_grad()
            tout = torch.nn.functional.cross_entropy(
                t64(torch.from_numpy(xc.astype(np.float64))), torch.from_numpy(yc.astype(np.int64))
            )
            tout.backward()
            ref = {n: p.grad.numpy() for n, p in t64.named_parameters()}
            if "torch" in names:
                t32 = nn.to_torch(fc)
                t32.zero_grad()
                ce = torch.nn.functional.cross_entropy
                ce(t32(torch.from_numpy(xc)), torch.from_numpy(yc.astype(np.int64))).backward()
                got["torch"] = {n: p.grad for n, p in t32.named_parameters()}
        else:
            ref = fc_grads(fc64, xc.astype(np.float64))
        return {
            name: max(max_error(got[name][k], np.asarray(ref[k], np.float64)) for k in ref)
            for name in names
        }

    return Case(
        op="train",
        name=case.name,
        direction="step",
        shape=f"N{case.batch} C{case.in_channels} {case.image}x{case.image}",
        impls={name: makers[name] for name in names},
        check=check,
        work=flops,
        tolerance=1e-3,
        note="GFLOP/s = 3 x forward conv+linear FLOPs per step",
        extra={"images_per_step": case.batch},
    )
