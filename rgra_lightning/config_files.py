"""Fit configs as YAML files, composed as ``rgra fit --config BASE --config PRESET ...`` composes them: a
later file's mappings merge into the earlier ones', its lists and values replace theirs. The tools that
read a config before handing it to ``rgra fit`` (``rgra ablate``, ``rgra rehearse``) read it this way, and
the command line reads each file here first, so that a mistake in one is reported at its line
(``FILE:LINE: ...``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from rgra_lightning.errors import ConfigError

LOSS_PRESETS = Path("configs/loss")  # the loss presets, composed over a base config: --config <preset>.yaml


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively: mappings merge, anything else (lists) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``(dotted name, old value, new value)`` of each setting that differs between two nested configs, in
    name order (below ``prefix``): mappings and dataclasses are compared field by field, anything else
    (lists) as a whole, a name one side lacks as None there; names starting with ``_`` (the CLI's
    bookkeeping) are skipped."""

    def plain(value: Any) -> Any:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    found = []
    for name in sorted(set(old) | set(new)):
        if name.startswith("_"):
            continue
        before, after = plain(old.get(name)), plain(new.get(name))
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found += differences(before, after, f"{prefix}{name}.")
        elif before != after:
            found.append((f"{prefix}{name}", before, after))
    return found


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping: at ``line``, first at ``first_line`` (from 1)."""

    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(f"key {key!r} given twice in one mapping (first at line {first_line})")
        self.line = line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a key given twice in one mapping (``DuplicateKeyError``): YAML keeps the
    last value silently, so ``max_steps: 3`` above ``max_steps: 4`` trained 4 updates. A key that a merge
    (``<<: *base``) brings in may be set again: that is what a merge is for."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Checked on the whole tree before any mapping is built: building one with a merge writes the merged
        # keys into its node, where a later merge of that node would find them beside its own.
        self._refuse_duplicate_keys(node)
        return super().construct_document(node)

    def _refuse_duplicate_keys(self, root: yaml.Node) -> None:
        seen: set[int] = set()  # an alias is the node it names, and may name one of its parents
        pending = [root]
        while pending:
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                pending += node.value
            elif isinstance(node, yaml.MappingNode):
                first_lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    pending += [key_node, value_node]
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    if key in first_lines:
                        raise DuplicateKeyError(key, line, first_lines[key])
                    first_lines[key] = line


def changes(old: dict[str, Any], new: dict[str, Any], first: int = 3) -> str:
    """The first ``first`` dotted keys whose values differ (``differences``), ``key OLD -> NEW``
    (values as JSON), and how many more; empty where the configs are equal."""
    differing = [f"{key} {json.dumps(a)} -> {json.dumps(b)}" for key, a, b in differences(old, new)]
    more = f" (and {len(differing) - first} more)" if len(differing) > first else ""
    return ", ".join(differing[:first]) + more


def read(path: str | Path) -> dict[str, Any]:
    """One YAML config file as a mapping. A file that cannot be read, is not YAML or is not a mapping is a
    one-line ``ConfigError`` starting ``PATH:LINE:COLUMN:`` where YAML says where; one that gives a key
    twice in one mapping, ``PATH:LINE:`` of the second."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {error.start}: {error.reason})"
        ) from error
    try:
        layer = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except DuplicateKeyError as error:
        raise ConfigError(f"{path}:{error.line}: {error}") from error
    except yaml.MarkedYAMLError as error:
        raise ConfigError(_yaml_mistake(path, error)) from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {' '.join(str(error).split())}") from error
    if not isinstance(layer, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(layer).__name__}")
    return layer


def _yaml_mistake(path: str | Path, error: yaml.MarkedYAMLError) -> str:
    """``PATH:LINE:COLUMN: problem (context at line L, column C)``, from YAML's four-line report."""
    mark, problem = error.problem_mark, error.problem or "invalid YAML"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    context = ""
    if error.context:
        context_mark = error.context_mark
        at = f" at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        context = f" ({error.context}{at})"
    return f"{where}: {problem}{context}"


def key_line(path: str | Path, key: str, value: str | None = None) -> int | None:
    """The line (from 1) of the YAML file ``path`` where the dotted option ``key`` (``model.lora.rank``) is
    set (to ``value``, written anywhere in it, where given), looking through ``init_args`` levels as the
    command line does and into lists (``find_key``); None where the file does not set it or cannot be
    read."""
    found = find_key(path, key, value)
    return found[1] if found is not None else None


def find_key(path: str | Path, key: str, value: str | None = None) -> tuple[str, int] | None:
    """``key`` as the YAML file ``path`` sets it, with the index of each list item on the way
    (``trainer.callbacks[0].every_n_steps``), and its line (from 1), as ``key_line`` finds it. A list is
    followed into the item ``key`` names (``model.verifier.verifiers[1].timeout``) or, where it names none
    (the parser's reports name a list, not its item), the first item that sets the rest of ``key`` (to
    ``value``); a ``key`` that ends at a list, with a ``value``, is the item holding it (``trainer.plugins``:
    ``trainer.plugins[0]``, its line). None where the file does not set it or cannot be read."""
    node, names = _node_tree(path), re.findall(r"[^.\[\]]+|\[\d+\]", key)
    found = _find(node, names, value) if node is not None and names else None
    if found is None or found[1] is None:
        return None
    return ".".join(found[0]).replace(".[", "["), found[1].start_mark.line + 1


def _find(node: yaml.Node, names: list[str], value: str | None) -> tuple[list[str], yaml.Node | None] | None:
    """Below the value ``node``: ``names`` with the index of each list item on the way, and the node of the
    line that sets the last (its key, or a list item; None: the key of ``node`` itself, where ``names`` is
    empty); None where ``node`` does not set them (to ``value``)."""
    if isinstance(node, yaml.SequenceNode) and (names or value is not None):
        index = re.fullmatch(r"\[(\d+)\]", names[0]) if names else None
        positions = [int(index[1])] if index else range(len(node.value))  # the item named, else each
        below = names[1:] if index else names
        for position in positions:
            item = node.value[position] if position < len(node.value) else None
            found = _find(item, below, value) if item is not None else None
            if found is not None:
                return [f"[{position}]", *found[0]], found[1] if found[1] is not None else item
        return None
    if not names:
        return ([], None) if value is None or _mentions(node, value) else None
    pair = _child(node, names[0])
    found = _find(pair[1], names[1:], value) if pair is not None else None
    if found is None:
        return None
    return [names[0], *found[0]], found[1] if found[1] is not None else pair[0]


def key_at_line(path: str | Path, line: int) -> str | None:
    """The dotted key (``model.init_args.learning_rate``, ``init_args`` levels as written) set at ``line``
    (from 1) of the YAML file ``path``: the inverse of ``key_line``; None where no key starts on that line."""
    node = _node_tree(path)
    keys: list[str] = []
    while isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.start_mark.line + 1 == line:
                return ".".join([*keys, key_node.value])
            if key_node.start_mark.line + 1 < line <= value_node.end_mark.line:
                keys.append(key_node.value)
                node = value_node
                break
        else:
            return None
    return None


def _node_tree(path: str | Path) -> yaml.Node | None:
    """The YAML file ``path`` as nodes, which know their lines; None where it cannot be read or parsed."""
    try:
        return yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _mentions(node: yaml.Node, value: str) -> bool:
    """Whether ``value`` is one of the scalars in ``node`` (a value, or in a mapping or list below it)."""
    if isinstance(node, yaml.ScalarNode):
        return node.value == value
    if isinstance(node, yaml.MappingNode):
        return any(_mentions(child, value) for pair in node.value for child in pair)
    return isinstance(node, yaml.SequenceNode) and any(_mentions(child, value) for child in node.value)


def _child(node: yaml.Node | None, name: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) nodes of option ``name`` in the mapping ``node``, or in its ``init_args``."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if key_node.value == name:
            return key_node, value_node
    for key_node, value_node in node.value:
        if key_node.value == "init_args":
            return _child(value_node, name)
    return None


def compose(paths: Iterable[str | Path]) -> dict[str, Any]:
    """The YAML files ``paths``, each merged over the ones before it (``merge``). Every preset shipped in
    ``configs/`` keeps its base's ``class_path``s, where this equals LightningCLI's composition; a file that
    names another class would have LightningCLI drop the options that class does not take."""
    composed: dict[str, Any] = {}
    for path in paths:
        composed = merge(composed, read(path))
    return composed
