"""Tests of fastconv.optim: the same model (conv, max-pool, BatchNorm, ReLU, linear) trained
by fastconv and by torch.optim from the same weights on the same batches gives the same
losses and parameters step by step, for every optimizer and option.

Every parameter of the test model has a real gradient: a bias directly followed by
BatchNorm has a gradient that is zero up to rounding, which adaptive optimizers
(Adagrad, RMSprop, Adam) would normalise into a full-size update of rounding noise."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import nn, optim

STEPS = 5

OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05, maximize=True)),
    ("Adagrad", dict(lr=0.05)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.1, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, eps=1e-4)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.005, momentum=0.9)),
    ("RMSprop", dict(lr=0.005, centered=True)),
    ("RMSprop", dict(lr=0.005, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.02)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.01, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in OPTIMIZER_CASES]


def fc_model(dtype):
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
    ).to(dtype)


def torch_model(torch, dtype):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(2, 4, 3, padding=1),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.BatchNorm2d(4),
        tnn.ReLU(),
        tnn.Conv2d(4, 6, 3, bias=False),
        tnn.BatchNorm2d(6),
        tnn.ReLU(),
        tnn.Flatten(),
        tnn.Linear(6 * 2 * 2, 5),
    ).to(dtype)


def batches(dtype, steps=STEPS):
    rng = np.random.default_rng(42)
    return [
        (rng.standard_normal((6, 2, 8, 8)).astype(dtype), rng.integers(0, 5, 6))
        for _ in range(steps)
    ]


def run_both(name, kwargs, dtype, steps=STEPS, check=None):
    """Train both models; yields per step (loss, torch loss, fc params, torch params)."""
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    tmodel = torch_model(torch, tdtype)
    model = fc_model(dtype)
    model.load_state_dict(tmodel.state_dict())
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    topt = getattr(torch.optim, name)(tmodel.parameters(), foreach=False, **kwargs)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step, (x, y) in enumerate(batches(dtype, steps)):
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        topt.zero_grad()
        tloss = tcrit(tmodel(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        topt.step()
        check(
            step,
            loss,
            float(tloss.detach()),
            model.state_dict(),
            {k: v.numpy() for k, v in tmodel.state_dict().items()},
        )
    return model, tmodel, opt, topt


@pytest.mark.parametrize(("name", "kwargs"), OPTIMIZER_CASES, ids=CASE_IDS)
def test_float64_trajectory_matches_torch(name, kwargs):
    def check(step, loss, tloss, state, tstate):
        assert loss == pytest.approx(tloss, rel=1e-10), f"loss at step {step}"
        assert list(state) == list(tstate)
        for key, value in tstate.items():
            np.testing.assert_allclose(
                state[key], value, rtol=1e-9, atol=1e-12, err_msg=f"{key} after step {step}"
            )

    run_both(name, kwargs, np.float64, check=check)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [OPTIMIZER_CASES[i] for i in (1, 8, 13, 18)],
    ids=[CASE_IDS[i] for i in (1, 8, 13, 18)],
)
def test_float32_trajectory_matches_torch(name, kwargs):
    def check(step, loss, tloss, state, tstate):
        assert loss == pytest.approx(tloss, rel=1e-4), f"loss at step {step}"
        for key, value in tstate.items():
            assert state[key].dtype == value.dtype, key
            scale = max(1.0, float(np.abs(value).max()))
            np.testing.assert_allclose(
                state[key], value, rtol=1e-3, atol=1e-4 * scale, err_msg=f"{key} after step {step}"
            )

    run_both(name, kwargs, np.float32, check=check)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [OPTIMIZER_CASES[i] for i in (2, 7, 13, 18)],
    ids=[CASE_IDS[i] for i in (2, 7, 13, 18)],
)
def test_optimizer_state_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    model, tmodel, opt, topt = run_both(name, kwargs, np.float64, steps=3, check=lambda *a: None)
    state, tstate = opt.state_dict(), topt.state_dict()
    assert set(state["state"]) == set(tstate["state"])
    for idx, entry in tstate["state"].items():
        assert set(state["state"][idx]) == set(entry)
        for key, value in entry.items():
            value = value.numpy() if isinstance(value, torch.Tensor) else value
            np.testing.assert_allclose(
                state["state"][idx][key], value, rtol=1e-9, atol=1e-12, err_msg=f"{idx}.{key}"
            )
    for group, tgroup in zip(state["param_groups"], tstate["param_groups"]):
        assert group["params"] == tgroup["params"]
        for key in kwargs:
            assert group[key] == tgroup[key]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [OPTIMIZER_CASES[i] for i in (1, 8, 14, 18)],
    ids=[CASE_IDS[i] for i in (1, 8, 14, 18)],
)
def test_state_dict_resume_gives_same_trajectory(name, kwargs):
    data = batches(np.float64, 4)
    crit = nn.CrossEntropyLoss()

    def train(model, opt, chunk):
        for x, y in chunk:
            crit(model(x), y)
            model.backward(crit.backward())
            opt.step()
            opt.zero_grad()

    model = fc_model(np.float64)
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    train(model, opt, data)
    resumed = fc_model(np.float64)
    ropt = getattr(optim, name)(resumed.parameters(), **kwargs)
    train(resumed, ropt, data[:2])
    saved_model, saved_opt = resumed.state_dict(), ropt.state_dict()
    fresh = fc_model(np.float64)
    fresh.load_state_dict(saved_model)
    fopt = getattr(optim, name)(fresh.parameters(), **kwargs)
    fopt.load_state_dict(saved_opt)
    train(fresh, fopt, data[2:])
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value, err_msg=key)


def test_frozen_and_gradless_parameters_are_skipped():
    model = fc_model(np.float32)
    model[0].requires_grad_(False)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = optim.Adam(model.parameters(), lr=0.1)
    model[9].weight.grad = np.ones_like(model[9].weight.data)  # only this one has a grad
    model[0].weight.grad = np.ones_like(model[0].weight.data)  # frozen: ignored anyway
    opt.step()
    after = model.state_dict()
    for key in before:
        changed = not np.array_equal(before[key], after[key])
        assert changed == (key == "9.weight"), key
    assert model[9].weight not in opt.state or opt.state[model[9].weight]["step"] == 1
    assert model[0].weight not in opt.state


def test_param_groups_and_zero_grad():
    torch = pytest.importorskip("torch")
    model = fc_model(np.float64)
    tmodel = torch_model(torch, torch.float64)
    tmodel.load_state_dict(model.state_dict() and nn.to_torch_state_dict(model.state_dict()))
    groups = [
        {"params": list(model[0].parameters()), "lr": 0.5},
        {"params": [p for i, m in enumerate(model) if i > 0 for p in m.parameters()]},
    ]
    tgroups = [
        {"params": list(tmodel[0].parameters()), "lr": 0.5},
        {"params": [p for i, m in enumerate(tmodel) if i > 0 for p in m.parameters()]},
    ]
    opt = optim.SGD(groups, lr=0.01, momentum=0.9)
    topt = torch.optim.SGD(tgroups, lr=0.01, momentum=0.9, foreach=False)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.01]
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for x, y in batches(np.float64, 3):
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        topt.zero_grad()
        tcrit(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    for key, value in tmodel.state_dict().items():
        np.testing.assert_allclose(
            model.state_dict()[key], value.numpy(), rtol=1e-9, atol=1e-12, err_msg=key
        )
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="more than one"):
        optim.SGD(
            [{"params": list(model.parameters())}, {"params": list(model[0].parameters())}], lr=0.1
        )
    assert "Parameter Group 1" in repr(opt)


def test_validation():
    p = [nn.Parameter(np.zeros(2, np.float32))]
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match=r"Invalid alpha value: -0\.1"):
        optim.RMSprop(p, alpha=-0.1)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD(p[0], lr=0.1)


def test_closure_and_lr_change():
    w = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([w], lr=0.5)

    def closure():
        w.grad = 2 * w.data  # d/dw |w|^2
        return float((w.data**2).sum())

    assert opt.step(closure) == 5.0
    np.testing.assert_allclose(w.data, [0.0, 0.0])
    opt.param_groups[0]["lr"] = 0.1
    w.grad = np.array([1.0, 1.0])
    opt.step()
    np.testing.assert_allclose(w.data, [-0.1, -0.1])


@pytest.mark.parametrize("kind", ["StepLR", "CosineAnnealingLR"])
def test_lr_schedulers_match_torch(kind):
    torch = pytest.importorskip("torch")
    args = dict(step_size=3, gamma=0.5) if kind == "StepLR" else dict(T_max=7, eta_min=0.01)
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = getattr(optim.lr_scheduler, kind)(opt, **args)
    tsched = getattr(torch.optim.lr_scheduler, kind)(topt, **args)
    for _ in range(10):
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [OPTIMIZER_CASES[i] for i in (2, 8, 13, 18)],
    ids=[CASE_IDS[i] for i in (2, 8, 13, 18)],
)
def test_resume_from_a_torch_checkpoint(name, kwargs):
    """Model and optimizer state saved by torch continue identically in fastconv."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = torch_model(torch, torch.float64)
    topt = getattr(torch.optim, name)(tmodel.parameters(), foreach=False, **kwargs)
    tcrit, crit = torch.nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    data = batches(np.float64, 4)
    for x, y in data[:2]:
        topt.zero_grad()
        tcrit(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    model = fc_model(np.float64)
    model.load_state_dict(tmodel.state_dict())
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    opt.load_state_dict(topt.state_dict())
    for x, y in data[2:]:
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        topt.zero_grad()
        tloss = tcrit(tmodel(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(float(tloss.detach()), rel=1e-10)
    for key, value in tmodel.state_dict().items():
        np.testing.assert_allclose(
            model.state_dict()[key], value.numpy(), rtol=1e-9, atol=1e-12, err_msg=key
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "kwargs"), OPTIMIZER_CASES, ids=CASE_IDS)
def test_fused_step_equals_the_numpy_update_bit_for_bit(name, kwargs, dtype, threads, monkeypatch):
    """The fused C++ step (C-contiguous parameters) and the NumPy update (the same
    parameters in Fortran order, which the kernels do not take) give identical bits,
    over sizes that split unevenly into the kernels' chunks, on 3 threads."""
    threads(3)
    rng = np.random.default_rng(7)
    shapes = [(70_001,), (3, 5), (1,), (129, 257)]
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fused = [nn.Parameter(v.copy()) for v in values]
    plain = [nn.Parameter(np.asfortranarray(v)) for v in values]  # 2-D: not C-contiguous
    assert not plain[1].data.flags.c_contiguous
    assert not plain[3].data.flags.c_contiguous
    calls = []
    real_step = optim._cpu.optimizer_step
    monkeypatch.setattr(
        optim._cpu, "optimizer_step", lambda *a: calls.append(a[0]) or real_step(*a)
    )
    fused_opt = getattr(optim, name)(fused, **kwargs)
    plain_opt = getattr(optim, name)(plain, **kwargs)
    for _ in range(4):
        for a, b in zip(fused, plain):
            a.grad = rng.standard_normal(a.shape).astype(dtype)
            b.grad = a.grad.copy()
        fused_opt.step()
        plain_opt.step()
    assert len(calls) == 8  # one call per step for each optimizer (plain: its 1-D params)
    for a, b in zip(fused, plain):
        np.testing.assert_array_equal(a.data, b.data)
