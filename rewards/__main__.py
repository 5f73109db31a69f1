"""Batch CLI: ``rgra score CASES.jsonl [--verifier NAME] [--timeout S] [--workers N] [--warm-start]`` (also
``python -m rewards score ...``).

Each input row is ``{"gold": str, "pred": str, "mode": "answer"|"completion", ...}`` (extra fields ignored);
an ``"answer"`` row's ``pred`` is a bare answer, scored with ``Verifier.score_answers`` (no extraction), a
``"completion"`` row's (the default) with ``score_batch``.
One JSON line per row goes to stdout (``equivalent``, ``reward``, ``seconds``, ``error``, ``extracted``,
``details`` and the row's ``id``), then ``summary: n=.. [accuracy=.. false_positives=.. false_negatives=..]
timeouts=.. errors=.. cases_per_s=..`` (accuracy fields only when rows carry an ``equivalent`` label). A
NaN/inf reward is written, and counted in ``errors``, as the trainer scores it: reward 0, error
``non-finite reward nan``.
All rows are read and validated before anything is written: a malformed line, a file without rows, an
unknown or abstract ``--verifier`` or one whose constructor needs arguments ``score`` cannot pass
(``WeightedSum``), or a non-positive ``--timeout``/``--workers`` exits with status 2 and a message. Rows are
then scored in batches of ``BATCH_ROWS``, each batch's lines written as soon as it is done (a long run killed
midway keeps what it scored), with a progress line on stderr when that is a terminal.

Start-up is kept short: nothing heavier than the standard library is imported until a row needs the full
check, and the workers are forked from a fork server that imports sympy and the parser once. The parser is
not warmed up unless ``--warm-start`` is given: a single pass pays only for the answer forms it meets.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import sys
import time
from typing import Any

import rewards
from rewards.errors import ToolParser, program_name
from rewards.verifiers import Verifier, finite_score

BATCH_ROWS = 256  # rows per verifier batch: enough to keep the workers busy, small enough to stream
OPTIONS = ("timeout", "workers", "warm_start")  # the constructor arguments ``score`` passes a verifier


def load_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file; raises ``ValueError`` naming the first malformed line, or when there is no
    row."""
    rows = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number}: not JSON ({error.msg})") from None
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("gold"), str)
                or not isinstance(row.get("pred"), str)
            ):
                raise ValueError(f"line {number}: needs string fields 'gold' and 'pred'")
            if row.get("mode", "completion") not in ("answer", "completion"):
                raise ValueError(f"line {number}: 'mode' must be 'answer' or 'completion'")
            rows.append(row)
    if not rows:
        raise ValueError("no rows to score (one JSON object with 'gold' and 'pred' per line)")
    return rows


def make_verifier(name: str, timeout: float, workers: int, warm_start: bool = False) -> Verifier:
    """A verifier from a class name exported by ``rewards`` or a ``module.Class`` path; ``timeout``,
    ``workers`` and ``warm_start`` are passed when its constructor takes them."""
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name) if module_name else rewards, class_name)
    except (ImportError, AttributeError, TypeError) as error:  # TypeError: a relative module name
        verifiers = [
            exported
            for exported in dir(rewards)
            if isinstance(getattr(rewards, exported), type)
            and issubclass(getattr(rewards, exported), Verifier)
        ]
        close = difflib.get_close_matches(class_name, verifiers, n=1) if not module_name else []
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"--verifier {name}: cannot load it ({error}){hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, Verifier)):
        raise ValueError(f"--verifier {name}: not a Verifier class")
    missing = unpassable_arguments(cls)
    if inspect.isabstract(cls) or missing:
        problem = f"needs arguments score cannot pass ({', '.join(missing)})" if missing else "is abstract"
        raise ValueError(
            f"--verifier {name} {problem}: score works with {', '.join(scoring_verifiers())}, or a "
            "module.Class whose other arguments have defaults"
        )
    parameters = inspect.signature(cls).parameters
    options = {"timeout": timeout, "workers": workers, "warm_start": warm_start}
    return cls(**{key: value for key, value in options.items() if key in parameters})


def unpassable_arguments(cls: type[Verifier]) -> list[str]:
    """The constructor arguments of ``cls`` without a default that ``score`` does not pass (``OPTIONS``)."""
    return [
        parameter.name
        for parameter in inspect.signature(cls).parameters.values()
        if parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and parameter.name not in OPTIONS
    ]


def scoring_verifiers() -> list[str]:
    """The verifiers exported by ``rewards`` that ``score`` can make."""
    classes = [getattr(rewards, name) for name in rewards.__all__]
    return [
        cls.__name__
        for cls in classes
        if isinstance(cls, type)
        and issubclass(cls, Verifier)
        and not inspect.isabstract(cls)
        and not unpassable_arguments(cls)
    ]


def score_rows(verifier: Verifier, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output records for ``rows``, scored as one batch (``seconds``: the batch's time per row)."""
    start = time.perf_counter()
    scores: list[Any] = [None] * len(rows)
    for mode in ("completion", "answer"):
        indices = [i for i, row in enumerate(rows) if row.get("mode", "completion") == mode]
        if not indices:
            continue
        score = verifier.score_answers if mode == "answer" else verifier.score_batch
        for index, result in zip(
            indices,
            score([rows[i]["pred"] for i in indices], [rows[i]["gold"] for i in indices]),
            strict=True,
        ):
            scores[index] = result
    scores = [finite_score(score) for score in scores]
    elapsed = time.perf_counter() - start
    records = [
        {
            "id": row.get("id"),
            "equivalent": score.correct,
            "reward": score.reward,
            "seconds": round(elapsed / max(len(rows), 1), 6),
            "error": score.error,
            "extracted": score.extracted,
            "details": score.details,
        }
        for row, score in zip(rows, scores, strict=True)
    ]
    return records


def summary_line(rows: list[dict[str, Any]], records: list[dict[str, Any]], elapsed: float) -> str:
    """``summary: n=.. [accuracy=.. false_positives=.. false_negatives=..] timeouts=.. errors=..
    cases_per_s=..`` for ``rows``, their ``records`` and the seconds they took."""
    fields = [f"n={len(rows)}"]
    labelled = [(row["equivalent"], record["equivalent"]) for row, record in zip(rows, records, strict=True)
                if isinstance(row.get("equivalent"), bool)]  # fmt: skip
    if labelled:
        fields += [
            f"accuracy={sum(label == verdict for label, verdict in labelled) / len(labelled):.4f}",
            f"false_positives={sum(verdict and not label for label, verdict in labelled)}",
            f"false_negatives={sum(label and not verdict for label, verdict in labelled)}",
        ]
    fields += [
        f"timeouts={sum(record['error'] == 'timeout' for record in records)}",
        f"errors={sum(record['error'] not in (None, 'timeout') for record in records)}",
        f"cases_per_s={len(rows) / max(elapsed, 1e-9):.1f}",
    ]
    return "summary: " + " ".join(fields)


def _positive(kind: type) -> Any:
    """An argparse ``type`` accepting only numbers of ``kind`` greater than zero."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(prog=program_name(), description="Score answers with a verifier of this package.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="score a JSONL file of (gold, pred) rows",
        description="Score a JSONL file of (gold, pred) rows with a verifier: one JSON line per row on "
        "stdout (equivalent, reward, seconds, error, extracted, details, id), then a summary line.",
    )
    score.add_argument(
        "cases",
        help='JSONL file, a row per line: {"gold": str, "pred": str, "mode": "completion" (the default: the '
        'answer is extracted from pred) or "answer" (pred is a bare answer)}; a true/false "equivalent" '
        "field adds accuracy to the summary",
    )
    score.add_argument(
        "--verifier", metavar="NAME", default="MathVerifier", help="class name in rewards, or module.Class"
    )
    score.add_argument(
        "--timeout", metavar="SECONDS", type=_positive(float), default=3.0, help="seconds per verification"
    )
    score.add_argument("--workers", metavar="N", type=_positive(int), default=2, help="worker processes")
    score.add_argument(
        "--warm-start", action="store_true", help="train the parser before the first row (trainer default)"
    )
    args = parser.parse_args(argv)
    try:
        rows = load_rows(args.cases)
    except (OSError, ValueError) as error:
        print(f"error: {args.cases}: {error}", file=sys.stderr)
        return 2
    try:
        verifier = make_verifier(args.verifier, args.timeout, args.workers, args.warm_start)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start, records = time.perf_counter(), []
    show_progress = sys.stderr.isatty()
    for first in range(0, len(rows), BATCH_ROWS):
        batch = score_rows(verifier, rows[first : first + BATCH_ROWS])
        sys.stdout.write("".join(json.dumps(record) + "\n" for record in batch))
        sys.stdout.flush()
        records += batch
        if show_progress:
            rate = len(records) / (time.perf_counter() - start)
            line = f"\rscored {len(records)}/{len(rows)} rows, {rate:.0f}/s"
            print(line, end="", file=sys.stderr, flush=True)
    if show_progress:
        print(file=sys.stderr)
    sys.stdout.write(summary_line(rows, records, time.perf_counter() - start) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
