"""Optimizers with the update rules of ``torch.optim``, step for step.

Each class follows PyTorch's single-tensor implementation (``_single_tensor_sgd``,
``_single_tensor_adagrad``, ``_single_tensor_rmsprop``, ``_single_tensor_adam``) in
the same order of operations, so one model trained by both from the same weights on
the same batches gives the same parameters (to rounding).  Updates are in place on
``param.data`` and keep its dtype (float32 stays float32).

A step updates all of a group's float32 and float64 parameters in one fused C++ call
per dtype (one pass over each parameter, its gradient and its state, on every thread),
the operations in the same order as the NumPy update each class also has; that NumPy
update runs the parameters the kernels cannot take in place (other float dtypes,
non-contiguous or read-only arrays).

Parameters whose ``grad`` is None, or that are frozen (``requires_grad=False``), are
skipped.  Param groups, ``zero_grad()``, ``state_dict()`` / ``load_state_dict()`` and
``add_param_group()`` work as in PyTorch; a group's ``lr`` may be changed between
steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import _cpu
from .nn.module import Parameter

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "Optimizer",
    "RMSprop",
    "StepLR",
    "lr_scheduler",
]


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """``torch.lerp``'s formula (two branches, for accuracy near weight 0 and 1)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


class Optimizer:
    """Base class: ``param_groups`` (dicts with 'params' and hyper-parameters) and ``state``."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Parameter):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of "
                "Parameters or dicts, but got a Parameter"
            )
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize Parameters, got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = np.zeros_like(p.data)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns closure()'s loss."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            by_dtype: dict[np.dtype, list[tuple[Parameter, np.ndarray, dict]]] = {}
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                grad = p.grad
                if grad.shape != p.data.shape:
                    raise ValueError(
                        f"gradient of shape {grad.shape} for a parameter of shape {p.data.shape}"
                    )
                state = self.state.setdefault(p, {})
                if _fusable(p.data):
                    grad = np.ascontiguousarray(grad, dtype=p.data.dtype)
                    by_dtype.setdefault(p.data.dtype, []).append((p, grad, state))
                else:
                    if grad.dtype != p.data.dtype:
                        grad = grad.astype(p.data.dtype)
                    self._update(p, grad, group, state)
            for batch in by_dtype.values():
                self._fused_update(group, batch)
        return loss

    def _update(
        self, p: Parameter, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """The NumPy update of one parameter."""
        raise NotImplementedError

    def _fused_update(
        self, group: dict[str, Any], batch: list[tuple[Parameter, np.ndarray, dict]]
    ) -> None:
        """The C++ update of a group's parameters of one dtype (every one _fusable)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: parameters are numbered in group order."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = copy.deepcopy(self.state[p])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        params = []
        for mine, saved in zip(self.param_groups, groups):
            if len(mine["params"]) != len(saved["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't "
                    "match the size of optimizer's group"
                )
            params += list(zip(saved["params"], mine["params"]))
        by_index = dict(params)
        self.state = {}
        for key, value in state_dict["state"].items():
            p = by_index[int(key)]
            entry = {}
            for name, v in value.items():
                if name == "step":
                    entry[name] = int(float(_array(v)))
                elif v is None:
                    entry[name] = None
                else:
                    entry[name] = np.array(_array(v), dtype=p.data.dtype, copy=True)
            self.state[p] = entry
        for mine, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = v

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def _fusable(a: np.ndarray) -> bool:
    """Whether the fused kernels can update ``a`` in place."""
    return (
        a.dtype in (np.float32, np.float64)
        and a.flags.c_contiguous
        and a.flags.aligned
        and a.flags.writeable
        and type(a) is np.ndarray
    )


def _state_array(state: dict, name: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """state[name], created filled with ``fill`` (or made C-contiguous in ``like``'s dtype,
    as the kernels need) -- the array the fused step updates in place."""
    current = state.get(name)
    if current is None:
        current = np.full_like(like, fill, order="C")
    elif not (_fusable(current) and current.dtype == like.dtype):
        current = np.array(current, dtype=like.dtype, order="C")
    state[name] = current
    return current


def _check_non_negative(name: str, value: float) -> None:
    if value < 0.0:
        raise ValueError(f"Invalid {name}: {value}")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, nesterov and weight decay.

    ``g = grad + weight_decay * p``; ``buf = g`` on the first step, afterwards
    ``buf = momentum * buf + (1 - dampening) * g``; ``g = g + momentum * buf``
    (nesterov) or ``buf``; ``p -= lr * g``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check_non_negative("learning rate", lr)
        _check_non_negative("momentum value", momentum)
        _check_non_negative("weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )

    def _update(self, p, grad, group, state):
        lr, momentum = group["lr"], group["momentum"]
        g = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = np.array(g, copy=True)
                state["momentum_buffer"] = buf
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= lr * g

    def _fused_update(self, group, batch):
        momentum = group["momentum"]
        buffers, first = [], []
        for p, _, state in batch:
            if momentum == 0:
                buffers.append(None)
                first.append(False)
                continue
            first.append(state.get("momentum_buffer") is None)
            buffers.append(_state_array(state, "momentum_buffer", p.data))
        _cpu.optimizer_step(
            "sgd",
            batch[0][0].data.dtype,
            [p.data for p, _, _ in batch],
            [g for _, g, _ in batch],
            buffers,
            first,
            group["lr"],
            momentum,
            group["dampening"],
            group["weight_decay"],
            group["nesterov"],
            group["maximize"],
        )


class Adagrad(Optimizer):
    """Adagrad: ``sum += g*g``; ``p -= clr * g / (sqrt(sum) + eps)``,
    ``clr = lr / (1 + (step - 1) * lr_decay)``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
    ) -> None:
        _check_non_negative("learning rate", lr)
        _check_non_negative("lr_decay value", lr_decay)
        _check_non_negative("weight_decay value", weight_decay)
        _check_non_negative("initial_accumulator_value value", initial_accumulator_value)
        _check_non_negative("epsilon value", eps)
        super().__init__(
            params,
            dict(
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                maximize=maximize,
            ),
        )
        # PyTorch creates the state eagerly
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {
                    "step": 0,
                    "sum": np.full_like(p.data, group["initial_accumulator_value"]),
                }

    def _update(self, p, grad, group, state):
        if "sum" not in state:
            state["step"] = 0
            state["sum"] = np.full_like(p.data, group["initial_accumulator_value"])
        state["step"] += 1
        step = state["step"]
        g = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.data
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        acc = state["sum"]
        acc += g * g
        std = np.sqrt(acc) + group["eps"]
        p.data -= clr * (g / std)

    def _fused_update(self, group, batch):
        sums, rates = [], []
        for p, _, state in batch:
            if "sum" not in state:
                state["step"] = 0
            sums.append(_state_array(state, "sum", p.data, group["initial_accumulator_value"]))
            state["step"] += 1
            rates.append(group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"]))
        _cpu.optimizer_step(
            "adagrad",
            batch[0][0].data.dtype,
            [p.data for p, _, _ in batch],
            [g for _, g, _ in batch],
            sums,
            rates,
            group["weight_decay"],
            group["eps"],
            group["maximize"],
        )


class RMSprop(Optimizer):
    """RMSprop with PyTorch's options (alpha, eps, weight_decay, momentum, centered)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check_non_negative("learning rate", lr)
        _check_non_negative("epsilon value", eps)
        _check_non_negative("momentum value", momentum)
        _check_non_negative("weight_decay value", weight_decay)
        _check_non_negative("alpha value", alpha)
        super().__init__(
            params,
            dict(
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                maximize=maximize,
            ),
        )

    def _update(self, p, grad, group, state):
        alpha, momentum = group["alpha"], group["momentum"]
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            if momentum > 0:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        g = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.data
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if group["centered"]:
            grad_avg = _lerp(state["grad_avg"], g, 1 - alpha)
            state["grad_avg"] = grad_avg
            avg = np.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = np.sqrt(square_avg)
        avg += group["eps"]
        if momentum > 0:
            buf = state.setdefault("momentum_buffer", np.zeros_like(p.data))
            buf *= momentum
            buf += g / avg
            p.data -= group["lr"] * buf
        else:
            p.data -= group["lr"] * (g / avg)

    def _fused_update(self, group, batch):
        momentum, centered = group["momentum"], group["centered"]
        square_avgs, grad_avgs, buffers = [], [], []
        for p, _, state in batch:
            state.setdefault("step", 0)
            state["step"] += 1
            square_avgs.append(_state_array(state, "square_avg", p.data))
            grad_avgs.append(_state_array(state, "grad_avg", p.data) if centered else None)
            buffers.append(_state_array(state, "momentum_buffer", p.data) if momentum > 0 else None)
        _cpu.optimizer_step(
            "rmsprop",
            batch[0][0].data.dtype,
            [p.data for p, _, _ in batch],
            [g for _, g, _ in batch],
            square_avgs,
            grad_avgs,
            buffers,
            group["lr"],
            group["alpha"],
            group["eps"],
            group["weight_decay"],
            momentum,
            centered,
            group["maximize"],
        )


class Adam(Optimizer):
    """Adam (and AMSGrad) with PyTorch's bias corrections and L2 weight decay."""

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check_non_negative("learning rate", lr)
        _check_non_negative("epsilon value", eps)
        _check_non_negative("weight_decay value", weight_decay)
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
            ),
        )

    def _update(self, p, grad, group, state):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        g = -grad if group["maximize"] else grad
        if wd != 0:
            if self._decoupled:
                p.data *= 1 - lr * wd
            else:
                g = g + wd * p.data
        exp_avg = _lerp(state["exp_avg"], g, 1 - beta1)
        state["exp_avg"] = exp_avg
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if group["amsgrad"]:
            max_sq = state.setdefault("max_exp_avg_sq", np.zeros_like(p.data))
            np.maximum(max_sq, exp_avg_sq, out=max_sq)
            denom = np.sqrt(max_sq) / bias_correction2_sqrt + group["eps"]
        else:
            denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + group["eps"]
        p.data -= step_size * (exp_avg / denom)

    def _fused_update(self, group, batch):
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        exp_avgs, exp_avg_sqs, max_sqs, step_sizes, bc2_sqrts = [], [], [], [], []
        for p, _, state in batch:
            state.setdefault("step", 0)
            state["step"] += 1
            step = state["step"]
            exp_avgs.append(_state_array(state, "exp_avg", p.data))
            exp_avg_sqs.append(_state_array(state, "exp_avg_sq", p.data))
            max_sqs.append(_state_array(state, "max_exp_avg_sq", p.data) if amsgrad else None)
            step_sizes.append(group["lr"] / (1 - beta1**step))
            bc2_sqrts.append((1 - beta2**step) ** 0.5)
        _cpu.optimizer_step(
            "adam",
            batch[0][0].data.dtype,
            [p.data for p, _, _ in batch],
            [g for _, g, _ in batch],
            exp_avgs,
            exp_avg_sqs,
            max_sqs,
            step_sizes,
            bc2_sqrts,
            group["lr"],
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            amsgrad,
            group["maximize"],
            self._decoupled,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay`` before the step)."""

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


# --------------------------------------------------------------------------- LR schedules


class _LRScheduler:
    """Base: sets every group's ``lr`` from its ``initial_lr`` at each ``step()`` (per epoch)."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


class StepLR(_LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(_LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``."""

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return (
            self.eta_min
            + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        )


class lr_scheduler:  # a namespace, as torch.optim.lr_scheduler
    StepLR = StepLR
    CosineAnnealingLR = CosineAnnealingLR
