"""Tests of fastconv.nn: every layer's backward against finite differences (float64),
forward/backward parity with torch.nn (float64 tight, float32 scaled), dtype keeping,
and the Module API (state_dict, freezing, modes, repr, summary, saved state)."""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import nn, optim

# ======================================================================================
# Layer cases: (id, factory, input shape, input kind)
#   kind "smooth": any values; "distinct": well separated values (max pooling, ties
#   would make the gradient ill-defined); "nonzero": |x| >= 0.1 (ReLU kinks)
# ======================================================================================

LAYER_CASES = [
    ("conv_basic", lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 6), "smooth"),
    ("conv_stride_pad", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6), "smooth"),
    (
        "conv_rect_dil_groups",
        lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        (2, 4, 7, 7),
        "smooth",
    ),
    ("conv_same_even", lambda: nn.Conv2d(3, 4, 4, padding="same"), (2, 3, 5, 6), "smooth"),
    (
        "conv_valid_nobias",
        lambda: nn.Conv2d(3, 4, 3, padding="valid", bias=False),
        (2, 3, 5, 5),
        "smooth",
    ),
    ("conv_depthwise", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (2, 4, 5, 5), "smooth"),
    ("conv_1x1", lambda: nn.Conv2d(3, 5, 1), (2, 3, 4, 4), "smooth"),
    ("conv_unbatched", lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 5, 5), "smooth"),
    (
        "conv_reflect",
        lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        (2, 3, 5, 6),
        "smooth",
    ),
    (
        "conv_replicate",
        lambda: nn.Conv2d(3, 4, 3, padding=(2, 1), padding_mode="replicate"),
        (2, 3, 5, 6),
        "smooth",
    ),
    (
        "conv_circular",
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=2, padding_mode="circular"),
        (2, 3, 5, 6),
        "smooth",
    ),
    (
        "conv_same_reflect_dil",
        lambda: nn.Conv2d(2, 3, 2, padding="same", dilation=2, padding_mode="reflect"),
        (2, 2, 5, 5),
        "smooth",
    ),
    ("linear", lambda: nn.Linear(5, 3), (4, 5), "smooth"),
    ("linear_3d_nobias", lambda: nn.Linear(5, 3, bias=False), (2, 3, 5), "smooth"),
    ("maxpool", lambda: nn.MaxPool2d(2), (2, 3, 6, 6), "distinct"),
    (
        "maxpool_pad_ceil",
        lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        (2, 2, 7, 7),
        "distinct",
    ),
    ("maxpool_dilated", lambda: nn.MaxPool2d(2, stride=1, dilation=2), (1, 2, 5, 6), "distinct"),
    ("avgpool", lambda: nn.AvgPool2d(2), (2, 3, 6, 6), "smooth"),
    (
        "avgpool_pad_ceil",
        lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        (2, 2, 7, 6),
        "smooth",
    ),
    (
        "avgpool_divisor",
        lambda: nn.AvgPool2d(2, stride=1, divisor_override=3),
        (1, 2, 4, 5),
        "smooth",
    ),
    ("adaptive_global", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 4), "smooth"),
    ("adaptive_divisible", lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 6, 6), "smooth"),
    ("adaptive_general", lambda: nn.AdaptiveAvgPool2d((4, 3)), (2, 2, 7, 5), "smooth"),
    ("adaptive_none", lambda: nn.AdaptiveAvgPool2d((3, None)), (2, 2, 7, 5), "smooth"),
    ("relu", lambda: nn.ReLU(), (2, 3, 4, 4), "nonzero"),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), (2, 3, 4, 4), "nonzero"),
    ("sigmoid", lambda: nn.Sigmoid(), (2, 3, 4, 4), "smooth"),
    ("tanh", lambda: nn.Tanh(), (2, 3, 4, 4), "smooth"),
    ("flatten", lambda: nn.Flatten(), (2, 3, 4, 4), "smooth"),
    ("flatten_0_2", lambda: nn.Flatten(0, 2), (2, 3, 4, 4), "smooth"),
    ("identity", lambda: nn.Identity(), (2, 3), "smooth"),
    ("batchnorm_train", lambda: nn.BatchNorm2d(3), (4, 3, 3, 3), "smooth"),
    ("batchnorm_noaffine", lambda: nn.BatchNorm2d(3, affine=False), (4, 3, 3, 3), "smooth"),
    ("batchnorm_nobias", lambda: nn.BatchNorm2d(3, bias=False), (4, 3, 3, 3), "smooth"),
    (
        "batchnorm_untracked",
        lambda: nn.BatchNorm2d(3, track_running_stats=False).eval(),
        (4, 3, 3, 3),
        "smooth",
    ),
    ("batchnorm_eval", lambda: _trained_bn().eval(), (4, 3, 3, 3), "smooth"),
    ("dropout_eval", lambda: nn.Dropout(0.4).eval(), (2, 3, 4, 4), "smooth"),
    (
        "sequential",
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        ),
        (3, 2, 4, 4),
        "smooth",
    ),
    (
        "residual_identity",
        lambda: nn.Residual(
            nn.Sequential(
                nn.Conv2d(3, 3, 3, padding=1),
                nn.BatchNorm2d(3),
                nn.Tanh(),
                nn.Conv2d(3, 3, 3, padding=1),
            )
        ),
        (2, 3, 4, 4),
        "smooth",
    ),
    (
        "residual_shortcut",
        lambda: nn.Residual(
            nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Sigmoid()),
            nn.Conv2d(3, 4, 1, stride=2),
        ),
        (2, 3, 5, 5),
        "smooth",
    ),
    ("basic_block", lambda: nn.BasicBlock.make(3, 3), (2, 3, 4, 4), "smooth"),
    ("basic_block_down", lambda: nn.BasicBlock.make(3, 4, stride=2), (2, 3, 5, 5), "smooth"),
]

CASE_IDS = [c[0] for c in LAYER_CASES]


def _trained_bn():
    """A BatchNorm2d with non-trivial running statistics and affine parameters."""
    bn = nn.BatchNorm2d(3)
    rng = np.random.default_rng(7)
    for _ in range(3):
        bn(rng.normal(1.0, 2.0, (4, 3, 3, 3)).astype(np.float32))
    bn.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    bn.bias.data[...] = rng.uniform(-0.5, 0.5, 3)
    return bn


def make_input(shape, kind, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "distinct":
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0
    elif kind == "nonzero":
        x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        x = rng.standard_normal(shape)
    return x.astype(dtype)


def build(factory, dtype, seed=0):
    nn.manual_seed(seed)
    module = factory()
    module.to(dtype)
    # non-trivial affine BatchNorm parameters, so their gradients are exercised
    rng = np.random.default_rng(seed + 100)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d) and sub.affine:
            sub.weight.data[...] = rng.uniform(0.5, 1.5, sub.weight.shape)
            if sub.bias is not None:
                sub.bias.data[...] = rng.uniform(-0.5, 0.5, sub.bias.shape)
    return module


def first_output(y):
    return y[0] if isinstance(y, tuple) else y


# ======================================================================================
# Finite differences (float64)
# ======================================================================================


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


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_backward_matches_finite_differences(case):
    _, factory, shape, kind = case
    module = build(factory, np.float64)
    x = make_input(shape, kind, np.float64)
    check_grads(module, x)


def test_dropout_backward_matches_finite_differences():
    drop = nn.Dropout(0.3)
    x = make_input((3, 4, 5), "smooth", np.float64)

    def reset():
        drop.generator = np.random.default_rng(5)

    check_grads(drop, x, reset=reset)


# ======================================================================================
# Parity with PyTorch (forward, input gradient, parameter gradients)
# ======================================================================================


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def torch_forward_backward(torch_module, x, g):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    with quiet():
        yt = torch_module(xt)
        yt = yt[0] if isinstance(yt, tuple) else yt
        yt.backward(torch.tensor(g))
    grads = {
        name: p.grad.numpy() for name, p in torch_module.named_parameters() if p.grad is not None
    }
    return yt.detach().numpy(), xt.grad.numpy(), grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_forward_backward_match_torch(case, dtype):
    pytest.importorskip("torch")
    _, factory, shape, kind = case
    module = build(factory, dtype)
    with quiet():
        torch_module = nn.to_torch(module)
    x = make_input(shape, kind, dtype)
    y = first_output(module(x))
    g = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    module.zero_grad()
    grad_x = module.backward(g)
    ty, tgx, tgrads = torch_forward_backward(torch_module, x, g)
    if dtype == np.float64:
        tol = dict(rtol=1e-9, atol=1e-11)
    else:
        tol = dict(rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(ty).max())))
    assert y.dtype == dtype
    assert grad_x.dtype == dtype
    np.testing.assert_allclose(y, ty, **tol, err_msg="forward")
    gtol = (
        tol
        if dtype == np.float64
        else dict(rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(tgx).max())))
    )
    np.testing.assert_allclose(grad_x, tgx, **gtol, err_msg="grad input")
    params = dict(module.named_parameters())
    assert set(params) == set(tgrads)
    for name, p in params.items():
        assert p.grad.dtype == dtype, name
        ptol = (
            tol
            if dtype == np.float64
            else dict(rtol=5e-4, atol=5e-5 * max(1.0, float(np.abs(tgrads[name]).max())))
        )
        np.testing.assert_allclose(p.grad, tgrads[name], **ptol, err_msg=name)
    # state (running statistics included) matches too after the forward
    tstate = torch_module.state_dict()
    for key, value in module.state_dict().items():
        np.testing.assert_allclose(value, tstate[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_repr_and_state_dict_keys_match_torch(case):
    torch = pytest.importorskip("torch")
    _, factory, _, _ = case
    module = build(factory, np.float32)
    with quiet():
        torch_module = nn.to_torch(module)
    assert repr(module) == repr(torch_module)
    state, tstate = module.state_dict(), torch_module.state_dict()
    assert list(state) == list(tstate)
    for key in state:
        assert state[key].shape == tuple(tstate[key].shape), key
    assert [n for n, _ in module.named_parameters()] == [
        n for n, _ in torch_module.named_parameters()
    ]
    assert tstate.get("num_batches_tracked", torch.tensor(0)).dtype == torch.int64


# ======================================================================================
# dtype: float32 stays float32 everywhere (no silent upcasts)
# ======================================================================================


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_float32_stays_float32(case):
    _, factory, shape, kind = case
    module = build(factory, np.float32)
    x = make_input(shape, kind, np.float32)
    y = first_output(module(x))
    assert y.dtype == np.float32
    grad_x = module.backward(np.ones_like(y))
    assert grad_x.dtype == np.float32
    for name, p in module.named_parameters():
        assert p.data.dtype == np.float32, name
        assert p.grad.dtype == np.float32, name
    for name, buf in module.named_buffers():
        assert buf.dtype in (np.float32, np.int64), name
    if module.num_parameters():
        opt = optim.Adam(module.parameters(), lr=1e-3, weight_decay=1e-2)
        opt.step()
        for name, p in module.named_parameters():
            assert p.data.dtype == np.float32, name


def test_mixed_dtypes_are_refused():
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(TypeError):
        conv(np.zeros((1, 1, 4, 4), np.float64))
    with pytest.raises(TypeError):
        nn.Linear(2, 2)(np.zeros((1, 2), np.int64))
    with pytest.raises(TypeError):
        nn.Conv2d(1, 2, 3, dtype=np.float16)


# ======================================================================================
# Initialisation: PyTorch's distributions
# ======================================================================================


def test_conv_and_linear_init_follow_torch():
    nn.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    bound = 1 / np.sqrt(16 * 9)  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), ...)
    w = conv.weight.data
    assert w.dtype == np.float32
    assert w.shape == (32, 16, 3, 3)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    assert abs(w.mean()) < 0.05 * bound
    assert np.abs(conv.bias.data).max() <= bound
    grouped = nn.Conv2d(8, 8, 3, groups=4)
    assert np.abs(grouped.weight.data).max() <= 1 / np.sqrt(2 * 9)
    lin = nn.Linear(50, 20)
    assert np.abs(lin.weight.data).max() <= 1 / np.sqrt(50)
    assert np.abs(lin.bias.data).max() <= 1 / np.sqrt(50)
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.num_batches_tracked.dtype == np.int64
    assert bn.num_batches_tracked.shape == ()


def test_manual_seed_makes_init_reproducible():
    nn.manual_seed(3)
    a = nn.Conv2d(2, 3, 3).weight.data.copy()
    nn.manual_seed(3)
    b = nn.Conv2d(2, 3, 3).weight.data
    np.testing.assert_array_equal(a, b)


def test_init_helpers():
    nn.manual_seed(0)
    w = nn.Parameter(np.zeros((64, 32), np.float32))
    nn.init.xavier_uniform_(w)
    assert np.abs(w.data).max() <= np.sqrt(6 / 96)
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.data.std() - np.sqrt(2 / 32)) < 0.02
    nn.init.zeros_(w)
    assert not w.data.any()
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)


def test_constructor_validation_matches_torch():
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Invalid padding string 'full'"):
        nn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="padding_mode must be one of .*'mirror'"):
        nn.Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match=r"label_smoothing must be between 0\.0 and 1\.0"):
        nn.CrossEntropyLoss(label_smoothing=2.0)
    with pytest.raises(
        ValueError, match=r"padding \(3, 3\) is too large for padding_mode='reflect'"
    ):
        nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect")(np.zeros((1, 1, 3, 3), np.float32))


# ======================================================================================
# BatchNorm2d: running statistics, momentum, modes (against torch)
# ======================================================================================


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batchnorm_running_stats_match_torch(momentum):
    torch = pytest.importorskip("torch")
    bn = nn.BatchNorm2d(3, momentum=momentum).double()
    tbn = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    rng = np.random.default_rng(0)
    for step in range(4):
        x = rng.normal(step, 1 + step, (5, 3, 4, 4))
        np.testing.assert_allclose(
            bn(x), tbn(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12
        )
    for key, value in tbn.state_dict().items():
        np.testing.assert_allclose(bn.state_dict()[key], value.numpy(), rtol=1e-12, err_msg=key)
    assert int(bn.num_batches_tracked) == 4
    bn.eval()
    tbn.eval()
    x = rng.normal(0, 1, (2, 3, 4, 4))
    np.testing.assert_allclose(bn(x), tbn(torch.tensor(x)).detach().numpy(), rtol=1e-12)
    before = bn.running_mean.copy()
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, before)  # eval does not update


def test_batchnorm_checks_input():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="4D"):
        bn(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="channels"):
        bn(np.zeros((2, 4, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        bn(np.zeros((2, 3, 2, 2), np.int64))


@pytest.mark.parametrize("threads", [1, 2])
def test_batchnorm_matches_torch_on_a_large_batch(threads):
    """The fused kernels on many channels and pixels (threads split channels)."""
    torch = pytest.importorskip("torch")
    previous = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(threads)
        rng = np.random.default_rng(5)
        x = (rng.standard_normal((16, 24, 17, 19)) * 3 + 1).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        bn, tbn = nn.BatchNorm2d(24), torch.nn.BatchNorm2d(24)
        bn.weight.data[...] = rng.random(24)
        bn.bias.data[...] = rng.random(24)
        tbn.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bn.state_dict().items()})
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = tbn(tx)
        ty.backward(torch.from_numpy(g))
        y = bn(x)
        gx = bn.backward(g)
    finally:
        fastconv.set_num_threads(previous)
    # float32 results; fastconv sums in double, torch in float32, so the margins are a few
    # float32 roundings of each quantity (measured: 6e-7 on y, whose entries reach 5;
    # 1.2e-7 on the input gradient; 3e-5 on weight gradients of about 130).
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.weight.grad, tbn.weight.grad.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-5)


def test_batchnorm_without_running_stats_has_no_buffers():
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    assert list(bn.state_dict()) == ["weight", "bias"]
    x = make_input((4, 3, 2, 2), "smooth", np.float32)
    out_train = bn(x)
    out_eval = bn.eval()(x)
    np.testing.assert_allclose(out_train, out_eval)  # always batch statistics


# ======================================================================================
# Dropout
# ======================================================================================


def test_dropout_train_eval_and_seeding():
    x = np.ones((200, 50), np.float32)
    drop = nn.Dropout(0.3, generator=np.random.default_rng(0))
    y = drop(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), y)
    drop.eval()
    assert drop(x) is x
    nn.manual_seed(11)
    a = nn.Dropout(0.5)(x)
    nn.manual_seed(11)
    b = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)
    assert not nn.Dropout(1.0)(x).any()
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)


# ======================================================================================
# Losses against torch
# ======================================================================================

CE_CASES = [
    dict(),
    dict(label_smoothing=0.1),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=[0.5, 1.0, 2.0, 1.5]),
    dict(weight=[0.5, 1.0, 2.0, 1.5], label_smoothing=0.2),
    dict(ignore_index=2),
    dict(ignore_index=2, label_smoothing=0.3, weight=[1.0, 2.0, 3.0, 4.0]),
    dict(reduction="none", label_smoothing=0.25, weight=[1.0, 2.0, 3.0, 4.0]),
    dict(reduction="sum", label_smoothing=0.1, ignore_index=1),
]


def _ce_inputs(kind, rng):
    if kind == "index":
        return rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    if kind == "prob":
        p = rng.uniform(0, 1, (6, 4))
        return rng.standard_normal((6, 4)), p / p.sum(1, keepdims=True)
    if kind == "spatial":
        return rng.standard_normal((3, 4, 2, 3)), rng.integers(0, 4, (3, 2, 3))
    return rng.standard_normal(4), np.array(2)  # unbatched


# ignore_index applies to class-index targets only
CE_PARAMS = [
    (kwargs, kind)
    for kwargs in CE_CASES
    for kind in ("index", "prob", "spatial", "unbatched")
    if not (kind == "prob" and "ignore_index" in kwargs)
]


@pytest.mark.parametrize(("kwargs", "kind"), CE_PARAMS, ids=[f"{k}-{c}" for c, k in CE_PARAMS])
def test_cross_entropy_matches_torch(kwargs, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, t = _ce_inputs(kind, rng)
    if "ignore_index" in kwargs and kind != "unbatched":
        t = np.where(np.arange(t.size).reshape(t.shape) % 3 == 0, kwargs["ignore_index"], t)
    fc_kwargs = dict(kwargs)
    t_kwargs = dict(kwargs)
    if "weight" in kwargs:
        fc_kwargs["weight"] = np.array(kwargs["weight"])
        t_kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=torch.float64)
    crit = nn.CrossEntropyLoss(**fc_kwargs)
    loss = crit(x, t)
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t)
    tloss = torch.nn.CrossEntropyLoss(**t_kwargs)(xt, tt)
    reduction = kwargs.get("reduction", "mean")
    g = rng.standard_normal(np.shape(tloss.detach().numpy())) if reduction == "none" else None
    if reduction == "none":
        assert isinstance(loss, np.ndarray)
        np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=1e-12, atol=1e-14)
        tloss.backward(torch.tensor(g))
    else:
        assert isinstance(loss, float)
        assert loss == pytest.approx(float(tloss.detach()), rel=1e-12, abs=1e-14, nan_ok=True)
        tloss.backward()
    np.testing.assert_allclose(crit.backward(g), xt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_gradient_finite_differences_and_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3))
    t = rng.integers(0, 3, 5)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1, weight=np.array([1.0, 2.0, 0.5]))
    crit(x, t)
    grad = crit.backward()
    numeric = numeric_grad(lambda: crit(x, t), x)
    for i, v in numeric.items():
        assert grad.reshape(-1)[i] == pytest.approx(v, rel=1e-6, abs=1e-9)
    x32 = x.astype(np.float32)
    crit32 = nn.CrossEntropyLoss()
    assert isinstance(crit32(x32, t), float)
    assert crit32.backward().dtype == np.float32
    # stable for huge logits
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32)
    assert np.isfinite(crit32(big, np.array([1, 0])))
    assert np.isfinite(crit32.backward()).all()


def test_cross_entropy_errors():
    crit = nn.CrossEntropyLoss()
    with pytest.raises(IndexError, match="out of bounds"):
        crit(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(2,\)"):
        crit(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError):
        crit(np.zeros((2, 3)), np.array(["a", "b"]))
    with pytest.raises(RuntimeError, match="before the loss"):
        nn.CrossEntropyLoss().backward()
    # all targets ignored: nan (as torch), without a warning
    assert np.isnan(nn.CrossEntropyLoss(ignore_index=0)(np.zeros((2, 3)), np.array([0, 0])))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    crit = nn.MSELoss(reduction=reduction)
    loss = crit(x, t)
    xt = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.MSELoss(reduction=reduction)(xt, torch.tensor(t))
    g = rng.standard_normal((4, 3)) if reduction == "none" else None
    if reduction == "none":
        np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=1e-12)
        tloss.backward(torch.tensor(g))
    else:
        assert loss == pytest.approx(float(tloss.detach()), rel=1e-12)
        tloss.backward()
    np.testing.assert_allclose(crit.backward(g), xt.grad.numpy(), rtol=1e-12)
    with pytest.raises(
        ValueError, match=r"target shape \(2, 3\) differs from input shape \(4, 3\)"
    ):
        crit(x, t[:2])


# ======================================================================================
# Module API
# ======================================================================================


def small_model(dtype=np.float32):
    nn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(8, 3),
    )
    return model.to(dtype)


def test_parameters_and_named_parameters():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "5.weight",
        "5.bias",
        "8.weight",
        "8.bias",
    ]
    assert len(list(model.parameters())) == 8
    assert model.num_parameters() == 4 * 9 + 4 + 8 + 64 * 8 + 8 + 8 * 3 + 3
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert [n for n, _ in model.named_modules()][:3] == ["", "0", "1"]
    assert model.get_submodule("1") is model[1]


def test_sequential_indexing():
    model = small_model()
    assert len(model) == 9
    assert isinstance(model[0], nn.Conv2d)
    assert isinstance(model[-1], nn.Linear)
    head = model[:4]
    assert isinstance(head, nn.Sequential)
    assert len(head) == 4
    assert head[0] is model[0]
    assert list(head.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    with pytest.raises(IndexError):
        model[9]
    seq = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), act=nn.ReLU()))
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias"]
    seq.append(nn.Flatten())
    assert len(seq) == 3
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "Flatten"]
    del seq[1]
    assert [type(m).__name__ for m in seq] == ["Conv2d", "Flatten"]
    modules = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    assert len(list(modules.parameters())) == 4
    assert len(modules) == 2


def test_state_dict_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    model = small_model()
    tmodel = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(8, 3),
    )
    tmodel(torch.randn(4, 1, 8, 8))  # non-trivial running stats
    result = model.load_state_dict(tmodel.state_dict())
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    for key, value in tmodel.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value.numpy())
        assert model.state_dict()[key].dtype == (np.int64 if "num_batches" in key else np.float32)
    # and back
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    tmodel.load_state_dict(nn.to_torch_state_dict(model.state_dict()))
    model.eval()
    tmodel.eval()
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        model(x), tmodel(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_load_state_dict_errors():
    model = small_model()
    state = model.state_dict()
    bad = dict(state)
    del bad["0.weight"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(RuntimeError, match='Missing key.*"0.weight"') as info:
        model.load_state_dict(bad)
    assert 'Unexpected key(s) in state_dict: "extra"' in str(info.value)
    result = model.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["0.weight"]
    assert result.unexpected_keys == ["extra"]
    wrong = dict(state)
    wrong["5.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(RuntimeError, match="size mismatch for 5.weight"):
        model.load_state_dict(wrong)


def test_state_dict_is_a_copy_and_casts_on_load():
    model = small_model()
    state = model.state_dict()
    state["0.weight"][...] = 0
    assert model[0].weight.data.any()
    model.load_state_dict(
        {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in state.items()}
    )
    assert model[0].weight.data.dtype == np.float32
    assert not model[0].weight.data.any()


def test_train_eval_propagate():
    model = small_model()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_and_accumulation():
    model = small_model(np.float64)
    x = make_input((2, 1, 8, 8), "smooth", np.float64)
    g = np.ones((2, 3))
    model[7].eval()  # deterministic
    model(x)
    model.backward(g)
    first = model[0].weight.grad.copy()
    model(x)
    model.backward(g)
    np.testing.assert_allclose(model[0].weight.grad, 2 * first)  # gradients accumulate
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    assert all(p.grad is None for p in model.parameters())


def test_freezing_skips_weight_gradients(monkeypatch):
    model = small_model(np.float64)
    model[0].requires_grad_(False)
    model[5].weight.requires_grad = False
    calls = []
    original = F.conv2d_weight
    monkeypatch.setattr(F, "conv2d_weight", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = make_input((4, 1, 8, 8), "smooth", np.float64)
    crit = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    for _ in range(2):
        crit(model(x), np.array([0, 1, 2, 0]))
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
    assert calls == []  # the frozen conv computed no weight gradient
    for name, p in model.named_parameters():
        if name in ("0.weight", "0.bias", "5.weight"):
            assert p.grad is None
            np.testing.assert_array_equal(p.data, before[name], err_msg=name)
        else:
            assert not np.array_equal(p.data, before[name]), name
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - 40 - 64 * 8
    model.requires_grad_(True)
    assert all(p.requires_grad for p in model.parameters())


def test_no_grad_saves_nothing():
    model = small_model()
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        model(x)
    assert nn.is_grad_enabled()
    with pytest.raises(RuntimeError, match="without a matching forward"):
        model.backward(np.ones((2, 3), np.float32))


def test_reused_module_backpropagates_in_reverse_order():
    """One Tanh called twice in a forward (like torchvision's shared ReLU)."""
    act = nn.Tanh()
    lin = nn.Linear(3, 3).double()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = lin, act

        def forward(self, x):
            return self.act(self.lin(self.act(x)))

        def backward(self, g):
            return self.act.backward(self.lin.backward(self.act.backward(g)))

    model = Twice()
    x = make_input((4, 3), "smooth", np.float64)
    check_grads(model, x)


def test_new_forward_drops_unused_saved_state():
    model = small_model()
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    for _ in range(5):
        model(x)
    assert all(len(m._saved) <= 1 for m in model.modules())
    model.backward(np.ones((2, 3), np.float32))
    assert all(len(m._saved) == 0 for m in model.modules())


def test_to_double_and_float():
    model = small_model().double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_custom_module_registration_and_repr():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.Linear(2, 2)
            self.scale = nn.Parameter(np.ones(1, np.float32))
            self.register_buffer("steps", np.zeros(1, np.int64))
            self.register_buffer("cache", np.zeros(1), persistent=False)
            self.note = "plain attribute"

    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale",
        "features.0.weight",
        "features.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert list(net.state_dict()) == [
        "scale",
        "steps",
        "features.0.weight",
        "features.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert net.note == "plain attribute"
    assert repr(net) == (
        "Net(\n"
        "  (features): Sequential(\n"
        "    (0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))\n"
        "    (1): ReLU()\n"
        "  )\n"
        "  (head): Linear(in_features=2, out_features=2, bias=True)\n"
        ")"
    )
    with pytest.raises(TypeError):
        net.head = 3  # a registered module can only be replaced by a Module or None
    with pytest.raises(NotImplementedError):
        net(np.zeros(1))


def test_summary_lecture_example(capsys):
    """32x32x3 input, ten 5x5 filters, stride 1, pad 2 -> 32x32x10 and 760 parameters."""
    model = nn.Sequential(nn.Conv2d(3, 10, 5, stride=1, padding=2))
    summary = model.summary((3, 32, 32))
    printed = capsys.readouterr().out
    assert summary.rows == [("0", "Conv2d", (10, 32, 32), 760)]
    assert summary.total_params == 760
    assert summary.trainable_params == 760
    assert summary.output_shape == (10, 32, 32)
    assert "0 (Conv2d)" in printed
    assert "10x32x32" in printed
    assert "760" in printed
    assert "Total params: 760" in printed
    # a single layer summarises itself
    single = nn.Conv2d(3, 10, 5, stride=1, padding=2).summary((3, 32, 32), print_summary=False)
    assert single.rows == [("", "Conv2d", (10, 32, 32), 760)]


def test_summary_nested_model_keeps_state(capsys):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.BasicBlock.make(4, 8, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    model[0].requires_grad_(False)
    state = model.state_dict()
    summary = model.summary((1, 8, 8))
    out = capsys.readouterr().out
    assert model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key])  # no running-stat update
    rows = {name: (shape, count) for name, _, shape, count in summary.rows}
    assert rows["3"] == ((8, 4, 4), None)  # a container
    assert rows["3.conv1"] == ((8, 4, 4), 4 * 8 * 9)
    assert rows["3.downsample.0"] == ((8, 4, 4), 32)
    assert rows["6"] == ((10,), 90)
    assert summary.total_params == model.num_parameters()
    assert summary.non_trainable_params == 40
    assert "Non-trainable params: 40" in out
    assert sum(c for _, _, _, c in summary.rows if c) == summary.total_params


def test_maxpool_return_indices_and_module_hooks():
    pool = nn.MaxPool2d(2, return_indices=True)
    x = make_input((1, 1, 4, 4), "distinct", np.float32)
    out, idx = pool(x)
    assert idx.dtype == np.int64
    assert out.shape == (1, 1, 2, 2)
    grad = pool.backward(np.ones_like(out))
    assert grad.sum() == 4
    assert (grad.reshape(-1)[idx.reshape(-1)] == 1).all()
    seen = []
    handle = pool.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    pool(x)
    handle.remove()
    pool(x)
    assert seen == ["MaxPool2d"]


def test_parameter_basics():
    p = nn.Parameter(np.ones((2, 3), np.float32))
    assert p.shape == (2, 3)
    assert p.dtype == np.float32
    assert p.numel() == 6
    assert p.ndim == 2
    assert np.asarray(p) is p.data
    assert "requires_grad=False" in repr(p.requires_grad_(False))
    with pytest.raises(TypeError):
        nn.Parameter(np.ones(2, np.int32))


def test_clip_grad_norm_and_weight_files(tmp_path):
    model = small_model()
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    model(x)
    model.backward(np.full((2, 3), 10.0, np.float32))
    total = nn.clip_grad_norm_(model.parameters(), 1.0)
    assert total > 1.0
    norm = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))
    assert norm == pytest.approx(1.0, rel=1e-4)
    path = tmp_path / "w.npz"
    nn.save_weights(model, path)
    other = small_model()
    for p in other.parameters():
        p.data[...] = 0
    nn.load_weights(path, other)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)


def test_from_torch_round_trip():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = (
        torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(4),
            torch.nn.LeakyReLU(0.1),
            torch.nn.AvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 5),
            torch.nn.Sigmoid(),
        )
        .double()
        .eval()
    )
    model = nn.from_torch(tmodel)
    assert repr(model) == repr(tmodel)
    assert not model.training
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    np.testing.assert_allclose(model(x), tmodel(torch.tensor(x)).detach().numpy(), rtol=1e-12)


# ======================================================================================
# A small ResNet: parity with a hand-written torch ResNet, and it trains
# ======================================================================================


def small_resnet(dtype=np.float32):
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.BasicBlock.make(8, 8),
        nn.BasicBlock.make(8, 16, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).to(dtype)


def torch_resnet():
    torch = pytest.importorskip("torch")
    from torch import nn as tnn

    class Block(tnn.Module):  # torchvision.models.resnet.BasicBlock
        def __init__(self, inplanes, planes, stride=1):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(inplanes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
                )

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    return tnn.Sequential(
        tnn.Conv2d(1, 8, 3, padding=1, bias=False),
        tnn.BatchNorm2d(8),
        tnn.ReLU(),
        Block(8, 8),
        Block(8, 16, 2),
        tnn.AdaptiveAvgPool2d(1),
        tnn.Flatten(),
        tnn.Linear(16, 10),
    ).double(), torch


def test_resnet_trains_like_torch():
    tmodel, torch = torch_resnet()
    model = small_resnet(np.float64)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    model.load_state_dict(tmodel.state_dict())
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((4, 1, 6, 6))
        y = rng.integers(0, 10, 4)
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        tloss = tcrit(tmodel(torch.tensor(x)), torch.tensor(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(float(tloss.detach()), rel=1e-10)
    for key, value in tmodel.state_dict().items():
        np.testing.assert_allclose(
            model.state_dict()[key], value.numpy(), rtol=1e-8, atol=1e-10, err_msg=key
        )


def test_resnet_learns_separable_data():
    model = small_resnet()
    rng = np.random.default_rng(0)
    templates = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    x = templates[y] + 0.3 * rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        losses.append(crit(model(x), y))
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    with nn.no_grad():
        assert (model(x).argmax(1) == y).mean() > 0.8


def test_deepcopy_and_pickle_make_independent_models():
    import copy
    import pickle

    model = small_model()
    clone = copy.deepcopy(model)
    clone[0].weight.data[...] = 0
    assert model[0].weight.data.any()
    restored = pickle.loads(pickle.dumps(model))
    x = make_input((2, 1, 8, 8), "smooth", np.float32)
    model.eval()
    restored.eval()
    with nn.no_grad():
        np.testing.assert_array_equal(restored(x), model(x))


def test_needs_input_grad_false_skips_the_input_gradient(monkeypatch):
    model = small_model(np.float64)
    model[7].eval()  # dropout off: deterministic
    x = make_input((4, 1, 8, 8), "smooth", np.float64)
    g = np.random.default_rng(0).standard_normal((4, 3))
    model(x)
    model.backward(g)
    expected = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    model[0].needs_input_grad = False
    calls = []
    original = F.conv2d_input
    monkeypatch.setattr(F, "conv2d_input", lambda *a, **k: calls.append(1) or original(*a, **k))
    model(x)
    assert model.backward(g) is None
    assert calls == []
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[name], rtol=1e-12, err_msg=name)
    # a frozen feature extractor before a head that needs no input gradient
    model[0].needs_input_grad = True
    model[:5].requires_grad_(False)
    model[5].needs_input_grad = False
    model.zero_grad()
    model(x)
    assert model.backward(g) is None
    assert calls == []
    assert all(len(m._saved) == 0 for m in model.modules())
    assert model[5].weight.grad is not None
    assert model[1].weight.grad is None
    # stopping before trainable layers would silently skip their update: refused
    model[:5].requires_grad_(True)
    model(x)
    with pytest.raises(RuntimeError, match="trainable parameters"):
        model.backward(g)
