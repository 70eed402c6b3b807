"""Inputs and gradient checks shared by the fastconv.nn test modules.

``make_input`` fills an input of a given kind: "smooth" (any values), "distinct" (well
separated values, for max pooling, where ties would make the gradient ill-defined) or
"nonzero" (|x| >= 0.1, away from ReLU kinks). ``check_grads`` compares a module's
backward() for the input and every parameter with central differences of
sum(module(x) * g) (``numeric_grad``; a sample of the entries of large arrays).
"""

from __future__ import annotations

import numpy as np

from fastconv import nn


def make_input(shape, kind, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "distinct":
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0
    elif kind == "nonzero":
        x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        x = rng.standard_normal(shape)
    return x.astype(dtype)


def first_output(y):
    return y[0] if isinstance(y, tuple) else y


def numeric_grad(f, arr, max_checks=150, h=1e-6, seed=0):
    """Central differences of the scalar f() wrt entries of arr (a sample if large)."""
    flat = arr.reshape(-1)
    n = flat.size
    idx = (
        np.arange(n)
        if n <= max_checks
        else np.random.default_rng(seed).choice(n, max_checks, replace=False)
    )
    out = {}
    for i in idx:
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        out[int(i)] = (fp - fm) / (2 * h)
    return out


def check_grads(module, x, *, reset=None, rtol=1e-6, atol=1e-8, seed=1):
    """backward() against central differences of sum(module(x) * g), for x and params."""
    reset = reset or (lambda: None)
    reset()
    y = first_output(module(x))
    g = np.random.default_rng(seed).standard_normal(y.shape)
    module.zero_grad()
    grad_x = module.backward(g)
    assert grad_x.shape == x.shape

    def f():
        reset()
        with nn.no_grad():
            return float((first_output(module(x)) * g).sum())

    targets = [("input", x, grad_x)]
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        targets.append((name, p.data, p.grad))
    for name, arr, analytic in targets:
        numeric = numeric_grad(f, arr)
        flat = analytic.reshape(-1)
        for i, value in numeric.items():
            assert abs(flat[i] - value) <= atol + rtol * max(
                abs(value), 1.0
            ), f"{name}[{i}]: backward {flat[i]!r} vs finite difference {value!r}"
