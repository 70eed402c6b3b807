"""The README's tour runs as written (a broken example is a bug in the docs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_short_tour_runs():
    if not README.exists():
        pytest.skip("no README beside the tests (an installed copy of the suite)")
    match = re.search(r"## A short tour\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "the README lost its tour"
    exec(compile(match.group(1), "README.md tour", "exec"), {})
