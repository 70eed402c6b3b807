"""Training-step benchmark: one SGD step (forward, cross-entropy, backward, step,
zero_grad) of the demo CNN from ``fastconv.training.build_model``, fastconv's layer
library vs the same model and weights in PyTorch eager, 2 threads.

Cases: the CNN `fastconv train` trains (8x8 digits, batch 32) and the same CNN on
32x32x3 images, batch 64. The check compares one step's parameter gradients (dropout
off) with a float64 PyTorch run before timing. Skipped with the reason when the layer
library (fastconv.training / nn / optim) is not there yet.

    python -m pytest benchmarks/test_bench_train.py --benchmark-only
    python -m fastconv bench --op train
"""

from __future__ import annotations

import pytest
from peers import cached_case, record

from fastconv import bench

IMPLS = ("fastconv", "torch")
CASES = [(case.name, impl) for case in bench.TRAIN_CASES for impl in IMPLS]


@pytest.mark.parametrize(("name", "impl"), CASES, ids=[f"{c}-{i}" for c, i in CASES])
def test_train_step(benchmark, case_cache, smoke, name, impl):
    def build():
        spec = bench.TRAIN_BY_NAME[name]
        return bench.train_case(spec.reduced(batch=8) if smoke else spec)

    try:
        case, errors = cached_case(case_cache, name, build)
    except LookupError as exc:
        pytest.skip(f"no demo CNN to train: {exc}")
    record(benchmark, case, impl, errors)
