"""The layers beyond the classic classifiers' -- transposed and 1-D convolution, 1-D pooling,
GroupNorm / LayerNorm / InstanceNorm2d, SiLU, GELU, Hardswish, Hardsigmoid, ELU, Softmax,
LogSoftmax, Upsample, PixelShuffle / PixelUnshuffle -- and the losses BCEWithLogitsLoss,
NLLLoss and SmoothL1Loss: backward against finite differences (float64), forward and every
gradient against torch.nn (float64 within 1e-10 of the largest value, float32 within
1e-4), repr, state_dict keys, state_dict loading both ways, from_torch, dtypes."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from nn_helpers import check_grads, first_output, make_input

from fastconv import nn

# ======================================================================================
# Layer cases: (id, factory, input shape, input kind) -- kinds as in test_nn
# ======================================================================================


def _spread(activation, channels=3):
    """An activation fed by a 1x1 conv whose outputs reach about +-8: past every kink."""
    conv = nn.Conv2d(channels, 4, 1)
    conv.weight.data *= 12
    return nn.Sequential(conv, activation)


def _trained_instance_norm():
    norm = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    rng = np.random.default_rng(7)
    for _ in range(3):
        norm(rng.normal(1.0, 2.0, (2, 3, 4, 4)).astype(np.float32))
    norm.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    norm.bias.data[...] = rng.uniform(-0.5, 0.5, 3)
    return norm


LAYER_CASES = [
    ("convT_basic", lambda: nn.ConvTranspose2d(3, 4, 3), (2, 3, 4, 4), "smooth"),
    (
        "convT_stride_pad_outpad",
        lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        (2, 3, 3, 4),
        "smooth",
    ),
    (
        "convT_rect_groups_dilation",
        lambda: nn.ConvTranspose2d(
            4, 6, (3, 2), (2, 1), (1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2)
        ),
        (2, 4, 3, 3),
        "smooth",
    ),
    (
        # output_padding beyond the stride (dilation 2 allows it): an extra output row
        "convT_outpad_past_stride",
        lambda: nn.ConvTranspose2d(2, 3, 3, padding=1, output_padding=1, dilation=2),
        (2, 2, 3, 4),
        "smooth",
    ),
    ("convT_1x1_input", lambda: nn.ConvTranspose2d(5, 4, 4, bias=False), (2, 5, 1, 1), "smooth"),
    (
        "convT_1x1_input_cropped",
        lambda: nn.ConvTranspose2d(5, 4, 4, stride=2, padding=1, output_padding=1),
        (2, 5, 1, 1),
        "smooth",
    ),
    ("convT_unet_k2s2", lambda: nn.ConvTranspose2d(4, 2, 2, stride=2), (2, 4, 3, 3), "smooth"),
    (
        "convT_depthwise",
        lambda: nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, groups=3),
        (2, 3, 3, 3),
        "smooth",
    ),
    ("convT_unbatched", lambda: nn.ConvTranspose2d(3, 2, 3, stride=2), (3, 3, 3), "smooth"),
    ("conv1d_basic", lambda: nn.Conv1d(3, 4, 3), (2, 3, 9), "smooth"),
    (
        "conv1d_stride_pad_dil_groups",
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        (2, 4, 11),
        "smooth",
    ),
    (
        "conv1d_same_even",
        lambda: nn.Conv1d(3, 4, 4, padding="same", dilation=2),
        (2, 3, 8),
        "smooth",
    ),
    (
        "conv1d_valid_nobias",
        lambda: nn.Conv1d(3, 4, 5, padding="valid", bias=False),
        (2, 3, 8),
        "smooth",
    ),
    (
        "conv1d_reflect",
        lambda: nn.Conv1d(3, 4, 3, padding=2, padding_mode="reflect"),
        (2, 3, 7),
        "smooth",
    ),
    (
        "conv1d_circular_same",
        lambda: nn.Conv1d(2, 3, 4, padding="same", padding_mode="circular"),
        (2, 2, 6),
        "smooth",
    ),
    (
        "conv1d_replicate_strided",
        lambda: nn.Conv1d(2, 3, 3, stride=2, padding=(3,), padding_mode="replicate"),
        (2, 2, 6),
        "smooth",
    ),
    ("conv1d_depthwise", lambda: nn.Conv1d(4, 4, 5, padding=2, groups=4), (2, 4, 9), "smooth"),
    ("conv1d_unbatched", lambda: nn.Conv1d(3, 4, 3, padding=1), (3, 8), "smooth"),
    ("maxpool1d", lambda: nn.MaxPool1d(2), (2, 3, 8), "distinct"),
    (
        "maxpool1d_pad_ceil_dilated",
        lambda: nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
        (2, 2, 9),
        "distinct",
    ),
    ("avgpool1d", lambda: nn.AvgPool1d(3), (2, 3, 9), "smooth"),
    (
        "avgpool1d_pad_ceil_exclude",
        lambda: nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        (2, 2, 8),
        "smooth",
    ),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), (3, 4, 3, 3), "smooth"),
    ("groupnorm_noaffine_1d", lambda: nn.GroupNorm(3, 6, affine=False), (2, 6, 5), "smooth"),
    ("groupnorm_nobias", lambda: nn.GroupNorm(2, 4, bias=False), (2, 4, 3), "smooth"),
    ("groupnorm_per_channel", lambda: nn.GroupNorm(4, 4, eps=1e-3), (2, 4, 2, 3), "smooth"),
    ("layernorm_last", lambda: nn.LayerNorm(5), (3, 4, 5), "smooth"),
    ("layernorm_two_dims", lambda: nn.LayerNorm((3, 4)), (2, 2, 3, 4), "smooth"),
    ("layernorm_nobias", lambda: nn.LayerNorm(6, bias=False), (4, 6), "smooth"),
    (
        "layernorm_noaffine",
        lambda: nn.LayerNorm((2, 3), elementwise_affine=False),
        (4, 2, 3),
        "smooth",
    ),
    ("instancenorm", lambda: nn.InstanceNorm2d(3), (2, 3, 4, 4), "smooth"),
    (
        "instancenorm_affine_tracked",
        lambda: nn.InstanceNorm2d(3, momentum=0.3, affine=True, track_running_stats=True),
        (2, 3, 4, 3),
        "smooth",
    ),
    ("instancenorm_eval_tracked", lambda: _trained_instance_norm().eval(), (2, 3, 3, 3), "smooth"),
    (
        "instancenorm_nobias",
        lambda: nn.InstanceNorm2d(3, affine=True, bias=False),
        (2, 3, 3, 4),
        "smooth",
    ),
    ("instancenorm_unbatched", lambda: nn.InstanceNorm2d(3, affine=True), (3, 4, 4), "smooth"),
    ("silu", lambda: _spread(nn.SiLU()), (2, 3, 3, 3), "smooth"),
    ("gelu", lambda: _spread(nn.GELU()), (2, 3, 3, 3), "smooth"),
    ("gelu_tanh", lambda: _spread(nn.GELU(approximate="tanh")), (2, 3, 3, 3), "smooth"),
    ("hardswish", lambda: _spread(nn.Hardswish()), (2, 3, 3, 3), "smooth"),
    ("hardsigmoid", lambda: _spread(nn.Hardsigmoid()), (2, 3, 3, 3), "smooth"),
    ("elu", lambda: nn.ELU(alpha=0.5), (2, 3, 4, 4), "nonzero"),
    ("softmax_channels", lambda: nn.Softmax(dim=1), (2, 4, 3, 3), "smooth"),
    ("softmax_last", lambda: nn.Softmax(dim=-1), (2, 3, 5), "smooth"),
    ("log_softmax", lambda: nn.LogSoftmax(dim=1), (4, 5), "smooth"),
    ("upsample_nearest", lambda: nn.Upsample(scale_factor=2), (2, 3, 3, 4), "smooth"),
    ("upsample_nearest_size", lambda: nn.Upsample(size=(5, 7)), (2, 3, 3, 4), "smooth"),
    (
        "upsample_nearest_exact",
        lambda: nn.Upsample(scale_factor=1.5, mode="nearest-exact"),
        (2, 3, 3, 4),
        "smooth",
    ),
    (
        "upsample_bilinear",
        lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
        (2, 3, 3, 4),
        "smooth",
    ),
    (
        "upsample_bilinear_corners",
        lambda: nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True),
        (2, 3, 3, 4),
        "smooth",
    ),
    (
        "upsample_bilinear_shrink",
        lambda: nn.Upsample(scale_factor=(0.6, 1.7), mode="bilinear"),
        (2, 2, 6, 4),
        "smooth",
    ),
    (
        "upsample_bilinear_recomputed",
        lambda: nn.Upsample(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
        (2, 2, 3, 4),
        "smooth",
    ),
    ("upsample_linear", lambda: nn.Upsample(scale_factor=2.5, mode="linear"), (2, 3, 5), "smooth"),
    ("pixel_shuffle", lambda: nn.PixelShuffle(2), (2, 8, 3, 3), "smooth"),
    ("pixel_unshuffle", lambda: nn.PixelUnshuffle(2), (2, 2, 4, 6), "smooth"),
    (
        "decoder_block",
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.SiLU(),
            nn.Concat(nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Upsample(scale_factor=2)),
            nn.Conv2d(6, 2, 1),
        ),
        (2, 3, 3, 3),
        "smooth",
    ),
]

CASE_IDS = [c[0] for c in LAYER_CASES]


def build(factory, dtype, seed=0):
    nn.manual_seed(seed)
    module = factory().to(dtype)
    # non-trivial affine norm parameters, so that their gradients are exercised
    rng = np.random.default_rng(seed + 100)
    for sub in module.modules():
        if isinstance(sub, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
            for param in sub.parameters(recurse=False):
                param.data[...] = rng.uniform(0.5, 1.5, param.shape)
    return module


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def assert_close(actual, expected, tol, what):
    """max |actual - expected| within tol of the largest |expected| (normwise relative)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= tol * scale, f"{what}: error {error:.3g} > {tol:g} x {scale:.3g}"


TOL = {np.float64: 1e-10, np.float32: 1e-4}
# torch's float64 hardsigmoid gradient multiplies by a float32 1/6 (0.16666667): 3e-8 off the
# exact slope, which fastconv uses (finite differences hold it to 1e-6 above)
TORCH_FLOAT64_GRADIENT_TOL = {"hardsigmoid": 1e-7}


def torch_run(torch_module, x, g):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    with quiet():
        yt = torch_module(xt)
    yt = yt[0] if isinstance(yt, tuple) else yt
    yt.backward(torch.tensor(g))
    grads = {n: p.grad.numpy() for n, p in torch_module.named_parameters() if p.grad is not None}
    return yt.detach().numpy(), xt.grad.numpy(), grads


# ======================================================================================
# Backward against finite differences; forward and gradients against torch
# ======================================================================================


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_backward_matches_finite_differences(case):
    _, factory, shape, kind = case
    check_grads(build(factory, np.float64), make_input(shape, kind, np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_forward_and_every_gradient_match_torch(case, dtype):
    pytest.importorskip("torch")
    name, factory, shape, kind = case
    module = build(factory, dtype)
    with quiet():
        torch_module = nn.to_torch(module)
    x = make_input(shape, kind, dtype)
    y = first_output(module(x))
    g = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    module.zero_grad()
    grad_x = module.backward(g)
    ty, tgx, tgrads = torch_run(torch_module, x, g)
    assert y.dtype == dtype
    assert grad_x.dtype == dtype
    tol = TOL[dtype]
    assert_close(y, ty, tol, "forward")
    gradient_tol = max(tol, TORCH_FLOAT64_GRADIENT_TOL.get(name, 0.0))
    assert_close(grad_x, tgx, gradient_tol, "input gradient")
    params = dict(module.named_parameters())
    assert set(params) == set(tgrads)
    for name, param in params.items():
        assert param.grad.dtype == dtype, name
        assert_close(param.grad, tgrads[name], gradient_tol, name)
    tstate = torch_module.state_dict()  # running statistics moved alike
    for key, value in module.state_dict().items():
        assert_close(value, tstate[key].numpy(), tol, key)


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_repr_and_state_dict_keys_match_torch(case):
    pytest.importorskip("torch")
    _, factory, _, _ = case
    module = build(factory, np.float32)
    with quiet():
        torch_module = nn.to_torch(module)
    assert repr(module) == repr(torch_module)
    state, tstate = module.state_dict(), torch_module.state_dict()
    assert list(state) == list(tstate)
    for key in state:
        assert state[key].shape == tuple(tstate[key].shape), key


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_state_dict_loads_both_ways_and_from_torch_rebuilds(case):
    """torch's weights (perturbed, so defaults would not pass) load into the fastconv layer
    and fastconv's into torch's; from_torch rebuilds the layer; all give one output."""
    torch = pytest.importorskip("torch")
    _, factory, shape, kind = case
    module = build(factory, np.float64)
    with quiet():
        torch_module = nn.to_torch(module).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for value in torch_module.state_dict().values():
            if value.is_floating_point():
                value.add_(0.1 * torch.rand(value.shape, generator=generator, dtype=value.dtype))
    module.eval()
    module.load_state_dict(torch_module.state_dict())  # torch -> fastconv
    fresh = nn.to_torch(build(factory, np.float64)).eval()
    fresh.load_state_dict(nn.to_torch_state_dict(module.state_dict()))  # fastconv -> torch
    x = make_input(shape, kind, np.float64)
    with nn.no_grad():
        y = first_output(module(x))
    with quiet(), torch.no_grad():
        ty = first_output(torch_module(torch.tensor(x))).numpy()
        ty_fresh = first_output(fresh(torch.tensor(x))).numpy()
    outputs = [(ty, "torch"), (ty_fresh, "loaded torch")]
    # torch has no Concat layer to rebuild one from (to_torch writes a module of its own)
    if not any(isinstance(sub, nn.Concat) for sub in module.modules()):
        rebuilt = nn.from_torch(torch_module)
        assert repr(rebuilt) == repr(module)
        with nn.no_grad():
            outputs.append((first_output(rebuilt(x)), "from_torch"))
    for other, what in outputs:
        assert_close(y, other, 1e-10, what)


@pytest.mark.parametrize("case", LAYER_CASES, ids=CASE_IDS)
def test_float32_stays_float32(case):
    _, factory, shape, kind = case
    module = build(factory, np.float32)
    y = first_output(module(make_input(shape, kind, np.float32)))
    assert y.dtype == np.float32
    assert module.backward(np.ones_like(y)).dtype == np.float32
    for name, param in module.named_parameters():
        assert param.grad.dtype == np.float32, name
    for name, buf in module.named_buffers():
        assert buf.dtype in (np.float32, np.int64), name


# ======================================================================================
# Constructors, initialisation and the arguments' corners
# ======================================================================================


def test_conv_transpose_and_conv1d_init_follow_torch():
    nn.manual_seed(0)
    # torch's fan-in of a transposed conv's (in, out/groups, kH, kW) weight: out/groups*kH*kW
    deconv = nn.ConvTranspose2d(64, 16, 4, groups=2)
    bound = 1 / np.sqrt(8 * 16)
    assert deconv.weight.shape == (64, 8, 4, 4)
    assert bound * 0.95 < np.abs(deconv.weight.data).max() <= bound
    assert np.abs(deconv.bias.data).max() <= bound
    conv = nn.Conv1d(16, 32, 5)
    bound = 1 / np.sqrt(16 * 5)
    assert conv.weight.shape == (32, 16, 5)
    assert bound * 0.95 < np.abs(conv.weight.data).max() <= bound
    assert abs(conv.weight.data.std() - bound / np.sqrt(3)) < 0.05 * bound
    np.testing.assert_array_equal(nn.GroupNorm(2, 4).bias.data, 0)
    np.testing.assert_array_equal(nn.LayerNorm((2, 3)).weight.data, 1)
    assert nn.InstanceNorm2d(3).state_dict() == {}


def test_constructor_errors_match_torch():
    with pytest.raises(ValueError, match='Only "zeros" padding mode'):
        nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        nn.ConvTranspose2d(4, 3, 3, groups=2)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        nn.Conv1d(2, 2, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        nn.GELU("erf")
    with pytest.raises(ValueError, match="negative values for beta"):
        nn.SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match=r"padding \(3, 3\) is too large for padding_mode"):
        nn.Conv1d(1, 1, 3, padding=3, padding_mode="reflect")(np.zeros((1, 1, 3), np.float32))


@pytest.mark.parametrize("output_size", [(7, 9), (2, 3, 8, 10), (8, 9)])
def test_conv_transpose_output_size_picks_the_output_padding(output_size):
    torch = pytest.importorskip("torch")
    module = build(lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), np.float64)
    tmodule = nn.to_torch(module)
    x = make_input((2, 3, 4, 5), "smooth", np.float64)
    y = module(x, output_size=output_size)
    assert y.shape[2:] == tuple(output_size[-2:])
    g = np.ones_like(y)
    grad_x = module.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodule(xt, output_size=list(output_size))
    yt.backward(torch.tensor(g))
    assert_close(y, yt.detach().numpy(), 1e-10, "forward")
    assert_close(grad_x, xt.grad.numpy(), 1e-10, "input gradient")
    assert_close(module.weight.grad, tmodule.weight.grad.numpy(), 1e-10, "weight")
    with pytest.raises(ValueError, match=r"valid sizes range from \[7, 9\] to \[8, 10\]"):
        module(x, output_size=(9, 9))


def test_instance_norm_running_stats_follow_torch_over_steps():
    torch = pytest.importorskip("torch")
    norm = nn.InstanceNorm2d(3, momentum=None, track_running_stats=True).double()
    tnorm = torch.nn.InstanceNorm2d(3, momentum=None, track_running_stats=True).double()
    rng = np.random.default_rng(0)
    for step in range(3):
        x = rng.normal(step, 1 + step, (4, 3, 3, 5))
        assert_close(norm(x), tnorm(torch.tensor(x)).numpy(), 1e-12, "train")
    norm.momentum = tnorm.momentum = 0.25
    x = rng.normal(1.0, 2.0, (4, 3, 3, 5))
    assert_close(norm(x), tnorm(torch.tensor(x)).numpy(), 1e-12, "train")
    for key, value in tnorm.state_dict().items():
        np.testing.assert_allclose(norm.state_dict()[key], value.numpy(), rtol=1e-12)
    norm.eval()
    tnorm.eval()
    assert_close(norm(x), tnorm(torch.tensor(x)).numpy(), 1e-12, "eval")


def test_softmax_without_dim_warns_and_picks_torchs_dim():
    torch = pytest.importorskip("torch")
    x = make_input((2, 3, 4), "smooth", np.float64)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        y = nn.Softmax()(x)
    with quiet():
        expected = torch.nn.Softmax()(torch.tensor(x)).numpy()
    assert_close(y, expected, 1e-12, "softmax")
    np.testing.assert_allclose(y.sum(axis=0), 1.0)


def test_layer_norm_over_one_value_gives_zeros_like_torch():
    norm = nn.LayerNorm(1, elementwise_affine=False)
    x = make_input((3, 1), "smooth", np.float64)
    np.testing.assert_array_equal(norm(x), 0.0)
    np.testing.assert_array_equal(norm.backward(np.ones_like(x)), 0.0)


def test_norms_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="expects an \\(N, 4, \\*\\) input"):
        nn.GroupNorm(2, 4)(np.zeros((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match="does not end in normalized_shape"):
        nn.LayerNorm((3, 4))(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="expected 3D or 4D input"):
        nn.InstanceNorm2d(3)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        nn.InstanceNorm2d(3)(np.zeros((2, 3, 1, 1), np.float32))


# ======================================================================================
# Losses against torch
# ======================================================================================

BCE_CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=[0.5, 1.0, 2.0]),
    dict(pos_weight=[1.0, 3.0, 0.5]),
    dict(weight=[[0.5], [1.0], [2.0], [1.5]], pos_weight=[2.0, 0.25, 1.0], reduction="none"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", BCE_CASES, ids=[str(k) for k in BCE_CASES])
def test_bce_with_logits_matches_torch(kwargs, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3)) * 30).astype(dtype)  # saturated logits too
    t = rng.uniform(0, 1, (4, 3)).astype(dtype)
    as_tensor = {
        k: torch.tensor(v, dtype=torch.float64) for k, v in kwargs.items() if k != "reduction"
    }
    crit = nn.BCEWithLogitsLoss(
        **{k: np.array(v) if k != "reduction" else v for k, v in kwargs.items()}
    )
    torch_crit = torch.nn.BCEWithLogitsLoss(reduction=kwargs.get("reduction", "mean"), **as_tensor)
    _check_loss(
        crit, torch_crit.to(torch.float64 if dtype == np.float64 else torch.float32), x, t, dtype
    )


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(reduction="sum"), dict(reduction="none"), dict(beta=0.5), dict(beta=0.0)],
)
def test_smooth_l1_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((5, 4)) * 2, rng.standard_normal((5, 4))
    _check_loss(nn.SmoothL1Loss(**kwargs), torch.nn.SmoothL1Loss(**kwargs), x, t, np.float64)


NLL_CASES = [
    (dict(), "index"),
    (dict(reduction="sum"), "spatial"),
    (dict(reduction="none"), "index"),
    (dict(weight=[0.5, 1.0, 2.0, 1.5]), "spatial"),
    (dict(ignore_index=2), "index"),
    (dict(ignore_index=1, weight=[1.0, 2.0, 3.0, 4.0], reduction="none"), "spatial"),
    (dict(), "unbatched"),
]


@pytest.mark.parametrize(("kwargs", "kind"), NLL_CASES, ids=[f"{k}-{c}" for k, c in NLL_CASES])
def test_nll_matches_torch(kwargs, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = {
        "index": ((6, 4), (6,)),
        "spatial": ((3, 4, 2, 3), (3, 2, 3)),
        "unbatched": ((4,), ()),
    }
    x_shape, t_shape = shapes[kind]
    x = np.log(
        rng.dirichlet(np.ones(4), x_shape[:1] + x_shape[2:])
        if kind != "unbatched"
        else rng.dirichlet(np.ones(4))
    )
    x = np.moveaxis(x, -1, 1) if kind == "spatial" else x
    t = rng.integers(0, 4, t_shape)
    fc_kwargs = {k: np.array(v) if k == "weight" else v for k, v in kwargs.items()}
    t_kwargs = {
        k: torch.tensor(v, dtype=torch.float64) if k == "weight" else v for k, v in kwargs.items()
    }
    _check_loss(
        nn.NLLLoss(**fc_kwargs),
        torch.nn.NLLLoss(**t_kwargs),
        np.ascontiguousarray(x),
        t,
        np.float64,
    )


def _check_loss(crit, torch_crit, x, t, dtype):
    torch = pytest.importorskip("torch")
    loss = crit(x, t)
    xt = torch.tensor(x, requires_grad=True)
    tloss = torch_crit(xt, torch.tensor(t))
    tol = TOL[dtype]
    if crit.reduction == "none":
        g = np.random.default_rng(1).standard_normal(np.shape(loss)).astype(dtype)
        assert_close(loss, tloss.detach().numpy(), tol, "loss")
        tloss.backward(torch.tensor(g))
    else:
        g = None
        assert isinstance(loss, float)
        assert loss == pytest.approx(float(tloss.detach()), rel=tol)
        tloss.backward()
    grad = crit.backward(g)
    assert grad.dtype == dtype
    assert_close(grad, xt.grad.numpy(), tol, "gradient")


def test_loss_errors():
    with pytest.raises(ValueError, match=r"target shape \(2, 3\) differs from input shape"):
        nn.BCEWithLogitsLoss()(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(IndexError, match="Target 4 is out of bounds"):
        nn.NLLLoss()(np.zeros((2, 4)), np.array([0, 4]))
    with pytest.raises(TypeError, match="integer class indices"):
        nn.NLLLoss()(np.zeros((2, 4)), np.array([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="before the loss"):
        nn.SmoothL1Loss().backward()
    assert np.isnan(nn.NLLLoss(ignore_index=0)(np.zeros((2, 3)), np.array([0, 0])))
