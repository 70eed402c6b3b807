"""``Module`` and ``Parameter``: the base of every layer, with an explicit backward.

A fastconv module looks like a ``torch.nn.Module`` from the outside (attribute
registration, ``parameters()``, ``state_dict()``, ``train()``/``eval()``, the same
``repr``), but there is no autograd: every layer implements ``forward(x)``, which
saves what its gradient needs, and ``backward(grad_output)``, which returns the
gradient with respect to its input and *accumulates* the gradients of its
parameters into ``param.grad``::

    logits = model(x)                    # forward, saves what backward needs
    loss = criterion(logits, targets)    # a Python float
    model.backward(criterion.backward()) # grad wrt x; parameters' .grad accumulate
    optimizer.step(); optimizer.zero_grad()

Saved state is a small stack per module: a module may be called several times in
one forward (torchvision's ``BasicBlock`` calls its ``relu`` twice) and its
backward calls pop the saved state in reverse order, which is the order a
backward pass runs in.  The stack belongs to the most recent call of the
top-level module: calling the model again starts a new pass and drops any saved
state that was never back-propagated, so memory stays bounded.  Forward passes
that will not be back-propagated (evaluation) should run under
:func:`no_grad`, which saves nothing and is faster.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Callable, NamedTuple

import numpy as np

from .._checks import check_real_array
from .summary import Summary, summarize

__all__ = [
    "Module",
    "Parameter",
    "Summary",
    "is_grad_enabled",
    "no_grad",
    "set_grad_enabled",
]


# --------------------------------------------------------------------------- grad mode


class _State(threading.local):
    def __init__(self) -> None:
        self.grad_enabled = True
        self.depth = 0  # nesting depth of Module.__call__
        self.generation = 0  # incremented at every top-level call


_state = _State()


def is_grad_enabled() -> bool:
    """Whether forward passes save what backward needs (``torch.is_grad_enabled``)."""
    return _state.grad_enabled


class set_grad_enabled:
    """Context manager (and function) that turns saving for backward on or off."""

    def __init__(self, mode: bool) -> None:
        self.prev = _state.grad_enabled
        _state.grad_enabled = bool(mode)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        _state.grad_enabled = self.prev


class no_grad:
    """``with no_grad(): model(x)`` runs forward passes that save nothing for backward.

    Use it for evaluation: it is faster, holds no activations, and leaves the saved
    state of a pending training forward untouched.  Also usable as a decorator.
    """

    def __enter__(self) -> None:
        self.prev = _state.grad_enabled
        _state.grad_enabled = False

    def __exit__(self, *exc: Any) -> None:
        _state.grad_enabled = self.prev

    def __call__(self, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper


# --------------------------------------------------------------------------- Parameter


class Parameter:
    """A trainable array: ``.data`` (NumPy), ``.grad`` (None or an array like data).

    ``requires_grad=False`` freezes it: layers do not compute its gradient and
    optimizers do not update it.
    """

    __slots__ = ("__weakref__", "data", "grad", "requires_grad")

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        data = np.asarray(data)
        if data.dtype.kind != "f":
            raise TypeError(f"a Parameter must hold floating-point data, got {data.dtype}")
        self.data = data
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)

    # array-like conveniences
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def numel(self) -> int:
        return int(self.data.size)

    def numpy(self) -> np.ndarray:
        return self.data

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def requires_grad_(self, requires_grad: bool = True) -> Parameter:
        self.requires_grad = bool(requires_grad)
        return self

    def accumulate_grad(self, grad: np.ndarray) -> None:
        """``grad`` is added to ``.grad`` (which is set if it was None)."""
        if grad.shape != self.data.shape:
            raise ValueError(
                f"gradient of shape {grad.shape} for a parameter of shape {self.data.shape}"
            )
        if grad.dtype != self.data.dtype:
            grad = grad.astype(self.data.dtype)
        if self.grad is None:
            self.grad = grad
        else:
            self.grad = self.grad + grad

    def __repr__(self) -> str:
        body = np.array2string(
            self.data, precision=4, threshold=20, edgeitems=2, prefix="Parameter("
        )
        suffix = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter({body}, dtype={self.data.dtype}{suffix})"


# --------------------------------------------------------------------------- Module


class _IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class _HookHandle:
    def __init__(self, hooks: dict, key: int) -> None:
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    first = lines.pop(0)
    return first + "\n" + "\n".join((" " * spaces + line) if line.strip() else "" for line in lines)


def _to_numpy(value: Any) -> Any:
    """A NumPy array from a (CPU) torch tensor, without importing torch; anything else
    as it is."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value


class Module:
    """Base class of all layers (``torch.nn.Module`` without autograd).

    Subclasses implement ``forward(*inputs)`` and ``backward(grad_output)``, and may
    override ``extra_repr()``.  Assigning a :class:`Parameter` or a :class:`Module` to
    an attribute registers it; buffers (running statistics) are registered with
    :meth:`register_buffer`.

    ``needs_input_grad`` (default True) may be set to False on a ``Conv2d`` or
    ``Linear`` whose input gradient is never used -- the first layer of a network,
    or the first trainable layer after a frozen feature extractor -- as PyTorch skips
    it for inputs that do not require grad.  Its ``backward`` then computes only the
    parameter gradients and returns None, and a ``Sequential`` stops there (it raises
    if an earlier layer still has trainable parameters).
    """

    _next_hook_id = 0
    needs_input_grad = True

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_saved", [])
        object.__setattr__(self, "_saved_generation", -1)

    # ----------------------------------------------------------------- registration

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._remove_name(name)
            params[name] = value
        elif isinstance(value, Module):
            self._remove_name(name)
            self._modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as parameter "
                    f"'{name}' (a Parameter or None is expected)"
                )
            params[name] = None
        elif name in self._modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as child module "
                    f"'{name}' (a Module or None is expected)"
                )
            self._modules[name] = None
        elif name in self._buffers:
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(
                    f"cannot assign {type(value).__name__} as buffer '{name}' "
                    "(a numpy.ndarray or None is expected)"
                )
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _remove_name(self, name: str) -> None:
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} as parameter '{name}'")
        self._remove_name(name)
        self._parameters[name] = param

    def register_buffer(
        self, name: str, tensor: np.ndarray | None, persistent: bool = True
    ) -> None:
        """A state array that is not trained (``running_mean``...), saved in state_dict."""
        if tensor is not None and not isinstance(tensor, np.ndarray):
            raise TypeError(f"cannot register {type(tensor).__name__} as buffer '{name}'")
        self._remove_name(name)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module")
        self._remove_name(name)
        self._modules[name] = module

    register_module = add_module

    # ----------------------------------------------------------------- traversal

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(
        self, memo: set | None = None, prefix: str = ""
    ) -> Iterator[tuple[str, Module]]:
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self.named_children():
            yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        seen: set[int] = set()
        for mod_prefix, module in modules:
            for name, param in module._parameters.items():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, buf in module._buffers.items():
                if buf is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), buf

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def get_submodule(self, target: str) -> Module:
        module = self
        if target:
            for part in target.split("."):
                if part not in module._modules or module._modules[part] is None:
                    raise AttributeError(f"{type(module).__name__} has no submodule '{part}'")
                module = module._modules[part]
        return module

    def apply(self, fn: Callable[[Module], None]) -> Module:
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ----------------------------------------------------------------- modes

    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter of this module."""
        for param in self.parameters():
            param.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.parameters():
            if set_to_none or param.grad is None:
                param.grad = None
            else:
                param.grad = np.zeros_like(param.data)

    def to(self, dtype: Any) -> Module:
        """Cast floating-point parameters, gradients and buffers to ``dtype`` (in place)."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"modules can only be cast to a floating-point dtype, got {dtype}")
        for module in self.modules():
            for param in module._parameters.values():
                if param is None:
                    continue
                param.data = param.data.astype(dtype, copy=False)
                if param.grad is not None:
                    param.grad = param.grad.astype(dtype, copy=False)
            for name, buf in module._buffers.items():
                if buf is not None and buf.dtype.kind == "f":
                    module._buffers[name] = buf.astype(dtype, copy=False)
        return self

    def float(self) -> Module:
        return self.to(np.float32)

    def double(self) -> Module:
        return self.to(np.float64)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.data.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ----------------------------------------------------------------- state dict

    def state_dict(self, prefix: str = "") -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and persistent buffer under PyTorch's key names."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for mod_prefix, module in self.named_modules(prefix=prefix.rstrip(".")):
            head = f"{mod_prefix}." if mod_prefix else ""
            for name, param in module._parameters.items():
                if param is not None:
                    out[head + name] = param.data.copy()
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent:
                    out[head + name] = buf.copy()
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> _IncompatibleKeys:
        """Copy arrays (NumPy arrays or torch tensors) into parameters and buffers.

        Values are cast to the dtype of the module's own arrays; shapes must match.
        With ``strict``, missing or unexpected keys raise a KeyError listing them.
        Returns ``(missing_keys, unexpected_keys)`` as PyTorch does.  A ``state_dict``
        that is not a mapping, and values that are masked, complex or not numeric, raise
        TypeError (a cast would drop the mask or the imaginary part).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict must be a mapping of names to arrays (what state_dict() or "
                f"load_weights returns), got {type(state_dict).__name__}"
            )
        targets: dict[str, tuple[Module, str, bool]] = {}
        for mod_prefix, module in self.named_modules():
            head = f"{mod_prefix}." if mod_prefix else ""
            for name, param in module._parameters.items():
                if param is not None:
                    targets[head + name] = (module, name, True)
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent:
                    targets[head + name] = (module, name, False)
        keys = list(state_dict.keys())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in keys if k not in targets]
        errors = []
        if strict and (missing or unexpected):
            if unexpected:
                errors.append(
                    "Unexpected key(s) in state_dict: "
                    + ", ".join(f'"{k}"' for k in unexpected)
                    + "."
                )
            if missing:
                errors.append(
                    "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + "."
                )
        values = {}
        for key, (module, name, is_param) in targets.items():
            if key not in state_dict:
                continue
            value = check_real_array(_to_numpy(state_dict[key]), f"state_dict[{key!r}]")
            current = module._parameters[name].data if is_param else module._buffers[name]
            if value.shape != current.shape:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape "
                    f"{value.shape} from checkpoint, the shape in current model "
                    f"is {current.shape}."
                )
                continue
            values[key] = value
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                + "\n\t".join(errors)
            )
        for key, value in values.items():
            module, name, is_param = targets[key]
            if is_param:
                param = module._parameters[name]
                param.data = np.array(value, dtype=param.data.dtype, copy=True)
            else:
                current = module._buffers[name]
                module._buffers[name] = np.array(value, dtype=current.dtype, copy=True)
        return _IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- calling

    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, grad_output: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        state = _state
        if state.depth == 0:
            state.generation += 1
        state.depth += 1
        try:
            output = self.forward(*inputs, **kwargs)
        finally:
            state.depth -= 1
        for hook in list(self._forward_hooks.values()):
            result = hook(self, inputs, output)
            if result is not None:
                output = result
        return output

    def register_forward_hook(self, hook: Callable) -> _HookHandle:
        """``hook(module, inputs, output)`` runs after every forward; ``.remove()`` it."""
        key = Module._next_hook_id
        Module._next_hook_id += 1
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    def save_for_backward(self, *items: Any) -> None:
        """Push what backward will need (nothing is saved under :func:`no_grad`)."""
        if not _state.grad_enabled:
            return
        if self._saved_generation != _state.generation:
            self._saved.clear()
            object.__setattr__(self, "_saved_generation", _state.generation)
        self._saved.append(items)

    def saved_tensors(self) -> tuple:
        """Pop what the matching forward saved (last in, first out)."""
        if not self._saved:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called without a matching forward: call "
                "the module (outside no_grad()) before back-propagating through it, and "
                "back-propagate once per forward call"
            )
        return self._saved.pop()

    def clear_saved(self) -> None:
        """Drop saved forward state of this module and its children."""
        for module in self.modules():
            module._saved.clear()

    # ----------------------------------------------------------------- repr / summary

    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [
            f"({name}): {_addindent(repr(module), 2)}" for name, module in self._modules.items()
        ]
        lines = extra_lines + child_lines
        main = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                main += extra_lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def __dir__(self) -> list[str]:
        return sorted(
            set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules)
        )

    def summary(
        self,
        input_shape: tuple[int, ...],
        *,
        dtype: Any = None,
        file: Any = None,
        print_summary: bool = True,
    ) -> Summary:
        """Print each layer's output shape, parameters, activation memory and FLOPs.

        ``input_shape`` is the shape of one sample, without the batch dimension (for
        example ``(3, 32, 32)``).  A forward pass on a zero batch of one runs in eval
        mode (running statistics are not touched).  Shapes,
        memory and FLOPs are per sample; the totals close the table.  Returns a
        :class:`Summary` (see :mod:`fastconv.nn.summary` for what is counted).
        """
        return summarize(self, input_shape, dtype=dtype, file=file, print_summary=print_summary)
