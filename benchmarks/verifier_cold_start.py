"""Whole-process and in-process time of ``rewards.MathVerifier`` against Hugging Face ``math-verify`` on the
same cases, alternating the two, with medians, spread and ratios.

Usage: ``python -m benchmarks.verifier_cold_start [CASES.jsonl] [--repeats N] [--workers N]`` (default
``../shared/verifier-cases/public.jsonl``, 3 repeats). Needs ``pip install math-verify``.

* Whole process: ``python -m rewards score CASES`` and ``python -m rewards score CASES --verifier
  MathVerifyAdapter``, each a fresh interpreter timed from launch to exit (imports, worker start-up, scoring,
  output), run alternately ``--repeats`` times each.
* In process: one batch call over all rows inside this process, alternately for ours and math-verify,
  ``--repeats`` times each, every repeat cold for the cases and warm for the parser: ours a new
  ``MathVerifier`` each repeat (empty verdict cache; its workers, forked from the fork server that trained
  the LaTeX parser on ``rewards.equivalence._WARMUP_PAIRS``, started before timing and closed after, so no
  parse cache outlives a repeat); math-verify imported and run once on the same warm-up pairs before the
  first repeat, and its parse caches and sympy's emptied before each. What cannot be emptied stays with
  math-verify in this process: ANTLR's prediction tables, trained on the cases from the first repeat on,
  which can only make its later repeats faster.

Child processes get ``OMP_NUM_THREADS=1``. On a machine shared with other work, read the ratios of the
alternating runs rather than absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rewards import MathVerifier, MathVerifyAdapter, Verifier
from rewards.equivalence import _WARMUP_PAIRS

DEFAULT_CASES = Path(__file__).resolve().parents[2] / "shared" / "verifier-cases" / "public.jsonl"
ROOT = Path(__file__).resolve().parents[1]


def whole_process(cases: Path, verifier: str, workers: int) -> float:
    """Seconds of one ``python -m rewards score`` run, launch to exit."""
    command = [sys.executable, "-m", "rewards", "score", str(cases), "--verifier", verifier]
    command += ["--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def in_process(verifier: Verifier, rows: list[dict]) -> float:
    """Seconds of one batch call over ``rows`` (answer rows as answers, the rest as completions)."""
    start = time.perf_counter()
    for mode in ("answer", "completion"):
        part = [row for row in rows if row.get("mode", "completion") == mode]
        score = verifier.score_answers if mode == "answer" else verifier.score_batch
        score([row["pred"] for row in part], [row["gold"] for row in part])
    return time.perf_counter() - start


def ours_in_process(rows: list[dict], workers: int) -> float:
    """``in_process`` for a new ``MathVerifier`` whose workers start before timing and stop after."""
    verifier = MathVerifier(workers=workers)
    verifier.pool.start()
    try:
        return in_process(verifier, rows)
    finally:
        verifier.pool.close()


def theirs_in_process(verifier: MathVerifyAdapter, rows: list[dict]) -> float:
    """``in_process`` for math-verify with its parse caches and sympy's emptied first."""
    from math_verify import parser
    from sympy.core.cache import clear_cache

    for cached in (parser.parse_latex_cached, parser.parse_expr_cached, parser.extract_latex):
        cached.cache_clear()
    clear_cache()
    return in_process(verifier, rows)


def summary(name: str, ours: list[float], theirs: list[float]) -> str:
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]

    def spread(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"

    return (
        f"{name}: ours {spread(ours)}; math-verify {spread(theirs)}; "
        f"ratio math-verify/ours median {statistics.median(ratios):.2f} "
        f"(per pair {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="?", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cases = args.cases.resolve()
    ours_whole, theirs_whole = [], []
    for _ in range(args.repeats):
        ours_whole.append(whole_process(cases, "MathVerifier", args.workers))
        theirs_whole.append(whole_process(cases, "MathVerifyAdapter", args.workers))
    print(summary("whole process", ours_whole, theirs_whole))

    rows = [json.loads(line) for line in cases.read_text(encoding="utf-8").splitlines() if line.strip()]
    theirs = MathVerifyAdapter()
    for pred, gold in _WARMUP_PAIRS:
        theirs.score(f"${pred}$", f"${gold}$")
    ours_in, theirs_in = [], []
    for _ in range(args.repeats):
        ours_in.append(ours_in_process(rows, args.workers))
        theirs_in.append(theirs_in_process(theirs, rows))
    print(summary("in process (a fresh verifier and empty caches each repeat)", ours_in, theirs_in))


if __name__ == "__main__":
    main()
