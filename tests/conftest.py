"""Fixtures shared by several test modules: ``threads`` (set the thread count inside a
test, restored afterwards) and ``no_backend`` (every backend raises AssertionError, so a
validation test passes only if validation fails first). Every test starts with layer
initialisation seeded from its own name, so a failure reproduces alone and in any order.

A test module that defines ``start_early()`` (slow work in a child process, such as
compiling the CUDA kernels) has it started when collection ends and its tests moved to
the end of the run, so the work overlaps the rest of the suite; its ``stop_early()``
runs when the session finishes."""

from __future__ import annotations

import zlib

import pytest
from validation_helpers import OPS

import fastconv
from fastconv import _cpu, functional, reference


def _early_modules(items):
    modules = {getattr(item, "module", None) for item in items}
    return [m for m in modules if m is not None and hasattr(m, "start_early")]


def pytest_collection_modifyitems(items):
    early = {id(m) for m in _early_modules(items)}
    items.sort(key=lambda item: id(getattr(item, "module", None)) in early)


def pytest_collection_finish(session):
    for module in _early_modules(session.items):
        module.start_early()


def pytest_sessionfinish(session):
    for module in _early_modules(session.items):
        module.stop_early()


@pytest.fixture(autouse=True)
def seeded_initialisation(request):
    fastconv.nn.init.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def threads():
    before = fastconv.get_num_threads()
    yield fastconv.set_num_threads
    fastconv.set_num_threads(before)


class _NoNative:
    """Stands in for the CPU backend: reaching it is a test failure. The one-step plain
    calls run for real: declining a call (None) is how they pass it to validation, and
    running one counts as reaching the backend (an invalid call must never run)."""

    def __getattr__(self, name):
        if name.endswith("_plain"):
            real = getattr(_cpu, name)

            def declining(*args):
                if real(*args) is not None:
                    raise AssertionError(
                        f"fastconv._cpu.{name} was reached before validation failed"
                    )
                return None

            return declining
        raise AssertionError(f"fastconv._cpu.{name} was reached before validation failed")


def _forbidden(name):
    def run(*args, **kwargs):
        raise AssertionError(f"backend op {name} was reached before validation failed")

    return run


@pytest.fixture
def no_backend(monkeypatch):
    """Every backend raises AssertionError: a ValueError/TypeError must come first."""
    monkeypatch.setattr(functional, "_cpu", _NoNative())
    monkeypatch.setattr(functional, "_cuda_backend", _forbidden("cuda"))
    for name in OPS:  # the reference ops double as CPU backends for some ops
        monkeypatch.setattr(reference, name, _forbidden(f"reference.{name}"))
