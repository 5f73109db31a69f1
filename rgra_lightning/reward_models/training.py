"""Training an outcome reward model (ORM): a sequence classifier that predicts whether a completion is right.

    rgra label --config configs/rgra.yaml --split train --output runs/orm/train.jsonl
    python -m rgra_lightning fit --config configs/reward_model.yaml

Data (``RewardDataModule``): JSON-lines files whose rows are of two kinds, mixed freely:

- outcome rows ``{"prompt", "completion", <label_field>}``, labelled ``float(row[label_field]) >
  label_threshold`` (``correct`` or ``reward`` as written by ``rgra label``), trained
  with binary cross-entropy on the model's logit;
- preference rows ``{"prompt", "chosen", "rejected"}``, trained with the Bradley-Terry loss
  ``-log sigmoid(s_chosen - s_rejected)``.

A training file whose outcome rows are all labelled alike is refused (``require_both_labels``).
Validation and test log ``accuracy`` (predicted probability > 0.5), ``auroc`` and ``calibration_error``
(expected calibration error, 10 bins) on outcome rows, ``preference_accuracy`` on pairs, and ``loss``.
``ExportHuggingFace`` saves the trained model as a HF directory that ``RewardModelScorer`` loads as a reward.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError
from torchmetrics.utilities import dim_zero_cat

from rgra_lightning.data.records import DatasetError
from rgra_lightning.errors import ConfigError, require_valid
from rgra_lightning.models import load_sequence_classifier, load_tokenizer
from rgra_lightning.optim import warmup_schedule
from rgra_lightning.precision import check_trainable_dtype
from rgra_lightning.reward_models.scorer import classifier_scores, pair_text

Row = dict[str, Any]


def outcome_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy ``[]`` of log-odds ``scores`` ``[N]`` against 0/1 ``labels`` ``[N]``."""
    return F.binary_cross_entropy_with_logits(scores, labels)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """``mean(-log sigmoid(chosen - rejected))`` ``[]`` over pairs of scores ``[M]``."""
    return -F.logsigmoid(chosen - rejected).mean()


def read_rows(path: Path, label_field: str, label_threshold: float) -> list[Row]:
    """The rows of a JSONL file, each checked and given ``kind`` (``outcome``/``preference``) and, for
    outcome rows, a 0/1 ``label``. A bad row raises ``DatasetError`` naming the file, line and field.
    Outcome rows whose verifier check failed (``rgra label``'s non-null ``error``: a timeout, a worker that
    died, the verifier's parser raising on the answer) are skipped with a warning: their 0 reward is no
    verdict on the completion."""
    if not path.is_file():
        raise DatasetError(f"reward data file {path} does not exist (label completions with rgra label)")
    rows, unverified = [], 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{where}: invalid JSON ({error.msg})") from error
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise DatasetError(f"{where}: a row needs a string field 'prompt'")
            if "chosen" in row or "rejected" in row:
                for field in ("chosen", "rejected"):
                    if not isinstance(row.get(field), str):
                        raise DatasetError(f"{where}: a preference row needs a string field {field!r}")
                rows.append({**row, "kind": "preference"})
                continue
            if not isinstance(row.get("completion"), str):
                raise DatasetError(f"{where}: a row needs 'completion' (outcome) or 'chosen' and 'rejected'")
            if row.get("error") is not None:
                unverified += 1
                continue
            if label_field not in row:
                raise DatasetError(f"{where}: no label field {label_field!r} (a boolean or a finite number)")
            value = row[label_field]
            if not isinstance(value, (bool, int, float)) or not math.isfinite(value):
                raise DatasetError(
                    f"{where}: label field {label_field!r} must be a boolean or a finite number, "
                    f"got {value!r}"
                )
            rows.append({**row, "kind": "outcome", "label": float(float(value) > label_threshold)})
    if unverified:
        rank_zero_warn(
            f"{path}: skipped {unverified} rows whose verifier check failed (field 'error' set): their "
            "label is unknown"
        )
    if not rows:
        raise DatasetError(f"reward data file {path} has no rows")
    return rows


def require_both_labels(rows: list[Row], path: str, label_field: str, label_threshold: float) -> None:
    """Raise ``DatasetError`` when the outcome rows of a training file hold one label only. A classifier
    trained on them learns a constant: its validation accuracy is the base rate, yet the run ends normally
    and exports it over the reward model a reward config points at. Preference rows need no labels."""
    labels = [row["label"] for row in rows if row["kind"] == "outcome"]
    if labels and len(set(labels)) == 1:
        verdict = "correct" if labels[0] else "wrong"
        raise DatasetError(
            f"{path}: {len(labels)} rows, all labelled {verdict}: an outcome reward model needs both correct "
            f"and wrong completions (a row is correct when data.label_field {label_field!r} > "
            f"data.label_threshold {label_threshold})"
        )


def split_by_prompt(rows: list[Row], val_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, val): a seeded ``val_fraction`` of the distinct prompts, with all their rows, is held out,
    so no validation prompt is seen in training."""
    prompts = sorted({row["prompt"] for row in rows})
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: max(1, round(len(prompts) * val_fraction))])
    if len(held_out) == len(prompts):
        raise ConfigError(
            f"data.val_fraction={val_fraction} holds out all {len(prompts)} prompts of the training file: "
            "give a val_file or more prompts"
        )
    return [r for r in rows if r["prompt"] not in held_out], [r for r in rows if r["prompt"] in held_out]


class DefinedAUROC(BinaryAUROC):
    """``BinaryAUROC`` that is NaN when the labels hold one class only: AUROC is undefined there, and
    torchmetrics' 0 would read as a perfectly inverted model (and win or lose a checkpoint monitor)."""

    def compute(self) -> Tensor:
        target = dim_zero_cat(self.target)
        if target.numel() == 0 or bool(target.min() == target.max()):
            return torch.tensor(float("nan"))
        return super().compute()


class EpochShuffle(Sampler[int]):
    """The training order of epoch e, a function of the seed and e alone, so that a fit resumed at an
    epoch's end (``--ckpt_path last``) trains on the orders an uninterrupted one does: a loader shuffled
    by a generator made with it would start the resumed fit's epoch again from the seed. The orders are
    those an uninterrupted fit got from ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    before (measured: a 2-epoch fit's weights are bit for bit the same), whose generator gave, per epoch,
    the loader's base seed and then the permutation."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed
            order = torch.randperm(self.size, generator=generator)
        return iter(order.tolist())


class RewardDataModule(LightningDataModule):
    """Labelled (prompt, completion) rows and preference pairs for reward-model training; see the module
    docstring for the row format.

    Args:
        train_file: JSONL training rows; its outcome rows must hold both labels.
        val_file: JSONL validation rows; none: ``val_fraction`` of the training prompts are held out.
        test_file: JSONL test rows; none: the validation rows.
        val_fraction: share of distinct training prompts held out when there is no ``val_file``.
        label_field: outcome rows' field holding the label (a boolean or a number).
        label_threshold: a row is positive when ``float(label) > label_threshold``.
        batch_size: rows per training step.
        val_batch_size: rows per validation/test step.
        seed: the held-out split and the training shuffle order.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        val_fraction: float = 0.1,
        label_field: str = "correct",
        label_threshold: float = 0.5,
        batch_size: int = 32,
        val_batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1 or val_batch_size < 1:
            raise ConfigError(
                f"data.batch_size and data.val_batch_size must be >= 1, got {batch_size}, {val_batch_size}"
            )
        self.save_hyperparameters()
        self.train_rows: list[Row] = []
        self.val_rows: list[Row] = []
        self.test_rows: list[Row] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows:
            return
        hp = self.hparams

        def read(file: str) -> list[Row]:
            return read_rows(Path(file), hp.label_field, hp.label_threshold)

        self.train_rows = read(hp.train_file)
        require_both_labels(self.train_rows, hp.train_file, hp.label_field, hp.label_threshold)
        if hp.val_file is None:
            self.train_rows, self.val_rows = split_by_prompt(self.train_rows, hp.val_fraction, hp.seed)
        else:
            self.val_rows = read(hp.val_file)
        self.test_rows = read(hp.test_file) if hp.test_file else self.val_rows

    def train_dataloader(self) -> DataLoader:
        seed = self.hparams.seed
        return DataLoader(
            self.train_rows,
            self.hparams.batch_size,
            sampler=EpochShuffle(len(self.train_rows), seed),
            generator=torch.Generator().manual_seed(seed),  # its per-epoch base-seed draw, as before
            collate_fn=list,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_rows, self.hparams.val_batch_size, collate_fn=list)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_rows, self.hparams.val_batch_size, collate_fn=list)


class RewardModelModule(LightningModule):
    """Trains a sequence-classification reward model with one output (a log-odds score).

    Args:
        model_path: where to start: a causal LM directory (its backbone is kept, a fresh score head is
            added, e.g. the policy itself) or a sequence-classification model with one label.
        gguf_file: optional GGUF file inside ``model_path``.
        dtype: parameter dtype, ``float32`` | ``bfloat16`` | ``float16``; ``fit`` refuses half precision
            (``on_fit_start``), ``validate`` and ``test`` take any.
        max_length: tokens per (prompt + completion) text; longer texts keep their end. Saved with the
            exported tokenizer (``model_max_length``), where ``RewardModelScorer`` takes it by default.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
    """

    def __init__(
        self,
        model_path: str = "models/arith-tiny",
        gguf_file: str | None = None,
        dtype: str = "float32",
        max_length: int = 512,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        require_valid(
            "model.",
            ("max_length", max_length, max_length >= 1, ">= 1"),
            ("learning_rate", learning_rate, learning_rate > 0, "> 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
        )
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model_path, gguf_file)
        self.tokenizer.truncation_side = "left"
        self.tokenizer.model_max_length = max_length  # exported with it: the scorer reads texts as trained
        self.model = load_sequence_classifier(model_path, gguf_file, dtype, num_labels=1)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.eval_metrics = torch.nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "accuracy": BinaryAccuracy(),
                        "auroc": DefinedAUROC(),
                        "calibration_error": BinaryCalibrationError(n_bins=10),
                    },
                    prefix=f"{stage}/",
                )
                for stage in ("val", "test")
            }
        )
        self.preference_accuracy = torch.nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})

    @property
    def hf_model(self) -> torch.nn.Module:
        """The model ``ExportHuggingFace`` saves."""
        return self.model

    def on_fit_start(self) -> None:
        """A ``ConfigError`` when the trained weights are stored in half precision (``model.dtype`` or a
        ``-true`` precision plugin's cast), where AdamW steps of the learning rate round away."""
        hp = self.hparams
        fix = "use model.dtype=float32 with trainer.precision=bf16-mixed for bf16 compute"
        check_trainable_dtype(
            self.model.parameters(), str(self.trainer.precision), hp.dtype, hp.learning_rate, fix
        )

    def scores(self, prompts: list[str], completions: list[str]) -> Tensor:
        """Log-odds scores ``[N]`` (float32) of (prompt, completion) pairs."""
        texts = [
            pair_text(prompt, completion) for prompt, completion in zip(prompts, completions, strict=True)
        ]
        return classifier_scores(self.model, self.tokenizer, texts, self.hparams.max_length)

    def losses(self, batch: list[Row]) -> dict[str, Tensor]:
        """The loss and its inputs: ``outcome_scores``/``labels`` ``[N]`` and ``chosen``/``rejected`` ``[M]``
        (empty when the batch has no row of that kind)."""
        outcomes = [row for row in batch if row["kind"] == "outcome"]
        pairs = [row for row in batch if row["kind"] == "preference"]
        out: dict[str, Tensor] = {}
        parts = []
        if outcomes:
            out["outcome_scores"] = self.scores(
                [r["prompt"] for r in outcomes], [r["completion"] for r in outcomes]
            )
            out["labels"] = torch.tensor([r["label"] for r in outcomes], device=self.device)
            parts.append(outcome_loss(out["outcome_scores"], out["labels"]))
        if pairs:
            both = self.scores(
                [r["prompt"] for r in pairs] * 2,
                [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs],
            )
            out["chosen"], out["rejected"] = both[: len(pairs)], both[len(pairs) :]
            parts.append(bradley_terry_loss(out["chosen"], out["rejected"]))
        out["loss"] = torch.stack(parts).sum()
        return out

    def training_step(self, batch: list[Row], batch_idx: int) -> Tensor:
        out = self.losses(batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=len(batch))
        if "labels" in out:
            predicted = (out["outcome_scores"] > 0).float()
            self.log(
                "train/accuracy", (predicted == out["labels"]).float().mean(), batch_size=len(out["labels"])
            )
        return out["loss"]

    def _evaluate(self, batch: list[Row], stage: str) -> None:
        out = self.losses(batch)
        self.log(f"{stage}/loss", out["loss"], batch_size=len(batch), sync_dist=True)
        if "labels" in out:
            metrics = self.eval_metrics[stage]
            metrics.update(torch.sigmoid(out["outcome_scores"].detach()), out["labels"].long())
            # prog_bar: shown at the end of each validation as well (LineProgressBar's end line in a log)
            self.log_dict(metrics, prog_bar=True, batch_size=len(out["labels"]))
        if "chosen" in out:
            preference = self.preference_accuracy[stage]
            preference.update((out["chosen"] > out["rejected"]).float())
            self.log(f"{stage}/preference_accuracy", preference, batch_size=len(out["chosen"]))

    def validation_step(self, batch: list[Row], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: list[Row], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
        scheduler = warmup_schedule(optimizer, hp.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
