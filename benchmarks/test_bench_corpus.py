"""The shape corpus (every conv layer of whole networks), the random draws, and the
per-call overhead cases.

    python -m fastconv bench --op corpus                 # 60 layers drawn with --seed 0
    python -m fastconv bench --op corpus --sample 0      # all of them (hours)
    python -m fastconv bench --op random --sample 40     # random layers

Under pytest these check the corpus itself (layer counts of each network, the CIFAR
variants, deduplication, reproducible draws) and run a few corpus cases end to end.
"""

from __future__ import annotations

import pytest

from fastconv import cli
from fastconv.bench import corpus as cp
from fastconv.bench.report import summarize

# Conv layers per network, as torchvision (or the paper) builds them.
CONV_COUNTS = {
    ("lenet5", 32): 2,
    ("alexnet", 224): 5,
    ("vgg11", 224): 8,
    ("vgg16", 224): 13,
    ("resnet18", 224): 20,  # 17 convs + 3 downsample
    ("resnet34", 224): 36,
    ("resnet50", 224): 53,
    ("resnet20", 32): 21,  # 19 convs + 2 shortcut projections
    ("resnet56", 32): 57,
    ("mobilenet_v2", 224): 52,
    ("googlenet", 224): 57,  # stem 3 + 9 modules x 6
    ("efficientnet_b0", 224): 81,
}


@pytest.mark.parametrize(("net", "size"), list(CONV_COUNTS), ids=lambda v: str(v))
def test_network_layer_counts(net, size):
    layers = cp.network_layers(net, size)
    assert len(layers) == CONV_COUNTS[net, size]
    assert all(layer.out_hw >= 1 for layer in layers)
    assert len({layer.name for layer in layers}) == len(layers)


def test_late_stage_planes():
    """The planes the layer set misses: 7x7 at 224, 4x4 and smaller at 32."""
    assert cp.network_layers("resnet18", 224)[-1].h == 7
    resnet50_32 = cp.network_layers("resnet50", 32)
    assert resnet50_32[0].r == 3  # CIFAR stem: 3x3, stride 1, no max-pool
    assert resnet50_32[-1].h == 4
    assert resnet50_32[-1].c == 512
    squeeze = [ly for ly in cp.network_layers("efficientnet_b0", 224) if ".se." in ly.name]
    assert squeeze
    assert all(ly.h == 1 and ly.r == 1 for ly in squeeze)
    depthwise = [ly for ly in cp.network_layers("mobilenet_v2", 32) if ly.groups > 1]
    assert all(ly.groups == ly.c == ly.k for ly in depthwise)


def test_corpus_has_distinct_shapes_at_every_batch():
    entries = cp.corpus()
    keys = [cp._shape_key(e.layer) for e in entries]
    assert len(keys) == len(set(keys))
    assert {e.layer.n for e in entries} == set(cp.BATCHES)
    total = sum(
        len(cp.network_layers(n, s)) for n, (sizes, _) in cp.NETWORKS.items() for s in sizes
    )
    assert sum(e.count for e in entries) == total * len(cp.BATCHES)


def test_random_draws_are_reproducible_and_follow_the_distribution():
    first, again = cp.random_layers(200, seed=3), cp.random_layers(200, seed=3)
    assert [e.layer for e in first] == [e.layer for e in again]
    assert [e.layer for e in cp.random_layers(20, seed=4)] != [e.layer for e in first[:20]]
    for entry in first:
        ly = entry.layer
        assert 1 <= ly.h <= 56
        assert ly.r in (1, 3, 5, 7)
        assert ly.stride in (1, 2)
        assert ly.n in cp.BATCHES
        assert ly.c % ly.groups == 0
        assert ly.k % ly.groups == 0
        assert ly.out_hw >= 1
        assert entry.gflop <= 8.0
    kinds = {ly.layer.name.split()[1] for ly in first}
    assert kinds == {"dense", "depthwise", "small"}


def test_corpus_summary_reports_the_share_below_parity():
    rows = [
        {
            "op": "corpus",
            "case": f"c{i}",
            "direction": "fwd",
            "impls": {"fastconv": {"speedup": {"torch": v}}, "torch": {}},
        }
        for i, v in enumerate((2.0, 0.5, 1.5, 1.0))
    ]
    (s,) = summarize(rows)
    assert s["below_1"] == pytest.approx(0.25)
    assert s["min_case"] == "c1"
    assert not s["meets"]  # 0.5 < the slowest-layer target


def test_corpus_command_smoke(tmp_path, capsys):
    out = tmp_path / "corpus.json"
    status = cli.main(
        [
            "bench",
            "--smoke",
            "--op",
            "corpus,random",
            "--sample",
            "2",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0
    assert "corpus fwd: fastconv vs" in text
    assert "random dw: fastconv vs" in text
    assert "% of cases below 1.0x" in text


def test_all_leaves_the_corpus_out_and_unknown_ops_are_refused(capsys):
    from fastconv.bench.catalogue import OPS

    assert "corpus" not in OPS
    assert "random" not in OPS
    assert cli.main(["bench", "--smoke", "--op", "corpus,nope"]) == 2
    assert "unknown nope" in capsys.readouterr().err


def test_overhead_command_smoke(capsys):
    """The per-call overhead cases end to end (tiny calls against torch and numpy)."""
    status = cli.main(["bench", "--smoke", "--op", "overhead", "--no-progress"])
    text = capsys.readouterr().out
    assert status == 0
    for call in ("conv2d", "max_pool2d", "gemm"):
        assert f"overhead {call}: fastconv vs" in text
