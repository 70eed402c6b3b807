"""``fastconv bench --op torch``: whole torch models, native against converted by
``fastconv.torch.convert`` against converted with ``autotune=True``, in one process.

Per model of ``catalogue.MODEL_CASES`` and direction of ``MODEL_DIRECTIONS``: inference
under ``torch.inference_mode`` (eval mode) at batch 1 and 32, and one SGD training step
(train mode: forward, cross-entropy, backward, step) at batch 32. Implementations:
``torch`` (the model as built), ``fastconv`` (converted) and ``autotune`` (converted,
each layer keeping the faster of fastconv's op and torch's on its first input: the
timing runs in the warm-up call, outside the timed samples). The summaries judge
``autotune`` against ``torch`` with the targets of ``targets.json`` ("torch").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ..geometry import pair
from .catalogue import MODEL_DIRECTIONS, ModelCase
from .timing import geomean

__all__ = [
    "MODEL_IMPLS",
    "direction_batch",
    "model_case",
    "model_summaries",
    "torch_and_batch",
    "torch_runner",
]

# Converted, converted with autotune, native; report order ('autotune' exists in this
# op only).
MODEL_IMPLS = ("fastconv", "autotune", "torch")
# The op's rounds by run mode (whole models: fewer than the layer ops' 7).
MODEL_ROUNDS = {"full": 3, "quick": 2, "smoke": 1}
# float32 against float64 torch, relative to the largest value compared (the logits, or
# the largest parameter gradient of the step): as the demo CNN's training case.
MODEL_TOLERANCE = 1e-3


def direction_batch(direction: str) -> tuple[str, int]:
    """'infer_b32' -> ('infer', 32)."""
    if direction not in MODEL_DIRECTIONS:
        raise ValueError(f"direction must be one of {MODEL_DIRECTIONS}, got {direction!r}")
    mode, batch = direction.split("_b")
    return mode, int(batch)


def torch_and_batch(direction: str, max_batch: int | None) -> tuple[Any, str, int]:
    """(torch, mode, batch) for a model op's ``direction``, the batch capped at
    ``max_batch``; LookupError without torch."""
    from .peers import torch_or_none

    torch = torch_or_none()
    if torch is None:
        raise LookupError("PyTorch is not installed")
    mode, batch = direction_batch(direction)
    return torch, mode, batch if max_batch is None else min(batch, max_batch)


def torch_runner(torch, model, x, y, training: bool, *, lr: float = 0.01, momentum: float = 0.9):
    """What the benchmarks time for a torch model: inference under
    ``torch.inference_mode`` in eval mode, or one SGD step in train mode on
    cross-entropy."""
    if not training:
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    cross_entropy = torch.nn.functional.cross_entropy

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _forward_flops(torch, model, x) -> float:
    """FLOPs of the Conv2d and Linear layers of one forward pass of ``model`` on ``x``."""
    total = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = pair(module.kernel_size)
            total[0] += 2.0 * output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2.0 * output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _autotune_summary(fastconv_torch, model) -> str:
    """'autotune: 18/23 layers on fastconv' over the decisions of the timed shape."""
    decisions = [c[-1]["choice"] for c in fastconv_torch.autotune_choices(model).values()]
    kept = sum(choice == "fastconv" for choice in decisions)
    return f"autotune: {kept}/{len(decisions)} layers on fastconv"


def model_case(
    spec: ModelCase,
    direction: str,
    *,
    impls: Sequence[str] | None = None,
    max_batch: int | None = None,
    rounds: int | None = None,
    seed: int = 0,
):
    """``spec``'s ``direction`` for each implementation; ``max_batch`` caps the batch
    (quick and smoke runs). Raises LookupError without torch."""
    from .cases import Case, _select_impls, max_error

    torch, mode, batch = torch_and_batch(direction, max_batch)
    import fastconv.torch as fastconv_torch

    from .torch_models import build_network, num_classes

    torch.manual_seed(seed)
    native = build_network(spec.network, spec.image)
    models = {
        "fastconv": fastconv_torch.convert(native),
        "autotune": fastconv_torch.convert(native, autotune=True),
        "torch": native,
    }
    names = _select_impls(impls, MODEL_IMPLS)
    models = {name: models[name] for name in names}
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, spec.image, spec.image, generator=generator)
    y = torch.randint(0, num_classes(spec.image), (batch,), generator=generator)
    native.eval()
    flops = _forward_flops(torch, native, x[:1]) * batch
    training = mode == "train"
    cross_entropy = torch.nn.functional.cross_entropy

    def runner(model):
        return torch_runner(torch, model, x, y, training)

    def results_of(model, xc, yc) -> Any:
        """Logits (inference) or every parameter gradient of one step, concatenated
        (training), on a copy in ``xc``'s dtype, so the timed models keep their state.
        Both in eval mode: batch statistics of two images make train-mode gradients
        ill-conditioned (native torch in float32 is off from float64 by up to 8e-3
        there), and dropout would differ between the runs."""
        model = copy.deepcopy(model).to(xc.dtype).eval()
        if not training:
            with torch.inference_mode():
                return model(xc)
        cross_entropy(model(xc), yc).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def check() -> dict[str, float]:
        xc, yc = x[:2], y[:2]
        expected = results_of(native, xc.double(), yc).numpy()
        return {name: max_error(results_of(models[name], xc, yc), expected) for name in names}

    return Case(
        op="torch",
        name=spec.name,
        direction=direction,
        shape=f"N{batch} 3x{spec.image}x{spec.image}",
        impls={name: runner(model) for name, model in models.items()},
        check=check,
        work=3 * flops if training else flops,
        algorithm=(lambda: _autotune_summary(fastconv_torch, models["autotune"]))
        if "autotune" in models
        else None,
        tolerance=MODEL_TOLERANCE,
        note="GFLOP/s = conv+linear FLOPs (x3 for a training step); "
        "fastconv = converted, autotune = converted with autotune=True",
        extra={"images_per_call": batch},
        rounds=rounds,
    )


def model_summaries(results: list[dict], targets: dict) -> list[dict]:
    """Per model op ('torch', 'models'), direction and fastconv implementation: the
    geomean and slowest speedup over native torch across the models; the implementation
    the op's entry of ``targets`` (``targets.json``) names is judged against its goals
    for that direction."""
    out = []
    by_group: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if r["op"] in ("torch", "models"):
            by_group.setdefault((r["op"], r["direction"]), []).append(r)
    for (op, direction), rows in by_group.items():
        goals = targets.get(op, {})
        for impl in ("fastconv", "autotune"):
            pairs = [
                (r["case"], r["impls"][impl]["speedup"]["torch"])
                for r in rows
                if impl in r["impls"] and "torch" in r["impls"]
            ]
            if not pairs:
                continue
            entry: dict[str, Any] = {
                "op": op,
                "direction": direction,
                "impl": impl,
                "peer": "torch",
                "cases": len(pairs),
                "geomean": geomean(v for _, v in pairs),
                "min": min(v for _, v in pairs),
                "min_case": min(pairs, key=lambda p: p[1])[0],
                "below_1": sum(v < 1.0 for _, v in pairs) / len(pairs),
            }
            goal = goals.get("directions", {}).get(direction)
            if impl == goals.get("impl") and goal:
                texts, meets = [], True
                if "geomean_speedup" in goal:
                    texts.append(f"geomean >= {goal['geomean_speedup']}")
                    meets = meets and entry["geomean"] >= goal["geomean_speedup"]
                if "slowest_case_speedup" in goal:
                    texts.append(f"no model < {goal['slowest_case_speedup']}")
                    meets = meets and entry["min"] >= goal["slowest_case_speedup"]
                for case, least in goal.get("case_speedup", {}).items():
                    found = [v for name, v in pairs if name == case]
                    if found:
                        texts.append(f"{case} >= {least}")
                        meets = meets and found[0] >= least
                entry["target"] = ", ".join(texts)
                entry["meets"] = meets
            out.append(entry)
    return out
