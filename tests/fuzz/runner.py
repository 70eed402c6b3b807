"""The fuzz runner: a pool of worker processes, restarted when one crashes or hangs.

``run(calls=..., seed=...)`` returns a ``Report`` (counts and the calls that crashed, hung
or misbehaved, each with the command that replays it); ``main`` is the command line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

BATCH = 200  # calls per request to a worker
MEMORY_LIMIT = 4 << 30  # address space of a worker (bytes)


@dataclasses.dataclass
class Problem:
    index: int
    kind: str  # 'crash', 'hang', 'unexpected' or 'harness'
    detail: str
    call: str = ""


@dataclasses.dataclass
class Report:
    seed: int
    calls: int = 0
    seconds: float = 0.0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    per_op: dict = dataclasses.field(default_factory=dict)
    problems: list = dataclasses.field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for p in self.problems if p.kind == kind)

    def summary(self) -> str:
        kinds = ", ".join(f"{name} {self.outcomes[name]}" for name in sorted(self.outcomes))
        return (
            f"seed {self.seed}: {self.calls} calls in {self.seconds:.1f} s ({kinds}); "
            f"crashes {self.count('crash')}, hangs {self.count('hang')}, "
            f"unexpected {self.count('unexpected')}, harness errors {self.count('harness')}"
        )

    def details(self) -> str:
        lines = []
        for p in self.problems:
            lines.append(f"- call {p.index}: {p.kind}: {p.detail}")
            lines.append(f"    {p.call}")
            lines.append(f"    replay: python -m tests.fuzz --seed {self.seed} --replay {p.index}")
        return "\n".join(lines)


def _package_path() -> str:
    """The folders a worker needs on sys.path: this package's parent and fastconv's."""
    import fastconv

    here = Path(__file__).resolve().parent.parent
    paths = [str(here), str(Path(fastconv.__file__).resolve().parent.parent)]
    return os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])


def _worker_env(memory_limit: int, generator: str | None) -> dict:
    env = dict(os.environ)
    if generator:
        env["FASTCONV_FUZZ_GENERATOR"] = generator
    env["PYTHONPATH"] = _package_path()
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="2", MALLOC_ARENA_MAX="2")
    if "libasan" in env.get("LD_PRELOAD", ""):
        # ASan reserves terabytes of address space (no ulimit -v), and aborts on a
        # request it cannot serve unless told to return NULL (NumPy's MemoryError).
        options = env.get("ASAN_OPTIONS", "")
        env["ASAN_OPTIONS"] = (
            f"{options}:allocator_may_return_null=1:max_allocation_size_mb={memory_limit >> 20}"
        )
        memory_limit = 0
    env["FASTCONV_FUZZ_MEMORY_LIMIT"] = str(memory_limit)
    return env


class _Worker:
    def __init__(self, env: dict, cwd: str):
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from fuzz.worker import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,  # a hung worker is killed with its OpenMP threads
        )
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buffer = b""
        self.range: tuple[int, int] | None = None  # the calls asked for, [start, stop)
        self.next = 0  # the first call of the range not finished
        self.current: int | None = None  # the call running now
        self.deadline = float("inf")

    def ask(self, seed: int, start: int, stop: int) -> None:
        self.range, self.next = (start, stop), start
        self.proc.stdin.write(f"{seed} {start} {stop}\n".encode())
        self.proc.stdin.flush()

    def lines(self) -> tuple[list[str], bool]:
        """Complete lines read so far, and whether the worker closed its output."""
        try:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return [], False
        self.buffer += chunk
        *done, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in done], chunk == b""

    def stderr_tail(self) -> str:
        """The first line that says what went wrong (a sanitizer's report, a fatal
        error), and the end of the worker's stderr."""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        headline = re.search(
            r"^.*(runtime error|ERROR: \w+Sanitizer|Fatal Python error).*$", text, re.M
        )
        tail = text[-1200:]
        return (
            f"{headline.group(0)} ... {tail}"
            if headline and headline.group(0) not in tail
            else tail
        )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc.stdout.close()
        self.stderr.close()


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def run(
    calls: int,
    seed: int,
    workers: int = 2,
    timeout: float = 30.0,
    memory_limit: int = MEMORY_LIMIT,
    progress=None,
    generator: str | None = None,
) -> Report:
    """Run calls [0, calls) of ``seed`` on ``workers`` processes; see the module doc.
    ``generator`` names a module to build the calls instead of ``calls`` (with its
    ``make_call``, ``op_of`` and ``describe``)."""
    from . import calls as call_module

    if generator:
        call_module = importlib.import_module(generator)
    start_time = time.monotonic()
    report = Report(seed=seed)
    env = _worker_env(memory_limit, generator)
    cwd = str(Path(__file__).resolve().parent.parent)
    todo = collections.deque((i, min(i + BATCH, calls)) for i in range(0, calls, BATCH))
    selector = selectors.DefaultSelector()
    pool: list[_Worker] = []

    def start_worker() -> None:
        worker = _Worker(env, cwd)
        pool.append(worker)
        selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)
        give_work(worker)

    def give_work(worker: _Worker) -> None:
        if todo:
            worker.ask(seed, *todo.popleft())
        else:
            worker.range = None
            worker.proc.stdin.close()

    def retire(worker: _Worker, kind: str | None, detail: str) -> None:
        """Drop a dead or hung worker, note what it was running, and replace it."""
        selector.unregister(worker.proc.stdout)
        pool.remove(worker)
        if kind is not None:
            index = worker.current if worker.current is not None else worker.next
            report.problems.append(Problem(index, kind, detail))
            report.calls += worker.current is not None
            resume = index + 1
        else:
            resume = worker.next
        if worker.range is not None and resume < worker.range[1]:
            todo.appendleft((resume, worker.range[1]))
        worker.close()
        if todo:
            start_worker()

    for _ in range(min(workers, len(todo))):
        start_worker()
    while pool:
        now = time.monotonic()
        wait = min(w.deadline for w in pool) - now
        events = selector.select(timeout=max(0.0, min(wait, 1.0)))
        for key, _ in events:
            worker: _Worker = key.data
            lines, closed = worker.lines()
            for line in lines:
                if line.startswith("S "):
                    worker.current = int(line[2:])
                    worker.deadline = time.monotonic() + timeout
                elif line.startswith("E "):
                    _, index, result, detail = line.split(" ", 3)
                    report.calls += 1
                    report.outcomes[result] += 1
                    op = call_module.op_of(seed, int(index))
                    report.per_op.setdefault(op, collections.Counter())[result] += 1
                    if result in ("unexpected", "harness"):
                        report.problems.append(Problem(int(index), result, json.loads(detail)))
                    worker.current, worker.next = None, int(index) + 1
                    worker.deadline = float("inf")
                elif line == "D":
                    give_work(worker)
            if closed:
                code = worker.proc.wait()
                finished = worker.range is None and worker.current is None
                if finished and code == 0:
                    retire(worker, None, "")
                else:
                    detail = f"worker {_exit_status(code)}: {worker.stderr_tail()}"
                    retire(worker, "crash", detail)
        now = time.monotonic()
        for worker in [w for w in pool if w.deadline < now]:
            worker.kill()
            retire(worker, "hang", f"no answer after {timeout:.0f} s")
        if progress is not None:
            progress(report)
    report.seconds = time.monotonic() - start_time
    report.problems.sort(key=lambda p: p.index)
    for problem in report.problems:
        try:
            with warnings.catch_warnings():  # (np.matrix warns when it is made)
                warnings.simplefilter("ignore")
                problem.call = call_module.describe(call_module.make_call(seed, problem.index))
        except Exception as exc:
            problem.call = f"(cannot rebuild the call: {type(exc).__name__}: {exc})"
    return report


def replay(seed: int, index: int) -> int:
    """Run one call in this process and print it with its outcome."""
    from . import calls, worker

    call = calls.make_call(seed, index)
    print(calls.describe(call))
    result, detail = worker.outcome(call)
    print(f"-> {result}{': ' + detail if detail else ''}")
    return 0 if result not in ("unexpected", "harness") else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz",
        description="Hostile calls of every public fastconv op in worker processes; "
        "counts crashes, hangs and unexpected exceptions.",
    )
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=MEMORY_LIMIT / 2**30,
        help="address-space limit of each worker (0: none)",
    )
    parser.add_argument("--replay", type=int, default=None, metavar="INDEX")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    if args.replay is not None:
        return replay(seed, args.replay)

    last = [0.0]

    def progress(report: Report) -> None:
        if time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"  {report.calls} / {args.calls} calls", file=sys.stderr, flush=True)

    print(f"fuzzing {args.calls} calls, seed {seed}, {args.workers} workers", flush=True)
    report = run(
        args.calls,
        seed,
        workers=args.workers,
        timeout=args.timeout,
        memory_limit=int(args.memory_limit_gb * 2**30),
        progress=progress,
    )
    width = max(map(len, report.per_op), default=0)
    for op in sorted(report.per_op):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.per_op[op].items()))
        print(f"  {op:<{width}}  {counts}")
    print(report.summary())
    if report.problems:
        print(report.details())
    if args.json is not None:
        document = dict(
            seed=report.seed,
            calls=report.calls,
            seconds=report.seconds,
            outcomes=dict(report.outcomes),
            per_op={op: dict(counts) for op, counts in report.per_op.items()},
            problems=[dataclasses.asdict(p) for p in report.problems],
        )
        args.json.write_text(json.dumps(document, indent=2))
    return 1 if report.problems else 0
