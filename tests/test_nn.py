"""Tests of fastconv.nn layers: every layer's backward against finite differences
(float64), forward/backward parity with torch.nn (float64 tight, float32 scaled), dtype
keeping, initialisation, BatchNorm2d's running statistics, Dropout and the losses. The
Module API and a small ResNet are tested in ``test_nn_module``."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from nn_helpers import check_grads, first_output, make_input, numeric_grad

import fastconv
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
    ("relu6", lambda: _spread_relu6(), (2, 3, 4, 4), "smooth"),
    (
        "concat",
        lambda: nn.Concat(
            nn.Conv2d(3, 2, 1),
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()),
            nn.AvgPool2d(3, stride=1, padding=1),
        ),
        (2, 3, 4, 4),
        "smooth",
    ),
    ("basic_block", lambda: nn.BasicBlock.make(3, 3), (2, 3, 4, 4), "smooth"),
    ("basic_block_down", lambda: nn.BasicBlock.make(3, 4, stride=2), (2, 3, 5, 5), "smooth"),
    ("bottleneck", lambda: nn.Bottleneck.make(8, 2), (2, 8, 4, 4), "smooth"),
    ("bottleneck_down", lambda: nn.Bottleneck.make(3, 2, stride=2), (2, 3, 5, 5), "smooth"),
]

CASE_IDS = [c[0] for c in LAYER_CASES]


def _spread_relu6():
    """A ReLU6 fed by a conv whose outputs reach past both kinks (below 0, above 6)."""
    conv = nn.Conv2d(3, 4, 1)
    conv.weight.data *= 12
    return nn.Sequential(conv, nn.ReLU6())


def _trained_bn():
    """A BatchNorm2d with non-trivial running statistics and affine parameters."""
    bn = nn.BatchNorm2d(3)
    rng = np.random.default_rng(7)
    for _ in range(3):
        bn(rng.normal(1.0, 2.0, (4, 3, 3, 3)).astype(np.float32))
    bn.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    bn.bias.data[...] = rng.uniform(-0.5, 0.5, 3)
    return bn


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


# ======================================================================================
# Finite differences (float64)
# ======================================================================================


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
