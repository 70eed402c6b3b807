#!/usr/bin/env bash
# Development build: compiles fastconv._C into fastconv/ so that `python -m pytest`
# from this folder runs against the working tree.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f build/dev/build.ninja ]; then
  version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v python)" \
    -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
    -DSKBUILD_PROJECT_VERSION="$version" >/dev/null
fi
cmake --build build/dev
so=$(ls build/dev/_C*.so)
cp "$so" "fastconv/.$(basename "$so").tmp" && mv "fastconv/.$(basename "$so").tmp" "fastconv/$(basename "$so")"
