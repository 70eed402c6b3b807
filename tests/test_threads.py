"""Threading: the CPU kernels are safe to call from many Python threads at once, give the
same bits whatever the OpenMP thread count, and release the GIL while they run.

``fastconv.set_num_threads(n)`` is process-wide; every test restores the setting it found.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastconv


@pytest.fixture(autouse=True)
def restore_thread_count():
    before = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(before)


def pooling_job(seed: int) -> dict:
    """An input and pooling arguments that differ from job to job."""
    rng = np.random.default_rng(seed)
    dtype = (np.float32, np.float64)[seed % 2]
    shape = (2, 3 + seed % 4, 40 + 3 * seed, 33 + 5 * seed)
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.01] = np.nan
    kernel = [(2, 2), (3, 3), (3, 2), (5, 4)][seed % 4]
    stride = [(2, 2), (2, 2), (1, 1), (2, 3)][seed % 4]
    padding = [(0, 0), (1, 1), (1, 0), (2, 1)][seed % 4]
    return dict(
        x=x, kernel=kernel, stride=stride, padding=padding, ceil_mode=bool(seed % 3 == 0), seed=seed
    )


def run_job(job: dict) -> list[np.ndarray]:
    """All four pooling ops on one job; every result is returned for comparison."""
    x, k, s, p, c = job["x"], job["kernel"], job["stride"], job["padding"], job["ceil_mode"]
    rng = np.random.default_rng(job["seed"] + 100)
    out, idx = fastconv.max_pool2d(x, k, s, p, 1, c, return_indices=True)
    g = rng.standard_normal(out.shape).astype(x.dtype)
    gmax = fastconv.max_pool2d_backward(g, idx, x.shape)
    avg = fastconv.avg_pool2d(x, k, s, p, c, count_include_pad=bool(job["seed"] % 2))
    gavg = fastconv.avg_pool2d_backward(
        rng.standard_normal(avg.shape).astype(x.dtype),
        x.shape,
        k,
        s,
        p,
        c,
        count_include_pad=bool(job["seed"] % 2),
    )
    return [out, idx, gmax, avg, gavg]


def assert_bitwise_equal(results, expected, what):
    assert len(results) == len(expected)
    for i, (a, e) in enumerate(zip(results, expected)):
        assert a.dtype == e.dtype, (what, i)
        assert a.shape == e.shape, (what, i)
        assert a.tobytes() == e.tobytes(), f"{what}: result {i} differs"


def check_threads_match_serial(jobs, run, job_for):
    """Run every job serially, then from one Python thread per job at once (three rounds,
    worker i on job job_for(i, round), all entering the kernels together): every
    concurrent result must equal the serial one bit for bit."""
    serial = [run(job) for job in jobs]
    barrier = threading.Barrier(len(jobs))

    def worker(i):
        barrier.wait(timeout=30)  # all threads enter the kernels together
        return [run(jobs[job_for(i, r)]) for r in range(3)]

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        concurrent = list(pool.map(worker, range(len(jobs))))
    for i, repeats in enumerate(concurrent):
        for r, results in enumerate(repeats):
            j = job_for(i, r)
            assert_bitwise_equal(results, serial[j], f"worker {i}, job {j}, round {r}")


@pytest.mark.parametrize("threads_per_call", [1, 2])
def test_eight_python_threads_at_once_match_a_serial_run(threads_per_call):
    fastconv.set_num_threads(threads_per_call)
    jobs = [pooling_job(seed) for seed in range(8)]
    check_threads_match_serial(jobs, run_job, lambda i, r: i)
    # The inputs were only read.
    for job, fresh in zip(jobs, (pooling_job(seed) for seed in range(8))):
        assert job["x"].tobytes() == fresh["x"].tobytes()


def test_threads_sharing_one_input_array():
    """Many threads reading the same array (a common pattern: one batch, many consumers)."""
    job = pooling_job(3)
    expected = run_job(job)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: run_job(job), range(16)))
    for r in results:
        assert_bitwise_equal(r, expected, "shared input")


DETERMINISM_SHAPES = [
    (4, 16, 64, 64),  # many planes: split over planes
    (1, 1, 300, 257),  # one big plane: split over output rows
    (1, 3, 97, 131),  # odd sizes
]


@pytest.mark.parametrize("shape", DETERMINISM_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_the_thread_count(shape, dtype):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    job = dict(x=x, kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, seed=5)
    overlapping = dict(job, kernel=(5, 4), stride=(1, 2), padding=(2, 1), ceil_mode=False)
    results = {}
    for n in (1, 2, 3, 8):
        fastconv.set_num_threads(n)
        results[n] = run_job(job) + run_job(overlapping)
    for n in (2, 3, 8):
        assert_bitwise_equal(results[n], results[1], f"set_num_threads({n}) vs 1")


def test_set_num_threads_rejects_bad_values():
    for bad in (0, -1, -8):
        with pytest.raises(ValueError, match=r"\bn\b"):
            fastconv.set_num_threads(bad)
    for bad in (True, False, 1.5, 2.0, "2", None, (2,)):
        with pytest.raises(TypeError, match=r"\bn\b"):
            fastconv.set_num_threads(bad)
    # a refused value leaves the setting alone
    fastconv.set_num_threads(2)
    with pytest.raises(ValueError, match=r"\bn must be positive, got 0"):
        fastconv.set_num_threads(0)
    assert fastconv.get_num_threads() == 2


def test_get_num_threads_round_trips():
    assert isinstance(fastconv.get_num_threads(), int)
    assert fastconv.get_num_threads() >= 1
    for n in (1, 2, 3, 7, 1, np.int64(4)):
        fastconv.set_num_threads(n)
        got = fastconv.get_num_threads()
        assert got == n
        assert type(got) is int


def _max_gap_while_running(fn):
    """Run fn in a thread; return (largest pause of this thread's loop, fn's duration)."""
    done = threading.Event()
    timing = {}

    def work():
        start = time.perf_counter()
        fn()
        timing["duration"] = time.perf_counter() - start
        done.set()

    worker = threading.Thread(target=work)
    last = time.perf_counter()
    worker.start()
    gap = 0.0
    while not done.is_set():
        now = time.perf_counter()
        gap = max(gap, now - last)
        last = now
    worker.join()
    return gap, timing["duration"]


GIL_CALLS = {
    "max_pool2d": lambda x: fastconv.max_pool2d(x, 5, 1, 2, return_indices=True),
    "avg_pool2d": lambda x: fastconv.avg_pool2d(x, 9, 1, 4),
    "avg_pool2d_backward": lambda x: fastconv.avg_pool2d_backward(x, x.shape, 9, 1, 4),
}


@pytest.mark.parametrize("op", sorted(GIL_CALLS))
def test_kernels_release_the_gil(op):
    """While a long kernel runs in one thread, another Python thread keeps running.

    If the GIL were held, this thread's loop would stall for the whole call; with it
    released, its longest pause is a few switch intervals (5 ms each). (A C loop that
    holds the GIL, e.g. sum(range(10**8)), stalls it for the whole call.)
    """
    fastconv.set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((2, 8, 160, 160))  # float64: scalar path
    call = GIL_CALLS[op]
    call(x)  # warm up
    for _attempt in range(5):
        gap, duration = _max_gap_while_running(lambda x=x: call(x))
        if duration < 0.15:  # too short to tell: more work
            x = np.concatenate([x, x])
            continue
        if gap < duration / 2:
            return
        # a loaded machine can pause any thread now and then: try again
    pytest.fail(
        f"{op}: the calling thread stalled {gap * 1e3:.0f} ms during a "
        f"{duration * 1e3:.0f} ms call: the GIL is not released"
    )


def conv_job(seed: int) -> dict:
    """A convolution whose forward and weight-gradient paths differ from job to job (Winograd
    with both schedules, direct, implicit GEMM; the weight-gradient kernels keep per-thread
    workspaces across calls)."""
    rng = np.random.default_rng(seed)
    n, c, hw, k, r = [
        (4, 48, 24, 48, 3),  # Winograd, per-thread chunks; gathered weight gradient
        (4, 256, 7, 256, 3),  # Winograd, all threads per chunk; GEMM weight gradient
        (2, 3, 30, 32, 5),  # direct forward (pixels x channels)
        (4, 1, 20, 6, 5),  # direct, plane-wide dot products for the weight gradient
    ][seed % 4]
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((k, c, r, r)).astype(np.float32)
    pad = r // 2
    gy = rng.standard_normal((n, k, hw, hw)).astype(np.float32)
    return dict(x=x, w=w, gy=gy, pad=pad)


def run_conv_job(job: dict) -> list[np.ndarray]:
    x, w, gy, pad = job["x"], job["w"], job["gy"], job["pad"]
    return [
        fastconv.conv2d(x, w, None, 1, pad),
        fastconv.conv2d_input(x.shape, w, gy, 1, pad),
        fastconv.conv2d_weight(x, w.shape, gy, 1, pad),
    ]


@pytest.mark.parametrize("threads_per_call", [1, 2])
def test_python_threads_running_convolutions_match_a_serial_run(threads_per_call):
    fastconv.set_num_threads(threads_per_call)
    jobs = [conv_job(seed) for seed in range(8)]
    check_threads_match_serial(jobs, run_conv_job, lambda i, r: (i + r) % len(jobs))
