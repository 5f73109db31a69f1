"""Math prompts for RL: a LightningDataModule yielding batches of ``{"prompt": [...], "reference": [...]}``.

Sources: the embedded synthetic arithmetic task (default, offline, generated in code) or local JSON/JSONL
files with a question and an answer field (loaded with ``datasets``, the path a user takes for any file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from rgra_lightning.errors import ConfigError
from rgra_lightning.synthetic import split_problems

Example = dict[str, str]
ReferenceFormat = Literal["answer", "gsm8k_solution"]

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


class DatasetError(ConfigError):
    """A dataset file or row is unusable; the message names the file, row and field."""


def reference_answer(value: object, reference_format: ReferenceFormat, where: str) -> str:
    """The reference answer of one row: the field itself, or the ``#### N`` line of a GSM8K solution."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
        raise DatasetError(f"{where}: no usable answer (got {value!r})")
    text = str(value).strip()
    if reference_format == "gsm8k_solution":
        match = _GSM8K_FINAL.search(text)
        if match is None:
            raise DatasetError(f"{where}: solution has no '#### <answer>' line")
        text = match.group(1).replace(",", "")
    return text


def check_json_file(file: Path) -> None:
    """Raise a ``DatasetError`` naming the file and line if it is empty or not valid JSON / JSON Lines.

    ``datasets`` reports such files with a generic message; users need the line to fix.
    """
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"dataset file {str(file)!r} is empty")
    if file.suffix == ".json" and text.lstrip().startswith("["):
        documents = [(1, text)]
    else:
        documents = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    for first_line, document in documents:
        try:
            json.loads(document)
        except json.JSONDecodeError as error:
            line = first_line + error.lineno - 1
            raise DatasetError(
                f"dataset file {str(file)!r} line {line} is not valid JSON: {error.msg}"
            ) from error


def load_examples(
    path: str, question_field: str, answer_field: str, reference_format: ReferenceFormat, template: str
) -> list[Example]:
    """Prompts and references from a local ``.json``/``.jsonl`` file, validating every row."""
    import datasets

    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"dataset file {path!r} does not exist")
    check_json_file(file)
    try:
        rows = datasets.load_dataset("json", data_files=str(file), split="train")
    except Exception as error:  # datasets wraps JSON errors in several exception types
        raise DatasetError(f"dataset file {path!r} is not valid JSON Lines: {error}") from error
    if len(rows) == 0:
        raise DatasetError(f"dataset file {path!r} is empty")
    for field in (question_field, answer_field):
        if field not in rows.column_names:
            raise DatasetError(f"dataset file {path!r} has no field {field!r}; fields: {rows.column_names}")
    examples = []
    for index, row in enumerate(rows):
        where = f"{path} row {index}"
        question = row[question_field]
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{where}: field {question_field!r} is missing or empty")
        reference = reference_answer(row[answer_field], reference_format, f"{where} field {answer_field!r}")
        examples.append({"prompt": template.format(question=question), "reference": reference})
    return examples


def collate(examples: list[Example]) -> dict[str, list[str]]:
    return {key: [example[key] for example in examples] for key in ("prompt", "reference")}


class MathPromptDataModule(LightningDataModule):
    """Batches of math prompts with reference answers.

    Args:
        task: ``arithmetic`` for the embedded synthetic task, or ``files`` to read ``train_file`` and
            ``val_file``.
        train_file, val_file: local JSON/JSONL files (``task: files``).
        question_field, answer_field: the row fields holding the question and the answer.
        reference_format: ``answer`` (the field is the answer) or ``gsm8k_solution`` (the answer follows
            ``####`` at the end of a worked solution).
        prompt_template: Python format string with ``{question}``; must match what the policy expects.
        batch_size: prompts per training step (each is sampled G times by the module).
        val_batch_size: prompts per validation batch (greedy decoding, one completion each).
        val_size: held-out problems of the synthetic task used for validation.
        seed: seeds the synthetic split and the training shuffle order.
    """

    def __init__(
        self,
        task: Literal["arithmetic", "files"] = "arithmetic",
        train_file: str | None = None,
        val_file: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        reference_format: ReferenceFormat = "answer",
        prompt_template: str = "{question}=",
        batch_size: int = 8,
        val_batch_size: int = 64,
        val_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ConfigError(
                f"data.batch_size and data.val_batch_size must be >= 1, got {batch_size}, {val_batch_size}"
            )
        if "{question}" not in prompt_template:
            raise ConfigError(f"data.prompt_template must contain '{{question}}', got {prompt_template!r}")
        if task == "files" and (train_file is None or val_file is None):
            raise ConfigError("data.task='files' needs data.train_file and data.val_file")
        self.save_hyperparameters()
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        hp = self.hparams
        if hp.task == "arithmetic":
            splits = split_problems(val_size=hp.val_size, seed=hp.seed)
            self.train_examples, self.val_examples = (
                [
                    {"prompt": hp.prompt_template.format(question=p.question), "reference": p.answer}
                    for p in split
                ]
                for split in (splits["train"], splits["val"])
            )
        else:
            fields = (hp.question_field, hp.answer_field, hp.reference_format, hp.prompt_template)
            self.train_examples = load_examples(hp.train_file, *fields)
            self.val_examples = load_examples(hp.val_file, *fields)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.train_examples,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            collate_fn=collate,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.hparams.val_batch_size, collate_fn=collate)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
