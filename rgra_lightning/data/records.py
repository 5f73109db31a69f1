"""Reading question/answer rows from JSON/JSONL/parquet/CSV files, directories of split files and
``datasets`` hub datasets, with errors that name the file, line, row and field.

A record is ``{"question", "answer", "reference"}``: the question, the row's answer field as written (a
worked solution, say) and the reference answer the verifier compares with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rewards.extract import last_boxed
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import resolve_path

Record = dict[str, str]
ReferenceFormat = Literal["answer", "gsm8k_solution", "boxed_solution"]

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")
_GSM8K_CALCULATOR = re.compile(r"<<[^<>]*>>")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DatasetError(ConfigError):
    """A dataset file or row is unusable; the message names the file, row and field."""


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
        import datasets

        try:
            return Rows(datasets.load_dataset(source, source_config, split=split), f"{source}:{split}", None)
        except Exception as error:
            reason = " ".join(str(error).split())
            raise DatasetError(
                f"could not load dataset {source!r} split {split!r}: {reason}. Offline, give data.source a "
                "local file or directory instead of a hub name."
            ) from error
    return file_rows(path)


def local_file_rows(source: str, option: str) -> Rows:
    """The rows of the local file ``source`` that the config option ``option`` (``data.val_file``) names:
    never a hub name or a directory, each a one-line error naming the option."""
    path = Path(resolve_path(source)).expanduser()
    if path.is_dir():
        raise DatasetError(f"{option} {source!r} is a directory: give a file, one of {list(_BUILDERS)}")
    if not path.is_file():
        raise DatasetError(f"{option} {source!r} does not exist")
    return file_rows(path)


def file_rows(path: Path) -> Rows:
    """The rows of one existing local file, checked line by line where it is JSON."""
    import datasets

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
) -> tuple[list[Record], int]:
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
