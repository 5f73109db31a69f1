"""Reliability: exact resumption after a crash, crash-safe checkpoints, NaN/inf steps, verifier failures,
out-of-memory advice, over-long prompts, and clear one-line errors for bad input."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rgra_lightning.update
from rewards import MathVerifier, Score, Verifier, WeightedSum
from rgra_lightning.checkpointing import AtomicCheckpointIO
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError, NonFiniteTrainingError
from rgra_lightning.losses import rl_loss
from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout import HFEngine, SamplingConfig
from rgra_lightning.scoring import checked_score, robust_score_batch
from tests.conftest import ROOT, TINY_POLICY, one_line_error
from tests.conftest import sample as sample_rollout

FAST = {  # no validation: these tests are about the training loop, not accuracy
    "trainer.limit_val_batches": 0,
    "model.init_args.validate_before_training": False,
}


def scalars_by_step(run_dir: Path, tag: str) -> dict[int, list[float]]:
    """Every logged value of ``tag`` under ``run_dir`` (all versions), keyed by step."""
    values: dict[int, list[float]] = {}
    for path in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                values.setdefault(event.step, []).append(event.value)
    return values


def assert_same_run(straight: Path, resumed: Path, straight_policy: dict, resumed_policy: dict) -> None:
    """Every reward logged by the interrupted + resumed run equals the straight run's at that step, every
    step is covered, and the final parameters are bit-identical."""
    expected = scalars_by_step(straight, "train/reward")
    got = scalars_by_step(resumed, "train/reward")
    assert len({values[0] for values in expected.values()}) > 1, "constant rewards would prove nothing"
    assert sorted(got) == sorted(expected)
    for step, values in got.items():
        assert values == [expected[step][0]] * len(values), f"step {step}: {values} vs {expected[step]}"
    assert straight_policy.keys() == resumed_policy.keys()
    assert all(torch.equal(straight_policy[name], resumed_policy[name]) for name in straight_policy)


def fresh_config(
    small_config, tmp_path: Path, name: str, data_module: str | None = None, **overrides: object
) -> Path:
    """``small_config`` in its own directory (runs/ and checkpoints/ beside it)."""
    directory = tmp_path / name
    directory.mkdir()
    config = small_config("rgra", data_module=data_module, **FAST, **overrides)
    moved = directory / "rgra.yaml"
    text = config.read_text().replace(str(tmp_path / "runs"), str(directory / "runs"))
    moved.write_text(text.replace(str(tmp_path / "checkpoints"), str(directory / "checkpoints")))
    return moved


def test_resume_after_interruption_equals_an_uninterrupted_run(small_config, tmp_path):
    """2 updates, stop, ``--ckpt_path last``, 2 more == 4 straight: same rewards, bit-identical weights."""
    straight = fresh_config(small_config, tmp_path, "straight")
    a = main(["fit", "--config", str(straight), "--trainer.max_steps=4"])
    interrupted = fresh_config(small_config, tmp_path, "interrupted")
    main(["fit", "--config", str(interrupted), "--trainer.max_steps=2"])
    b = main(["fit", "--config", str(interrupted), "--trainer.max_steps=4", "--ckpt_path", "last"])
    assert b.trainer.global_step == 4
    assert_same_run(
        tmp_path / "straight" / "runs",
        tmp_path / "interrupted" / "runs",
        a.model.policy.state_dict(),
        b.model.policy.state_dict(),
    )


def test_resume_at_and_after_an_epoch_boundary_continues_the_data_order(small_config, tmp_path):
    """A 12-problem file, 4 prompts a step: 3 steps an epoch. Interrupted at the end of epoch 0 and in
    the middle of epoch 1, both resumed runs equal a straight 5-step run (epoch 1 is a new permutation)."""
    train = tmp_path / "train.jsonl"
    rows = [
        {"question": f"{a}+{b}", "answer": str(a + b)}
        for a, b in zip(range(2, 14), range(9, 21), strict=True)
    ]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {
        "data_module": "JsonFilesDataModule",
        "data.init_args.train_file": str(train),
        "data.init_args.val_file": str(train),
        "model.init_args.sampling.num_generations": 2,
    }
    straight = fresh_config(small_config, tmp_path, "straight", **data)
    a = main(["fit", "--config", str(straight), "--trainer.max_steps=5"])
    for stop in (3, 4):
        interrupted = fresh_config(small_config, tmp_path, f"stop{stop}", **data)
        main(["fit", "--config", str(interrupted), f"--trainer.max_steps={stop}"])
        b = main(["fit", "--config", str(interrupted), "--trainer.max_steps=5", "--ckpt_path", "last"])
        assert_same_run(
            tmp_path / "straight" / "runs",
            tmp_path / f"stop{stop}" / "runs",
            a.model.policy.state_dict(),
            b.model.policy.state_dict(),
        )


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(small_config, tmp_path):
    """A real ``kill -9`` of ``python -m rgra_lightning fit`` after its update-4 checkpoint, then
    ``fit --ckpt_path last``: the 8 logged rewards and the final weights equal a straight 8-update run."""
    every = {"trainer.max_steps": 8}
    straight = fresh_config(small_config, tmp_path, "straight", **every)
    a = main(["fit", "--config", str(straight)])
    killed = fresh_config(small_config, tmp_path, "killed", **every)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "rgra_lightning", "fit", "--config", str(killed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill once update 4 is checkpointed and its reward flushed (the next step has started).
    checkpoint = tmp_path / "killed" / "checkpoints" / "epoch=0-step=4.ckpt"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and 3 in scalars_by_step(tmp_path / "killed" / "runs", "train/reward"):
            break
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "hf_model").exists()
    b = main(["fit", "--config", str(killed), "--ckpt_path", "last"])
    assert b.trainer.global_step == 8
    assert_same_run(
        tmp_path / "straight" / "runs",
        tmp_path / "killed" / "runs",
        a.model.policy.state_dict(),
        b.model.policy.state_dict(),
    )


def test_checkpoints_every_k_updates_keep_the_last_n_and_the_final_state(small_config, tmp_path):
    """Every 2 updates and at the end (update 7), the 3 newest kept, ``last.ckpt``, the HF export."""
    config = small_config("rgra", **FAST)
    cli = main(["fit", "--config", str(config), "--trainer.max_steps=7"])
    directory = tmp_path / "checkpoints"
    steps = sorted(int(path.stem.split("step=")[1]) for path in directory.glob("epoch=*-step=*.ckpt"))
    assert steps == [4, 6, 7]
    assert torch.load(directory / "last.ckpt", weights_only=True)["global_step"] == 7
    assert not list(directory.glob("*.partial")), "temporary checkpoint files were left behind"
    exported = load_causal_lm(str(tmp_path / "hf_model")).state_dict()
    trained = cli.model.policy.state_dict()
    assert all(torch.equal(exported[name], trained[name]) for name in trained)


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(1000)}, path)

    def crash_midway(obj: object, file) -> None:  # what a kill during torch.save leaves behind
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_checkpoint_is_renamed_into_place_from_the_same_directory(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renames.append((src, dst)) or real_replace(src, dst))
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "sub" / "last.ckpt")
    [(source, target)] = renames
    assert Path(source).parent == Path(target).parent == tmp_path / "sub"
    assert torch.load(target, weights_only=True) == {"global_step": 3}
    umask = os.umask(0o022)  # readable by the group, as a file written with open() (mkstemp made 0600)
    try:
        AtomicCheckpointIO().save_checkpoint({"global_step": 4}, tmp_path / "shared.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.ckpt").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------- NaN / inf


def nan_loss_on_updates(monkeypatch, bad_updates: set[int]) -> list[int]:
    """Make ``rl_loss`` return NaN on the given (0-based) update indices; returns the call log."""
    calls: list[int] = []

    def loss(*args, **kwargs):
        out = rl_loss(*args, **kwargs)
        calls.append(len(calls))
        if len(calls) - 1 in bad_updates:
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(rgra_lightning.update, "rl_loss", loss)
    return calls


def test_nonfinite_update_is_skipped_counted_and_training_continues(small_config, tmp_path, monkeypatch):
    calls = nan_loss_on_updates(monkeypatch, {1})
    config = small_config("rgra", **FAST)
    with pytest.warns(UserWarning, match="non-finite loss .* update skipped"):
        cli = main(["fit", "--config", str(config), "--trainer.max_steps=3"])
    assert cli.trainer.global_step == 3  # max_steps counts applied updates: one more rollout was needed
    assert len(calls) == 4
    skipped = scalars_by_step(tmp_path / "runs", "train/nonfinite_updates")
    assert sorted(v for values in skipped.values() for v in values) == [0.0, 0.0, 0.0, 1.0]
    assert all(torch.isfinite(p).all() for p in cli.model.policy.parameters())


def test_too_many_nonfinite_updates_stop_with_last_good_checkpoint(
    small_config, tmp_path, monkeypatch, capsys
):
    nan_loss_on_updates(monkeypatch, set(range(2, 100)))
    config = small_config("rgra", **FAST, **{"model.init_args.max_consecutive_nonfinite": 3})
    error = one_line_error(["fit", "--config", str(config)], capsys)
    assert "3 consecutive updates had a NaN/inf loss or gradient" in error
    assert "model.learning_rate" in error
    saved = tmp_path / "checkpoints" / "nonfinite-stop-step=2.ckpt"
    assert str(saved) in error
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == 2
    good = torch.load(tmp_path / "checkpoints" / "epoch=0-step=2.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(state["state_dict"][name], good[name]) for name in good)
    assert not issubclass(NonFiniteTrainingError, ConfigError)  # divergence, not a config mistake


# ------------------------------------------------------------------ verifier faults


class FlakyVerifier(Verifier):
    """Raises on completions containing '1', returns an error Score on '2' and a NaN reward on '3'."""

    def score(self, completion: str, reference: str) -> Score:
        if "1" in completion:
            raise RuntimeError("verifier crashed")
        if "2" in completion:
            return Score(0.0, False, None, "timeout", error="timed out after 1s")
        if "3" in completion:
            return Score(float("nan"), False, None, "bug")
        return MathVerifier().score(completion, reference)


class BrokenBatchVerifier(FlakyVerifier):
    """Fails on any batch of more than one completion, as a verifier running out of memory would."""

    def score_batch(self, completions, references, prompts=None):
        if len(completions) > 1:
            raise RuntimeError("batch scoring service unavailable")
        return super().score_batch(completions, references, prompts)


class LearnedReward(Verifier):
    """Like a learned reward model: scores (prompt, completion) pairs only, and fails on batches of more
    than one (an out-of-memory error)."""

    judges_correctness = False

    def score(self, completion, reference):
        raise ValueError("needs prompts")

    def score_batch(self, completions, references, prompts=None):
        if prompts is None:
            raise ValueError("needs prompts")
        if len(completions) > 1:
            raise RuntimeError("out of memory")
        return [Score(0.5, False, None, "learned")]


def test_verifier_crashes_give_reward_zero_and_are_counted():
    completions, references = ["#### 7", "1", "2", "3"], ["7"] * 4
    for verifier in (FlakyVerifier(), BrokenBatchVerifier()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = robust_score_batch(verifier, completions, references)
        assert len(caught) == 1 and "scoring one at a time" in str(caught[0].message)
        checked = [checked_score(score) for score in scores]
        assert [score.reward for score in checked] == [1.0, 0.0, 0.0, 0.0]
        assert [score.error is not None for score in checked] == [False, True, True, True]
        assert "verifier crashed" in checked[1].error and "non-finite" in checked[3].error


def test_a_failing_learned_reward_keeps_the_verifiers_reward_when_scored_one_at_a_time():
    verifier = WeightedSum([MathVerifier(), LearnedReward()], [1.0, 0.2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = robust_score_batch(verifier, ["\\boxed{2}", "\\boxed{3}"], ["2", "2"], ["1+1=", "1+1="])
    assert "out of memory" in str(caught[0].message)
    assert [score.reward for score in scores] == pytest.approx([1.1, 0.1])  # 1.0 x verifier + 0.2 x 0.5
    assert [score.error for score in scores] == [None, None]


def test_training_survives_a_crashing_verifier_and_logs_the_errors(small_config, tmp_path):
    verifier = {"class_path": "tests.test_faults.BrokenBatchVerifier"}
    config = small_config("rgra", **FAST, **{"model.init_args.verifier": verifier})
    cli = main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    assert cli.trainer.global_step == 2
    errors = scalars_by_step(tmp_path / "runs", "train/verifier_errors")
    assert len(errors) == 2 and all(v > 0 for values in errors.values() for v in values)
    rewards = scalars_by_step(tmp_path / "runs", "train/reward")
    assert all(math.isfinite(v) for values in rewards.values() for v in values)


# -------------------------------------------------------------- out of memory


def test_out_of_memory_suggests_what_to_reduce(small_config, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(HFEngine, "generate", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError) as error:
        main(["fit", "--config", str(small_config("rgra", **FAST))])
    message = str(error.value)
    for knob in ("model.micro_batch_size", "data.batch_size", "sampling.max_new_tokens", "bfloat16"):
        assert knob in message
    assert "Tried to allocate" in str(error.value.__cause__)


# -------------------------------------------------------- prompt too long


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(str(TINY_POLICY)), load_tokenizer(str(TINY_POLICY))


def test_overlong_prompt_is_truncated_from_the_left_with_a_warning(tiny):
    policy, tokenizer = tiny  # context window: 64 tokens
    config = SamplingConfig(num_generations=2, max_new_tokens=8)
    long_prompt = "+".join(["1"] * 40) + "="  # 80 tokens
    with pytest.warns(UserWarning, match="1 of 2 prompts are longer than 56 tokens"):
        rollout = sample_rollout(policy, tokenizer, [long_prompt, "2+2="], config)
    assert rollout.truncated_prompts == 1
    assert rollout.prompt_length == 56
    kept = tokenizer.decode(rollout.input_ids[0, :56], skip_special_tokens=True)
    assert long_prompt.endswith(kept) and kept.endswith("1=")


def test_overlong_prompt_is_rejected_when_asked(tiny):
    policy, tokenizer = tiny
    config = SamplingConfig(num_generations=2, max_new_tokens=8, prompt_overflow="error")
    with pytest.raises(ConfigError, match="1 of 1 prompts are longer than 56 tokens .* longest has 80"):
        sample_rollout(policy, tokenizer, ["+".join(["1"] * 40) + "="], config)
    with pytest.raises(ConfigError, match="max_new_tokens=64 leaves no room"):
        sample_rollout(policy, tokenizer, ["1+1="], SamplingConfig(max_new_tokens=64))


def test_prompt_overflow_option_is_validated(small_config, capsys):
    args = ["--config", str(small_config("rgra")), "--model.sampling.prompt_overflow=drop"]
    with pytest.raises(SystemExit):
        main(args, run=False)
    error = capsys.readouterr().err
    assert "prompt_overflow" in error and "truncate" in error and "error" in error


# ----------------------------------------------------------------- bad input


LOSS_KEYS = "policy_term, eps_low, eps_high, beta, kl_estimator, aggregation, aggregation_constant, advantage"


def misspelling_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args, run=False)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_misspelled_command_line_key_is_named_with_the_valid_keys(small_config, capsys):
    error = misspelling_error(["--config", str(small_config("rgra")), "--model.loss.bta=0.1"], capsys)
    assert "unrecognized arguments: --loss.bta=0.1" in error
    assert f"valid keys of rgra_lightning.RLModule under loss: {LOSS_KEYS}" in error


def test_misspelled_yaml_key_is_named_with_the_valid_keys(small_config, capsys):
    config = small_config("rgra")
    config.write_text(config.read_text().replace("beta:", "bta:"))
    error = misspelling_error(["--config", str(config)], capsys)
    assert "Group 'loss' does not accept option 'bta'" in error
    assert f"valid keys of rgra_lightning.RLModule under loss: {LOSS_KEYS}" in error


def test_misspelled_nested_and_top_level_keys_list_their_level(small_config, capsys):
    config = small_config("rgra")
    config.write_text(
        config.read_text().replace("policy_term:", "advantage: {scal: none}\n      policy_term:")
    )
    error = misspelling_error(["--config", str(config)], capsys)
    assert "valid keys of rgra_lightning.RLModule under loss.advantage: baseline, scale," in error
    error = misspelling_error(["--config", str(small_config("rgra")), "--model.learnin_rate=3"], capsys)
    assert "valid keys of rgra_lightning.RLModule: model_path, gguf_file," in error
    assert "learning_rate" in error
    # a class given inside another (LoraConfig inside RLModule): the inner one's keys
    error = misspelling_error(["--config", str(small_config("rgra")), "--model.lora={r: 4}"], capsys)
    assert "valid keys of rgra_lightning.models.LoraConfig: rank, alpha, target_modules" in error


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.num_minibatches=0", "model.num_minibatches must be >= 1, got 0"),
        ("--model.max_consecutive_nonfinite=0", "model.max_consecutive_nonfinite must be >= 1, got 0"),
        ("--model.sampling.top_p=0", "sampling.top_p must be in (0, 1], got 0"),
        ("--model.loss.eps_high=-0.1", "eps_high must be > 0"),
        ("--data.batch_size=0", "data.batch_size and data.val_batch_size must be >= 1"),
    ],
)
def test_more_invalid_values_name_the_field_and_range(small_config, capsys, override, message):
    assert message in one_line_error(["--config", str(small_config("rgra")), override], capsys)


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    model = tmp_path / "no-pad"
    shutil.copytree(TINY_POLICY, model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings.pop("pad_token")
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(str(model))
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


def dataset_args(small_config, tmp_path: Path, train: Path) -> list[str]:
    val = tmp_path / "val.jsonl"
    val.write_text('{"question": "1+1", "answer": "2"}\n')
    config = small_config("rgra", data_module="JsonFilesDataModule")
    return ["fit", "--config", str(config), f"--data.train_file={train}", f"--data.val_file={val}"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": \n', "line 2 is not valid JSON"),
        ('{"question": "1+1", "answer": "2"}\n{"answer": "4"}\n', "line 2: field 'question'"),
        ('{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n', "line 2"),
    ],
    ids=["missing", "empty", "invalid-json", "no-question", "no-answer"],
)
def test_bad_dataset_files_name_the_file_and_row(small_config, tmp_path, capsys, content, expected):
    train = tmp_path / "train.jsonl"
    if content is not None:
        train.write_text(content)
    error = one_line_error(dataset_args(small_config, tmp_path, train), capsys)
    assert str(train) in error and expected in error
