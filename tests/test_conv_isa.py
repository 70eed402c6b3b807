"""Conv2d under changed execution settings and random arguments: repeated calls at a
fixed thread count are bit-identical and accurate at 1 and 2 threads, one thread matches
the reference, every lower ISA tier (baseline: portable kernels only; avx2+fma: no
AVX-512), switched in-process, agrees with the default tier on every algorithm and both
gradients, and a bounded hypothesis fuzz over the whole argument space checks every
algorithm and both gradients against the reference (``FASTCONV_FUZZ_EXAMPLES=N`` asks for
N draws from a fresh seed).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from conv_helpers import (
    ALGORITHMS,
    DTYPES,
    HAND_CASES,
    C,
    Case,
    assert_matches,
    check_all,
    f64,
    make_data,
    supports,
)
from helpers import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref

# --------------------------------------------------------------------------- threads, determinism


DETERMINISM_CASES = [
    C(4, 16, 20, 20, 24, 3, 3, padding=1, seed=60),  # GEMM, tasks >= threads
    C(1, 32, 30, 30, 16, 3, 3, padding=1, seed=61),  # GEMM, one task
    C(3, 12, 18, 18, 12, 3, 3, padding=1, groups=12, seed=62),  # depthwise
    C(2, 64, 16, 16, 32, 1, 1, seed=63),  # pointwise
    C(5, 3, 24, 24, 8, 5, 5, stride=2, padding=2, seed=64),  # few input channels
]


@pytest.mark.parametrize("case", DETERMINISM_CASES, ids=str)
def test_bit_identical_repeats_at_fixed_thread_count(case, threads):
    x, w, b, gy = make_data(case)
    results = {}
    for nthreads in (1, 2):
        threads(nthreads)
        runs = [
            (
                fastconv.conv2d_weight(x, w.shape, gy, **case.args()).tobytes(),
                fastconv.conv2d(x, w, b, **case.args()).tobytes(),
                fastconv.conv2d_input(x.shape, w, gy, **case.args()).tobytes(),
            )
            for _ in range(3)
        ]
        for what, column in zip(("conv2d_weight", "conv2d", "conv2d_input"), zip(*runs)):
            assert len(set(column)) == 1, f"{what} differs between runs at {nthreads} threads"
        results[nthreads] = runs[0]
    # 1 and 2 threads: both accurate (bitwise equality is not promised for the weight grad)
    want_gw = ref.conv2d_weight(f64(x), w.shape, f64(gy), **case.args())
    want_y = ref.conv2d(f64(x), f64(w), f64(b), **case.args())
    want_gx = ref.conv2d_input(x.shape, f64(w), f64(gy), **case.args())
    for nthreads, (gw, y, gx) in results.items():
        assert_matches(
            np.frombuffer(gw, x.dtype).reshape(w.shape),
            want_gw,
            case.k_weight(),
            case,
            f"conv2d_weight at {nthreads} threads",
        )
        assert_matches(
            np.frombuffer(y, x.dtype).reshape(want_y.shape),
            want_y,
            case.k_forward(),
            case,
            f"conv2d at {nthreads} threads",
        )
        assert_matches(
            np.frombuffer(gx, x.dtype).reshape(x.shape),
            want_gx,
            case.k_input(),
            case,
            f"conv2d_input at {nthreads} threads",
        )


@pytest.mark.parametrize("case", [HAND_CASES[i] for i in (0, 9, 14, 19, 28)], ids=str)
def test_single_thread_matches_reference(case, threads):
    threads(1)
    check_all(case)


# --------------------------------------------------------------------------- ISA baseline


ISA_CASES = [HAND_CASES[i] for i in (0, 8, 9, 13, 15, 18, 19, 21, 28, 29)]


def compute_isa_cases() -> dict[str, np.ndarray]:
    out = {}
    for i, case in enumerate(ISA_CASES):
        x, w, b, gy = make_data(case)
        out[f"{i}_fwd"] = fastconv.conv2d(x, w, b, **case.args())
        for algorithm in ALGORITHMS:
            if not supports(algorithm, case):
                continue
            out[f"{i}_fwd_{algorithm}"] = fastconv.conv2d(
                x, w, b, **case.args(), algorithm=algorithm
            )
        out[f"{i}_gx"] = fastconv.conv2d_input(x.shape, w, gy, **case.args())
        out[f"{i}_gw"] = fastconv.conv2d_weight(x, w.shape, gy, **case.args())
    return out


@pytest.mark.parametrize("isa", ["baseline", "avx2+fma"])
def test_lower_isa_agrees_with_default(isa):
    """Every lower ISA tier's kernels (switched in-process) agree with the default's."""
    tiers = fastconv._cpu.isa_tiers()
    if isa not in tiers[:-1]:
        pytest.skip(f"this CPU's default tier is {tiers[-1]}: nothing above {isa}")
    mine = compute_isa_cases()
    with fastconv._cpu.use_isa(isa):
        assert fastconv._cpu.isa() == isa
        kernel = {"baseline": "portable", "avx2+fma": "avx2"}[isa]
        assert kernel in fastconv._cpu.gemm_kernels("float32")[-1], "registry"
        theirs = compute_isa_cases()
    assert fastconv._cpu.isa() == tiers[-1]
    assert sorted(theirs) == sorted(mine)
    for key, value in mine.items():
        case = ISA_CASES[int(key.split("_")[0])]
        k = {"gx": case.k_input(), "gw": case.k_weight()}.get(key.split("_")[1], case.k_forward())
        assert_matches(value, theirs[key], k, case, f"{key}: default vs {isa} ISA")


# --------------------------------------------------------------------------- hypothesis


@st.composite
def conv_cases(draw):
    style = draw(st.sampled_from(["dense", "grouped", "depthwise", "multiplier"]))
    if style == "dense":
        groups, cg, kg = 1, draw(st.integers(1, 12)), draw(st.integers(1, 12))
    elif style == "grouped":
        groups, cg, kg = (
            draw(st.sampled_from([2, 3, 4])),
            draw(st.integers(1, 8)),
            draw(st.integers(1, 8)),
        )
    elif style == "depthwise":
        groups, cg, kg = draw(st.integers(2, 10)), 1, 1
    else:
        groups, cg, kg = draw(st.integers(2, 8)), 1, draw(st.integers(2, 4))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.just("same"), st.just("valid"), st.tuples(st.integers(0, 3), st.integers(0, 3))
        )
    )
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = ref.conv_padding(padding, (kh, kw), dilation)
    dims = []
    for k, d, (lo, hi) in zip((kh, kw), dilation, pads):
        smallest = max(1, (k - 1) * d + 1 - lo - hi)
        dims.append(smallest + draw(st.integers(0, 20)))
    return Case(
        draw(st.integers(1, 3)),
        groups * cg,
        dims[0],
        dims[1],
        groups * kg,
        kh,
        kw,
        stride,
        padding,
        dilation,
        groups,
        draw(st.booleans()),
        draw(st.sampled_from(sorted(DTYPES))),
        draw(st.booleans()),
        draw(st.integers(0, 2**31 - 1)),
    )


FUZZ = fuzz_settings(50)


def _prepare_failure_report():
    """When a hypothesis test fails, its pytest plugin imports hypothesis.extra._patching
    (libcst), which emits a DeprecationWarning; under filterwarnings=error the failure report
    would become an INTERNALERROR. Importing it first, warnings silenced, keeps it readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(ImportError):  # libcst not installed
            import hypothesis.extra._patching  # noqa: F401


@FUZZ
@given(conv_cases())
def test_fuzz_against_reference(case):
    try:
        check_all(case)
    except BaseException:
        _prepare_failure_report()
        raise
