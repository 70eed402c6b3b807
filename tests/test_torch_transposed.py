"""fastconv.torch's transposed convolution: ``conv_transpose2d`` against torch's (gradcheck
in float64 over the argument space, forward values, which gradients run), the
``ConvTranspose2d`` module (``output_size``, conversion of a decoder, state_dict and repr,
revert, padding modes, autotune) and the routing of what fastconv's CPU kernels do not
take to torch's op."""

from __future__ import annotations

import collections

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as ft  # noqa: E402

F64 = torch.float64
SPIED = (
    "conv_transpose2d",
    "conv_transpose2d_input",
    "conv_transpose2d_weight",
    "conv2d_bias_grad",
)


@pytest.fixture
def calls(monkeypatch):
    """Counts, by name, the fastconv functions that fastconv.torch calls."""
    counts = collections.Counter()
    for name in SPIED:
        real = getattr(fastconv, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(fastconv, name, spy)
    return counts


def leaf(*shape, dtype=F64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=generator).requires_grad_()


CASES = {
    "default": {},
    "stride2_pad1_outpad1": {"stride": 2, "padding": 1, "output_padding": 1},
    "pairs": {"stride": (2, 1), "padding": (1, 0), "output_padding": (1, 0)},
    "dilated": {"dilation": (2, 1), "padding": 1},
    "groups2": {"groups": 2, "stride": 2},
    "no_bias": {"bias": False, "stride": 3, "output_padding": 2},
    "unbatched": {"batch": None, "stride": 2},
}


def inputs(case):
    case = dict(case)
    batch, with_bias = case.pop("batch", 2), case.pop("bias", True)
    groups = case.get("groups", 1)
    x = leaf(*((batch,) if batch else ()), 4, 5, 6)
    w = leaf(4, 6 // groups, 3, 2, seed=1)
    b = leaf(6, seed=2) if with_bias else None
    return x, w, b, case


@pytest.mark.parametrize("name", CASES)
def test_conv_transpose2d_gradcheck_and_values(name, calls):
    x, w, b, kwargs = inputs(CASES[name])
    args = (x, w) if b is None else (x, w, b)

    def fn(*a):
        return ft.conv_transpose2d(*a, **kwargs)

    torch.testing.assert_close(fn(*args), F.conv_transpose2d(*args, **kwargs), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fn, args)
    assert calls["conv_transpose2d"]
    assert calls["conv_transpose2d_input"]
    assert calls["conv_transpose2d_weight"]
    assert bool(calls["conv2d_bias_grad"]) == (b is not None)


@pytest.mark.parametrize("wanted", ["input", "weight", "bias"])
def test_only_the_gradients_asked_for_run(wanted, calls):
    x, w, b, _ = inputs({})
    for name, t in (("input", x), ("weight", w), ("bias", b)):
        t.requires_grad_(name == wanted)
    ft.conv_transpose2d(x, w, b, stride=2).sum().backward()
    assert bool(calls["conv_transpose2d_input"]) == (wanted == "input")
    assert bool(calls["conv_transpose2d_weight"]) == (wanted == "weight")
    assert bool(calls["conv2d_bias_grad"]) == (wanted == "bias")


def test_no_grad_runs_the_forward_only(calls):
    x, w, b, _ = inputs({})
    with torch.no_grad():
        out = ft.conv_transpose2d(x, w, b)
    assert out.grad_fn is None
    assert calls["conv_transpose2d"] == 1


def test_double_backward_raises_clearly():
    x, w, b, _ = inputs({})
    out = ft.conv_transpose2d(x, w, b).sum()
    with pytest.raises(RuntimeError, match="conv_transpose2d has no double backward"):
        torch.autograd.grad(out, x, create_graph=True)


def test_what_fastconv_does_not_take_runs_torchs_op(calls):
    x, w, b, _ = inputs({})
    half = [t.detach().to(torch.bfloat16) for t in (x, w, b)]
    torch.testing.assert_close(ft.conv_transpose2d(*half), F.conv_transpose2d(*half))
    assert not calls["conv_transpose2d"]


def decoder():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 3, 3, stride=2, padding=1, output_padding=1, bias=False),
    ).double()


def test_converted_decoder_matches_native(calls):
    native = decoder()
    converted = ft.convert(native)
    assert all(type(converted[i]) is ft.ConvTranspose2d for i in (0, 2))
    assert repr(converted) == repr(native)
    assert list(converted.state_dict()) == list(native.state_dict())
    x = leaf(2, 8, 5, 5)
    out, expected = converted(x), native(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), [x, *converted.parameters()])
    want = torch.autograd.grad(expected.sum(), [x, *native.parameters()])
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-11)
    assert calls["conv_transpose2d"] == 2
    reverted = ft.revert(converted)
    assert [type(m) for m in reverted.modules()] == [type(m) for m in native.modules()]


def test_output_size_picks_the_output_padding():
    torch.manual_seed(0)
    native = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()
    converted = ft.convert(native)
    x = leaf(1, 3, 4, 4)
    for size in ((7, 7), (8, 8), (7, 8)):
        out = converted(x, output_size=size)
        assert out.shape[-2:] == size
        torch.testing.assert_close(out, native(x, output_size=size), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="requested an output size"):
        converted(x, output_size=(12, 12))


def test_padding_modes_other_than_zeros_are_refused_as_torch_does():
    native = nn.ConvTranspose2d(2, 2, 3)
    native.padding_mode = "reflect"
    converted = ft.convert(native)
    with pytest.raises(ValueError, match="padding mode"):
        converted(torch.randn(1, 2, 4, 4))


def test_autotune_times_both_and_keeps_one(calls):
    converted = ft.convert(decoder(), autotune=True)
    x = leaf(2, 8, 5, 5)
    torch.testing.assert_close(converted(x), decoder()(x), rtol=0, atol=1e-12)
    choices = ft.autotune_choices(converted)
    assert len(choices) == 2
    assert all(
        entry["choice"] in ("fastconv", "torch")
        for entries in choices.values()
        for entry in entries
    )
