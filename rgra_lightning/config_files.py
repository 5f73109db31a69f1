"""Fit configs as YAML files, composed as ``rgra fit --config BASE --config PRESET ...`` composes them: a
later file's mappings merge into the earlier ones', its lists and values replace theirs. The tools that
read a config before handing it to ``rgra fit`` (``rgra ablate``, ``rgra rehearse``) read it this way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from rgra_lightning.errors import ConfigError


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively: mappings merge, anything else (lists) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def compose(paths: Iterable[str | Path]) -> dict[str, Any]:
    """The YAML files ``paths``, each merged over the ones before it (``merge``). Every preset shipped in
    ``configs/`` keeps its base's ``class_path``s, where this equals LightningCLI's composition; a file that
    names another class would have LightningCLI drop the options that class does not take."""
    composed: dict[str, Any] = {}
    for path in paths:
        try:
            layer = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: {' '.join(str(error).split())}") from error
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(layer).__name__}")
        composed = merge(composed, layer)
    return composed
