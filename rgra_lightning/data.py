"""Math prompts for RL: a LightningDataModule yielding batches of ``{"prompt": [...], "reference": [...]}``.

Sources: the embedded synthetic arithmetic task (default, offline, generated in code), local JSON/JSONL
files given per split (``task: files``), or any dataset ``datasets.load_dataset`` reads (``task: dataset``):
a Hugging Face hub name, a local json/jsonl/parquet/csv file, or a directory of ``<split>.<ext>`` files,
with presets for GSM8K and MATH-500. Prompts are a plain template or the tokenizer's chat template.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from rewards.extract import last_boxed
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_tokenizer, resolve_path
from rgra_lightning.synthetic import split_problems

Example = dict[str, str]
ReferenceFormat = Literal["answer", "gsm8k_solution", "boxed_solution"]

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")
_GSM8K_CALCULATOR = re.compile(r"<<[^<>]*>>")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# Options that only some tasks read; setting one for another task raises rather than being ignored. The
# arithmetic task's problems come from code and its prompts must match those of the supervised warm-up.
_FILE_OPTIONS = ("train_file", "val_file", "test_file")
_HUB_OPTIONS = ("source", "source_config", "train_split", "val_split", "test_split")
_ROW_OPTIONS = ("preset", "question_field", "answer_field", "reference_format", "skip_invalid")
_PROMPT_OPTIONS = ("prompt_format", "system_prompt", "instruction", "few_shot", "tokenizer_path")
_UNUSED_BY_TASK = {
    "arithmetic": (*_FILE_OPTIONS, *_HUB_OPTIONS, *_ROW_OPTIONS, *_PROMPT_OPTIONS, "tokenizer_gguf_file"),
    "files": _HUB_OPTIONS,
    "dataset": _FILE_OPTIONS,
}


class DatasetError(ConfigError):
    """A dataset file or row is unusable; the message names the file, row and field."""


@dataclass(frozen=True)
class Preset:
    """Where a benchmark lives on the hub and how its rows map to question and reference."""

    source: str
    source_config: str | None
    question_field: str
    answer_field: str
    reference_format: ReferenceFormat
    train_split: str | None
    val_split: str | None
    test_split: str | None
    prompt_template: str = "Question: {question}\nAnswer:"  # plain prompts, as lm-evaluation-harness's


_NO_PRESET = {
    "source": None,
    "source_config": None,
    "question_field": "question",
    "answer_field": "answer",
    "reference_format": "answer",
    "train_split": "train",
    "val_split": None,
    "test_split": None,
    "prompt_template": "{question}=",  # the embedded task's, as in the warm-up
}
PRESETS = {
    "gsm8k": Preset("openai/gsm8k", "main", "question", "answer", "gsm8k_solution", "train", "test", "test"),
    # MATH-500 has only a test split; its ``answer`` column is the reference (``solution`` holds the box).
    "math500": Preset("HuggingFaceH4/MATH-500", None, "problem", "answer", "answer", None, "test", "test"),
}


def reference_answer(value: object, reference_format: ReferenceFormat, where: str) -> str:
    """The reference answer of one row: the field itself, the ``#### N`` line of a GSM8K solution, or
    the last ``\\boxed{...}`` of a MATH solution."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
        raise DatasetError(f"{where}: no usable answer (got {value!r})")
    text = str(value).strip()
    if reference_format == "gsm8k_solution":
        match = _GSM8K_FINAL.search(text)
        if match is None:
            raise DatasetError(f"{where}: solution has no '#### <answer>' line")
        text = match.group(1).replace(",", "")
    elif reference_format == "boxed_solution":
        boxed = last_boxed(text)
        if not boxed:
            raise DatasetError(f"{where}: solution has no \\boxed{{...}} answer")
        text = boxed
    return text


def check_json_file(file: Path) -> list[int] | None:
    """Raise a ``DatasetError`` naming the file and line if it is empty, not valid JSON / JSON Lines, or
    has a row that is not a JSON object; return the file line of each row of a JSON Lines file (``None``
    for a JSON array).

    ``datasets`` reports such files with a generic message; users need the line to fix. Lines are split
    on ``\\n`` only, as ``datasets`` does: ``str.splitlines`` also splits inside strings holding U+2028.
    """
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"dataset file {str(file)!r} is empty")
    array = file.suffix == ".json" and text.lstrip().startswith("[")
    documents = [(1, text)] if array else list(enumerate(text.split("\n"), 1))
    lines = []
    for first_line, document in documents:
        if not document.strip():
            continue  # blank lines hold no row (``datasets`` skips them) but count in line numbers
        try:
            value = json.loads(document)
        except json.JSONDecodeError as error:
            line = first_line + error.lineno - 1
            raise DatasetError(
                f"dataset file {str(file)!r} line {line} is not valid JSON: {error.msg}"
            ) from error
        for index, row in enumerate(value if array else [value]):
            if not isinstance(row, dict):
                place = f"row {index}" if array else f"line {first_line}"  # as load_records numbers rows
                raise DatasetError(
                    f"dataset file {str(file)!r} {place} is not a JSON object (got {type(row).__name__})"
                )
        lines.append(first_line)
    return None if array else lines


def split_files(directory: Path) -> dict[str, str]:
    """``{split: file}`` for the ``<split>.<json|jsonl|parquet|csv>`` files of a directory."""
    return {f.stem: str(f) for f in sorted(directory.iterdir()) if f.suffix in _BUILDERS and f.is_file()}


class Rows(NamedTuple):
    """One split's rows, the name messages give them (the file read, or ``<hub name>:<split>``) and the
    file line of each row when they come from a JSON Lines file (else ``None``)."""

    table: Any  # datasets.Dataset, imported lazily
    where: str
    lines: list[int] | None


def load_rows(source: str, split: str, source_config: str | None = None) -> Rows:
    """One split of a dataset: a local file (its only split is ``train``), a directory of
    ``<split>.<ext>`` files, or a hub name (``source_config`` is its configuration)."""
    import datasets

    path = Path(resolve_path(source)).expanduser()
    if path.is_dir():
        files = split_files(path)
        if split not in files:
            raise DatasetError(f"dataset directory {source!r} has no {split!r} split; files: {list(files)}")
        path = Path(files[split])
    elif path.suffix in _BUILDERS or path.is_absolute() or source.startswith((".", "~", "package:")):
        if not path.is_file():
            raise DatasetError(f"dataset file {source!r} does not exist")
        if split != "train":
            raise DatasetError(f"dataset file {source!r} is a single file: its only split is 'train'")
    else:
        try:
            return Rows(datasets.load_dataset(source, source_config, split=split), f"{source}:{split}", None)
        except Exception as error:
            reason = " ".join(str(error).split())
            raise DatasetError(
                f"could not load dataset {source!r} split {split!r}: {reason}. Offline, give data.source a "
                "local file or directory instead of a hub name."
            ) from error
    if path.suffix not in _BUILDERS:
        raise DatasetError(f"dataset file {str(path)!r}: unsupported extension, use one of {list(_BUILDERS)}")
    lines = None
    if _BUILDERS[path.suffix] == "json":
        lines = check_json_file(path)
    elif path.stat().st_size == 0:
        raise DatasetError(f"dataset file {str(path)!r} is empty")
    try:
        table = datasets.load_dataset(_BUILDERS[path.suffix], data_files=str(path), split="train")
        return Rows(table, str(path), lines)
    except Exception as error:  # datasets wraps parse errors in several exception types
        raise DatasetError(f"dataset file {str(path)!r} could not be read: {error}") from error


def load_records(
    rows: Any,
    where: str,
    question_field: str,
    answer_field: str,
    reference_format: ReferenceFormat,
    skip_invalid: bool = False,
    lines: list[int] | None = None,
) -> tuple[list[dict[str, str]], int]:
    """``[{"question", "answer", "reference"}]`` from dataset rows, and how many invalid rows were skipped.

    An invalid row (question or reference missing) raises a ``DatasetError`` naming ``where``, the row
    (its 1-based file line when ``lines`` maps rows to the lines of a JSON Lines file, else its 0-based
    index) and the field, unless ``skip_invalid``.
    """
    if len(rows) == 0:
        raise DatasetError(f"dataset file {where!r} is empty")
    for name in (question_field, answer_field):
        if name not in rows.column_names:
            raise DatasetError(f"dataset {where!r} has no field {name!r}; fields: {rows.column_names}")
    records, skipped = [], 0
    for index, row in enumerate(rows):
        place = f"{where} line {lines[index]}" if lines is not None else f"{where} row {index}"
        try:
            question = row[question_field]
            if not isinstance(question, str) or not question.strip():
                raise DatasetError(f"{place}: field {question_field!r} is missing or empty")
            reference = reference_answer(
                row[answer_field], reference_format, f"{place} field {answer_field!r}"
            )
        except DatasetError:
            if not skip_invalid:
                raise
            skipped += 1
            continue
        records.append({"question": question, "answer": str(row[answer_field]), "reference": reference})
    return records, skipped


def load_examples(
    path: str, question_field: str, answer_field: str, reference_format: ReferenceFormat, template: str
) -> list[Example]:
    """Prompts and references from a local ``.json``/``.jsonl`` file, validating every row."""
    rows = load_rows(path, "train")
    records, _ = load_records(
        rows.table, rows.where, question_field, answer_field, reference_format, lines=rows.lines
    )
    return [{"prompt": template.format(question=r["question"]), "reference": r["reference"]} for r in records]


def shot_solution(record: dict[str, str], reference_format: ReferenceFormat) -> str:
    """A few-shot example's answer text: the worked solution, its GSM8K ``#### N`` line as ``\\boxed{N}``
    (the format the instruction asks for) and without GSM8K's calculator annotations (``<<48/2=24>>``,
    which no model should imitate), or just the boxed reference when the row has no solution."""
    if reference_format == "gsm8k_solution":
        solution = _GSM8K_CALCULATOR.sub("", record["answer"])
        return _GSM8K_FINAL.sub(lambda m: f"The final answer is \\boxed{{{record['reference']}}}.", solution)
    if reference_format == "boxed_solution":
        return record["answer"]
    return f"The final answer is \\boxed{{{record['reference']}}}."


def collate(examples: list[Example]) -> dict[str, list[str]]:
    return {key: [example[key] for example in examples] for key in ("prompt", "reference")}


class MathPromptDataModule(LightningDataModule):
    """Batches of math prompts with reference answers.

    Args:
        task: ``arithmetic`` (embedded synthetic task), ``files`` (``train_file`` and ``val_file``) or
            ``dataset`` (``source`` and the split names, or a ``preset``). ``arithmetic`` uses only
            ``prompt_template``, ``train_size``, ``limit``, the batch sizes, ``val_size`` and ``seed``;
            setting any option of the other tasks (files, splits, fields, chat, instruction, few-shot)
            raises a ``ConfigError``, as its prompts must stay those of the warm-up. Likewise ``files``
            refuses ``source`` and the split names, and ``dataset`` the files.
        train_file, val_file, test_file: local JSON/JSONL files (``task: files``); test defaults to val.
        preset: ``gsm8k`` or ``math500``: fills ``source`` (the hub name), the fields and the splits that
            are not set. With a local copy set ``source`` too, e.g. ``../shared/datasets/gsm8k``.
        source: hub name, local json/jsonl/parquet/csv file (one split, ``train``), or a directory of
            ``<split>.<ext>`` files; ``package:<name>/<dir>`` is a folder of an installed package.
        source_config: hub dataset configuration (GSM8K: ``main``).
        train_split, val_split, test_split: split names; no ``val_split`` holds out ``val_size`` training
            problems; no ``test_split`` tests on the validation problems.
        question_field, answer_field: the row fields holding the question and the answer or solution.
        reference_format: ``answer`` (the field is the answer), ``gsm8k_solution`` (the answer follows
            ``####`` at the end of a worked solution) or ``boxed_solution`` (the last ``\\boxed{}``).
        skip_invalid: skip (and count, with a warning) rows without a question or usable reference
            instead of stopping with an error naming the row.
        prompt_format: ``plain`` fills ``prompt_template``; ``chat`` applies the tokenizer's chat template
            (``tokenizer_path``, or the policy's tokenizer when the trainer runs with an ``RLModule``).
        prompt_template: Python format string with ``{question}`` (``plain``); default ``{question}=`` (the
            embedded task's and the warm-up's), or with a preset ``Question: {question}\\nAnswer:``.
        system_prompt: system message (``chat``); none when unset.
        instruction: appended to each question on a new line, e.g. the answer format.
        few_shot: solved training problems shown before each question (removed from the training set).
        tokenizer_path, tokenizer_gguf_file: the tokenizer for ``chat`` when not taken from the policy.
        train_size: random subset of the training problems (seeded); none: all.
        limit: keep only the first ``limit`` problems of the validation and test splits (quick runs,
            fixed evaluation subsets); ``train_size`` shortens the training set.
        batch_size: prompts per training step (each is sampled G times by the module); the last partial
            batch of an epoch is dropped, and fit raises a ``ConfigError`` when no full batch is left.
        val_batch_size: prompts per validation/test batch.
        val_size: held-out problems for validation (synthetic task, or a dataset without ``val_split``):
            at least 1 and fewer than the problems it is held out from.
        seed: seeds the splits, subsets, few-shot choice and the training shuffle order.
    """

    def __init__(
        self,
        task: Literal["arithmetic", "files", "dataset"] = "arithmetic",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        preset: Literal["gsm8k", "math500"] | None = None,
        source: str | None = None,
        source_config: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        question_field: str | None = None,
        answer_field: str | None = None,
        reference_format: ReferenceFormat | None = None,
        skip_invalid: bool = False,
        prompt_format: Literal["plain", "chat"] = "plain",
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        instruction: str | None = None,
        few_shot: int = 0,
        tokenizer_path: str | None = None,
        tokenizer_gguf_file: str | None = None,
        train_size: int | None = None,
        limit: int | None = None,
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
        if prompt_template is not None and "{question}" not in prompt_template:
            raise ConfigError(f"data.prompt_template must contain '{{question}}', got {prompt_template!r}")
        if task == "files" and (train_file is None or val_file is None):
            raise ConfigError("data.task='files' needs data.train_file and data.val_file")
        if task == "dataset" and source is None and preset is None:
            raise ConfigError(
                "data.task='dataset' needs data.source (hub name, file or directory) or data.preset"
            )
        for name, value, minimum in (
            ("few_shot", few_shot, 0),
            ("train_size", train_size, 1),
            ("limit", limit, 1),
            ("val_size", val_size, 1),
        ):
            if value is not None and value < minimum:
                raise ConfigError(f"data.{name} must be >= {minimum}, got {value}")
        self.save_hyperparameters()
        defaults = inspect.signature(MathPromptDataModule.__init__).parameters
        unused = [n for n in _UNUSED_BY_TASK.get(task, ()) if self.hparams[n] != defaults[n].default]
        if unused:
            raise ConfigError(
                f"data.task={task!r} does not use {', '.join(f'data.{n}' for n in unused)}: task "
                "arithmetic reads no data, files reads train_file/val_file/test_file, dataset reads source "
                "and its splits (or a preset)"
            )
        # Each dataset setting: the option when given, else the preset's, else the generic default.
        chosen = asdict(PRESETS[preset]) if preset else _NO_PRESET
        self.settings = {
            name: self.hparams[name] if self.hparams[name] is not None else chosen[name]
            for name in _NO_PRESET
        }
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self.skipped: dict[str, int] = {}

    # ------------------------------------------------------------------ loading

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples or self.val_examples:
            return
        hp = self.hparams
        records = self._load_splits()
        rng = random.Random(hp.seed)
        shots = self._take_shots(records, rng)
        if hp.train_size is not None and len(records["train"]) > hp.train_size:
            records["train"] = rng.sample(records["train"], hp.train_size)
        for split, examples in records.items():
            if hp.limit is not None and split != "train":
                examples = examples[: hp.limit]
            setattr(self, f"{split}_examples", [self.example(r, shots) for r in examples])

    def _load_splits(self) -> dict[str, list[dict[str, str]]]:
        """Question/answer/reference records of the train, val and test splits (val may be held out)."""
        hp, s = self.hparams, self.settings
        fields = (s["question_field"], s["answer_field"], s["reference_format"], hp.skip_invalid)
        if hp.task == "arithmetic":
            splits = split_problems(val_size=hp.val_size, seed=hp.seed)
            self._check_val_size(len(splits["train"]) + len(splits["val"]), "problems of the synthetic task")
            records = {
                split: [{"question": p.question, "answer": p.answer, "reference": p.answer} for p in problems]
                for split, problems in splits.items()
            }
            return {**records, "test": records["val"]}
        if hp.task == "files":
            named = {"train": hp.train_file, "val": hp.val_file, "test": hp.test_file or hp.val_file}
            loaded = {split: load_rows(path, "train") for split, path in named.items()}
        else:
            names = {
                "train": s["train_split"],
                "val": s["val_split"],
                "test": s["test_split"] or s["val_split"],
            }
            loaded = {
                split: load_rows(s["source"], name, s["source_config"])
                for split, name in names.items()
                if name is not None
            }
        records = {}
        for split, rows in loaded.items():
            records[split], skipped = load_records(rows.table, rows.where, *fields, lines=rows.lines)
            if skipped:
                self.skipped[split] = skipped
                warnings.warn(
                    f"{rows.where}: skipped {skipped} rows without a usable question or answer", stacklevel=2
                )
        if "val" not in records:
            if "train" not in records:
                raise ConfigError("data: give a val_split (or test_split), or a train_split to hold out from")
            self._check_val_size(len(records["train"]), f"usable rows of {loaded['train'].where}")
            shuffled = random.Random(self.hparams.seed).sample(records["train"], len(records["train"]))
            records["val"], records["train"] = shuffled[: hp.val_size], shuffled[hp.val_size :]
            records.setdefault("test", records["val"])
        records.setdefault("train", [])
        return records

    def _check_val_size(self, total: int, what: str) -> None:
        """Raise a ``ConfigError`` unless holding out ``val_size`` of the ``total`` problems leaves at least
        one to train on (a larger ``val_size`` would silently take them all)."""
        val_size = self.hparams.val_size
        if total < 2:
            raise ConfigError(
                f"data.val_size={val_size}: the {total} {what} are too few to hold out validation problems "
                "from; give a validation split"
            )
        if val_size >= total:
            raise ConfigError(
                f"data.val_size={val_size} must be between 1 and {total - 1}: it holds out validation "
                f"problems from the {total} {what}"
            )

    def _holds_out_validation(self) -> bool:
        """Whether the validation problems are held out of the training problems (``val_size`` applies)."""
        hp = self.hparams
        return hp.task == "arithmetic" or (hp.task == "dataset" and self.settings["val_split"] is None)

    def _take_shots(
        self, records: dict[str, list[dict[str, str]]], rng: random.Random
    ) -> list[dict[str, str]]:
        """``few_shot`` random training records, removed from the training set."""
        count = self.hparams.few_shot
        if count == 0:
            return []
        if len(records["train"]) <= count:
            raise ConfigError(f"data.few_shot={count} needs more than {count} training problems")
        indices = set(rng.sample(range(len(records["train"])), count))
        shots = [r for i, r in enumerate(records["train"]) if i in indices]
        records["train"] = [r for i, r in enumerate(records["train"]) if i not in indices]
        return shots

    # ---------------------------------------------------------------- prompts

    def user_message(self, question: str) -> str:
        instruction = self.hparams.instruction
        return f"{question}\n{instruction}" if instruction else question

    def example(self, record: dict[str, str], shots: list[dict[str, str]]) -> Example:
        """The prompt of one problem, preceded by the few-shot examples, and its reference answer."""
        fmt, hp = self.settings["reference_format"], self.hparams
        solved = [(self.user_message(s["question"]), shot_solution(s, fmt)) for s in shots]
        question = self.user_message(record["question"])
        if hp.prompt_format == "plain":
            template = self.settings["prompt_template"]
            prefix = "".join(f"{template.format(question=q)} {a}\n\n" for q, a in solved)
            return {
                "prompt": prefix + template.format(question=question),
                "reference": record["reference"],
            }
        messages = [{"role": "system", "content": hp.system_prompt}] if hp.system_prompt else []
        for q, a in solved:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        prompt = self._chat_tokenizer().apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return {"prompt": prompt, "reference": record["reference"]}

    def _chat_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer whose chat template formats prompts: set, ``tokenizer_path``, or the policy's."""
        if self.tokenizer is None:
            hp = self.hparams
            if hp.tokenizer_path is not None:
                self.tokenizer = load_tokenizer(hp.tokenizer_path, hp.tokenizer_gguf_file)
            else:
                trainer = self.trainer
                self.tokenizer = getattr(trainer.lightning_module, "tokenizer", None) if trainer else None
            if self.tokenizer is None:
                raise ConfigError(
                    "data.prompt_format='chat' needs data.tokenizer_path (or a module with a tokenizer)"
                )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                "data.prompt_format='chat': the tokenizer has no chat template; use prompt_format=plain"
            )
        return self.tokenizer

    # ------------------------------------------------------------ dataloaders

    def train_dataloader(self) -> DataLoader:
        """Shuffled full batches of ``batch_size`` prompts (the last partial batch is dropped).

        Raises a ``ConfigError`` when that leaves no batch: Lightning would skip training with a warning and
        the run would end as if it had succeeded. Checked here rather than in ``setup``, which evaluation
        (``validate``, ``test``, ``label``) also runs, on splits with no training problems (MATH-500).
        """
        hp, count = self.hparams, len(self.train_examples)
        ranks = self.trainer.world_size if self.trainer is not None else 1
        # Each rank's DistributedSampler yields ceil(count / ranks) problems (padded by repeating some), so
        # every rank has a full batch from this many problems on.
        needed = ranks * (hp.batch_size - 1) + 1
        if count < needed:
            problems = f"{count} training problems"
            if ranks > 1:
                problems = f"{math.ceil(count / ranks)} training problems per rank ({count} on {ranks} ranks)"
            largest_val_size = hp.val_size + count - needed
            if hp.train_size is not None and hp.train_size < needed:
                hint = f"; raise data.train_size={hp.train_size} to at least {needed}"
            elif self._holds_out_validation() and largest_val_size >= 1:
                hint = f"; data.val_size={hp.val_size} holds out too many, use 1 to {largest_val_size}"
            else:
                hint = ""
            raise ConfigError(
                f"data.batch_size={hp.batch_size} is larger than the {problems}, so there is no full "
                f"training batch{hint}"
            )
        generator = torch.Generator().manual_seed(hp.seed)
        return DataLoader(
            self.train_examples,
            batch_size=hp.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            collate_fn=collate,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.hparams.val_batch_size, collate_fn=collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_examples, batch_size=self.hparams.val_batch_size, collate_fn=collate)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
