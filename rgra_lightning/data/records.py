"""Reading question/answer rows from JSON/JSONL/parquet/CSV files, dataset directories and ``datasets``
hub datasets, with errors that name the file, line, row and field.

A record is ``{"question", "answer", "reference"}``: the question, the row's answer field as written (a
worked solution, say) and the reference answer the verifier compares with.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rewards.equivalence import equivalent
from rewards.extract import last_boxes
from rewards.sandbox import WorkerPool
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import hub_offline, hub_resolves, looks_local, resolve_path

Record = dict[str, str]
ReferenceFormat = Literal["answer", "gsm8k_solution", "boxed_solution"]

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")
_GSM8K_CALCULATOR = re.compile(r"<<[^<>]*>>")
_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
_LAYOUTS = (
    f"<split>.<ext> files ({', '.join(_SUFFIXES)}), the hub layout's data/<split>-*.<ext> shards or a "
    "datasets.save_to_disk directory"
)


class DatasetError(ConfigError):
    """A dataset file or row is unusable; the message names the file, row and field."""


def reference_answer(value: object, reference_format: ReferenceFormat, where: str) -> str:
    """The reference answer of one row: the field itself, the ``#### N`` line of a GSM8K solution, or
    the last ``\\boxed{...}`` of a MATH solution."""
    if value is None:
        raise DatasetError(f"{where}: missing or null")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
        raise DatasetError(f"{where}: no usable answer (got {value!r})")
    text = str(value).strip()
    if reference_format == "gsm8k_solution":
        match = _GSM8K_FINAL.search(text)
        if match is None:
            raise DatasetError(f"{where}: solution has no '#### <answer>' line")
        text = match.group(1).replace(",", "")
    elif reference_format == "boxed_solution":
        boxed = last_boxes(text)
        if not "".join(boxed):
            raise DatasetError(f"{where}: solution has no \\boxed{{...}} answer")
        text = boxed[0] if alternative_forms(boxed) else ", ".join(boxed)
    return text


ALTERNATIVE_FORMS_TIMEOUT_S = 3.0  # per comparison, as MathVerifier's default
_alternative_forms_pool: WorkerPool | None = None  # started at the first solution with several boxes


def alternative_forms(answers: list[str]) -> bool:
    """Whether a solution's adjacent boxes, which ``rewards.extract`` reads as one list answer, are instead
    one value written several ways (MATH: ``$\\boxed{-b+2}$, or $\\boxed{2 - b}$``), which no completion
    would match as a list. Each comparison runs in a killable worker process under
    ``ALTERNATIVE_FORMS_TIMEOUT_S``: sympy may not finish (``9^{9^{9}}`` against ``9^{387420489}`` ran for
    minutes in the data module's setup); one that times out, crashes or cannot be parsed is not one value."""
    global _alternative_forms_pool
    if len(answers) < 2:
        return False
    if _alternative_forms_pool is None:
        _alternative_forms_pool = WorkerPool(
            workers=1, timeout=ALTERNATIVE_FORMS_TIMEOUT_S, preload=("rewards.preload",)
        )
    outcomes = _alternative_forms_pool.map(equivalent, [(answer, answers[0]) for answer in answers[1:]])
    return all(outcome.error is None and outcome.value for outcome in outcomes)


class JsonFloat(float):
    """A JSON number with a fraction or an exponent, whose ``str`` is its text in the file: a reference
    answer ``2.50`` or ``1e3`` stays as written, not as Python prints the float (``2.5``, ``1000.0``). It
    is still a number, so it is no question text."""

    text: str

    def __new__(cls, text: str) -> JsonFloat:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


def read_text(file: Path) -> str:
    """The text of a dataset file, without a UTF-8 byte-order mark (some editors write one); a
    ``DatasetError`` naming the file if it is empty, or the line where it is not UTF-8."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetError(
            f"dataset file {str(file)!r} line {line} is not UTF-8 text ({error.reason})"
        ) from error
    if not text.strip():
        raise DatasetError(f"dataset file {str(file)!r} is empty")
    return text


def read_json_file(file: Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """The rows of a JSON (an array of objects) or JSON Lines file, and the file line of each row of a
    JSON Lines file (``None`` for an array). A ``DatasetError`` names the file and line if it is empty,
    not valid JSON / JSON Lines, or has a row that is not a JSON object.

    Read here, not by ``datasets``, which reports such files with a generic message and gives a column
    one type: ``2`` beside ``2.5`` became ``2.0``, and an integer beyond 64 bits an error without a line.
    Numbers keep their type, and fractions their text (``JsonFloat``). Lines are split on ``\\n`` only,
    as ``datasets`` does: ``str.splitlines`` also splits inside strings holding U+2028.
    """
    text = read_text(file)
    array = file.suffix == ".json" and text.lstrip().startswith("[")
    documents = [(1, text)] if array else list(enumerate(text.split("\n"), 1))
    rows, lines = [], []
    for first_line, document in documents:
        if not document.strip():
            continue  # blank lines hold no row (``datasets`` skips them) but count in line numbers
        try:
            value = json.loads(document, parse_float=JsonFloat)
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
            rows.append(row)
            lines.append(first_line)
    return rows, None if array else lines


def read_csv_file(file: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """The header, the rows and the file line each row starts on of a CSV file, every cell read as the
    text the file holds. A row with more cells than the header is a ``DatasetError`` naming its line; one
    with fewer lacks its last fields, as in ``datasets``.

    Read with the ``csv`` module, not ``datasets`` (pandas), which guesses a type per column: ``007``
    became ``7``, ``2`` beside ``0.50`` became ``2.0`` and ``NA`` a missing answer. A UTF-8 BOM is no part
    of the first field name.
    """
    reader = csv.reader(io.StringIO(read_text(file), newline=""))
    rows, lines, line = [], [], 1
    try:
        header = next(reader)
        line = reader.line_num + 1
        for cells in reader:  # a quoted cell may span lines: a row starts after the line the last one ended
            if len(cells) > len(header):
                counts = f"{len(cells)} fields, the header {len(header)}"
                raise DatasetError(f"dataset file {str(file)!r} line {line} has {counts}")
            if cells:  # blank lines hold no row but count in line numbers
                rows.append(dict(zip(header, cells, strict=False)))
                lines.append(line)
            line = reader.line_num + 1
    except csv.Error as error:  # a cell over csv.field_size_limit()
        raise DatasetError(f"dataset file {str(file)!r} line {line} is not valid CSV: {error}") from error
    return header, rows, lines


def split_files(directory: Path) -> dict[str, list[Path]]:
    """``{split: files}``: the ``<split>.<ext>`` files of a directory, else the shards of its ``data``
    folder, as the hub lays them out (``data/train-00000-of-00002.parquet``: split ``train``)."""

    def files(folder: Path) -> list[Path]:
        return [f for f in sorted(folder.iterdir()) if f.suffix in _SUFFIXES and f.is_file()]

    splits = {f.stem: [f] for f in files(directory)}
    if not splits and (directory / "data").is_dir():
        for shard in files(directory / "data"):  # split names are words: no "-" in them
            splits.setdefault(shard.stem.partition("-")[0], []).append(shard)
    return splits


class Rows(NamedTuple):
    """One split's rows (dicts, or a ``datasets.Dataset``), their fields, the name messages give them (the
    file read, or ``<source>:<split>``) and, where the rows are lines of files, each row's name in messages
    (``<file> line <n>``; ``None``: ``<where> row <index>``)."""

    table: Sequence[Mapping[str, Any]]
    fields: list[str]
    where: str
    places: list[str] | None

    def place(self, index: int) -> str:
        """The row ``index`` as messages name it."""
        return self.places[index] if self.places is not None else f"{self.where} row {index}"


def check_local_source(source: str, local_only: bool = False) -> None:
    """``DatasetError`` where ``source`` names a local file or directory that is not there: a path
    (``looks_local``, or a name ending as a dataset file does) or, with ``local_only`` (a preset that reads
    local copies only), any name. A hub name is left to ``load_rows`` to reach."""
    path = Path(resolve_path(source)).expanduser()
    if not path.exists() and (local_only or _names_a_file(path)):
        raise DatasetError(f"data.source {source!r}: no such file or directory")


def _names_a_file(path: Path) -> bool:
    """Whether ``path`` reads as a local file: a path (``looks_local``) or a name ending as a dataset file
    does."""
    return looks_local(str(path)) or path.suffix in _SUFFIXES


def is_hub_source(source: str) -> bool:
    """Whether ``load_rows`` reads ``source`` from the Hugging Face hub (or its local cache): not a
    directory, nor a path or a name ending as a dataset file does."""
    path = Path(resolve_path(source)).expanduser()
    return not (path.is_dir() or _names_a_file(path))


def load_rows(source: str, split: str, source_config: str | None = None) -> Rows:
    """One split of a dataset: a local file (its only split is ``train``), a dataset directory
    (``directory_rows``), or a hub name (``source_config`` is its configuration)."""
    path = Path(resolve_path(source)).expanduser()
    if path.is_dir():
        return directory_rows(path, source, split)
    check_local_source(source)
    if _names_a_file(path):
        if split != "train":
            raise DatasetError(f"dataset file {source!r} is a single file: its only split is 'train'")
        return file_rows(path)
    import datasets

    reachable = hub_resolves()
    try:
        with contextlib.nullcontext() if reachable else hub_offline():
            loaded = datasets.load_dataset(source, source_config, split=split)
    except Exception as error:
        if not reachable:
            raise DatasetError(
                f"data.source {source!r} is no local file or directory (none in {Path.cwd()}), and as a hub "
                "dataset it is neither in the local cache nor reachable (offline): give a local file or "
                "directory"
            ) from error
        reason = " ".join(str(error).split())
        raise DatasetError(f"could not load dataset {source!r} split {split!r}: {reason}") from error
    return dataset_rows(loaded, f"{source}:{split}")


def directory_rows(directory: Path, source: str, split: str) -> Rows:
    """One split of a directory of ``<split>.<ext>`` files, of the hub layout's ``data/<split>-*.<ext>``
    shards (read in name order, one after the other), or saved by ``datasets.save_to_disk``: a
    ``DatasetDict`` (``dataset_dict.json``, a folder per split) or a ``Dataset`` (``state.json``; its only
    split is ``train``, as a single file's)."""
    if (directory / "dataset_dict.json").is_file() or (directory / "state.json").is_file():
        import datasets

        try:
            saved = datasets.load_from_disk(str(directory))
        except Exception as error:
            reason = " ".join(str(error).split())
            raise DatasetError(f"dataset directory {source!r} could not be read: {reason}") from error
        splits = list(saved) if isinstance(saved, datasets.DatasetDict) else ["train"]
        if split not in splits:
            raise DatasetError(f"dataset directory {source!r} has no {split!r} split; splits: {splits}")
        table = saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        return dataset_rows(table, f"{source}:{split}")
    files = split_files(directory)
    if not files:
        raise DatasetError(f"dataset directory {source!r} holds no dataset; give {_LAYOUTS}")
    if split not in files:
        raise DatasetError(f"dataset directory {source!r} has no {split!r} split; splits: {list(files)}")
    parts = [file_rows(file) for file in files[split]]
    if len(parts) == 1:
        return parts[0]
    return Rows(
        [row for part in parts for row in part.table],
        list(dict.fromkeys(field for part in parts for field in part.fields)),
        f"{source}:{split}",
        [part.place(index) for part in parts for index in range(len(part.table))],
    )


def local_file_rows(source: str, option: str) -> Rows:
    """The rows of the local file ``source`` that the config option ``option`` (``data.val_file``) names:
    never a hub name or a directory, each a one-line error naming the option."""
    path = Path(resolve_path(source)).expanduser()
    if path.is_dir():
        raise DatasetError(f"{option} {source!r} is a directory: give a file, one of {list(_SUFFIXES)}")
    if not path.is_file():
        raise DatasetError(f"{option} {source!r} does not exist")
    return file_rows(path)


def file_rows(path: Path) -> Rows:
    """The rows of one existing local file: parquet, whose columns have types, read by ``datasets``; JSON
    and CSV read here line by line (``read_json_file``, ``read_csv_file``), each row named by its line."""
    if path.suffix not in _SUFFIXES:
        raise DatasetError(f"dataset file {str(path)!r}: unsupported extension, use one of {list(_SUFFIXES)}")
    if path.suffix == ".parquet":
        import datasets

        if path.stat().st_size == 0:
            raise DatasetError(f"dataset file {str(path)!r} is empty")
        try:
            table = datasets.load_dataset("parquet", data_files=str(path), split="train")
        except Exception as error:  # datasets wraps parse errors in several exception types
            raise DatasetError(f"dataset file {str(path)!r} could not be read: {error}") from error
        return dataset_rows(table, str(path))
    if path.suffix == ".csv":
        fields, table, lines = read_csv_file(path)
    else:
        table, lines = read_json_file(path)
        fields = list(dict.fromkeys(field for row in table for field in row))
    places = None if lines is None else [f"{path} line {line}" for line in lines]
    return Rows(table, fields, str(path), places)


def dataset_rows(table: Any, where: str) -> Rows:
    """The rows of a ``datasets.Dataset``, numbered by index in messages."""
    return Rows(table, table.column_names, where, None)


def load_records(
    rows: Rows,
    question_field: str,
    answer_field: str,
    reference_format: ReferenceFormat,
    skip_invalid: bool = False,
) -> tuple[list[Record], int]:
    """``[{"question", "answer", "reference"}]`` from dataset rows, and how many invalid rows were skipped.

    A list of texts as the answer (OlympiadBench's ``final_answer``) is one answer: its texts joined as a
    list answer (``1, 3``). An invalid row (question or reference missing) raises a ``DatasetError``
    naming the row (its file and 1-based line where it comes from a JSON Lines or CSV file, else ``where``
    and its 0-based index) and the field, unless ``skip_invalid``.
    """
    if len(rows.table) == 0:
        raise DatasetError(f"dataset file {rows.where!r} is empty")
    for name in (question_field, answer_field):
        if name not in rows.fields:
            raise DatasetError(f"dataset {rows.where!r} has no field {name!r}; fields: {rows.fields}")
    records, skipped = [], 0
    for index, row in enumerate(rows.table):
        place = rows.place(index)
        try:
            question = row.get(question_field)
            if not isinstance(question, str) or not question.strip():
                raise DatasetError(f"{place}: field {question_field!r} is missing or empty")
            answer = row.get(answer_field)
            if isinstance(answer, list) and answer and all(isinstance(item, str) for item in answer):
                answer = list_answer(answer)
            reference = reference_answer(answer, reference_format, f"{place} field {answer_field!r}")
        except DatasetError:
            if not skip_invalid:
                raise
            skipped += 1
            continue
        records.append({"question": question, "answer": str(answer), "reference": reference})
    return records, skipped


def list_answer(items: list[str]) -> str:
    """One answer from a list of texts (OlympiadBench's ``final_answer``): a single item as it is, several
    joined as a list answer with each item's own math delimiters dropped (``["$x=1$", "$x=3$"]`` ->
    ``x=1, x=3``: joined as written, ``$x=1$, $x=3$`` would read as the one span ``x=1$, $x=3``)."""
    if len(items) == 1:
        return items[0].strip()
    return ", ".join(item.strip().removeprefix("$").removesuffix("$").strip() for item in items)


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
