#!/usr/bin/env bash
# Wheels for the GPU machine lent through the device tool: Python 3.12 with its own torch, lightning,
# torchmetrics, sympy and peft, no network. These are the packages benchmarks/gpu_check.sh needs that its
# image lacks (or holds at an older version: transformers), at the versions tested in this checkout's
# .venv, into .whl/ (ignored by git; carried with `carry: [".whl"]`, about 15 MB).
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(transformers trl datasets dill multiprocess jsonargparse docstring-parser typeshed-client
          latex2sympy2_extended antlr4-python3-runtime peft)
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
rm -rf .whl
for name in "${packages[@]}"; do
  version=$(.venv/bin/python -m pip show "$name" | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "$name is not installed in .venv: pip install -e '.[bench]' first" >&2; exit 1; }
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --dest .whl "$name==$version"
done
du -sh .whl
