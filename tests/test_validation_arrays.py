"""The validation layer of ``fastconv.functional`` for tensor arguments, and the valid
but unusual tensors every op must accept. A bad tensor -- a non-floating or mixed dtype,
anything that is not a ``numpy.ndarray`` (lists, tuples, scalars, other array-likes and
torch tensors are refused with TypeError rather than converted, as documented in
``fastconv._checks.check_array``), a wrong rank, channels that do not match the groups
or the weight, a bias, gradient, GEMM operand or max-pool index array of the wrong shape
or dtype, an index out of range -- raises TypeError or ValueError naming the argument
before any backend runs (the ``no_backend`` fixture in ``conftest.py``); zero-size
batches, non-contiguous, unaligned and read-only layouts and unbatched (C, H, W) inputs
give the same results as the plain call, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from validation_helpers import (
    ARRAY_ARGS,
    CONV,
    K_,
    M_,
    MULTI_ARRAY_OPS,
    N_,
    OP_ARGS,
    OPS,
    OUT_FEATURES,
    SIZE_ARGS,
    C,
    H,
    K,
    N,
    R,
    S,
    W,
    as_list,
    assert_same_results,
    call,
    conv_out_hw,
    copy_kwargs,
    good_kwargs,
    ints,
    named,
)

import fastconv

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["blocked", "real"])
def backend(request):
    """Run a check with every backend blocked, then again with the real one."""
    if request.param == "blocked":
        request.getfixturevalue("no_backend")
    return request.param


# --------------------------------------------------------------------------- dtypes and kinds

BAD_DTYPES = [
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
    np.float16,
    np.complex64,
    np.complex128,
]
if np.dtype(np.longdouble).itemsize > 8:
    BAD_DTYPES.append(np.longdouble)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_non_floating_dtype_is_type_error(no_backend, op, arg, dtype):
    kwargs = good_kwargs(op)
    kwargs[arg] = kwargs[arg].astype(dtype)
    with pytest.raises(TypeError, match=named(arg)):
        call(op, kwargs)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OPS)
def test_all_arrays_of_a_bad_dtype_is_type_error(no_backend, op, dtype):
    kwargs = good_kwargs(op)
    for arg in ARRAY_ARGS[op]:
        kwargs[arg] = kwargs[arg].astype(dtype)
    with pytest.raises(TypeError, match="dtype"):
        call(op, kwargs)


@pytest.mark.parametrize("base", [np.float32, np.float64])
@pytest.mark.parametrize("op", MULTI_ARRAY_OPS)
def test_mixed_dtypes_are_type_error(no_backend, op, base):
    other = np.float64 if base == np.float32 else np.float32
    for arg in ARRAY_ARGS[op]:
        kwargs = good_kwargs(op, base)
        kwargs[arg] = kwargs[arg].astype(other)
        with pytest.raises(TypeError, match="dtype") as info:
            call(op, kwargs)
        info.match(named(arg))


def _non_arrays(x):
    """(description, value) pairs of things that are not numpy arrays."""
    yield "list", x.tolist()
    yield "tuple", tuple(x.tolist())
    yield "python float", 1.0
    yield "python int", 1
    yield "numpy scalar", x.dtype.type(1)
    yield "memoryview", memoryview(np.ascontiguousarray(x))
    yield "object", object()
    yield "str", "1.0"


@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_non_arrays_are_type_error(no_backend, op, arg):
    """Lists, tuples, scalars and other array-likes are refused, never converted."""
    for _what, value in _non_arrays(good_kwargs(op)[arg]):
        kwargs = good_kwargs(op)
        kwargs[arg] = value
        with pytest.raises(TypeError, match=named(arg)):
            call(op, kwargs)


@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_cpu_torch_tensors_are_type_error(no_backend, op, arg):
    torch = pytest.importorskip("torch")
    kwargs = good_kwargs(op)
    kwargs[arg] = torch.from_numpy(kwargs[arg])
    with pytest.raises(TypeError, match=named(arg)):
        call(op, kwargs)


# --------------------------------------------------------------------------- ndim


def _wrong_ndims(op, arg, x):
    """Arrays of a wrong rank for argument ``arg`` of ``op``, built from the valid ``x``."""
    if x.ndim == 4:  # NCHW tensors; a 3-D CHW tensor is valid except for a conv weight
        yield x[None]
        yield x.reshape(x.shape[0], -1)
        yield x.ravel()
        yield np.array(1, dtype=x.dtype)
        if arg == "weight":
            yield x[0]
    elif x.ndim == 2:  # matrices
        yield x.ravel()
        yield x[None]
        yield np.array(1, dtype=x.dtype)
    elif x.ndim == 1:  # bias
        yield x[None]
        yield x[:, None]
        yield np.array(1, dtype=x.dtype)
    elif x.ndim == 3:  # linear input (..., in_features): only 0-D is wrong
        yield np.array(1, dtype=x.dtype)
    else:
        raise AssertionError(x.shape)


@pytest.mark.parametrize(("op", "arg"), OP_ARGS)
def test_wrong_ndim_is_value_error(no_backend, op, arg):
    for bad in _wrong_ndims(op, arg, good_kwargs(op)[arg]):
        kwargs = good_kwargs(op)
        kwargs[arg] = bad
        if op == "max_pool2d_backward":
            kwargs["indices"] = np.zeros(bad.shape, dtype=np.int64)
        with pytest.raises(ValueError, match=named(arg)):
            call(op, kwargs)


@pytest.mark.parametrize("op", ["conv2d_input", "max_pool2d_backward", "avg_pool2d_backward"])
def test_size_length_must_match_grad_output_rank(no_backend, op):
    size_arg = SIZE_ARGS[op]
    kwargs = good_kwargs(op)
    kwargs[size_arg] = kwargs[size_arg][1:]  # 3 entries for a 4-D grad_output
    with pytest.raises(ValueError, match=f"{size_arg}|grad_output"):
        call(op, kwargs)
    kwargs = good_kwargs(op)
    kwargs[size_arg] = (*kwargs[size_arg], 1)  # 5 entries
    with pytest.raises(ValueError, match=f"{size_arg}|grad_output"):
        call(op, kwargs)


def test_conv2d_weight_input_and_grad_output_ranks_must_agree(no_backend):
    kwargs = good_kwargs("conv2d_weight")
    kwargs["input"] = kwargs["input"][0]  # (C, H, W) with a 4-D grad_output
    with pytest.raises(ValueError, match="grad_output|input"):
        call("conv2d_weight", kwargs)
    kwargs = good_kwargs("conv2d_weight")
    kwargs["grad_output"] = kwargs["grad_output"][0]
    with pytest.raises(ValueError, match="grad_output"):
        call("conv2d_weight", kwargs)


@pytest.mark.parametrize("op", ["conv2d_weight"])
def test_weight_size_must_have_four_entries(no_backend, op):
    for bad in [(K, C // 2, R), (K, C // 2, R, S, 1), ()]:
        kwargs = good_kwargs(op)
        kwargs["weight_size"] = bad
        with pytest.raises(ValueError, match="weight_size"):
            call(op, kwargs)


@pytest.mark.parametrize("op", list(SIZE_ARGS))
def test_size_arguments_must_be_tuples_of_ints(no_backend, op):
    size_arg = SIZE_ARGS[op]
    good = good_kwargs(op)[size_arg]
    for bad in [np.array(good), 5, None, tuple(float(v) for v in good)]:
        kwargs = good_kwargs(op)
        kwargs[size_arg] = bad
        with pytest.raises(TypeError, match=size_arg):
            call(op, kwargs)
    kwargs = good_kwargs(op)
    kwargs[size_arg] = (*good[:-1], -good[-1])
    with pytest.raises(ValueError, match=size_arg):
        call(op, kwargs)


# --------------------------------------------------------------------------- channels, groups, bias


def test_conv2d_channel_and_group_mismatch(no_backend):
    cases = [
        dict(groups=3),  # 3 does not divide C=4
        dict(groups=4, weight=ints((K, 1, R, S))),  # 4 does not divide K=6
        dict(groups=2, weight=ints((K, 1, R, S))),  # 1*2 != C=4
        dict(groups=1),  # weight (K, 2, R, S) expects 2 channels, input has 4
        dict(groups=2, input=ints((N, 6, H, W))),  # weight expects 4, input has 6
    ]
    for change in cases:
        kwargs = good_kwargs("conv2d")
        kwargs.update(change)
        with pytest.raises(ValueError, match="channels") as info:
            call("conv2d", kwargs)
        info.match("groups|weight|input")


def test_conv2d_input_channel_and_group_mismatch(no_backend):
    for change in [
        dict(input_size=(N, 5, H, W)),
        dict(groups=3),
        dict(groups=1),
        dict(input_size=(N, 2, H, W)),
    ]:
        kwargs = good_kwargs("conv2d_input")
        kwargs.update(change)
        with pytest.raises(ValueError, match="channels") as info:
            call("conv2d_input", kwargs)
        info.match("groups|weight|input_size")


def test_conv2d_weight_channel_and_group_mismatch(no_backend):
    for change in [
        dict(weight_size=(K, 3, R, S)),
        dict(groups=3),
        dict(groups=1),
        dict(weight_size=(5, 2, R, S)),
    ]:
        kwargs = good_kwargs("conv2d_weight")
        kwargs.update(change)
        with pytest.raises(ValueError, match="channels") as info:
            call("conv2d_weight", kwargs)
        info.match("groups|weight_size|input")


@pytest.mark.parametrize("op", ["conv2d", "linear"])
def test_bias_of_wrong_length(no_backend, op):
    length = good_kwargs(op)["bias"].shape[0]
    for bad in [length - 1, length + 1, 0, 1]:
        kwargs = good_kwargs(op)
        kwargs["bias"] = ints((bad,))
        with pytest.raises(ValueError, match="bias"):
            call(op, kwargs)


# --------------------------------------------------------------------------- gradient shapes


def _bumped_shapes(shape):
    """Shapes that differ from ``shape`` in one dimension."""
    for axis in range(len(shape)):
        for delta in (-1, 1):
            if shape[axis] + delta >= 1:
                bad = list(shape)
                bad[axis] += delta
                yield tuple(bad)


@pytest.mark.parametrize("op", ["conv2d_input", "conv2d_weight", "avg_pool2d_backward"])
def test_grad_output_of_wrong_shape_is_value_error(no_backend, op):
    shape = good_kwargs(op)["grad_output"].shape
    for bad in _bumped_shapes(shape):
        kwargs = good_kwargs(op)
        kwargs["grad_output"] = ints(bad)
        with pytest.raises(ValueError, match="grad_output"):
            call(op, kwargs)


def test_max_pool2d_backward_grad_output_must_match_input_size(no_backend):
    kwargs = good_kwargs("max_pool2d_backward")
    shape = kwargs["grad_output"].shape
    for bad_size in [(N + 1, C, H, W), (N, C - 1, H, W), (1, C, H, W)]:
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["input_size"] = bad_size
        with pytest.raises(ValueError, match="grad_output|input_size"):
            call("max_pool2d_backward", kwargs)
    assert shape[:2] == (N, C)


# --------------------------------------------------------------------------- max-pool indices


def _indices_of_wrong_shape(indices):
    yield from (np.zeros(s, np.int64) for s in _bumped_shapes(indices.shape))
    yield indices[:1]  # broadcastable is not enough
    yield indices.reshape(-1, *indices.shape[2:])
    yield indices[None]
    yield indices.ravel()


def test_max_pool_indices_of_wrong_shape(backend):
    for bad in _indices_of_wrong_shape(good_kwargs("max_pool2d_backward")["indices"]):
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["indices"] = bad
        with pytest.raises(ValueError, match="indices"):
            call("max_pool2d_backward", kwargs)


def test_max_pool_indices_of_wrong_dtype(backend):
    for dtype in [np.int32, np.int16, np.uint64, np.uint32, np.float64, np.float32, np.bool_]:
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["indices"] = kwargs["indices"].astype(dtype)
        with pytest.raises(TypeError, match="indices"):
            call("max_pool2d_backward", kwargs)
    for value in [good_kwargs("max_pool2d_backward")["indices"].tolist(), 0, None]:
        kwargs = good_kwargs("max_pool2d_backward")
        kwargs["indices"] = value
        with pytest.raises(TypeError, match="indices"):
            call("max_pool2d_backward", kwargs)


OUT_OF_RANGE = [
    ((0, 0, 0, 0), -1),
    ((N - 1, C - 1, -1, -1), H * W),  # the very last index, one past the plane
    ((1, 2, 1, 0), H * W + 5),  # would land in the next plane
    ((0, 1, 0, 1), -(H * W)),  # would land in the previous plane
    ((1, 0, 2, 1), 2**40),
    ((0, 3, 1, 1), np.iinfo(np.int64).max),
    ((1, 1, 0, 0), np.iinfo(np.int64).min),
]


@pytest.mark.parametrize(("where", "value"), OUT_OF_RANGE)
def test_max_pool_indices_out_of_range(backend, where, value):
    """Indices address memory: one bad entry anywhere must be caught before any write."""
    kwargs = good_kwargs("max_pool2d_backward")
    kwargs["indices"][where] = value
    before = copy_kwargs(kwargs)
    with pytest.raises(ValueError, match="indices"):
        call("max_pool2d_backward", kwargs)
    for name in ("grad_output", "indices"):
        np.testing.assert_array_equal(kwargs[name], before[name])


def test_max_pool_indices_out_of_range_unbatched_and_non_contiguous(backend):
    kwargs = good_kwargs("max_pool2d_backward")
    indices = kwargs["indices"][0].copy()
    indices[-1, -1, -1] = H * W
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(kwargs["grad_output"][0], indices, (C, H, W))
    reversed_indices = kwargs["indices"].copy()[..., ::-1]
    reversed_indices[0, 0, 0, 0] = -1  # the first element in memory order is fine
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(kwargs["grad_output"], reversed_indices, (N, C, H, W))


def test_max_pool_indices_into_empty_input_size(backend):
    kwargs = good_kwargs("max_pool2d_backward")
    kwargs["input_size"] = (N, C, 0, W)
    with pytest.raises(ValueError, match="indices|input_size"):
        call("max_pool2d_backward", kwargs)


# --------------------------------------------------------------------------- GEMM shapes


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "trans_a", "trans_b"),
    [
        ((5, 7), (6, 3), False, False),
        ((5, 7), (7, 3), True, False),  # op(a) is 7x5
        ((5, 7), (7, 3), False, True),  # op(b) is 3x7
        ((7, 5), (3, 6), True, True),
        ((5, 0), (1, 3), False, False),
    ],
)
def test_gemm_inner_dimension_mismatch(no_backend, a_shape, b_shape, trans_a, trans_b):
    with pytest.raises(ValueError, match="inner") as info:
        fastconv.gemm(ints(a_shape), ints(b_shape), trans_a=trans_a, trans_b=trans_b)
    info.match(r"\(a\)")


@pytest.mark.parametrize(
    "c_shape",
    [
        (N_, M_),
        (M_, N_ + 1),
        (M_ + 1, N_),
        (N_,),
        (1, N_),
        (M_, 1),
        (M_ * N_,),
        (M_, N_, 1),
        (1, M_, N_),
    ],
)
def test_gemm_c_of_wrong_shape(no_backend, c_shape):
    kwargs = good_kwargs("gemm")
    kwargs["c"] = ints(c_shape)
    with pytest.raises(ValueError, match=named("c")):
        call("gemm", kwargs)


def test_matmul_and_linear_inner_dimension_mismatch(no_backend):
    with pytest.raises(ValueError, match="inner"):
        fastconv.matmul(ints((M_, K_)), ints((K_ + 1, N_)))
    with pytest.raises(ValueError, match="inner"):
        fastconv.matmul(ints((M_, K_)), ints((M_, K_)))
    with pytest.raises(ValueError, match=named("input")):
        fastconv.linear(ints((4, K_)), ints((OUT_FEATURES, K_ + 1)))
    with pytest.raises(ValueError, match=named("input")):
        fastconv.linear(ints((4, K_)), ints((K_, OUT_FEATURES)))


# --------------------------------------------------------------------------- zero-size batches


def _expected_empty(op, dtype):
    """Shapes (and exact values, where defined) of each op on a zero-size batch."""
    oh, ow = conv_out_hw()
    if op == "conv2d":
        return [np.zeros((0, K, oh, ow), dtype)]
    if op == "conv2d_input":
        return [np.zeros((0, C, H, W), dtype)]
    if op == "conv2d_weight":
        return [np.zeros((K, C // CONV["groups"], R, S), dtype)]  # a sum over nothing
    pool_out = good_kwargs("max_pool2d_backward")["grad_output"].shape[2:]
    avg_out = good_kwargs("avg_pool2d_backward")["grad_output"].shape[2:]
    if op == "max_pool2d":
        return [np.zeros((0, C, *pool_out), dtype), np.zeros((0, C, *pool_out), np.int64)]
    if op in ("max_pool2d_backward", "avg_pool2d_backward"):
        return [np.zeros((0, C, H, W), dtype)]
    if op == "avg_pool2d":
        return [np.zeros((0, C, *avg_out), dtype)]
    if op == "linear":
        return [np.zeros((0, 3, OUT_FEATURES), dtype)]
    raise AssertionError(op)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", [op for op in OPS if op not in ("gemm", "matmul")])
def test_zero_size_batch(op, dtype):
    kwargs = good_kwargs(op, dtype, n=0)
    assert_same_results(call(op, kwargs), _expected_empty(op, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_size_linear_variants(dtype):
    weight, bias = ints((OUT_FEATURES, K_), dtype), ints((OUT_FEATURES,), dtype)
    for shape in [(0, K_), (2, 0, K_), (0, 0, K_)]:
        for b in (None, bias):
            out = fastconv.linear(np.zeros(shape, dtype), weight, b)
            assert_same_results(out, np.zeros((*shape[:-1], OUT_FEATURES), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_size_gemm_and_matmul(dtype):
    a, b = ints((M_, K_), dtype), ints((K_, N_), dtype)
    assert_same_results(fastconv.matmul(a[:0], b), np.zeros((0, N_), dtype))
    assert_same_results(fastconv.matmul(a, b[:, :0]), np.zeros((M_, 0), dtype))
    assert_same_results(fastconv.gemm(a[:0], b), np.zeros((0, N_), dtype))
    assert_same_results(fastconv.gemm(a.T[:, :0], b, trans_a=True), np.zeros((0, N_), dtype))
    # K == 0: op(a) @ op(b) is a sum over nothing.
    assert_same_results(fastconv.matmul(a[:, :0], b[:0]), np.zeros((M_, N_), dtype))
    assert_same_results(fastconv.gemm(a[:, :0], b[:0], alpha=3.0), np.zeros((M_, N_), dtype))
    c = ints((M_, N_), dtype, 5)
    expected = 2 * c
    assert_same_results(fastconv.gemm(a[:, :0], b[:0], c.copy(), beta=2.0), expected)
    # beta == 0 never reads c, even when it holds NaN.
    c_nan = np.full((M_, N_), np.nan, dtype)
    assert_same_results(fastconv.gemm(a[:, :0], b[:0], c_nan, beta=0.0), np.zeros((M_, N_), dtype))


# --------------------------------------------------------------------------- layouts


def _relayout(x, kind):
    """The values of ``x`` in a different memory layout (a view where possible)."""
    if not isinstance(x, np.ndarray) or x.ndim == 0:
        return x
    if kind == "step":
        big = np.zeros([2 * s + 1 for s in x.shape], x.dtype)
        if x.dtype.kind == "f":
            big.fill(np.nan)  # reading a skipped element shows up as NaN
        view = big[tuple(slice(1, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if kind == "transpose":  # last two axes swapped in memory
        if x.ndim < 2:
            return x[::1]
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
    if kind == "negative":
        flip = tuple(slice(None, None, -1) for _ in x.shape)
        return x[flip].copy()[flip]
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    if kind == "unaligned":
        buffer = np.zeros(x.nbytes + 1, np.uint8)
        view = np.frombuffer(buffer.data, dtype=x.dtype, count=x.size, offset=1)
        view = view.reshape(x.shape)
        view.flags.writeable = True
        view[...] = x
        assert not view.flags.aligned or x.itemsize == 1
        return view
    raise AssertionError(kind)


LAYOUTS = ["step", "transpose", "negative", "fortran", "unaligned", "readonly"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs_give_the_same_results(op, layout, dtype):
    kwargs = good_kwargs(op, dtype)
    expected = call(op, copy_kwargs(kwargs))
    strided = {k: _relayout(v, layout) for k, v in kwargs.items()}
    untouched = {k: v.copy() for k, v in strided.items() if isinstance(v, np.ndarray)}
    actual = call(op, strided)
    assert_same_results(actual, expected)
    for name, before in untouched.items():
        if op == "gemm" and name == "c" and layout != "readonly":
            # a writable c is written in place, whatever its layout
            assert actual is strided["c"]
            continue
        np.testing.assert_array_equal(strided[name], before, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_one_argument_at_a_time(op, layout):
    kwargs = good_kwargs(op)
    expected = call(op, copy_kwargs(kwargs))
    names = [k for k, v in kwargs.items() if isinstance(v, np.ndarray)]
    for name in names:
        mixed = copy_kwargs(kwargs)
        mixed[name] = _relayout(mixed[name], layout)
        assert_same_results(call(op, mixed), expected)


def test_gemm_c_aliasing_an_input():
    """c given as a view of a: the result is still op(a) @ op(b) computed from the old a."""
    a = ints((M_, M_), np.float64, 1)
    b = ints((M_, M_), np.float64, 2)
    expected = 2.0 * a @ b - a
    out = fastconv.gemm(a, b, a, alpha=2.0, beta=-1.0)
    assert out is a
    np.testing.assert_array_equal(out, expected)


def test_gemm_read_only_c_is_not_written():
    kwargs = good_kwargs("gemm")
    c = kwargs["c"]
    c.flags.writeable = False
    before = c.copy()
    expected = call("gemm", {**copy_kwargs(kwargs), "c": before.copy()})
    out = call("gemm", kwargs)
    assert out is not c
    np.testing.assert_array_equal(c, before)
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- unbatched


def _unbatched_kwargs(op, kwargs):
    """The first sample of a batched call as an unbatched (C, H, W) call."""
    out = dict(kwargs)
    for name in ("input", "grad_output", "indices"):
        if name in out and isinstance(out[name], np.ndarray):
            out[name] = out[name][0]
    if op in SIZE_ARGS and SIZE_ARGS[op] == "input_size":
        out["input_size"] = out["input_size"][1:]
    return out


@pytest.mark.parametrize("op", [op for op in OPS if op not in ("gemm", "matmul", "linear")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbatched_chw_inputs(op, dtype):
    batched = good_kwargs(op, dtype, n=1)
    expected = as_list(call(op, copy_kwargs(batched)))
    actual = as_list(call(op, _unbatched_kwargs(op, batched)))
    if op == "conv2d_weight":  # the weight gradient has no batch dimension
        assert_same_results(actual, expected)
        return
    assert_same_results(actual, [e[0] for e in expected])
    assert all(a.ndim == 3 for a in actual)


def test_linear_one_dimensional_input():
    kwargs = good_kwargs("linear")
    expected = fastconv.linear(kwargs["input"][:1, 0], kwargs["weight"], kwargs["bias"])
    actual = fastconv.linear(kwargs["input"][0, 0], kwargs["weight"], kwargs["bias"])
    assert_same_results(actual, expected[0])
