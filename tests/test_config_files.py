"""Composing YAML configs as ``rgra fit --config A --config B`` does, for the tools that read them first."""

import dataclasses

import pytest

from rgra_lightning.config_files import compose, differences, key_at_line, key_line, merge
from rgra_lightning.errors import ConfigError


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
