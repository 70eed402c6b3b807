"""Shared test helpers (importable as ``from helpers import ...`` from any test module)."""

from __future__ import annotations

import numpy as np


def _eps(dtype):
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) if dtype.kind == "f" else float(np.finfo(np.float64).eps)


def assert_close_scaled(actual, expected, k, *, c=2.0, atol=0.0, err_msg=""):
    """Assert ``|actual - expected| <= c * k * eps * max|expected| + atol`` elementwise.

    ``k`` is the reduction length behind each output element (Cg*R*S for a conv forward,
    N*OH*OW for a weight gradient, the window size for pooling ...), ``eps`` the machine
    epsilon of the less precise of the two dtypes and ``max|expected|`` is taken over the
    finite entries of the whole array, as in oneDNN's benchdnn / XNNPACK.  NaN must sit at
    the same places in both arrays and infinities must match exactly.  Shapes must agree.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    prefix = f"{err_msg}: " if err_msg else ""
    if actual.shape != expected.shape:
        raise AssertionError(f"{prefix}shape {actual.shape} != expected {expected.shape}")
    eps = max(_eps(actual.dtype), _eps(expected.dtype))
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)

    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        where = np.argwhere(nan_a != nan_e)[0]
        raise AssertionError(
            f"{prefix}NaN mismatch at {tuple(where)}: actual {a[tuple(where)]}, "
            f"expected {e[tuple(where)]} ({int((nan_a != nan_e).sum())} places)"
        )
    inf_e = np.isinf(e)
    if not np.array_equal(a[inf_e], e[inf_e]) or np.isinf(a[~inf_e]).any():
        raise AssertionError(f"{prefix}infinities differ")

    finite = np.isfinite(e)
    scale = float(np.abs(e[finite]).max(initial=0.0))
    tol = c * max(k, 1) * eps * scale + atol
    err = np.where(finite, np.abs(a - e), 0.0)
    worst = float(err.max(initial=0.0))
    if worst > tol:
        where = tuple(np.unravel_index(int(np.argmax(err)), err.shape))
        raise AssertionError(
            f"{prefix}max |err| {worst:.3e} > tol {tol:.3e} (c={c}, k={k}, eps={eps:.2e}, "
            f"max|ref|={scale:.3e}, atol={atol}) at {where}: actual {a[where]!r}, "
            f"expected {e[where]!r}; {int((err > tol).sum())} of {err.size} elements off"
        )


def _child_python(code, env):
    """argv, environment and working folder of a ``python -c code`` child that imports
    the fastconv this process imported.

    The child starts in the tests folder, not the current directory: ``-c`` puts the
    current directory first on ``sys.path``, and from a checkout root that would import
    the unbuilt source tree instead of the installed (or dev-built) package.
    """
    import os
    import sys
    from pathlib import Path

    import fastconv

    env = dict(os.environ if env is None else env)
    package_parent = str(Path(fastconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-c", code], env, str(Path(__file__).resolve().parent)


def run_python(code, *, env=None, timeout=120):
    """Run ``python -c code`` against the fastconv this process imported."""
    import subprocess

    argv, env, cwd = _child_python(code, env)
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_python(code, *, env=None, niceness=0):
    """Start ``python -c code`` as ``run_python`` would, without waiting: a Popen with
    text stdout and stderr pipes, run at ``niceness`` (so that it only takes CPU time
    the caller leaves idle)."""
    import os
    import subprocess

    argv, env, cwd = _child_python(code, env)
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
    )


def fuzz_settings(default_examples):
    """hypothesis settings of the fuzz tests.

    By default a fixed, derandomised set of ``default_examples`` draws (the suite gives the
    same verdict every run). ``FASTCONV_FUZZ_EXAMPLES=N`` asks for N draws from a fresh
    seed instead: the sanitized CI run takes a new slice of the input space each time
    (hypothesis prints how to reproduce a failure).
    """
    import os

    from hypothesis import HealthCheck, settings

    requested = os.environ.get("FASTCONV_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(requested) if requested else default_examples,
        deadline=None,
        database=None,
        derandomize=not requested,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
