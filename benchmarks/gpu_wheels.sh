#!/usr/bin/env bash
# Wheels for the GPU machine lent through the device tool: Python 3.12 with its own torch, lightning,
# torchmetrics, sympy and peft, no network. These are the packages benchmarks/gpu_check.sh needs that its
# image lacks (or holds at an older version: transformers), gguf among them (transformers reads the GGUF
# of paper_step.py --gguf with it), at the versions tested in this checkout's .venv, into .whl/ (ignored by
# git; carried with `carry: [".whl"]`, about 30 MB). vLLM 0.34 requires transformers < 5.23 (pyproject.toml's
# vllm extra), so .whl/vllm/ holds transformers 5.22.2 (the release `make test-transformers-5.22` tests),
# which gpu_check.sh's vllm section puts ahead of the .venv's.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(transformers trl datasets dill multiprocess jsonargparse docstring-parser typeshed-client
          latex2sympy2_extended antlr4-python3-runtime peft gguf)
vllm_transformers=5.22.2
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
download() {  # a destination folder, then requirements
  local dest=$1; shift
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --dest "$dest" "$@"
}
rm -rf .whl
for name in "${packages[@]}"; do
  version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)  # else set -e exits silently
  [ -n "$version" ] || { echo "$name is not installed in .venv: pip install -e '.[bench,real]' first" >&2; exit 1; }
  download .whl "$name==$version"
done
download .whl/vllm "transformers==$vllm_transformers"
du -sh .whl
