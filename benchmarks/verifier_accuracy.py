"""Accuracy of ``rewards.MathVerifier`` and of Hugging Face ``math-verify`` on labelled case files, one case
at a time, with the slowest case of each.

Usage: ``python -m benchmarks.verifier_accuracy [CASES.jsonl ...] [--workers N] [--timeout S] [--misses]``
(default: ``public.jsonl`` and, where present, ``heldout.jsonl`` in ``../shared/verifier-cases``; a
default file that is absent is named and skipped). Needs ``pip install
math-verify`` for the comparison (skipped without it).

Each row is scored on its own (our worker pool started and warmed first), so ``max_s`` is the latency of the
slowest single case, worker round trip included. math-verify gets the answers the way its own tests give
them: an ``"answer"`` row's gold and prediction are wrapped in ``$...$`` (unless they already hold a ``$`` or
a ``\\boxed``), a ``"completion"`` row's prediction is passed as it is; math-verify's own parsing and
verification timeouts apply; it is also run on the answers as given, without the ``$``. ``--misses`` lists the
rows each verifier gets wrong.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rewards import MathVerifier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "verifier-cases"
DEFAULT_CASES = [SHARED / "public.jsonl", SHARED / "heldout.jsonl"]


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ours(workers: int, timeout: float) -> tuple[Callable[[dict[str, Any]], bool], Callable[[], None]]:
    """A per-row judge backed by one warm ``MathVerifier`` (verdict cache off), and its closer."""
    verifier = MathVerifier(workers=workers, timeout=timeout, cache_size=0)
    verifier.pool.start()

    def judge(row: dict[str, Any]) -> bool:
        score = verifier.score_answers if row.get("mode") == "answer" else verifier.score_batch
        return score([row["pred"]], [row["gold"]])[0].correct

    return judge, verifier.pool.close


def math_verify_judge(wrap_answers: bool = True) -> Callable[[dict[str, Any]], bool] | None:
    """A per-row judge backed by math-verify, or None when it is not installed. ``wrap_answers``: give an
    answer row's gold and prediction wrapped in ``$...$``."""
    try:
        import math_verify
    except ImportError:
        return None

    def wrap(text: str) -> str:
        return text if "$" in text or "\\boxed" in text else f"${text}$"

    def judge(row: dict[str, Any]) -> bool:
        answer_row = wrap_answers and row.get("mode") == "answer"
        gold = wrap(row["gold"]) if answer_row else row["gold"]
        pred = wrap(row["pred"]) if answer_row else row["pred"]
        try:
            return bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(pred)))
        except Exception:  # math-verify raises on some inputs: a wrong verdict, as for a trainer
            return False

    judge(dict(gold="1", pred="1", mode="answer"))  # imports and first-call set-up, untimed
    return judge


def evaluate(judge: Callable[[dict[str, Any]], bool], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, false positives/negatives, the slowest case and the rows judged wrong."""
    wrong, slowest = [], (0.0, "")
    for row in rows:
        start = time.perf_counter()
        verdict = judge(row)
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, row.get("id", "")))
        if verdict != row["equivalent"]:
            wrong.append((row.get("id", ""), row["equivalent"]))
    return {
        "accuracy": 1 - len(wrong) / len(rows),
        "false_positives": sum(not label for _, label in wrong),
        "false_negatives": sum(label for _, label in wrong),
        "max_s": slowest[0],
        "slowest": slowest[1],
        "wrong": [identifier for identifier, _ in wrong],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--misses", action="store_true", help="list the ids each verifier gets wrong")
    args = parser.parse_args()
    judge, close = ours(args.workers, args.timeout)
    judges = [
        ("rewards.MathVerifier", judge),
        ("math-verify ($-wrapped)", math_verify_judge()),
        ("math-verify (as given)", math_verify_judge(wrap_answers=False)),
    ]
    try:
        for path in args.cases:
            if not path.is_file() and path in DEFAULT_CASES:
                print(f"{path}: absent, skipped")
                continue
            rows = [row for row in load(path) if isinstance(row.get("equivalent"), bool)]
            for name, verdicts in judges:
                if verdicts is None:
                    print(f"{path.name}: {name} not installed")
                    continue
                result = evaluate(verdicts, rows)
                print(
                    f"{path.name} n={len(rows)} {name:24s} accuracy={result['accuracy']:.4f} "
                    f"false_positives={result['false_positives']} "
                    f"false_negatives={result['false_negatives']} "
                    f"max_s={result['max_s']:.3f} ({result['slowest']})"
                )
                if args.misses:
                    print("  wrong:", " ".join(result["wrong"]))
    finally:
        close()


if __name__ == "__main__":
    main()
