"""The label command: verified completions per prompt and preference pairs."""

import json

import pytest
import torch

from rewards import MathVerifier
from rgra_lightning.errors import ConfigError
from rgra_lightning.module import RLModule
from rgra_lightning.reward_models.label import label, preference_pairs
from rgra_lightning.reward_models.label import main as label_main
from rgra_lightning.reward_models.training import (
    read_rows,
)


def test_label_writes_verified_completions_for_each_prompt(small_config, tmp_path):
    config = small_config("rgra")
    output = tmp_path / "labels.jsonl"
    summary = label(str(config), str(output), split="val", limit=3, num_generations=2, batch_size=2)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == summary["rows"] == 6
    assert [row["group"] for row in rows] == [0, 0, 1, 1, 2, 2]
    verifier = MathVerifier()
    for row in rows:
        assert row["prompt"].endswith("=")
        expected = verifier.score(row["completion"], row["reference"])
        assert (row["reward"], row["correct"]) == (expected.reward, expected.correct)
    assert summary["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / 6)
    with pytest.raises(ConfigError, match="--split"):
        label(str(config), str(output), split="dev")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda: no CUDA device"):
            label(str(config), str(output), device="cuda")


def test_preference_pairs_match_best_with_worst_within_each_group():
    rows = [
        {"group": 0, "prompt": "p", "completion": c, "reward": r}
        for c, r in [("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", 0.2)]
    ] + [{"group": 1, "prompt": "q", "completion": c, "reward": 1.0} for c in "xy"]
    pairs = preference_pairs(rows)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("c", "d")]
    assert all(p["prompt"] == "p" and p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    # A completion the verifier could not check (reward 0, error set) is no rejected side
    unchecked = {"group": 0, "prompt": "p", "completion": "e", "reward": 0.0, "error": "timed out"}
    pairs = preference_pairs([*rows, unchecked])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("c", "d")]


def test_label_command_writes_rows_and_pairs(small_config, tmp_path, capsys):
    output, pairs_output = tmp_path / "labels.jsonl", tmp_path / "new" / "pairs.jsonl"  # made as needed
    args = ["--config", str(small_config("rgra")), "--output", str(output), "--split", "train"]
    label_main(
        [
            *args,
            "--limit",
            "8",
            "--pairs-output",
            str(pairs_output),
            "--",
            "--model.sampling.num_generations=4",
        ]
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    pairs = [json.loads(line) for line in pairs_output.read_text().splitlines()]
    assert summary["rows"] == len(rows) == 32 and summary["pairs"] == len(pairs)
    assert pairs and pairs == preference_pairs(rows)
    assert read_rows(pairs_output, "correct", 0.5)[0]["kind"] == "preference"  # trainable as written


def test_label_applies_several_configs_in_order_as_fit_does(small_config, tmp_path, capsys):
    """Only the last --config was read: an overlay, which is not a whole config, failed on the base's
    options (``unknown option 'verifier' of model``), and a whole one silently replaced the first."""
    overlay = tmp_path / "two-generations.yaml"
    overlay.write_text("model:\n  init_args:\n    sampling: {num_generations: 2}\n")
    output = tmp_path / "labels.jsonl"
    label_main(
        ["--config", str(small_config("rgra")), "--config", str(overlay), "--output", str(output)]
        + ["--split", "val", "--limit", "3"]
    )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["group"] for row in rows] == [0, 0, 1, 1, 2, 2]  # the base's G = 4, then the overlay's 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 6


@pytest.mark.parametrize(
    "options, message",
    [
        (["--device", "gpu0"], "error: --device gpu0: not a torch device (cpu, cuda, cuda:N)"),
        (
            ["--num-generations", "1"],
            "error: --num-generations must be >= 2 (a group needs two completions), got 1",
        ),
        (["--output", "{tmp}"], "error: --output {tmp} is a directory: give the JSONL file to write"),
        (
            ["--pairs-output", "{tmp}/labels.jsonl"],
            "error: --pairs-output {tmp}/labels.jsonl is --output too",
        ),
        (["--pairs-output", "{tmp}"], "error: --pairs-output {tmp} is a directory: give the JSONL file"),
    ],
)
def test_label_mistakes_are_one_line_before_any_sampling(small_config, tmp_path, capsys, options, message):
    """Each was a traceback (--device, --output a directory: after sampling every prompt), named the config
    option instead of the flag (--num-generations) or overwrote the labels with the pairs."""
    args = ["--config", str(small_config("rgra")), "--output", str(tmp_path / "labels.jsonl"), "--limit", "2"]
    with pytest.raises(SystemExit) as exit_info:
        label_main([*args, *(option.format(tmp=tmp_path) for option in options)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith(message.format(tmp=tmp_path))
    assert not (tmp_path / "labels.jsonl").exists()


@pytest.mark.parametrize("spelling", ["--ckpt-path", "--ckpt_path"])
def test_label_takes_the_checkpoint_in_either_spelling(spelling, tmp_path, capsys):
    """rgra fit, validate, test and predict spell it --ckpt_path (LightningCLI's): label refused that
    spelling as an unrecognized argument."""
    missing = tmp_path / "missing.ckpt"
    args = ["--config", "no.yaml", "--output", str(tmp_path / "rows.jsonl"), spelling, str(missing)]
    with pytest.raises(SystemExit) as exit_info:  # the checkpoint is checked before the config is read
        label_main([*args, "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --ckpt-path '{missing}' does not exist\n"


def test_label_help_shows_the_overrides_after_the_double_dash(capsys):
    """``-- --model.sampling.temperature=0.8`` works (docs/reward-models.md); the help said nothing of it."""
    with pytest.raises(SystemExit) as exit_info:
        label_main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.split("\n\n")[0].endswith(" [-- OVERRIDES ...]")  # the usage
    assert "-- OVERRIDES: options after -- override the configs as on the rgra fit command line" in printed


def test_label_samples_with_the_stop_strings_fit_uses(small_config, tmp_path, monkeypatch):
    """Plain prompts labelled "Q:" stop at "Q:" in fit, so labelling samples with that stop string too:
    a run-on invented next problem would otherwise decide a completion's label."""
    seen = []
    make_experience = RLModule.make_experience

    def recorded(module, batch, sampling=None, training=False):
        seen.append(sampling.stop_strings)
        return make_experience(module, batch, sampling, training)

    monkeypatch.setattr(RLModule, "make_experience", recorded)
    config = small_config("rgra", **{"data.init_args.prompt_template": "Q: {question}\nA:"})
    label(str(config), str(tmp_path / "labels.jsonl"), split="val", limit=2, num_generations=2)
    assert seen == [("Q:",)]
