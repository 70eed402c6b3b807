"""The pooling kernels across ISA tiers, at the edges of their arrays and on random
arguments: the default tier is the one the CPU's flags allow, ``FASTCONV_ISA`` caps it
in a fresh interpreter, the baseline (portable) kernels give results identical bit for
bit to the default (AVX2 or AVX-512) ones, no kernel reads outside its arrays (a child
interpreter, which imports this module, puts every array between unreadable pages), and
a bounded hypothesis fuzz checks every pooling op against the reference and, where it is
installed, PyTorch; draws with an empty output must raise ValueError.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import fuzz_settings, run_python
from hypothesis import given
from hypothesis import strategies as st
from pool_helpers import (
    DTYPES,
    KINDS,
    Case,
    check_avg_vs_reference,
    check_avg_vs_torch,
    check_max_vs_reference,
    check_max_vs_torch,
    generated_cases,
    grad_like,
    make_input,
    vector_path_cases,
)

import fastconv

# --------------------------------------------------------------------------- ISA paths


def isa_cases() -> list[Case]:
    """The subset computed under both ISA paths."""
    cases = vector_path_cases()[1::6]  # the other half of vector_path_cases, mostly
    cases += generated_cases(3000, 40, dtype="float32")
    cases += generated_cases(3001, 6, dtype="float64")
    cases += [
        Case((2, 4, 57, 66), k, s, p, (1, 1), c, True, None, "float32", kind, 5)
        for k, s, p in [
            ((2, 2), (2, 2), (0, 0)),
            ((3, 3), (2, 2), (1, 1)),
            ((3, 3), (1, 1), (1, 1)),
        ]
        for c in (False, True)
        for kind in ("normal", "special", "relu_ints")
    ]
    return cases


def compute_all(cases) -> dict[str, np.ndarray]:
    """Every pooling op on every case (used in-process and in the baseline subprocess)."""
    results = {}
    for i, case in enumerate(cases):
        x = make_input(case)
        out, idx = fastconv.max_pool2d(x, **case.max_args(), return_indices=True)
        results[f"{i}_max"], results[f"{i}_idx"] = out, idx
        grad = grad_like(out, case.seed + 1)
        plane = case.shape[2] * case.shape[3]
        if idx.size and idx.min() >= 0 and idx.max() < plane:
            results[f"{i}_max_bwd"] = fastconv.max_pool2d_backward(grad, idx, x.shape)
        avg = fastconv.avg_pool2d(x, **case.avg_args())
        results[f"{i}_avg"] = avg
        results[f"{i}_avg_bwd"] = fastconv.avg_pool2d_backward(
            grad_like(avg, case.seed + 2), x.shape, **case.avg_args()
        )
    return results


_ENV_CAP_CHILD = textwrap.dedent("""
    import fastconv
    print(fastconv._cpu.isa(), fastconv._cpu.isa_tiers())
""")


def _cpu_isa() -> str | None:
    """The ISA tier /proc/cpuinfo's flags allow, named as fastconv._cpu.isa() names it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    if not ("avx2" in flags and "fma" in flags):
        return "baseline"
    return "avx512f" if "avx512f" in flags else "avx2+fma"


def test_default_isa_matches_the_cpu():
    expected = _cpu_isa()
    if expected is None or os.environ.get("FASTCONV_ISA"):
        pytest.skip("CPU flags unknown, or the ISA is forced by FASTCONV_ISA")
    assert fastconv._cpu.isa() == expected


@pytest.mark.parametrize("cap", ["baseline", "avx2"])
def test_fastconv_isa_environment_variable_caps_the_tier(cap):
    child = run_python(_ENV_CAP_CHILD, env={**os.environ, "FASTCONV_ISA": cap})
    assert child.returncode == 0, child.stderr[-3000:]
    active, tiers = child.stdout.split(" ", 1)
    allowed = ["baseline"] if cap == "baseline" else ["baseline", "avx2+fma"]
    assert active in allowed
    assert ast.literal_eval(tiers) == allowed[: allowed.index(active) + 1]


def test_baseline_and_default_isa_agree_bit_for_bit():
    if fastconv._cpu.isa() == "baseline":
        pytest.skip("the default tier is the baseline")
    cases = isa_cases()
    mine = compute_all(cases)
    with fastconv._cpu.use_isa("baseline"):
        theirs = compute_all(cases)
    assert sorted(theirs) == sorted(mine)
    for key, value in mine.items():
        case = cases[int(key.split("_")[0])]
        other = theirs[key]
        assert value.dtype == other.dtype, key
        assert value.shape == other.shape, key
        assert (
            value.tobytes() == other.tobytes()
        ), f"{key}: the {fastconv._cpu.isa()} and baseline kernels differ\n{case}"


# --------------------------------------------------------------------------- memory bounds

_GUARD_CHILD = textwrap.dedent("""
    import ctypes, mmap, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import fastconv
    import test_pooling_isa as tp

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    PAGE = mmap.PAGESIZE
    keep = []

    def guarded(x):
        # A copy of x whose first byte follows an unreadable page and whose last byte
        # precedes one: any read outside the array is a segmentation fault.
        pages = -(-x.nbytes // PAGE)
        buf = mmap.mmap(-1, (pages + 2) * PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        for page in (0, pages + 1):
            if libc.mprotect(address + page * PAGE, PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
        y = np.frombuffer(buf, x.dtype, x.size, (pages + 1) * PAGE - x.nbytes)
        y = y.reshape(x.shape)
        y[...] = x
        keep.append(buf)
        return y

    count = 0
    for case in tp.guard_cases():
        x = tp.make_input(case)
        out, idx = fastconv.max_pool2d(guarded(x), **case.max_args(), return_indices=True)
        ref_out, ref_idx = fastconv.max_pool2d(x, **case.max_args(), return_indices=True)
        assert out.tobytes() == ref_out.tobytes() and (idx == ref_idx).all(), case
        plane = x.shape[2] * x.shape[3]
        grad = tp.grad_like(out, 1)
        if idx.min() >= 0 and idx.max() < plane:
            fastconv.max_pool2d_backward(guarded(grad), guarded(idx), x.shape)
        avg = fastconv.avg_pool2d(guarded(x), **case.avg_args())
        assert avg.tobytes() == fastconv.avg_pool2d(x, **case.avg_args()).tobytes(), case
        fastconv.avg_pool2d_backward(guarded(tp.grad_like(avg, 2)), x.shape, **case.avg_args())
        count += 1
    print("checked", count)
""")


def guard_cases() -> list[Case]:
    """Planes that are one image (N = C = 1) so that the input ends where the plane ends."""
    return [c._replace(shape=(1, 1, *c.shape[2:])) for c in vector_path_cases()[::4]] + [
        c._replace(shape=(1, 1, *c.shape[2:])) for c in generated_cases(4000, 40)
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect")
def test_kernels_read_nothing_outside_their_arrays():
    """Every input array ends right before (and starts right after) an unreadable page;
    the vector loads (16 floats for stride 2) must stay inside the array."""
    child = run_python(_GUARD_CHILD.format(tests=str(Path(__file__).parent)))
    assert (
        child.returncode == 0
    ), f"exit status {child.returncode} (-11: a read outside the array)\n{child.stderr[-3000:]}"
    assert child.stdout.startswith("checked")


# --------------------------------------------------------------------------- hypothesis


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(1, 24))
    w = draw(st.one_of(st.integers(1, 15), st.integers(16, 70)))
    case = Case(
        shape=(draw(st.integers(0, 2)), draw(st.integers(1, 3)), h, w),
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.one_of(st.none(), st.integers(-9, 9).filter(bool))),
        dtype=draw(st.sampled_from(sorted(DTYPES))),
        kind=draw(st.sampled_from(KINDS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    return case


def readable_failures(test):
    """On failure, import hypothesis.extra._patching (-> libcst -> mypy_extensions) with
    warnings silenced before hypothesis' pytest plugin does: its DeprecationWarning,
    raised inside a pytest hook under filterwarnings = error, would otherwise turn the
    failure report into an INTERNALERROR. Costs nothing while the test passes."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except BaseException:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                # libcst not installed: nothing to pre-import
                with contextlib.suppress(ImportError):
                    import hypothesis.extra._patching  # noqa: F401
            raise

    return run


FUZZ = fuzz_settings(60)


@FUZZ
@given(pool_cases())
@readable_failures
def test_fuzz_max_pool2d(case):
    if not case.valid_for_max():
        with pytest.raises(ValueError, match="output size"):
            fastconv.max_pool2d(make_input(case), **case.max_args())
        return
    check_max_vs_reference(case)
    torch = sys.modules.get("torch") or _try_import_torch()
    if torch is not None and not case.has_empty_max_window():
        check_max_vs_torch(torch, case)


@FUZZ
@given(pool_cases())
@readable_failures
def test_fuzz_avg_pool2d(case):
    if not case.valid_for_avg():
        with pytest.raises(ValueError, match="output size"):
            fastconv.avg_pool2d(make_input(case), **case.avg_args())
        return
    check_avg_vs_reference(case)
    torch = sys.modules.get("torch") or _try_import_torch()
    if torch is not None:
        check_avg_vs_torch(torch, case)


def _try_import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch
