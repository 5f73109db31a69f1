"""Helpers for the verifier tests that worker processes may import: torch-free on purpose (a spawned worker
imports the module of the function it runs, and a memory-capped worker cannot afford torch)."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a message when the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data lives beside the project root in ../shared")
    return path


def expand_power(exponent: int) -> int:
    """Terms of the expanded ``(x + 1)^exponent`` (module-level: the worker imports it by name)."""
    import sympy

    x = sympy.Symbol("x")
    return len(sympy.expand((x + 1) ** exponent).args)


def loaded(module: str) -> bool:
    """Whether ``module`` is already imported in the calling (worker) process."""
    import sys

    return module in sys.modules


def main_file() -> str | None:
    """The file of the calling (worker) process's ``__main__`` module, None when it has none."""
    import sys

    return getattr(sys.modules["__main__"], "__file__", None)
