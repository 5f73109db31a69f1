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


def test_a_correct_answer_earns_correct_reward():
    verifier = MathVerifier(correct_reward=2.5, warm_start=False)
    try:
        scores = verifier.score_batch(["\\boxed{3}", "\\boxed{4}"], ["3", "3"])  # decided in process
        assert [(s.reward, s.correct) for s in scores] == [(2.5, True), (0.0, False)]
    finally:
        verifier.pool.close()


def test_a_reference_solution_is_scored_by_its_final_answer(verifier):
    assert verifier.score("\\boxed{5}", "She had 3 + 4 = 7 apples, then 2 fewer.\n#### 5").correct


def test_bare_answers_are_unwrapped_before_scoring(verifier):
    wrapped, empty = verifier.score_answers(["$\\boxed{7}$.", "$ $"], ["7", "7"])
    assert (wrapped.correct, wrapped.extracted) == (True, "7")
    assert (empty.extracted, empty.details, empty.error) == (None, "no final answer found", None)


def test_an_unparseable_answer_is_a_verification_error(verifier):
    score = verifier.score_answers(["\\frac{{}"], ["3"])[0]
    assert (score.reward, score.correct, score.details) == (0.0, False, "verification failed")
    assert score.error.startswith("crash: ")


def test_the_verdict_cache_drops_the_least_recently_used_pair():
    verifier = MathVerifier(workers=1, cache_size=2, warm_start=False)
    sent = []
    pool_map = verifier.pool.map

    def recording_map(function, calls):
        sent.extend(calls)
        return pool_map(function, calls)

    verifier.pool.map = recording_map
    a, b, c = ("\\sqrt{4}", "2"), ("\\sqrt{9}", "3"), ("\\sqrt{16}", "4")  # each needs the full check
    try:
        for answer, reference in [a, b, a, c, a, b]:
            assert verifier.score(f"\\boxed{{{answer}}}", reference).correct
    finally:
        verifier.pool.close()
    # a is used again before c arrives, so b is the least recently used pair when c needs the room
    assert sent == [a, b, c, b]


def test_weighted_sum_needs_every_judge_and_keeps_an_extracted_answer(verifier):
    from rewards import FormatReward, NumericVerifier, WeightedSum

    assert WeightedSum([FormatReward()], [1.0]).score("\\boxed{3}", "3").correct is False  # nobody judges
    with pytest.warns(UserWarning, match="all judge correctness"):
        both = WeightedSum([verifier, NumericVerifier()], [1.0, 1.0])
    score = both.score("\\boxed{x^2}", "x^2")  # equivalent, but not a plain number
    assert (score.reward, score.correct) == (1.0, False)
    assert WeightedSum([FormatReward(), verifier], [0.5, 1.0]).score("\\boxed{3}", "3").extracted == "3"


@pytest.mark.parametrize(
    "reward, error", [(float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan")]
)
def test_a_non_finite_reward_is_an_error_not_a_verdict(reward, error):
    from rewards.verifiers import Score, finite_score

    score = finite_score(Score(reward, True, "3", "equivalent"))
    assert (score.reward, score.correct, score.error) == (0.0, False, f"non-finite reward {error}")
    kept = Score(0.5, True, "3", "equivalent")
    assert finite_score(kept) is kept
