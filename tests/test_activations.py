"""ReLU and ReLU6 on the threaded clamp kernels: functional forward and backward
against PyTorch's semantics (NaN and infinities included), in place and out of place,
on strided views and on arrays large enough to split across threads; the layers'
in-place rule (only without autograd); BatchNorm2d's forward without autograd (no
normalised copy kept) against the same layer with autograd on; and the clamp fused
into BatchNorm2d's pass (``nn.batch_norm_activation``, ``Sequential``) against the two
separate calls, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import functional as F
from fastconv import nn

SPECIALS = [np.nan, -np.inf, np.inf, -1.0, -0.0, 0.0, 1e-30, 3.0, 6.0, 6.5]


def _torch_reference(torch, op, x, g):
    """torch's forward and input gradient of op ('relu' or 'relu6') in float64."""
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    fn = torch.relu if op == "relu" else torch.nn.functional.relu6
    out = fn(xt)
    out.backward(torch.from_numpy(g.astype(np.float64)))
    return out.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["relu", "relu6"])
@pytest.mark.parametrize("size", [len(SPECIALS), 300_001])  # one thread; every thread
def test_forward_and_backward_follow_torch(op, dtype, size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 5).astype(dtype)
    x[: len(SPECIALS)] = SPECIALS
    g = rng.standard_normal(size).astype(dtype)
    forward, backward = (F.relu, F.relu_backward) if op == "relu" else (F.relu6, F.relu6_backward)
    out = forward(x)
    grad = backward(g, out)
    expected_out, expected_grad = _torch_reference(torch, op, x, g)
    assert out.dtype == dtype
    assert grad.dtype == dtype
    np.testing.assert_array_equal(out, expected_out.astype(dtype))
    np.testing.assert_array_equal(grad, expected_grad.astype(dtype))


@pytest.mark.parametrize("op", [F.relu, F.relu6])
def test_in_place_and_on_strided_views(op):
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((6, 8, 10)) * 4).astype(np.float32)
    expected = np.clip(base, 0, 6 if op is F.relu6 else None)
    x = base.copy()
    assert op(x, inplace=True) is x
    np.testing.assert_array_equal(x, expected)
    view = base.copy()[:, ::2, 1::3]  # not contiguous: computed, then written back
    result = op(view, inplace=True)
    assert result is view
    np.testing.assert_array_equal(view, expected[:, ::2, 1::3])
    original = base.copy()
    out = op(original[:, ::2])
    np.testing.assert_array_equal(out, expected[:, ::2])
    np.testing.assert_array_equal(original, base)  # out of place leaves the input alone


def test_bad_arguments_are_named():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="input"):
        F.relu([1.0, -1.0])
    with pytest.raises(TypeError, match="input must have dtype float32 or float64"):
        F.relu6(np.ones(3, np.int64))
    frozen = x.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        F.relu(frozen, inplace=True)
    with pytest.raises(ValueError, match="grad_output shape"):
        F.relu_backward(np.ones((3, 2), np.float32), x)
    with pytest.raises(TypeError, match="dtype"):
        F.relu6_backward(np.ones((2, 3), np.float64), x)


@pytest.mark.parametrize("layer", [nn.ReLU, nn.ReLU6])
def test_layers_work_in_place_only_without_autograd(layer):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 3, 4, 4)) * 4).astype(np.float32)
    module = layer(inplace=True)
    kept = x.copy()
    out = module(kept)  # autograd on: a new array, the input untouched
    np.testing.assert_array_equal(kept, x)
    grad = module.backward(np.ones_like(out))
    np.testing.assert_array_equal(grad, ((out > 0) & (out < (6 if layer is nn.ReLU6 else np.inf))))
    with nn.no_grad():
        again = module(kept)
    assert again is kept
    np.testing.assert_array_equal(kept, out)
    plain = layer()
    with nn.no_grad():
        assert plain(x) is not x


def test_batch_norm_without_autograd_gives_the_same_output():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5, 6, 6)).astype(np.float32)
    bn = nn.BatchNorm2d(5)
    bn.running_mean[:] = rng.standard_normal(5)
    bn.running_var[:] = rng.uniform(0.5, 2, 5)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, 5)
    bn.bias.data[:] = rng.standard_normal(5)
    bn.eval()
    with_grad = bn(x)
    bn.backward(np.ones_like(with_grad))
    with nn.no_grad():
        without = bn(x)
    np.testing.assert_array_equal(without, with_grad)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        bn.backward(np.ones_like(without))  # nothing was kept


def _pair(activation, seed=3):
    rng = np.random.default_rng(seed)
    norm = nn.BatchNorm2d(4)
    norm.weight.data[:] = rng.uniform(-2, 2, 4)  # negative scales too: both clamp sides
    norm.bias.data[:] = rng.uniform(-1, 7, 4)
    return norm, activation()


@pytest.mark.parametrize("activation", [nn.ReLU, nn.ReLU6])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_activation_matches_the_two_calls(activation, training):
    x = (np.random.default_rng(4).standard_normal((3, 4, 5, 5)) * 3).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    g = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    results = []
    for fused in (True, False):
        norm, act = _pair(activation)
        norm.train(training)
        out = nn.batch_norm_activation(norm, act, x) if fused else act(norm(x))
        grad = norm.backward(act.backward(g))
        results.append((out, grad, norm.weight.grad, norm.bias.grad, norm.running_mean.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_sequential_fuses_only_unwatched_pairs():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Conv2d(4, 2, 1))
    watched = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Conv2d(4, 2, 1))
    watched.load_state_dict(plain.state_dict())
    seen = []
    watched[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out, out_watched = plain(x), watched(x)
    assert seen == [(2, 4, 4, 4)]  # the hooked activation ran as its own call
    np.testing.assert_array_equal(out, out_watched)
    g = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(plain.backward(g), watched.backward(g))
    for (name, p), q in zip(plain.named_parameters(), watched.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)


def test_batch_norm_activation_argument_is_checked():
    x = np.ones((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'relu6'"):
        F.batch_norm(x, None, None, training=True, activation="gelu")
    y = x * np.arange(-1, 1).reshape(2, 1, 1, 1)
    fused = F.batch_norm(y, None, None, training=True, activation="relu")
    np.testing.assert_array_equal(fused, F.relu(F.batch_norm(y, None, None, training=True)))


def test_activation_in_place_of_a_temporary():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    act = nn.ReLU()
    temporary = x.copy()
    out = nn.activation_in_place(act, temporary)  # autograd on: still in place
    assert out is temporary
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    np.testing.assert_array_equal(act.backward(np.ones_like(x)), (x > 0).astype(np.float32))
    watched = nn.ReLU6()
    watched.register_forward_hook(lambda m, i, o: None)
    kept = x.copy()
    assert nn.activation_in_place(watched, kept) is not kept  # a hook sees a plain call
    np.testing.assert_array_equal(kept, x)


def test_batch_norm_reuses_its_saved_array_only_when_no_backward_is_pending():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    bn = nn.BatchNorm2d(3)
    bn(x)
    first = bn._saved[-1][0].xhat
    bn.backward(np.ones_like(x))
    out = bn(x * 2)  # nothing pending: last step's array is written again
    assert np.shares_memory(bn._saved[-1][0].xhat, first)
    np.testing.assert_array_equal(out, nn.BatchNorm2d(3)(x * 2))
    bn.backward(np.ones_like(x))
    twice = nn.Sequential(bn, bn)  # one forward, the layer called twice: both kept
    twice(x)
    saved = [entry[0].xhat for entry in bn._saved]
    assert len(saved) == 2
    assert not np.shares_memory(saved[0], saved[1])
    with pytest.raises(ValueError, match="saved_into must be"):
        F.batch_norm(x, None, None, training=True, return_saved=True, saved_into=x)
