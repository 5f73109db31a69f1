"""Learned reward models: scoring (classifier and LM judge), weighting with verifiers inside RL training,
the outcome-reward-model trainer and the label command. All offline, on the shipped tiny policy."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rewards import FormatReward, MathVerifier, NumericVerifier, Score, WeightedSum
from rgra_lightning.cli import main
from rgra_lightning.data import DatasetError
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_causal_lm, load_sequence_classifier, load_tokenizer
from rgra_lightning.reward_models.label import label, preference_pairs
from rgra_lightning.reward_models.label import main as label_main
from rgra_lightning.reward_models.scorer import RewardModelScorer, transform_scores
from rgra_lightning.reward_models.training import (
    DefinedAUROC,
    bradley_terry_loss,
    outcome_loss,
    read_rows,
    split_by_prompt,
)
from rgra_lightning.scoring import reward_components
from tests.conftest import TINY_POLICY
from tests.test_training import scalar_tags


def save_classifier(directory: Path, num_labels: int, seed: int = 0) -> Path:
    """A reward model started from the tiny policy's backbone with a random score head."""
    torch.manual_seed(seed)
    model = load_sequence_classifier(str(TINY_POLICY), num_labels=num_labels)
    model.save_pretrained(directory)
    load_tokenizer(str(TINY_POLICY)).save_pretrained(directory)
    return directory


def verifier_plus_reward_model(model_dir: Path) -> dict:
    """The verifier config 1.0 x MathVerifier + 0.2 x RewardModelScorer(model_dir)."""
    return {
        "class_path": "rewards.WeightedSum",
        "init_args": {
            "verifiers": [
                {"class_path": "rewards.MathVerifier"},
                {
                    "class_path": "rgra_lightning.RewardModelScorer",
                    "init_args": {"model_path": str(model_dir), "max_length": 64},
                },
            ],
            "weights": [1.0, 0.2],
        },
    }


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("orm"), num_labels=1)


# ------------------------------------------------------------------ pure math


def test_transforms_match_hand_computed_values():
    raw = torch.tensor([0.0, 2.0, -2.0])
    assert torch.allclose(transform_scores(raw, "sigmoid"), torch.tensor([0.5, 0.880797, 0.119203]))
    # mean 0, biased std sqrt(8/3)
    assert torch.allclose(transform_scores(raw, "standardize"), raw / math.sqrt(8 / 3))
    assert torch.equal(transform_scores(raw, "none"), raw)
    assert torch.equal(transform_scores(raw, "none", clip=(-1.0, 1.5)), torch.tensor([0.0, 1.5, -1.0]))
    assert torch.equal(transform_scores(torch.tensor([3.0, 3.0]), "standardize"), torch.zeros(2))
    assert torch.equal(transform_scores(torch.tensor([3.0]), "standardize"), torch.zeros(1))


def test_outcome_and_bradley_terry_losses():
    assert outcome_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # logit 2 for a positive: log(1 + e^-2); for a negative: log(1 + e^2)
    loss = outcome_loss(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(
        math.log1p(math.exp(-2))
    )


# -------------------------------------------------------------------- scoring


def test_classifier_scores_do_not_depend_on_batch_padding(classifier_dir):
    scorer = RewardModelScorer(str(classifier_dir), transform="none", max_length=64)
    prompts = ["1+2=", "-7*5="]
    completions = ["\\boxed{3}", "-(7*5)=-35 \\boxed{-35}"]
    together = scorer.raw_scores(prompts, completions)
    alone = torch.cat([scorer.raw_scores([p], [c]) for p, c in zip(prompts, completions, strict=True)])
    assert torch.allclose(together, alone, atol=1e-5)
    # and equal to the model's logit on the unpadded text
    ids = scorer.tokenizer(prompts[0] + completions[0], return_tensors="pt")
    assert together[0].item() == pytest.approx(scorer.model(**ids).logits[0, 0].item(), abs=1e-5)
    assert together[0] != together[1]
    scores = scorer.score_batch(completions, ["3", "-35"], prompts)
    assert [s.reward for s in scores] == pytest.approx(together.tolist())
    assert not any(s.correct for s in scores)  # a learned score is no verdict


def test_two_label_classifier_scores_the_log_odds_of_class_one(tmp_path):
    scorer = RewardModelScorer(str(save_classifier(tmp_path, num_labels=2)), transform="sigmoid")
    ids = scorer.tokenizer("1+1=\\boxed{2}", return_tensors="pt")
    probabilities = torch.softmax(scorer.model(**ids).logits[0], dim=-1)
    reward = scorer.score_batch(["\\boxed{2}"], ["2"], ["1+1="])[0].reward
    assert reward == pytest.approx(probabilities[1].item(), abs=1e-5)


def test_judge_scores_the_log_odds_of_its_token():
    scorer = RewardModelScorer(
        str(TINY_POLICY),
        kind="judge",
        transform="none",
        judge_template="{prompt}{completion} ",
        judge_token="1",
    )
    model = load_causal_lm(str(TINY_POLICY)).eval()
    ids = scorer.tokenizer("2-1=\\boxed{1} ", return_tensors="pt")
    p = torch.softmax(model(**ids).logits[0, -1], dim=-1)[scorer.judge_token_id].item()
    raw = scorer.raw_scores(["2-1="], ["\\boxed{1}"]).item()
    assert raw == pytest.approx(math.log(p / (1 - p)), abs=1e-4)


def test_scorer_configuration_errors_name_the_field(classifier_dir, tmp_path):
    with pytest.raises(ConfigError, match="judge_token 'ab' is 2 tokens"):
        RewardModelScorer(str(TINY_POLICY), kind="judge", judge_token="ab")
    with pytest.raises(ConfigError, match="transform must be"):
        RewardModelScorer(str(classifier_dir), transform="softmax")
    with pytest.raises(ConfigError, match="clip"):
        RewardModelScorer(str(classifier_dir), clip=(1.0, 0.0))
    with pytest.raises(ConfigError, match="3 labels"):
        RewardModelScorer(str(save_classifier(tmp_path, num_labels=3)))
    with pytest.raises(ConfigError, match="LlamaForCausalLM without a trained score head"):
        RewardModelScorer(str(TINY_POLICY))  # a policy: its score head would be random
    with pytest.raises(ConfigError, match="model directory 'runs/missing/hf_model' does not exist"):
        RewardModelScorer("runs/missing/hf_model")  # a relative path, never mistaken for a hub name
    with pytest.raises(ValueError, match="needs prompts"):
        RewardModelScorer(str(classifier_dir)).score_batch(["x"], ["1"])


def test_weighted_sum_keeps_named_unweighted_components(classifier_dir):
    scorer = RewardModelScorer(str(classifier_dir), max_length=64)
    combined = WeightedSum([NumericVerifier(), scorer, FormatReward()], [1.0, 0.2, 0.1])
    assert combined.names == ["numeric_verifier", "reward_model_scorer", "format_reward"]
    prompts, completions, references = ["1+2=", "1+2="], ["\\boxed{3}", "\\boxed{4}"], ["3", "3"]
    learned = scorer.score_batch(completions, references, prompts)
    scores = combined.score_batch(completions, references, prompts)
    for score, model_score, verdict in zip(scores, learned, [1.0, 0.0], strict=True):
        assert score.components == pytest.approx(
            {"numeric_verifier": verdict, "reward_model_scorer": model_score.reward, "format_reward": 1.0}
        )
        assert score.reward == pytest.approx(verdict + 0.2 * model_score.reward + 0.1)
    assert [s.correct for s in scores] == [True, False]  # only the numeric verifier judges correctness
    assert WeightedSum([NumericVerifier(), NumericVerifier()], [1, 1]).names == [
        "numeric_verifier",
        "numeric_verifier_2",
    ]
    with pytest.raises(ValueError, match="distinct name"):
        WeightedSum([NumericVerifier(), FormatReward()], [1, 1], names=["a", "a"])


# ----------------------------------------------------------- inside RL training


def test_rl_training_with_verifier_plus_reward_model_logs_each_component(
    small_config, classifier_dir, tmp_path
):
    verifier = verifier_plus_reward_model(classifier_dir)
    config = small_config("rgra", **{"model.init_args.verifier": verifier})
    cli = main(["fit", "--config", str(config)])
    module = cli.model
    assert len(module.reward_models) == 1
    reward_model = module.reward_models[0]
    assert not reward_model.training and not any(p.requires_grad for p in reward_model.parameters())
    initial = load_sequence_classifier(str(classifier_dir)).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in reward_model.state_dict().items()), "reward model moved"
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in reward_model.parameters()}

    scalars = scalar_tags(tmp_path / "runs")
    math_part, model_part = (
        scalars["train/rewards/math_verifier"],
        scalars["train/rewards/reward_model_scorer"],
    )
    assert len(math_part) == len(model_part) == len(scalars["train/reward"]) == 4
    for total, verdict, learned in zip(scalars["train/reward"], math_part, model_part, strict=True):
        assert 0 < learned < 1  # sigmoid
        assert total == pytest.approx(verdict + 0.2 * learned, abs=1e-5)

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(key.startswith("reward_models.") for key in checkpoint["state_dict"])
    resumed = main(["fit", "--config", str(config), "--trainer.max_steps=5", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 5


# ------------------------------------------------------------ training an ORM


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


def test_reward_model_training_learns_and_exports_a_usable_reward(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    train = write_jsonl(tmp_path / "train.jsonl", sign_rows(48))
    pairs = [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": w["completion"]}
        for r, w in zip(sign_rows(8, 100)[::2], sign_rows(8, 100)[1::2], strict=True)
    ]
    val = write_jsonl(tmp_path / "val.jsonl", sign_rows(16, 200) + pairs)
    config = yaml.safe_load(Path("configs/reward_model.yaml").read_text())
    config["trainer"].update(max_epochs=6, enable_progress_bar=False, accelerator="cpu")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    config["trainer"]["callbacks"][1]["init_args"]["output_dir"] = str(tmp_path / "hf_model")
    config["data"]["init_args"].update(train_file=str(train), val_file=str(val), batch_size=16)
    config["model"]["init_args"]["learning_rate"] = 1e-3
    path = tmp_path / "reward_model.yaml"
    path.write_text(yaml.safe_dump(config))

    cli = main(["fit", "--config", str(path)])
    metrics = cli.trainer.callback_metrics
    assert metrics["val/auroc"].item() > 0.9
    assert metrics["val/accuracy"].item() > 0.8
    assert 0 <= metrics["val/calibration_error"].item() < 0.3
    assert metrics["val/preference_accuracy"].item() > 0.8
    assert "val/loss" in metrics and "train/loss" in metrics

    scorer = RewardModelScorer(str(tmp_path / "hf_model"), max_length=64)
    right, wrong = scorer.score_batch(["\\boxed{12}", "\\boxed{-12}"], ["12", "12"], ["3*4=", "3*4="])
    assert right.reward > 0.5 > wrong.reward
    tested = main(["test", "--config", str(path), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    assert tested.trainer.callback_metrics["test/auroc"].item() > 0.9


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


# ------------------------------------------------------------- label command


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


def test_shipped_reward_configs_parse(classifier_dir, tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    config = yaml.safe_load((root / "configs" / "reward" / "orm.yaml").read_text())
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

    orm = yaml.safe_load((root / "configs" / "reward_model.yaml").read_text())
    assert orm["trainer"]["callbacks"][1]["init_args"]["output_dir"] == "runs/orm/hf_model"
    parsed = main(["--config", "configs/reward_model.yaml"], run=False)
    assert parsed.model.model.config.num_labels == 1
    assert parsed.datamodule.hparams.train_file == "runs/orm/train.jsonl"


def test_preference_pairs_match_best_with_worst_within_each_group():
    rows = [
        {"group": 0, "prompt": "p", "completion": c, "reward": r}
        for c, r in [("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", 0.2)]
    ] + [{"group": 1, "prompt": "q", "completion": c, "reward": 1.0} for c in "xy"]
    pairs = preference_pairs(rows)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("c", "d")]
    assert all(p["prompt"] == "p" and p["chosen_reward"] > p["rejected_reward"] for p in pairs)


def test_label_command_writes_rows_and_pairs(small_config, tmp_path, capsys):
    output, pairs_output = tmp_path / "labels.jsonl", tmp_path / "pairs.jsonl"
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


def test_component_means_count_a_failed_row_as_zero_and_take_names_from_the_verifier():
    combined = WeightedSum([NumericVerifier(), FormatReward()], [1.0, 0.1])
    failed = Score(0.0, False, None, "verifier raised", error="boom")  # robust fallback: no components
    scored = combined.score_batch(["\\boxed{3}"], ["3"])[0]
    means = reward_components(combined, [failed, scored])
    assert {name: value.item() for name, value in means.items()} == {
        "numeric_verifier": 0.5,
        "format_reward": 0.5,
    }
    assert reward_components(NumericVerifier(), [scored]) == {}
