"""``fastconv bench --op models``: every network of ``fastconv.models`` against the same
network in torch eager (``torch_models``, its torchvision twin), with the same
weights, in one process, alternating.

Per model of ``catalogue.ZOO_CASES`` and direction of ``MODEL_DIRECTIONS``: inference
(eval mode, under ``nn.no_grad`` / ``torch.inference_mode``) at batch 1 and 32, and
one training step at batch 32 (train mode: forward, cross-entropy, backward, SGD with
momentum). The algorithm column of fastconv's row says where one more call of its step
spent its time (``time_shares``): in the layers by kind, in the optimizer, and in
what lies between them ("other": Python, containers, residual adds and the loss).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .catalogue import ZooCase
from .models import MODEL_TOLERANCE

__all__ = ["ZOO_IMPLS", "layer_kind", "time_shares", "zoo_case"]

ZOO_IMPLS = ("fastconv", "torch")

# The kinds a leaf layer's time is reported under, by class name; every other leaf
# layer (activations, dropout, flatten, identity, resampling) is "elementwise".
_KINDS = {
    "conv": ("Conv1d", "Conv2d", "ConvTranspose2d"),
    "linear": ("Linear",),
    "pool": (
        "MaxPool1d",
        "AvgPool1d",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        "AdaptiveMaxPool2d",
    ),
    "norm": ("BatchNorm2d", "GroupNorm", "LayerNorm", "InstanceNorm2d"),
}
SHARE_ORDER = ("conv", "linear", "pool", "norm", "elementwise", "optimizer", "other")
# The methods timed per layer class, where forward is not the one: those the fused
# paths call (nn.batch_norm_activation, nn.activation_in_place), which forward calls.
_TIMED_METHODS = {
    "BatchNorm2d": ("_normalise", "backward"),
    "ReLU": ("_activate", "backward"),
    "ReLU6": ("_activate", "backward"),
}


def layer_kind(layer: Any) -> str:
    """The time-share kind of a leaf layer: conv, linear, pool, norm or elementwise."""
    name = type(layer).__name__
    return next((kind for kind, names in _KINDS.items() if name in names), "elementwise")


def _leaf_layers(model: Any) -> list[Any]:
    """Every layer of ``model`` without children: registered modules and the steps a
    model keeps as plain attributes (the zoo's flatten / relu / pooling calls)."""
    from ..nn import Module

    found: dict[int, Any] = {}
    for module in model.modules():
        candidates = [module, *(v for v in vars(module).values() if isinstance(v, Module))]
        for layer in candidates:
            if not layer._modules:
                found[id(layer)] = layer
    return list(found.values())


def time_shares(step, model: Any, optimizer: Any = None) -> dict[str, float]:
    """Run ``step()`` once with every leaf layer's forward and backward (the methods
    the fused paths call, for the layers they fuse; and ``optimizer.step``) timed;
    returns each kind's share of the step's wall time, with the rest under "other".
    The layers are restored afterwards."""
    spent = dict.fromkeys(SHARE_ORDER, 0.0)

    def timed(fn, kind):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[kind] += time.perf_counter() - start

        return run

    patched = [(layer, layer_kind(layer)) for layer in _leaf_layers(model)]
    if optimizer is not None:
        patched.append((optimizer, "optimizer"))

    def methods(owner, kind):
        if kind == "optimizer":
            return ("step",)
        return _TIMED_METHODS.get(type(owner).__name__, ("forward", "backward"))

    for owner, kind in patched:
        for method in methods(owner, kind):
            object.__setattr__(owner, method, timed(getattr(owner, method), kind))
    try:
        start = time.perf_counter()
        step()
        total = time.perf_counter() - start
    finally:
        for owner, kind in patched:
            for method in methods(owner, kind):
                owner.__dict__.pop(method, None)
    spent["other"] = max(total - sum(spent.values()), 0.0)
    return {kind: spent[kind] / total for kind in SHARE_ORDER}


def _format_shares(shares: dict[str, float]) -> str:
    return " ".join(f"{kind} {100 * v:.0f}%" for kind, v in shares.items() if v >= 0.005)


def zoo_case(
    spec: ZooCase,
    direction: str,
    *,
    impls: Sequence[str] | None = None,
    max_batch: int | None = None,
    rounds: int | None = None,
    seed: int = 0,
):
    """``spec``'s ``direction`` for each implementation; ``max_batch`` caps the batch
    (quick and smoke runs). Raises LookupError without torch."""
    from .. import models, nn, optim
    from .cases import Case, _select_impls, max_error
    from .models import _forward_flops, torch_and_batch, torch_runner

    torch, mode, batch = torch_and_batch(direction, max_batch)
    from .torch_models import build

    names = _select_impls(impls, ZOO_IMPLS)
    options: dict[str, Any] = {"num_classes": spec.classes, "in_channels": spec.in_channels}
    if spec.cifar:
        options["cifar"] = True
    torch.manual_seed(seed)
    native = build(spec.network, **options)
    model = models.get_model(spec.network, **options)
    model.load_state_dict({k: v.numpy() for k, v in native.state_dict().items()})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, spec.in_channels, spec.image, spec.image), np.float32)
    y = rng.integers(0, spec.classes, batch)
    x_torch, y_torch = torch.from_numpy(x), torch.from_numpy(y)
    native.eval()
    flops = _forward_flops(torch, native, x_torch[:1]) * batch
    training = mode == "train"
    criterion = nn.CrossEntropyLoss()
    cross_entropy = torch.nn.functional.cross_entropy
    optimizers: dict[str, Any] = {}

    def fastconv_runner():
        if not training:
            model.eval()

            def infer():
                with nn.no_grad():
                    return model(x)

            return infer
        model.train()
        optimizer = optimizers["fastconv"] = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            criterion(model(x), y)
            model.backward(criterion.backward())
            optimizer.step()
            optimizer.zero_grad()

        return step

    runners = {
        "fastconv": fastconv_runner,
        "torch": lambda: torch_runner(torch, native, x_torch, y_torch, training),
    }
    timed = {name: runners[name]() for name in names}

    def check() -> dict[str, float]:
        """Logits (inference) or every parameter gradient of one step (training) on two
        images, in eval mode (train-mode batch statistics of two images are
        ill-conditioned, and dropout masks differ), against torch in float64; on copies,
        so the timed models keep their state."""
        xc, yc = x[:2], y[:2]
        reference = copy.deepcopy(native).double().eval()
        xt = torch.from_numpy(xc).double()
        if training:
            cross_entropy(reference(xt), torch.from_numpy(yc)).backward()
            order = [name for name, _ in reference.named_parameters()]
            expected = torch.cat([p.grad.flatten() for p in reference.parameters()]).numpy()
        else:
            with torch.inference_mode():
                expected = reference(xt).numpy()
        errors = {}
        if "fastconv" in names:
            twin = copy.deepcopy(model).eval()
            if training:
                criterion(twin(xc), yc)
                twin.backward(criterion.backward())
                grads = {name: p.grad for name, p in twin.named_parameters()}
                got = np.concatenate([grads[name].ravel() for name in order])
            else:
                with nn.no_grad():
                    got = twin(xc)
            errors["fastconv"] = max_error(got, expected)
        if "torch" in names:
            twin = copy.deepcopy(native).eval()
            if training:
                twin.zero_grad(set_to_none=True)
                cross_entropy(twin(torch.from_numpy(xc)), torch.from_numpy(yc)).backward()
                got = torch.cat([p.grad.flatten() for p in twin.parameters()])
            else:
                with torch.inference_mode():
                    got = twin(torch.from_numpy(xc))
            errors["torch"] = max_error(got, expected)
        return errors

    def where_the_time_went() -> str | None:
        if "fastconv" not in timed:
            return None
        return _format_shares(time_shares(timed["fastconv"], model, optimizers.get("fastconv")))

    return Case(
        op="models",
        name=spec.name,
        direction=direction,
        shape=f"N{batch} {spec.in_channels}x{spec.image}x{spec.image}",
        impls=timed,
        check=check,
        work=3 * flops if training else flops,
        algorithm=where_the_time_went,
        tolerance=MODEL_TOLERANCE,
        note="GFLOP/s = conv+linear FLOPs (x3 for a training step); fastconv's algorithm "
        "column: its time by kind, from one more call",
        extra={"images_per_call": batch},
        rounds=rounds,
    )
