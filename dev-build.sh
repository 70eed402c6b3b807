#!/usr/bin/env bash
# Development build: compiles fastconv._C into src/fastconv/ so that
# `PYTHONPATH=src python -m pytest` runs against the working tree.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f build/dev/build.ninja ]; then
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v python)" \
    -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
    -DSKBUILD_PROJECT_VERSION="$(python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')" >/dev/null
fi
cmake --build build/dev
so=$(ls build/dev/_C*.so)
cp "$so" "src/fastconv/.$(basename "$so").tmp" && mv "src/fastconv/.$(basename "$so").tmp" "src/fastconv/$(basename "$so")"
