"""The outcome-reward-model trainer: losses, rows, held-out split, AUROC, and a run that learns and
exports."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader

from rewards import WeightedSum
from rgra_lightning.cli import main
from rgra_lightning.data import DatasetError
from rgra_lightning.errors import RUN_REFUSED, ConfigError
from rgra_lightning.reward_models.scorer import RewardModelScorer
from rgra_lightning.reward_models.training import (
    DefinedAUROC,
    EpochShuffle,
    RewardDataModule,
    bradley_terry_loss,
    outcome_loss,
    read_rows,
    split_by_prompt,
)
from tests.conftest import ROOT


def test_outcome_and_bradley_terry_losses():
    assert outcome_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # logit 2 for a positive: log(1 + e^-2); for a negative: log(1 + e^2)
    loss = outcome_loss(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(
        math.log1p(math.exp(-2))
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sign_rows(count: int, offset: int = 0) -> list[dict]:
    """Outcome rows whose label is readable from the text: a boxed positive answer is correct."""
    rows = []
    for i in range(offset, offset + count):
        prompt = f"{i % 9 + 1}*{i % 7 + 1}="
        answer = (i % 9 + 1) * (i % 7 + 1)
        rows.append({"prompt": prompt, "completion": f"\\boxed{{{answer}}}", "correct": True})
        rows.append({"prompt": prompt, "completion": f"\\boxed{{-{answer}}}", "correct": False})
    return rows


def reward_model_config(tmp_path: Path, train: Path, val: Path) -> Path:
    """configs/reward_model.yaml with its data, logs, checkpoints and export in ``tmp_path``, 6 epochs."""
    config = yaml.safe_load((ROOT / "configs" / "reward_model.yaml").read_text())
    config["trainer"].update(max_epochs=6, enable_progress_bar=False, accelerator="cpu")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    config["trainer"]["callbacks"][1]["init_args"]["output_dir"] = str(tmp_path / "hf_model")
    config["data"]["init_args"].update(train_file=str(train), val_file=str(val), batch_size=16)
    config["model"]["init_args"]["learning_rate"] = 1e-3
    path = tmp_path / "reward_model.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_reward_model_training_learns_and_exports_a_usable_reward(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    train = write_jsonl(tmp_path / "train.jsonl", sign_rows(48))
    pairs = [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": w["completion"]}
        for r, w in zip(sign_rows(8, 100)[::2], sign_rows(8, 100)[1::2], strict=True)
    ]
    val = write_jsonl(tmp_path / "val.jsonl", sign_rows(16, 200) + pairs)
    path = reward_model_config(tmp_path, train, val)

    cli = main(["fit", "--config", str(path)])
    metrics = cli.trainer.callback_metrics
    assert metrics["val/auroc"].item() > 0.9
    assert metrics["val/accuracy"].item() > 0.8
    assert 0 <= metrics["val/calibration_error"].item() < 0.3
    assert metrics["val/preference_accuracy"].item() > 0.8
    assert "val/loss" in metrics and "train/loss" in metrics
    # what a validation's progress line shows: it showed no metric
    assert {"val/auroc", "val/accuracy", "val/calibration_error"} <= set(cli.trainer.progress_bar_metrics)

    scorer = RewardModelScorer(str(tmp_path / "hf_model"))
    assert scorer.max_length == 64  # the training max_length, saved with the exported tokenizer
    right, wrong = scorer.score_batch(["\\boxed{12}", "\\boxed{-12}"], ["12", "12"], ["3*4=", "3*4="])
    assert right.reward > 0.5 > wrong.reward
    tested = main(["test", "--config", str(path), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    assert tested.trainer.callback_metrics["test/auroc"].item() > 0.9

    # A second fresh fit would save beside this run's checkpoints and export over its model: refused, as
    # an RL fit is (any checkpoint callback with a dirpath is checked).
    checkpoints = sorted((tmp_path / "checkpoints").iterdir())
    exported = (tmp_path / "hf_model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(path)])
    assert refused.value.code == RUN_REFUSED
    earlier = f"error: {tmp_path / 'checkpoints'} already holds the checkpoints of an earlier run: resume"
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(earlier)
    assert sorted((tmp_path / "checkpoints").iterdir()) == checkpoints
    assert (tmp_path / "hf_model" / "model.safetensors").read_bytes() == exported


def test_a_fit_resumed_at_an_epochs_end_trains_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """The training loader was shuffled by a generator made with it, so a fit resumed after epoch 1
    trained epoch 2 in epoch 1's order (an audit: AUROC 0.932 against 0.944 uninterrupted). The weights
    after 1 + 1 epochs now equal those after 2 (and, measured, those of a 2-epoch fit before the change:
    the sampler draws what the loader's generator drew)."""
    monkeypatch.chdir(ROOT)

    def fit(directory: Path, *epochs: int) -> dict[str, Tensor]:
        directory.mkdir()
        train = write_jsonl(directory / "train.jsonl", sign_rows(48))
        path = reward_model_config(directory, train, write_jsonl(directory / "val.jsonl", sign_rows(8, 200)))
        for index, count in enumerate(epochs):
            resume = ["--ckpt_path", "last"] if index else []
            cli = main(["fit", "--config", str(path), f"--trainer.max_epochs={count}", *resume])
        return cli.model.model.state_dict()

    straight, resumed = fit(tmp_path / "straight", 2), fit(tmp_path / "resumed", 1, 2)
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    sampler, orders = EpochShuffle(48, 0), []
    for epoch in (0, 1, 2, 1):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[1] == orders[3] and len({tuple(order) for order in orders}) == 3
    assert sorted(orders[0]) == list(range(48))
    shuffled = DataLoader(list(range(48)), 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert [i for batch in shuffled for i in batch.tolist()] == orders[0]  # the earlier loader's first


def test_a_training_file_whose_rows_are_all_one_label_is_refused(tmp_path, monkeypatch, capsys):
    """It trained a constant (validation accuracy = the base rate) and exported it as the reward model."""
    monkeypatch.chdir(ROOT)
    rows = sign_rows(24)
    right = write_jsonl(tmp_path / "right.jsonl", [row for row in rows if row["correct"]])
    val = write_jsonl(tmp_path / "val.jsonl", sign_rows(4, 200))
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(reward_model_config(tmp_path, right, val))])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {right}: 24 rows, all labelled correct: an outcome reward model needs both correct and "
        "wrong completions (a row is correct when data.label_field 'correct' > data.label_threshold 0.5)"
    )
    assert not (tmp_path / "hf_model").exists() and not (tmp_path / "checkpoints").exists()

    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{**row, "reward": 0.2} for row in rows])
    with pytest.raises(DatasetError, match=r"wrong.jsonl: 48 rows, all labelled wrong: .*'reward' > .* 0.5"):
        RewardDataModule(str(wrong), str(val), label_field="reward").setup("fit")
    pairs = [{"prompt": "p", "chosen": "\\boxed{1}", "rejected": "\\boxed{-1}"}]
    data = RewardDataModule(str(write_jsonl(tmp_path / "pairs.jsonl", pairs)), str(val))
    data.setup("fit")  # preference rows carry no label: a pairs-only file trains
    assert data.train_rows[0]["kind"] == "preference"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "--model.dtype=bfloat16",
            "error: model.dtype=bfloat16 stores the trained weights in bfloat16, where an AdamW step of "
            "model.learning_rate=0.001 rounds away on every weight larger than 5.1e-01: use "
            "model.dtype=float32 with trainer.precision=bf16-mixed for bf16 compute",
        ),
        (
            "--trainer.precision=bf16-true",
            "error: trainer.precision=bf16-true casts the trained weights and their AdamW state to bfloat16, "
            "where an AdamW step of model.learning_rate=0.001 rounds away on every weight larger than "
            "5.1e-01: use trainer.precision=bf16-mixed (float32 weights, bfloat16 compute)",
        ),
    ],
)
def test_reward_model_weights_stored_in_half_precision_are_refused(
    tmp_path, monkeypatch, capsys, option, message
):
    """As for the policy: AdamW steps round away on bfloat16 weights, and the trainer said nothing."""
    monkeypatch.chdir(ROOT)
    train = write_jsonl(tmp_path / "train.jsonl", sign_rows(24))
    val = write_jsonl(tmp_path / "val.jsonl", sign_rows(4, 200))
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(reward_model_config(tmp_path, train, val)), option])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (tmp_path / "checkpoints").exists()


def test_reward_rows_are_checked_with_file_and_line(tmp_path):
    good = {"prompt": "1+1=", "completion": "\\boxed{2}", "correct": True}
    cases = {
        "{not json": "invalid JSON",
        json.dumps({"completion": "x", "correct": True}): "'prompt'",
        json.dumps({"prompt": "p", "correct": True}): "'completion'",
        json.dumps({"prompt": "p", "chosen": "a"}): "'rejected'",
        json.dumps({"prompt": "p", "completion": "c", "correct": "yes"}): "'correct' must be a boolean",
        json.dumps({"prompt": "p", "completion": "c", "correct": [1]}): "finite number, got \\[1\\]",
        '{"prompt": "p", "completion": "c", "correct": NaN}': "finite number, got nan",
        '{"prompt": "p", "completion": "c", "correct": Infinity}': "finite number, got inf",
        # it said "must be a boolean or a finite number, got None"
        json.dumps({"prompt": "p", "completion": "c"}): "no label field 'correct' \\(a boolean or a finite",
    }
    for line, message in cases.items():
        path = tmp_path / "rows.jsonl"
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(DatasetError, match=message) as caught:
            read_rows(path, "correct", 0.5)
        assert f"{path}:2" in str(caught.value)
    rows = read_rows(
        write_jsonl(tmp_path / "ok.jsonl", [{**good, "reward": 1}, {**good, "reward": 0.2}]), "reward", 0.5
    )
    assert [row["label"] for row in rows] == [1.0, 0.0] and rows[0]["kind"] == "outcome"
    with pytest.raises(DatasetError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl", "correct", 0.5)


def test_rows_whose_verifier_check_failed_are_not_trained_as_wrong(tmp_path):
    """rgra label writes a completion the verifier could not check (a timeout) with reward 0, correct false
    and the error: as a training row it would be a wrong completion whatever it says."""
    good = {"prompt": "1+1=", "completion": "\\boxed{2}", "correct": True, "error": None}
    timed_out = {**good, "correct": False, "error": "timed out after 5 s"}
    path = write_jsonl(tmp_path / "rows.jsonl", [good, timed_out, {**good, "correct": False}])
    with pytest.warns(UserWarning, match=r"rows.jsonl: skipped 1 rows whose verifier check failed"):
        rows = read_rows(path, "correct", 0.5)
    assert [row["label"] for row in rows] == [1.0, 0.0] and all(row["error"] is None for row in rows)


def test_held_out_split_never_shares_a_prompt():
    rows = sign_rows(40)
    train, val = split_by_prompt(rows, 0.25, seed=0)
    assert len(train) + len(val) == len(rows)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    assert 0.15 < len(val) / len(rows) < 0.35
    with pytest.raises(ConfigError, match="holds out all 1 prompts"):
        split_by_prompt([r for r in rows if r["prompt"] == rows[0]["prompt"]], 0.25, seed=0)


def test_auroc_is_nan_when_the_labels_hold_one_class():
    auroc = DefinedAUROC()
    auroc.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))
    assert torch.isnan(auroc.compute())  # torchmetrics' BinaryAUROC gives 0: "perfectly inverted"
    auroc.update(torch.tensor([0.1]), torch.tensor([0]))
    assert auroc.compute().item() == pytest.approx(1.0)


def test_shipped_reward_configs_parse(classifier_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / "configs" / "reward" / "orm.yaml").read_text())
    verifier = config["model"]["init_args"]["verifier"]["init_args"]
    assert (
        verifier["verifiers"][1]["init_args"]["model_path"] == "runs/orm/hf_model"
    )  # what reward_model.yaml exports
    verifier["verifiers"][1]["init_args"]["model_path"] = str(classifier_dir)
    path = tmp_path / "orm.yaml"
    path.write_text(yaml.safe_dump(config))
    module = main(["--config", "configs/rgra.yaml", "--config", str(path)], run=False).model
    assert isinstance(module.verifier, WeightedSum) and module.verifier.weights == [1.0, 0.2]
    assert isinstance(module.verifier.verifiers[1], RewardModelScorer) and len(module.reward_models) == 1

    orm = yaml.safe_load((ROOT / "configs" / "reward_model.yaml").read_text())
    assert orm["trainer"]["callbacks"][1]["init_args"]["output_dir"] == "runs/orm/hf_model"
    parsed = main(["--config", "configs/reward_model.yaml"], run=False)
    assert parsed.model.model.config.num_labels == 1
    assert parsed.datamodule.hparams.train_file == "runs/orm/train.jsonl"
