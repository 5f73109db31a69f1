"""Composing YAML configs as ``rgra fit --config A --config B`` does, for the tools that read them first."""

import dataclasses

import pytest
import yaml

from rgra_lightning.config_files import (
    changes,
    compose,
    differences,
    find_key,
    key_at_line,
    key_line,
    merge,
    read,
)
from rgra_lightning.errors import ConfigError
from tests.conftest import ROOT


def test_merge_replaces_lists_and_merges_mappings():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    assert merge(base, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 0}
    assert base["a"]["c"] == [1, 2]  # not mutated


def test_compose_merges_each_file_over_the_ones_before(tmp_path):
    files = {"base": "a: {b: 1, c: 2}\nd: [1]\n", "preset": "a: {c: 3}\n", "last": "d: [4, 5]\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    paths = [tmp_path / f"{name}.yaml" for name in files]
    assert compose(paths) == {"a": {"b": 1, "c": 3}, "d": [4, 5]}
    assert compose(paths[:1]) == {"a": {"b": 1, "c": 2}, "d": [1]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: [1\n",
            r"bad.yaml:2:1: expected ',' or '\]', .* \(while parsing a flow sequence at line 1, column 4\)",
        ),
        ("- 1\n", "bad.yaml: a config must be a YAML mapping, got list"),
    ],
)
def test_a_file_that_is_not_a_mapping_is_one_line_naming_it(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        compose([tmp_path / "bad.yaml"])
    assert "\n" not in str(error.value)


def test_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    """Latin-1 bytes gave a UnicodeDecodeError traceback from ``rgra fit --config`` (which reads each file
    first: ``cli.check_config_files``) and ``rgra rehearse``."""
    from rgra_lightning.cli import check_config_files

    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  name: caf\u00e9\n".encode("latin-1"))
    message = f"{path}: not UTF-8 text (byte 0xe9 at offset 18: invalid continuation byte)"
    for read_it in (lambda: read(path), lambda: check_config_files(["--config", str(path)])):
        with pytest.raises(ConfigError) as error:
            read_it()
        assert str(error.value) == message
    assert key_line(path, "model") is None  # as for a file that does not parse


def test_key_line_finds_an_option_through_init_args_and_its_value(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "trainer:\n  max_steps: 3\nmodel:\n  class_path: M\n  init_args:\n    loss:\n      beta: 0.1\n"
        "    verifier:\n      class_path: V\n"
    )
    assert key_line(path, "trainer.max_steps") == 2
    assert key_line(path, "model.loss.beta") == 7
    assert key_line(path, "model.loss.beta", "0.1") == 7
    assert key_line(path, "model.loss.beta", "0.2") is None  # set, to another value
    assert key_line(path, "model.verifier", "V") == 8  # the value anywhere below the option
    assert key_line(path, "model.loss.eps") is None
    assert key_line(tmp_path / "missing.yaml", "model") is None


def test_key_line_follows_list_items_and_names_their_index(tmp_path):
    """The parser names a list, not its item (``trainer.callbacks``): a mistake in a callback or a
    ``WeightedSum`` component had no line. The item is the one the key names, else the first that sets
    the rest of the key (to the value); a key ending at a list, with a value, is the item holding it."""
    path = tmp_path / "config.yaml"
    lines = [
        "trainer:",
        "  callbacks:",
        "    - class_path: A",
        "    - class_path: B",
        "      init_args: {every_n_step: 3}",  # 5
        "  plugins:",
        "    - class_path: P",
        "    - class_path: Q",  # 8
        "model:",
        "  init_args:",
        "    verifier:",
        "      init_args:",
        "        verifiers:",
        "          - init_args:",
        "              timeout: 2",  # 15
        "          - init_args:",
        "              timeout: 0",  # 17
    ]
    path.write_text("\n".join(lines) + "\n")
    assert find_key(path, "trainer.callbacks.every_n_step") == ("trainer.callbacks[1].every_n_step", 5)
    assert key_line(path, "trainer.callbacks[1].every_n_step") == 5
    assert key_line(path, "trainer.callbacks[0].every_n_step") is None
    assert key_line(path, "trainer.callbacks[7]") is None
    assert find_key(path, "trainer.plugins", "Q") == ("trainer.plugins[1]", 8)
    assert find_key(path, "trainer.plugins") == ("trainer.plugins", 6)  # no value: the list itself
    assert find_key(path, "model.verifier.verifiers[1].timeout") == (
        "model.verifier.verifiers[1].timeout",
        17,
    )
    assert find_key(path, "model.verifier.verifiers.timeout", "0") == (
        "model.verifier.verifiers[1].timeout",
        17,
    )
    assert find_key(path, "model.verifier.verifiers.timeout") == ("model.verifier.verifiers[0].timeout", 15)


def test_key_at_line_is_the_dotted_key_written_on_a_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "trainer:\n  max_steps: 3\nmodel:\n  init_args:\n    loss:\n      # a comment\n      beta: 0.1\n"
        "    lora: {rank: 4}\n"
    )
    assert key_at_line(path, 2) == "trainer.max_steps"
    assert key_at_line(path, 3) == "model"
    assert key_at_line(path, 7) == "model.init_args.loss.beta"
    assert key_at_line(path, 8) == "model.init_args.lora"  # a flow mapping: its key's line
    assert key_at_line(path, 6) is None  # a comment
    assert key_at_line(path, 99) is None
    assert key_at_line(tmp_path / "missing.yaml", 1) is None


def test_differences_compare_mappings_and_dataclasses_by_field_and_lists_whole():
    @dataclasses.dataclass
    class Loss:
        beta: float = 0.04
        eps: float = 0.2

    old = {"loss": Loss(), "k": [1, 4], "_class_path": "A", "lr": 1e-5}
    new = {"loss": Loss(beta=0.0), "k": [1, 4, 8], "_class_path": "B", "warmup": 5, "lr": 1e-5}
    assert differences(old, new, "model.") == [
        ("model.k", [1, 4], [1, 4, 8]),
        ("model.loss.beta", 0.04, 0.0),
        ("model.warmup", None, 5),
    ]
    assert differences(old, old) == []


@pytest.mark.parametrize(
    ("text", "line", "key", "first_line"),
    [
        ("trainer:\n  max_steps: 3\n  max_steps: 4\n", 3, "max_steps", 2),
        ("model:\n  init_args: {lora: {rank: 4, rank: 8}}\n", 2, "rank", 2),  # on one line
        ("seed_everything: 1\ntrainer: {}\nseed_everything: 2\n", 3, "seed_everything", 1),
    ],
)
def test_a_key_given_twice_in_one_mapping_is_one_line_naming_both_lines(
    tmp_path, text, line, key, first_line
):
    """YAML kept the last value without a word; ``rgra fit`` reads each file here before the parser does."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        read(path)
    assert (
        str(error.value)
        == f"{path}:{line}: key '{key}' given twice in one mapping (first at line {first_line})"
    )


def test_a_key_set_again_over_a_merge_or_in_another_mapping_is_no_duplicate(tmp_path):
    path = tmp_path / "merged.yaml"
    # ``inner`` is built after ``outer``'s merge of it: a check of built mappings saw base's x beside its own
    path.write_text(
        "base: &base {x: 1, y: 2}\nlist:\n  - inner: &inner {<<: *base, x: 3}\nouter: {<<: *inner, y: 4}\n"
        "other: {x: 5}\n"
    )
    merged = read(path)
    assert merged == yaml.safe_load(path.read_text())  # PyYAML's merge, whatever it makes of nested ones
    assert merged["list"] == [{"inner": {"x": 3, "y": 2}}] and merged["other"] == {"x": 5}


def test_every_shipped_config_reads():
    paths = sorted(path for pattern in ("*.yaml", "*.yml") for path in (ROOT / "configs").rglob(pattern))
    assert len(paths) > 20
    for path in paths:
        assert isinstance(read(path), dict), path


def test_changes_name_the_first_differing_keys_and_count_the_rest():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    new = {"a": {"b": 2, "c": [1]}, "d": "x", "f": True, "g": 0}
    assert changes(old, new) == "a.b 1 -> 2, a.c [1, 2] -> [1], f null -> true (and 1 more)"
    assert changes(old, old) == ""
