"""Cases per second of ``rewards.MathVerifier`` and of Hugging Face ``math-verify`` on the same cases.

Usage: ``python -m benchmarks.verifier_throughput [CASES.jsonl] [--workers N]`` (default
``../shared/verifier-cases/public.jsonl``). Needs ``pip install math-verify`` for the comparison. Both are
timed warm: our worker pool is started (and math-verify imported) before timing, and our verdict
cache is cleared. Prints accuracy and cases/s for each and the ratio ours / math-verify.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rewards import MathVerifier, MathVerifyAdapter, Verifier

DEFAULT_CASES = Path(__file__).resolve().parents[2] / "shared" / "verifier-cases" / "public.jsonl"


def measure(verifier: Verifier, rows: list[dict]) -> tuple[float, float]:
    """(accuracy, cases per second) of one batch call over ``rows``."""
    start = time.perf_counter()
    scores = verifier.score_batch([r["pred"] for r in rows], [r["gold"] for r in rows])
    elapsed = time.perf_counter() - start
    accuracy = sum(s.correct == r["equivalent"] for s, r in zip(scores, rows, strict=True)) / len(rows)
    return accuracy, len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="?", default=str(DEFAULT_CASES))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.cases).read_text().splitlines() if line.strip()]
    ours = MathVerifier(workers=args.workers)
    ours.pool.start()  # every worker started and warmed up before timing
    ours_accuracy, ours_rate = measure(ours, rows)
    print(f"rewards.MathVerifier  accuracy={ours_accuracy:.4f}  cases_per_s={ours_rate:.1f}")
    theirs = MathVerifyAdapter()
    theirs.score("\\boxed{1}", "1")
    theirs_accuracy, theirs_rate = measure(theirs, rows)
    print(f"math-verify (adapter) accuracy={theirs_accuracy:.4f}  cases_per_s={theirs_rate:.1f}")
    print(f"ratio (ours / math-verify cases per second) = {ours_rate / theirs_rate:.2f}")
    ours.pool.close()


if __name__ == "__main__":
    main()
