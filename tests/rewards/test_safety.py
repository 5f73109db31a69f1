"""Hard limits: hostile answers return within the limit, without exceptions or side effects."""

import json
import time

import pytest

from rewards import MathVerifier
from rewards.sandbox import WorkerPool
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def verifier():
    verifier = MathVerifier(timeout=2.0, workers=2)
    yield verifier
    verifier.pool.close()


def test_timeout_kills_and_replaces_the_worker():
    pool = WorkerPool(workers=1, timeout=0.5)
    try:
        start = time.monotonic()
        outcomes = pool.map(time.sleep, [(30,), (0,)])
        assert [o.error for o in outcomes] == ["timeout", None]
        assert time.monotonic() - start < 15  # includes starting two interpreters
    finally:
        pool.close()


def test_code_payload_is_never_executed(verifier, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"\\boxed{{eval(\"open('{marker}', 'w')\")}}",
        f'{{}}.__class__.__base__.__subclasses__() \\boxed{{exec(\'open("{marker}","w")\')}}',
    ]
    scores = verifier.score_batch(payloads, ["1"] * len(payloads))
    assert all(score.reward == 0.0 for score in scores)
    assert not marker.exists()


def test_hostile_answers_return_within_the_limit(verifier):
    hostile = [
        "\\boxed{9^{9^{9^{9^{9}}}}}",
        "\\boxed{" + "9" * 20_000 + "}",
        "\\boxed{" + "(" * 5_000 + "1" + ")" * 5_000 + "}",
        "\\boxed{" + "{" * 5_000 + "}" * 5_000 + "}",
        "\\boxed{(10^{10})! + 1}",
    ]
    start = time.monotonic()
    scores = verifier.score_batch(hostile, ["2"] * len(hostile))
    assert time.monotonic() - start < 3 * (2.0 + 1.0)  # at most three waves of two workers
    assert all(score.reward == 0.0 for score in scores)


@pytest.mark.slow
def test_pathological_cases_return_within_the_limit(verifier):
    rows = [json.loads(line) for line in shared_path("verifier-cases", "pathological.jsonl").open()]
    for row in rows:
        start = time.monotonic()
        verifier.score(row["pred"], row["gold"])
        assert time.monotonic() - start < 2.0 + 1.0, row["id"]
