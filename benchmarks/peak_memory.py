"""Peak memory of one cold convolution call: the RSS growth it causes beyond its inputs.

Each (layer, direction) runs in a fresh process, so one call's workspace cannot hide
another's.  Usage (prints one line per call)::

    python benchmarks/peak_memory.py [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from fastconv.bench.catalogue import CONV_BY_NAME

# Two layers of the benchmark's conv table, each direction in a fresh process.
LAYERS = [CONV_BY_NAME[name] for name in ("vgg_3x3_112", "resnet_stem_7x7s2")]

_CHILD = """
import resource, sys
import numpy as np
import fastconv
fastconv.set_num_threads({threads})
stride, pad, groups = {stride}, {pad}, {groups}
rng = np.random.default_rng(0)
x = rng.random({input_shape}, dtype=np.float32)
w = rng.random({weight_shape}, dtype=np.float32)
gy = rng.random({output_shape}, dtype=np.float32)
fastconv.conv2d(x[:1, :, :8, :8], w, None, stride, pad, 1, groups)  # load, start threads
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if "{direction}" == "fwd":
    out = fastconv.conv2d(x, w, None, stride, pad, 1, groups)
elif "{direction}" == "dx":
    out = fastconv.conv2d_input(x.shape, w, gy, stride, pad, 1, groups)
else:
    out = fastconv.conv2d_weight(x, w.shape, gy, stride, pad, 1, groups)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{name} {direction}: peak RSS growth {{(after - before) / 1024:.1f}} MB "
      f"(output {{out.nbytes / 2**20:.1f}} MB)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for layer in LAYERS:
        for direction in ("fwd", "dx", "dw"):
            code = _CHILD.format(
                threads=args.threads,
                name=layer.name,
                direction=direction,
                stride=layer.stride,
                pad=layer.pad,
                groups=layer.groups,
                input_shape=layer.input_shape,
                weight_shape=layer.weight_shape,
                output_shape=layer.output_shape,
            )
            subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
