"""The dependency floor, checked when the package is imported: below it, one line says which library is too
old and how to upgrade, instead of a TypeError (or a silently wrong result) deep inside a training step;
and the keyword transformers takes the key/value cache by, renamed within the supported range (``CACHE``).

The floors are the oldest versions with the APIs the code calls, and pyproject.toml's ranges are the
versions tested (transformers 5.22.2 (``make test-transformers-5.22``) and 5.24.0, Lightning 2.6.6, peft
0.21.2):

- transformers 5.22: the oldest release tested. vLLM 0.34 (the ``vllm`` extra) requires transformers
  below 5.23, so 5.22 is what a vLLM environment gets. Within the range, 5.24 renamed the forward's
  key/value cache argument and output field (``past_key_values`` -> ``cache``: ``CACHE``) and 5.23 gradient
  checkpointing (``gradient_checkpointing_enable``, ``is_gradient_checkpointing`` -> ``activation_...``:
  ``models.enable_activation_checkpointing``, ``models.is_activation_checkpointing``); the old names warn
  in 5.24. Older, and met by all: ``dtype=`` in ``from_pretrained`` (4.56, was ``torch_dtype``),
  ``padding_side=`` in a tokenizer call, the per-layer ``DynamicCache`` (``DynamicLayer``,
  ``DynamicSlidingWindowLayer``) whose internals ``rollout.llama_decode`` reads. Checked in the released
  wheels (5.0.0, 5.12.1, 5.18.0, 5.21.1, 5.22.x, 5.23.0, 5.24.0). 5.25 is excluded by pyproject.toml: its
  ``from_pretrained`` loads Hub kernels by default and fails without the ``kernels`` package.
- Lightning 2.6 and peft 0.21: the versions tested (peft is optional: the ``real`` extra, for LoRA).

The check reads installed versions from package metadata, so ``rgra`` starts without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata

# distribution -> (floor, the first release not tested, what needs the floor); pyproject.toml says the same
TESTED: dict[str, tuple[str, str, str]] = {
    "transformers": ("5.22", "5.25", "the oldest release tested"),
    "lightning": ("2.6", "2.7", "the oldest release tested"),
    "peft": ("0.21", "0.22", "the oldest release tested with transformers 5.22 and 5.24"),
}


class DependencyError(ImportError):
    """An installed library is older than the floor; the message names it, the floor and the fix."""


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``5.24.0.dev0`` -> ``(5, 24, 0)``, ``2.6`` -> ``(2, 6)``."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def check_versions(installed: Callable[[str], str] = metadata.version) -> None:
    """Raise ``DependencyError`` when an installed distribution of ``TESTED`` is older than its floor.

    A distribution that is not installed is not checked (peft is optional; a missing required one fails
    at its import with its own message). ``installed`` maps a distribution name to its version string.
    """
    for name, (floor, untested, reason) in TESTED.items():
        try:
            version = installed(name)
        except metadata.PackageNotFoundError:
            continue
        if release(version) < release(floor):
            raise DependencyError(
                f"rgra-lightning needs {name}>={floor} ({reason}), found {version}: "
                f"pip install '{name}>={floor},<{untested}'"
            )


def _installed_release(name: str) -> tuple[int, ...]:
    try:
        return release(metadata.version(name))
    except metadata.PackageNotFoundError:
        return ()


# The keyword of a transformers forward's key/value cache, and the field of its output holding the cache.
CACHE = "cache" if _installed_release("transformers") >= (5, 24) else "past_key_values"
