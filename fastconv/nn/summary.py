"""``Module.summary``: each layer's output shape, parameters, activation memory and FLOPs.

One forward pass of a zero sample (batch of one, eval mode, autograd on so that the
layers make the arrays a training pass makes: in-place activations run in place only
without autograd; what the layers keep for backward is dropped afterwards) with a
forward hook on every registered module records, per call:

- the output shape (per sample);
- the parameters the module holds itself (None for a container without its own);
- the activation memory: the bytes of the output array if the call produced a new one
  (a ``Sequential`` hands on its last layer's array, ``Flatten`` a view, ``Identity``
  its input: those add nothing); the total is the memory of all distinct activation
  arrays of one sample's forward pass, what a training pass keeps of the same order;
- the FLOPs of convolutions and linear layers, two per multiply-accumulate (bias adds,
  normalisation, activations and pooling are not counted: they are a few per output
  element against hundreds of multiply-accumulates).  ``total_macs`` is the count that
  torchvision's model tables list as "GFLOPS" (VGG-16: 15.47 G at 224x224).

Rows come in the order the calls finish, so a container follows its layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .module import Module

__all__ = ["LayerSummary", "Summary", "summarize"]


class LayerSummary(NamedTuple):
    """One call of one module during the summary's forward pass (per sample)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int | None  # None: a container without parameters of its own
    activation_bytes: int  # 0 when the output is an array an earlier call produced
    macs: int | None  # None for containers: their layers have the counts
    depth: int


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory ``array`` views."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _macs(module: Any, output: np.ndarray, inputs: Any = ()) -> int:
    from .conv_transpose import ConvTranspose2d
    from .layers import Conv2d, Linear
    from .layers1d import Conv1d

    per_sample = int(np.prod(output.shape[1:]))
    if isinstance(module, (Conv2d, Conv1d)):
        taps = int(np.prod(module.kernel_size))
        return per_sample * (module.in_channels // module.groups) * taps
    if isinstance(module, ConvTranspose2d):
        # every input value meets every tap of its group's out_channels / groups filters
        in_per_sample = int(np.prod(inputs[0].shape[1:]))
        taps = int(np.prod(module.kernel_size))
        return in_per_sample * (module.out_channels // module.groups) * taps
    if isinstance(module, Linear):
        return per_sample * module.in_features
    return 0


def summarize(
    module: Module,
    input_shape: tuple[int, ...],
    *,
    dtype: Any = None,
    file: Any = None,
    print_summary: bool = True,
) -> Summary:
    """What :meth:`Module.summary` does (see there)."""
    from .module import set_grad_enabled

    if dtype is None:
        first = next(module.parameters(), None)
        dtype = first.data.dtype if first is not None else np.float32
    x = np.zeros((1, *tuple(int(s) for s in input_shape)), dtype=dtype)
    rows: list[LayerSummary] = []
    depth_of = {}
    name_of = {}
    for name, sub in module.named_modules():
        depth_of[id(sub)] = 0 if not name else name.count(".") + 1
        name_of[id(sub)] = name
    # the outputs stay referenced until the end, so no array id is reused meanwhile
    seen: dict[int, np.ndarray] = {id(x): x}

    def hook(sub: Module, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        own = sum(p.data.size for p in sub.parameters(recurse=False))
        is_container = any(True for _ in sub.children())
        owner = _owner(out)
        new_bytes = 0
        if id(owner) not in seen:
            seen[id(owner)] = owner
            new_bytes = int(owner.nbytes)
        rows.append(
            LayerSummary(
                name_of[id(sub)],
                type(sub).__name__,
                tuple(out.shape[1:]),
                None if (is_container and own == 0) else own,
                new_bytes,
                None if is_container else _macs(sub, out, inputs),
                depth_of[id(sub)],
            )
        )

    modules = list(module.modules())
    handles = [m.register_forward_hook(hook) for m in modules]
    modes = {id(m): m.training for m in modules}
    try:
        module.eval()
        with set_grad_enabled(True):
            out = module(x)
    finally:
        module.clear_saved()
        for handle in handles:
            handle.remove()
        for m in modules:
            object.__setattr__(m, "training", modes[id(m)])
    # the root is listed only when it is a single layer
    if any(True for _ in module.children()):
        rows = [r for r in rows if r.name != ""]
    out = out[0] if isinstance(out, tuple) else out
    params = list(module.parameters())
    summary = Summary(
        tuple(x.shape[1:]),
        tuple(out.shape[1:]),
        rows,
        total_params=sum(p.data.size for p in params),
        trainable_params=sum(p.data.size for p in params if p.requires_grad),
        param_bytes=sum(p.data.nbytes for p in params),
    )
    if print_summary:
        print(summary.table(), file=file)
    return summary


def _format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


def _format_flops(count: float) -> str:
    for unit in ("", "K", "M"):
        if count < 1000:
            return f"{count:.0f}" if unit == "" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.2f}G"


class Summary:
    """What :meth:`Module.summary` found.

    ``layers``: one :class:`LayerSummary` per module call; ``rows``: the same as
    (name, type, output shape, params) tuples; totals ``total_params``,
    ``trainable_params``, ``non_trainable_params``, ``param_bytes``,
    ``activation_bytes``, ``total_macs`` and ``total_flops`` (all per sample).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        layers: list[LayerSummary],
        total_params: int,
        trainable_params: int,
        param_bytes: int = 0,
    ) -> None:
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.layers = list(layers)
        self.rows = [(r.name, r.kind, r.output_shape, r.params) for r in self.layers]
        self.total_params = int(total_params)
        self.trainable_params = int(trainable_params)
        self.non_trainable_params = self.total_params - self.trainable_params
        self.param_bytes = int(param_bytes)
        self.activation_bytes = sum(r.activation_bytes for r in self.layers)
        self.total_macs = sum(r.macs or 0 for r in self.layers)
        self.total_flops = 2 * self.total_macs

    def table(self) -> str:
        def fmt_shape(shape: tuple[int, ...]) -> str:
            return "x".join(str(s) for s in shape) if shape else "scalar"

        labels = []
        for row in self.layers:
            indent = "  " * max(row.depth - 1, 0)
            labels.append(f"{indent}{row.name} ({row.kind})" if row.name else row.kind)
        width = max([len("Layer (type)"), *map(len, labels)]) + 2
        shapes = [fmt_shape(r.output_shape) for r in self.layers]
        shape_w = max([len("Output shape"), *map(len, shapes), len(fmt_shape(self.input_shape))])
        shape_w += 2
        rule = "=" * (width + shape_w + 12 + 12 + 10)
        lines = [
            f"{'Layer (type)':<{width}}{'Output shape':<{shape_w}}{'Param #':>12}"
            f"{'Memory':>12}{'FLOPs':>10}",
            rule,
            f"{'Input':<{width}}{fmt_shape(self.input_shape):<{shape_w}}",
        ]
        for label, shape, row in zip(labels, shapes, self.layers):
            params = "--" if row.params is None else f"{row.params:,}"
            memory = _format_bytes(row.activation_bytes) if row.activation_bytes else "--"
            flops = "--" if row.macs is None else _format_flops(2 * row.macs)
            lines.append(f"{label:<{width}}{shape:<{shape_w}}{params:>12}{memory:>12}{flops:>10}")
        lines += [
            rule,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Params size: {_format_bytes(self.param_bytes)}",
            f"Activation memory (one sample, forward): {_format_bytes(self.activation_bytes)}",
            f"FLOPs (one sample, forward): {_format_flops(self.total_flops)} "
            f"({_format_flops(self.total_macs)} multiply-accumulates)",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"Summary(input_shape={self.input_shape}, output_shape={self.output_shape}, "
            f"total_params={self.total_params}, trainable_params={self.trainable_params}, "
            f"total_flops={self.total_flops})"
        )
