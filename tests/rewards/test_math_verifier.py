"""The default verifier on the answer forms the embedded task and GSM8K produce."""

import pytest

from rewards import MathVerifier
from rewards.extract import extract_answer, last_boxed


@pytest.fixture(scope="module")
def verifier():
    """One verifier (and worker pool) for the module: starting workers costs ~1 s each."""
    verifier = MathVerifier(correct_reward=1.0)
    yield verifier
    verifier.pool.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{-12}", "-12"),
        ("\\boxed{1} was wrong; checking again gives \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # last box
        ("work\n#### 72", "72"),
        ("The answer is 42.", "42"),
        ("no answer here", None),
    ],
)
def test_extraction(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_handles_deep_nesting():
    assert last_boxed("\\boxed{{{1}}}") == "{{1}}"


@pytest.mark.parametrize(
    "completion, reference, correct",
    [
        ("\\boxed{6/8}", "3/4", True),
        ("\\boxed{\\frac{6}{8}}", "3/4", True),
        ("\\boxed{-12}", "-12", True),
        ("\\boxed{12}", "-12", False),
        ("\\boxed{0.75}", "3/4", True),
        ("\\boxed{7/16}", "7/8", False),
        ("#### 1,000", "1000", True),
        ("\\boxed{x^2-x-6}", "(x-3)(x+2)", True),
        ("\\boxed{x^2-x+6}", "(x-3)(x+2)", False),
        ("\\boxed{3\\sqrt{13}}", "\\sqrt{117}", True),
    ],
)
def test_equivalence_decides_the_reward(verifier, completion, reference, correct):
    score = verifier.score(completion, reference)
    assert score.correct is correct
    assert score.reward == (1.0 if correct else 0.0)


@pytest.mark.parametrize(
    "completion", ["no answer", "\\boxed{\\frac{{}", "\\boxed{__import__('os')}", "\\boxed{}"]
)
def test_unparseable_answers_get_zero_reward_without_raising(verifier, completion):
    score = verifier.score(completion, "3")
    assert score.reward == 0.0 and not score.correct


def test_score_batch_keeps_order(verifier):
    scores = verifier.score_batch(["\\boxed{1}", "\\boxed{2}"], ["2", "2"])
    assert [s.correct for s in scores] == [False, True]


def test_numeric_format_and_weighted_sum(verifier):
    from rewards import FormatReward, NumericVerifier, WeightedSum

    assert NumericVerifier().score("#### 1,000", "1000").correct
    assert not NumericVerifier().score("\\boxed{x}", "1000").correct
    assert FormatReward().score("\\boxed{3}", "4").reward == 1.0
    combined = WeightedSum([verifier, FormatReward()], [1.0, 0.1]).score("\\boxed{3}", "3")
    assert combined.reward == 1.1 and combined.correct


def test_embedded_task_answers_are_decided_in_process():
    """The trainer's default task must never wait on a worker: these are settled without starting one."""
    fresh = MathVerifier()
    scores = fresh.score_batch(
        ["\\boxed{-12}", "\\boxed{6/8}", "-(6*2)=-12 \\boxed{-12}", "\\boxed{12}", "2, 1"],
        ["-12", "3/4", "-12", "-12", "1, 2"],
    )
    assert [s.correct for s in scores] == [True, True, True, False, True]
    assert fresh.pool._idle == []  # no worker was started
