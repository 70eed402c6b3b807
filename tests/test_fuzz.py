"""A slice of the fuzz harness (``tests/fuzz``), and the bugs it found.

The slice runs a fixed set of hostile calls of every public op in worker processes and
fails on any crash, hang, unexpected exception type, leaked C++ message or changed input.
``FASTCONV_FUZZ_CALLS=N`` (or ``FASTCONV_FUZZ_EXAMPLES``, which the sanitized CI run
sets) asks for a fresh seed instead, N calls (default 5000); a failure prints the
command that replays each bad call. The long run is ``python -m tests.fuzz --calls
50000``.
"""

from __future__ import annotations

import os
import re
import textwrap

import numpy as np
import pytest
from fuzz import calls, runner
from helpers import run_python

import fastconv
from fastconv.functional import BatchNormSaved

SLICE_CALLS = 20000
SLICE_SEED = 20261202


def test_fuzz_slice():
    fresh = os.environ.get("FASTCONV_FUZZ_CALLS") or os.environ.get("FASTCONV_FUZZ_EXAMPLES")
    if fresh:
        count = int(os.environ.get("FASTCONV_FUZZ_CALLS", 5000))
        seed = int.from_bytes(os.urandom(4), "little")
    else:
        count, seed = SLICE_CALLS, SLICE_SEED
    report = runner.run(count, seed, workers=2, timeout=60)
    message = f"{report.summary()}\n{report.details()}"
    assert not report.problems, message
    assert report.calls == count, message
    # The slice reaches the kernels, not only the argument checks.
    assert report.outcomes["ok"] > count // 3, message
    assert set(report.per_op) == set(calls.BUILDERS), message


def test_every_public_op_is_fuzzed():
    shape_only = {"conv2d_algorithm", "conv2d_input_algorithm", "conv2d_weight_algorithm"}
    public = {
        name
        for name in fastconv.functional.__all__
        if callable(getattr(fastconv.functional, name))
        and not isinstance(getattr(fastconv.functional, name), type)
    }
    fuzzed = set(calls.BUILDERS)
    assert public - {"get_num_threads", "last_algorithms"} <= fuzzed | shape_only
    assert shape_only <= fuzzed


# Calls planted among the real ones by the harness's own test: each one's verdict is known.
PLANTED = """
import ctypes
import os
import time

import numpy as np
from fuzz import calls
from fuzz.calls import describe

PLANTED = {
    3: ("abort", lambda: os.abort(), {}),
    4: ("segfault", lambda: ctypes.string_at(0), {}),
    5: ("sleep", lambda: time.sleep(60), {}),
    7: ("index_error", lambda: [][1], {}),
    8: ("leak", lambda: int("vector::_M_default_append"), {}),
    9: ("changes_input", lambda x: x.fill(1), {"x": np.zeros(3)}),
    10: ("memory_error", lambda: np.empty(2**41), {}),
}


def make_call(seed, index):
    if index in PLANTED:
        name, fn, args = PLANTED[index]
        return calls.Call(name, lambda **kw: fn(**kw), dict(args))
    return calls.make_call(seed, index)


def op_of(seed, index):
    return PLANTED[index][0] if index in PLANTED else calls.op_of(seed, index)
"""


def test_the_harness_counts_crashes_hangs_and_unexpected_errors(tmp_path, monkeypatch):
    (tmp_path / "planted_calls.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    report = runner.run(14, 1, workers=2, timeout=3, generator="planted_calls")
    found = [(p.index, p.kind) for p in report.problems]
    assert found == [
        (3, "crash"),
        (4, "crash"),
        (5, "hang"),
        (7, "unexpected"),
        (8, "unexpected"),
        (9, "unexpected"),
    ], report.details()
    assert report.calls == 14
    assert report.per_op["memory_error"] == {"MemoryError": 1}
    details = {p.index: p.detail for p in report.problems}
    assert "SIGABRT" in details[3]
    # (under AddressSanitizer, its SEGV handler aborts)
    assert re.search(r"SIGSEGV|AddressSanitizer: SEGV", details[4]), details[4]
    assert details[7] == "IndexError: list index out of range"
    assert "leaks an internal message" in details[8]
    assert details[9] == "the call changed its input(s) x"
    assert "replay: python -m tests.fuzz --seed 1 --replay 3" in report.details()


# --------------------------------------------------------------------------- found bugs


def test_batch_norm_takes_a_matrix_subclass():
    """np.matrix cannot be reshaped to 3-D: it reached the kernel as 2-D ("internal:")."""
    x = (np.arange(6, dtype=np.float32).reshape(3, 2) * [1, 10]).astype(np.float32)
    expected = fastconv.batch_norm(x, None, None, training=True)
    with pytest.warns(PendingDeprecationWarning):  # numpy discourages np.matrix
        matrix = np.asmatrix(x)
    got = fastconv.batch_norm(matrix, None, None, training=True)
    np.testing.assert_array_equal(np.asarray(got), expected)


def _saved():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    return x, fastconv.batch_norm(x, None, None, training=True, return_saved=True)[1]


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda s: s._replace(xhat=np.ma.masked_array(s.xhat)), TypeError, "saved.xhat"),
        (lambda s: s._replace(xhat=s.xhat.tolist()), TypeError, "saved.xhat"),
        (lambda s: s._replace(xhat=s.xhat[0]), ValueError, "saved.xhat must be 3-D"),
        (lambda s: s._replace(xhat=np.float32(1)), TypeError, "saved.xhat"),
        (lambda s: s._replace(invstd=s.invstd[:2]), ValueError, "saved.invstd has shape"),
        (lambda s: s._replace(invstd=None), TypeError, "saved.invstd"),
        (lambda s: s._replace(invstd=s.invstd.astype(np.float64)), TypeError, "saved.invstd="),
    ],
    ids=["masked", "list", "2-D", "scalar", "short-invstd", "no-invstd", "invstd-dtype"],
)
def test_batch_norm_backward_checks_a_hand_made_saved(build, error, match):
    """A BatchNormSaved is a plain NamedTuple: its fields gave AttributeError, IndexError,
    an "internal:" message, or (masked) a silently ignored mask."""
    x, saved = _saved()
    with pytest.raises(error, match=match):
        fastconv.batch_norm_backward(np.ones_like(x), build(saved))


def test_batch_norm_backward_takes_any_layout_of_saved():
    x, saved = _saved()
    grad = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    expected = fastconv.batch_norm_backward(grad, saved)
    buffer = np.zeros(saved.xhat.nbytes + 1, np.uint8)
    unaligned = buffer[1:].view(np.float32).reshape(saved.xhat.shape)
    unaligned[...] = saved.xhat
    for xhat in (unaligned, np.asfortranarray(saved.xhat)):
        got = fastconv.batch_norm_backward(grad, saved._replace(xhat=xhat))
        for a, e in zip(got, expected):
            np.testing.assert_array_equal(a, e)


def test_batch_norm_of_an_empty_batch_with_a_huge_dim_returns_at_once():
    """(2**40, 4, 0, 4): the kernels walked all 2**42 empty rows (hours)."""
    child = run_python(
        textwrap.dedent(
            """
            import numpy as np
            import fastconv as fc
            x = np.empty((2**40, 4, 0, 4), np.float32)
            out = fc.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32))
            out, saved = fc.batch_norm(x, None, None, return_saved=True)
            grads = fc.batch_norm_backward(out, saved, np.ones(4, np.float32))
            print(out.shape, saved.xhat.shape, grads[0].shape, grads[1], grads[2])
            """
        ),
        timeout=60,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    shape = "(1099511627776, 4, 0, 4)"
    assert child.stdout.split("\n")[0] == (
        f"{shape} (1099511627776, 4, 0) {shape} [0. 0. 0. 0.] [0. 0. 0. 0.]"
    )


@pytest.mark.parametrize(
    ("input_shape", "weight_shape", "name"),
    [
        ((3, 1, 16, 2**62), (3, 1, 4, 5), "input_shape"),
        ((1, 2**31, 9, 9), (2**31, 2**31, 1, 1), "weight_shape"),
        ((2**20, 1, 2**10, 2**10), (2**24, 1, 1, 1), "the output shape"),
        ((0, 2, 4, 7), (2, 2, 4, 5), "the output shape"),  # padding 2**31 - 1
    ],
)
def test_conv_selectors_refuse_shapes_no_array_can_have(input_shape, weight_shape, name):
    """Dims near 2**62 overflowed 64-bit products in the C++ selectors (UBSan: signed
    overflow in ConvParams::in_plane and out_plane), even with an empty batch; NumPy makes
    no array whose nonzero extents hold more than 2**63 - 1 bytes."""
    padding = 2**31 - 1 if input_shape[0] == 0 else 0
    for selector in ("conv2d_algorithm", "conv2d_input_algorithm", "conv2d_weight_algorithm"):
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} .* more than any array holds"):
            getattr(fastconv, selector)(input_shape, weight_shape, padding=padding)


def test_batch_norm_backward_refuses_mixed_dtypes_in_saved():
    x, saved = _saved()
    assert isinstance(saved, BatchNormSaved)
    with pytest.raises(TypeError, match="saved=float32"):
        fastconv.batch_norm_backward(np.ones_like(x, dtype=np.float64), saved)


# ------------------------------------------------------------ C++ bugs the harness found
# Each was a class of calls the generator had to leave out until the kernels were fixed.


# ASan's shadow memory does not fit in a capped address space: under the sanitizers
# the children run uncapped (the main run holds them to the cap).
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def _run_capped(code: str):
    """Run ``code`` in a child whose address space is capped at 2 GiB (not under ASan)."""
    prelude = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
    return run_python(("" if UNDER_ASAN else prelude) + textwrap.dedent(code), timeout=60)


def test_huge_stride_w_costs_bounded_by_the_output():
    child = _run_capped(
        """
        import numpy as np
        import fastconv as fc
        x, w = np.ones((1, 1, 1, 3), np.float32), np.ones((1, 1, 1, 2), np.float32)
        dy = np.ones((1, 1, 1, 1), np.float32)
        for stride in (2**24, 2**28, 2**31 - 1):
            print(fc.conv2d(x, w, stride=(1, stride)).ravel())
            print(fc.conv2d_input(x.shape, w, dy, stride=(1, stride)).ravel())
            print(fc.conv2d_weight(x, w.shape, dy, stride=(1, stride)).ravel())
        """
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.splitlines() == ["[2.]", "[1. 1. 0.]", "[1. 1.]"] * 3


def test_forced_algorithm_on_a_far_reaching_window():
    """The result (a 3x3 of zeros and ones), or an error that does not leak C++."""
    child = _run_capped(
        """
        import numpy as np
        import fastconv as fc
        x, w = np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
        try:
            print(fc.conv2d(x, w, stride=2**30, padding=2**30, algorithm="direct").sum())
        except (ValueError, MemoryError) as exc:
            print(type(exc).__name__, exc)
        """
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "std::" not in child.stdout, child.stdout
    assert child.stdout.split()[0] in ("1.0", "ValueError", "MemoryError"), child.stdout


def test_selector_cost_does_not_grow_with_the_kernel():
    import time

    for selector in (
        fastconv.conv2d_algorithm,
        fastconv.conv2d_input_algorithm,
        fastconv.conv2d_weight_algorithm,
    ):
        selector((1, 1, 9, 9), (1, 1, 1, 3), padding="same")
        start = time.perf_counter()
        selector((1, 1, 9, 9), (1, 1, 1, 2**25 + 1), padding="same")
        assert time.perf_counter() - start < 0.05, selector.__name__


def test_plain_conv2d_output_beyond_2_to_the_63_bytes():
    child = run_python(
        textwrap.dedent(
            """
            import numpy as np
            import fastconv as fc
            x = np.ones((1, 1, 1, 1), np.float32)
            try:
                fc.conv2d(x, x, padding=2**31 - 1)
            except (ValueError, MemoryError) as exc:
                print(type(exc).__name__)
            """
        ),
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() in (["ValueError"], ["MemoryError"])
