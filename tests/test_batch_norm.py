"""functional.batch_norm and its backward: against the NumPy reference and PyTorch.

The fused C++ kernels (statistics, normalisation, backward) in float32 and float64, in
training mode (batch statistics, running statistics updated in place) and evaluation
mode, with and without the affine parameters; then argument validation.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close_scaled

import fastconv
from fastconv import functional as F
from fastconv import reference as ref

SHAPES = [(4, 3, 5, 7), (2, 8, 1, 1), (3, 5, 6), (16, 4)]


def make(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    weight = rng.uniform(0.5, 1.5, c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    mean = rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0.5, 2.0, c).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    return x, weight, bias, mean, var, grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_matches_reference(shape, dtype, training, affine):
    x, weight, bias, mean, var, grad = make(shape, dtype)
    if not affine:
        weight = bias = None
    count = x.size // shape[1]
    means, variances = [mean.copy(), mean.copy()], [var.copy(), var.copy()]
    out, saved = F.batch_norm(
        x, means[0], variances[0], weight, bias, training, 0.3, 1e-3, return_saved=True
    )
    expected, expected_saved = ref.batch_norm(
        x, means[1], variances[1], weight, bias, training, 0.3, 1e-3, return_saved=True
    )
    assert out.dtype == dtype
    assert out.shape == x.shape
    assert_close_scaled(out, expected, k=4 * count)
    assert_close_scaled(means[0], means[1], k=count)
    assert_close_scaled(variances[0], variances[1], k=4 * count)
    if not training:
        np.testing.assert_array_equal(means[0], mean)  # evaluation leaves them alone
    grads = F.batch_norm_backward(grad, saved, weight)
    expected_grads = ref.batch_norm_backward(grad, expected_saved, weight)
    for name, got, want in zip(("input", "weight", "bias"), grads, expected_grads):
        assert got.dtype == dtype, name
        assert_close_scaled(got, want, k=8 * count, err_msg=f"grad {name}")
    only_params = F.batch_norm_backward(grad, saved, weight, input_grad=False)
    assert only_params[0] is None
    np.testing.assert_array_equal(only_params[1], grads[1])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch(training):
    torch = pytest.importorskip("torch")
    x, weight, bias, mean, var, grad = make((6, 4, 5, 5), np.float64, seed=3)
    running = [mean.copy(), var.copy()]
    out, saved = F.batch_norm(x, *running, weight, bias, training, 0.2, 1e-5, return_saved=True)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(weight, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    t_running = [torch.tensor(mean), torch.tensor(var)]
    tout = torch.nn.functional.batch_norm(tx, *t_running, tw, tb, training, 0.2, 1e-5)
    tout.backward(torch.tensor(grad))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(running, t_running):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12)
    gx, gw, gb = F.batch_norm_backward(grad, saved, weight)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_batch_statistics_without_running_statistics():
    x, weight, bias, *_ = make((5, 3, 4, 4), np.float64)
    out = F.batch_norm(x, None, None, weight, bias, training=False)
    np.testing.assert_allclose(out, ref.batch_norm(x, None, None, weight, bias), atol=1e-12)
    centred = (out - bias[None, :, None, None]) / weight[None, :, None, None]
    np.testing.assert_allclose(centred.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_is_exported():
    assert fastconv.batch_norm is F.batch_norm
    assert fastconv.batch_norm_backward is F.batch_norm_backward


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"input": [[1.0, 2.0]]}, TypeError, "input"),
        ({"input": np.ones(4, np.float32)}, ValueError, r"\(N, C, \.\.\.\)"),
        ({"input": np.ones((4, 3), np.int32)}, TypeError, "dtype"),
        ({"running_mean": np.zeros(4, np.float32)}, ValueError, "running_mean"),
        ({"running_var": None}, ValueError, "both"),
        ({"weight": np.ones(3, np.float64)}, TypeError, "dtype"),
        ({"bias": np.ones(2, np.float32)}, ValueError, "bias"),
        ({"input": np.ones((1, 3), np.float32), "training": True}, ValueError, "more than 1"),
    ],
)
def test_bad_arguments(change, error, match):
    kwargs = {
        "input": np.ones((4, 3), np.float32),
        "running_mean": np.zeros(3, np.float32),
        "running_var": np.ones(3, np.float32),
        "weight": np.ones(3, np.float32),
        "bias": np.zeros(3, np.float32),
    }
    kwargs.update(change)
    with pytest.raises(error, match=match):
        F.batch_norm(**kwargs)


def test_read_only_running_statistics_refused_in_training():
    mean = np.zeros(3, np.float32)
    mean.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        F.batch_norm(np.ones((4, 3), np.float32), mean, np.ones(3, np.float32), training=True)


def test_backward_checks_its_arguments():
    x, weight, bias, mean, var, grad = make((4, 3, 2, 2), np.float32)
    _, saved = F.batch_norm(x, mean, var, weight, bias, True, return_saved=True)
    with pytest.raises(TypeError, match="saved"):
        F.batch_norm_backward(grad, (saved.xhat, saved.invstd, True), weight)
    with pytest.raises(ValueError, match="grad_output"):
        F.batch_norm_backward(grad[:2], saved, weight)
    with pytest.raises(TypeError, match="dtype"):
        F.batch_norm_backward(grad.astype(np.float64), saved, weight)
