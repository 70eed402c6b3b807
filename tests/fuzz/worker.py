"""A fuzz worker: runs the calls the runner asks for and reports each one's outcome.

Protocol (one line each, on the file descriptor the runner reads): the runner writes
``SEED START STOP``; the worker answers ``S i`` before call ``i`` and ``E i OUTCOME
DETAIL`` after it (DETAIL a JSON string), then ``D`` when the range is done. A worker
that dies or stalls between ``S i`` and ``E i`` crashed or hung in call ``i``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import warnings
from typing import Any

import numpy as np

from . import calls

EXPECTED = (TypeError, ValueError, MemoryError)
# An error message that shows C++ or a backend's own check: validation let the call through.
LEAKS = re.compile(r"std::|vector::|bad_alloc|basic_string|_M_[a-z]|\binternal:")


def _arrays(value: Any, name: str):
    """The NumPy arrays an argument holds (a BatchNormSaved holds two)."""
    if isinstance(value, np.ndarray):
        yield name, value
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field in value._fields:
            yield from _arrays(getattr(value, field), f"{name}.{field}")


def outcome(call: calls.Call) -> tuple[str, str]:
    """('ok' | 'TypeError' | 'ValueError' | 'MemoryError' | 'unexpected', detail)."""
    written = [call.args[name] for name in call.writes]
    written = [w for w in written if isinstance(w, np.ndarray)]
    before = {}
    for arg, value in call.args.items():
        if arg in call.writes:
            continue
        for name, array in _arrays(value, arg):
            if not any(np.shares_memory(array, w) for w in written):
                data = np.ma.getdata(array)  # a masked array's bytes would be filled
                before[name] = (data, np.array(data, copy=True))
    try:
        call.run()
    except EXPECTED as exc:
        message = str(exc)
        if LEAKS.search(message):
            return "unexpected", f"{type(exc).__name__} leaks an internal message: {message}"
        return next(kind.__name__ for kind in EXPECTED if isinstance(exc, kind)), ""
    except Exception as exc:
        return "unexpected", f"{type(exc).__name__}: {exc}"
    changed = [name for name, (array, copy) in before.items() if array.tobytes() != copy.tobytes()]
    if changed:
        return "unexpected", f"the call changed its input(s) {', '.join(changed)}"
    return "ok", ""


def generator():
    """The module that builds the calls: ``calls``, or the one FASTCONV_FUZZ_GENERATOR
    names (the harness's own tests plant calls that crash, hang or misbehave)."""
    name = os.environ.get("FASTCONV_FUZZ_GENERATOR")
    return importlib.import_module(name) if name else calls


def serve(channel) -> None:
    import fastconv

    fastconv.set_num_threads(2)
    make_call = generator().make_call
    for line in sys.stdin:
        seed, start, stop = (int(v) for v in line.split())
        for index in range(start, stop):
            channel.write(f"S {index}\n")
            channel.flush()
            try:
                call = make_call(seed, index)
            except Exception as exc:  # a bug of the generator, not of fastconv
                result, detail = "harness", f"{type(exc).__name__}: {exc}"
            else:
                result, detail = outcome(call)
            channel.write(f"E {index} {result} {json.dumps(detail[:500])}\n")
            channel.flush()
        channel.write("D\n")
        channel.flush()


def main() -> None:
    # The protocol gets its own descriptor; anything else written to stdout (a C++
    # printf, a stray print) goes to stderr instead of corrupting it.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    limit = int(os.environ.get("FASTCONV_FUZZ_MEMORY_LIMIT", "0"))
    if limit:
        import resource

        # Requests beyond the limit fail fast with MemoryError instead of paging the
        # machine to death (ulimit -v).
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")
    serve(channel)


if __name__ == "__main__":
    main()
