"""Peak memory of one cold convolution call: the RSS growth it causes beyond its inputs.

Each (layer, direction) runs in a fresh process, so one call's workspace cannot hide
another's.  Usage (prints one line per call)::

    python benchmarks/peak_memory.py [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

# (N, C, H=W, K, R=S, stride, padding), as in the benchmark layer set.
LAYERS = {
    "vgg_3x3_112": (2, 64, 112, 128, 3, 1, 1),
    "resnet_stem_7x7s2": (8, 3, 224, 64, 7, 2, 3),
}

_CHILD = """
import resource, sys
import numpy as np
import fastconv
fastconv.set_num_threads({threads})
n, c, h, k, r, stride, pad = {layer}
rng = np.random.default_rng(0)
x = rng.random((n, c, h, h), dtype=np.float32)
w = rng.random((k, c, r, r), dtype=np.float32)
oh = (h + 2 * pad - r) // stride + 1
gy = rng.random((n, k, oh, oh), dtype=np.float32)
fastconv.conv2d(x[:1, :, :8, :8], w, None, stride, pad)  # load the module, start threads
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if "{direction}" == "fwd":
    out = fastconv.conv2d(x, w, None, stride, pad)
elif "{direction}" == "dx":
    out = fastconv.conv2d_input(x.shape, w, gy, stride, pad)
else:
    out = fastconv.conv2d_weight(x, w.shape, gy, stride, pad)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{name} {direction}: peak RSS growth {{(after - before) / 1024:.1f}} MB "
      f"(output {{out.nbytes / 2**20:.1f}} MB)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name, layer in LAYERS.items():
        for direction in ("fwd", "dx", "dw"):
            code = _CHILD.format(threads=args.threads, layer=layer, name=name, direction=direction)
            subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
