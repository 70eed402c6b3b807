"""Tensors of more than 2**31 elements: every index the kernels compute must be 64-bit.

Each op family runs in its own child process (its memory goes back to the system when
it exits). The inputs are ``np.zeros`` arrays, which the OS maps lazily: the untouched
pages read as zeros and cost no memory, so an 8.6 GB input costs a few pages -- the
values planted near its end, past element 2**31, where a 32-bit offset wraps around.
The results are checked at the positions those values reach, and at zeros.

- conv2d (the 1x1 pointwise GEMM, and a strided 3x3 on the direct kernel) and
  conv2d_weight read an input of 129 x 4096 x 4096 > 2**31 elements;
- max_pool2d and avg_pool2d read one (sparse windows), and max_pool2d_backward writes
  one (8.6 GB: the peak of the test);
- gemm reads an A of (2**25 + 1) x 65 elements;
- batch norm: the statistics and the backward sums of a (3, 2, 400_000_001) input, on
  the kernels the public ops call (``fastconv._cpu``): the public batch_norm holds three
  arrays of the input's size, 26 GB here.
"""

from __future__ import annotations

import textwrap

import pytest
from helpers import run_python

pytestmark = pytest.mark.slow

NEEDED_GB = 10  # the pooling child's peak is 8.7 GB


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
    except OSError:
        return float("inf")  # cannot tell: try
    return int(fields["MemAvailable"].split()[0]) / 2**20


def run_family(code: str) -> str:
    if _available_gb() < NEEDED_GB:
        pytest.skip(f"needs {NEEDED_GB} GB of free memory, {_available_gb():.1f} GB available")
    prelude = "import numpy as np\nimport fastconv as fc\nfc.set_num_threads(2)\n"
    child = run_python(prelude + textwrap.dedent(code), timeout=300)
    assert child.returncode == 0, f"{child.stdout}\n{child.stderr[-3000:]}"
    return child.stdout


def test_conv2d_on_an_input_of_more_than_2_to_the_31_elements():
    out = run_family(
        """
        x = np.zeros((1, 129, 4096, 4096), np.float32)
        assert x.size > 2**31
        planted = {(128, 4095, 4095): 3, (128, 17, 4000): 5, (0, 4095, 4095): 7,
                   (127, 100, 100): 2, (128, 4095, 4094): 11}
        for (c, h, w), value in planted.items():
            x[0, c, h, w] = value

        w1 = (np.arange(129, dtype=np.float32) % 5 + 1).reshape(1, 129, 1, 1)
        y = fc.conv2d(x, w1)
        assert fc.last_algorithms()["conv2d"] == "pointwise_gemm"
        expected = {}
        for (c, h, w), value in planted.items():
            expected[h, w] = expected.get((h, w), 0) + w1[0, c, 0, 0] * value
        for (h, w), value in expected.items():
            assert y[0, 0, h, w] == value, ((h, w), y[0, 0, h, w], value)
        assert y[0, 0, :4000].sum() == expected[17, 4000] + expected[100, 100]
        assert y.sum() == sum(expected.values())

        w3 = (np.arange(129 * 9, dtype=np.float32) % 7 + 1).reshape(1, 129, 3, 3)
        y = fc.conv2d(x, w3, stride=3, padding=1)
        assert fc.last_algorithms()["conv2d"] == "direct"
        expected = {}
        for (c, h, w), value in planted.items():  # the output (and tap) each value reaches
            (oh, r), (ow, s) = divmod(h + 1, 3), divmod(w + 1, 3)
            expected[oh, ow] = expected.get((oh, ow), 0) + w3[0, c, r, s] * value
        for (oh, ow), value in expected.items():
            assert y[0, 0, oh, ow] == value, ((oh, ow), y[0, 0, oh, ow], value)
        assert y.sum() == sum(expected.values())

        gw = fc.conv2d_weight(x, w1.shape, np.ones((1, 1, 4096, 4096), np.float32))
        sums = np.zeros(129, np.float32)
        for (c, h, w), value in planted.items():
            sums[c] += value
        np.testing.assert_array_equal(gw.ravel(), sums)
        print("ok")
        """
    )
    assert out.split() == ["ok"]


def test_pooling_on_an_input_and_an_output_of_more_than_2_to_the_31_elements():
    """Windows of 2x2 taps every 8 rows and columns: the input is read sparsely (the
    kernels' cost is per tap), its planes' offsets run past 2**31 all the same."""
    out = run_family(
        """
        shape = (129, 1, 4096, 4096)
        x = np.zeros(shape, np.float32)
        x[128, 0, 4088, 4088] = 5
        x[128, 0, 16, 4000] = -3
        x[64, 0, 8, 8] = 2
        # taps (8 oh + {0, 4}, 8 ow + {0, 4}); 512 x 512 windows per plane
        out, idx = fc.max_pool2d(x, 2, stride=8, dilation=4, return_indices=True)
        assert out.shape == (129, 1, 512, 512)
        assert out[128, 0, 511, 511] == 5 and idx[128, 0, 511, 511] == 4088 * 4096 + 4088
        assert out[64, 0, 1, 1] == 2 and idx[64, 0, 1, 1] == 8 * 4096 + 8
        # -3 and zeros: the first zero wins
        assert out[128, 0, 2, 500] == 0 and idx[128, 0, 2, 500] == 16 * 4096 + 4004
        first_taps = np.arange(512)[:, None] * 8 * 4096 + np.arange(512) * 8
        assert out.sum() == 7 and (idx[0, 0] == first_taps).all()

        avg = fc.avg_pool2d(x, 2, stride=8)  # taps (8 oh + {0, 1}, 8 ow + {0, 1})
        assert avg[128, 0, 511, 511] == 5 / 4 and avg[128, 0, 2, 500] == -3 / 4
        assert avg[64, 0, 1, 1] == 2 / 4 and avg.sum() == 4 / 4

        del x, avg
        grad_output = np.arange(out.size, dtype=np.float32).reshape(out.shape) % 9 + 1
        g = fc.max_pool2d_backward(grad_output, idx, shape)
        assert g.size > 2**31
        for p, oh, ow in ((128, 511, 511), (128, 2, 500), (64, 1, 1), (0, 0, 0), (128, 0, 0)):
            h, w = divmod(int(idx[p, 0, oh, ow]), 4096)
            assert g[p, 0, h, w] == grad_output[p, 0, oh, ow], (p, oh, ow)
        # the last window row of the last plane: one gradient per window, where its max was
        assert g[128, 0, 4088:].sum() == grad_output[128, 0, 511].sum()
        assert g[128, 0, 4088, ::8].tolist() == grad_output[128, 0, 511].tolist()
        print("ok")
        """
    )
    assert out.split() == ["ok"]


def test_gemm_on_an_input_of_more_than_2_to_the_31_elements():
    out = run_family(
        """
        m = 2**25 + 1
        a = np.zeros((m, 65), np.float32)
        assert a.size > 2**31
        a[m - 1] = np.arange(65) % 4
        a[m - 8, 3] = 2
        a[3, 64] = 5
        b = (np.arange(65 * 3, dtype=np.float32) % 3).reshape(65, 3)
        c = fc.gemm(a, b, alpha=2.0)
        for row in (m - 1, m - 8, 3, 0, m // 2):
            expected = 2 * (a[row].astype(np.float64) @ b)
            np.testing.assert_array_equal(c[row], expected, err_msg=str(row))
        assert c.sum() == 2 * (a[[m - 1, m - 8, 3]].astype(np.float64) @ b).sum()
        print("ok")
        """
    )
    assert out.split() == ["ok"]


def test_batch_norm_kernels_on_an_input_of_more_than_2_to_the_31_elements():
    out = run_family(
        """
        from fastconv import _cpu
        x = np.zeros((3, 2, 400_000_001), np.float32)
        assert x.size > 2**31
        x[2, 1, 400_000_000] = 2**20
        x[2, 1, 7] = 8
        x[0, 0, 5] = -4
        count = 3 * 400_000_001
        mean, var = _cpu.batch_norm_stats(x)
        sums = np.array([-4.0, 2.0**20 + 8])
        squares = np.array([16.0, 2.0**40 + 64])
        np.testing.assert_array_equal(mean, (sums / count).astype(np.float32))
        np.testing.assert_allclose(var, squares / count - (sums / count) ** 2, rtol=1e-6)
        _, sum_g, sum_gx = _cpu.batch_norm_backward(x, x, np.ones(2, np.float32), True, False)
        np.testing.assert_array_equal(sum_g, sums.astype(np.float32))
        np.testing.assert_array_equal(sum_gx, squares.astype(np.float32))
        print("ok")
        """
    )
    assert out.split() == ["ok"]
