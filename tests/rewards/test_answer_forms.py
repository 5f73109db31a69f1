"""Answer forms that are easy to misjudge: units against variables, decimal precision, thousands separators
(LaTeX's too, and MATH-500's gold answers against their own solutions) and comma lists, a box against later
prose, self-corrections, hostile (very long) texts, list multiplicity, the batch CLI's answer rows, option
checks and non-finite rewards, Markdown emphasis, and a box cut off by the token limit."""

import io
import json
import sys
import time

import pytest

from rewards import MathVerifier, Score, Verifier
from rewards.__main__ import main
from rewards.equivalence import equivalent
from rewards.extract import SEARCH_TAIL, boxes, extract_answer
from rewards.normalize import MAX_NORMALIZE_LENGTH, MAX_WRAPPERS, normalize, normalize_pair, strip_wrappers
from tests.rewards.helpers import shared_path


# 1. units are dropped only when they are plainly units, never variables written against a number
@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("6x^3", "6x^2", False),
        ("2ab", "2", False),
        ("x^2+2ab", "x^2+2", False),
        ("\\frac{1}{2}ab", "\\frac{1}{2}", False),
        ("3R^2", "3", False),
        ("x^2+2ab", "2ab+x^2", True),
        ("10\\text{ units}", "10", True),
        ("15\\mbox{ cm}^2", "15", True),
        ("35 cm", "35", True),
        ("125 miles", "125", True),
        ("\\frac{1}{3} \\textbf{meters}", "\\frac{1}{3}", True),
    ],
)
def test_units_are_not_variables(pred, gold, same):
    assert equivalent(pred, gold) is same


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3R^2", "3R^2"),
        ("2ab", "2ab"),
        ("5 m", "5 m"),
        ("15\\mbox{ cm}^2", "15"),
        ("60 km/h", "60"),
        ("12 students", "12"),
    ],
)
def test_unit_normalisation(raw, expected):
    assert normalize(raw) == expected


# 2. a decimal stands for an irrational or repeating value only when precise enough and correctly rounded
@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("0.3", "\\frac{1}{3}", False),
        ("0.7", "\\frac{2}{3}", False),
        ("1.4", "\\sqrt{2}", False),
        ("3.1", "\\pi", False),
        ("0.03", "\\frac{1}{30}", False),  # two places but one significant digit
        ("0.33", "\\frac{1}{3}", True),
        ("0.67", "\\frac{2}{3}", True),
        ("0.66", "\\frac{2}{3}", False),  # truncated, not rounded
        ("1.41", "\\sqrt{2}", True),
        ("3.14", "\\pi", True),
        ("33.3", "\\frac{100}{3}", True),  # three significant digits
    ],
)
def test_decimal_precision(pred, gold, same):
    assert equivalent(pred, gold) is same
    assert equivalent(gold, pred) is same


# 2b. terminating decimals are exact values: no relative tolerance lets a wrong digit through
@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("123456789.1", "123456789", False),
        ("100000000.05", "100000000", False),
        ("1000000000.0", "1000000001", False),
        ("1.0000000001", "1", False),
        ("1234567.891", "1234567.89", False),
        ("x = 123456789.1", "123456789", False),
        ("123456789.1, 2", "123456789, 2", False),
        ("123456789.10", "123456789.1", True),
        ("1.0000000001", "\\frac{10000000001}{10000000000}", True),
        ("0.50", "\\frac{1}{2}", True),
        ("\\frac{-3}{4}", "-0.75", True),
        ("-\\frac{-3}{4}", "0.75", True),
        ("\\frac{-3}{4}", "0.75", False),
    ],
)
def test_terminating_decimals_compare_exactly(pred, gold, same):
    assert equivalent(pred, gold) is same
    assert equivalent(gold, pred) is same


# 2c. expressions in symbols are compared by their values at random points, evaluated to 30 digits: the
# relative tolerance of that comparison only absorbs the rounding of a float literal (0.1 held in binary,
# ~1e-17 relative), so expressions whose values differ by a factor 1 + 1e-6 are different answers
@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("\\frac{1000001}{1000000}x^2", "x^2", False),  # values at every point 1e-6 apart, relatively
        ("1.000001x^2", "x^2", False),
        ("\\frac{1000001}{1000000}y^2 = x", "y^2 = x", False),  # the ratio of the sides' differences
        ("\\frac{1000001}{1000000}x^2 < y", "x^2 < y", False),
        ("0.1x^2", "\\frac{x^2}{10}", True),  # equal but for the binary rounding of 0.1
        ("0.7y^2 = x", "\\frac{7y^2}{10} = x", True),
        ("0.1x^2 < y", "\\frac{x^2}{10} < y", True),
    ],
)
def test_expressions_that_differ_by_one_in_a_million_are_different(pred, gold, same):
    assert equivalent(pred, gold) is same
    assert equivalent(gold, pred) is same


def test_a_tuple_matches_only_the_open_interval_of_its_two_elements():
    import sympy

    from rewards.equivalence import _values_equal

    open_interval = sympy.Interval.open(1, 2)
    assert _values_equal(sympy.Tuple(1, 2), open_interval)
    assert _values_equal(open_interval, sympy.Tuple(1, 2))
    assert not _values_equal(sympy.Tuple(1, 2, 99), open_interval)  # not cut to the interval's length
    assert not _values_equal(sympy.Tuple(1, 2), sympy.Interval(1, 2))
    assert not _values_equal(sympy.Tuple(1, 2), sympy.Interval.Ropen(1, 2))


# 3. thousands separators followed by units, and inside brackets
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1,000 \\text{ dollars}", "1000"),
        ("2,500 miles", "2500"),
        ("\\boxed{(1,000, 2)}", "(1000, 2)"),
        ("\\{1,000, 2\\}", "\\{1000, 2\\}"),
        ("[1,100]", "[1,100]"),  # unspaced commas inside a bracket separate elements
        ("(6,31,-1)", "(6,31,-1)"),
        ("7,425,000", "7425000"),
    ],
)
def test_thousands_separators(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("\\boxed{2,500 \\text{ miles}}", "2500", True),
        ("\\boxed{2,500 \\text{ miles}}", "2, 500", False),
        ("\\boxed{(1,000, 2)}", "(1000, 2)", True),
        ("[1,100]", "[1, 100]", True),
    ],
)
def test_thousands_equivalence(pred, gold, same):
    assert equivalent(pred, gold) is same


# LaTeX's thousands separators (``,\!``, ``{,}``, a thin space ``\,``) hold a number together in prose and in
# a currency amount as a plain comma does: ``\$32,\!348`` was read as ``32,`` (MATH-500's own gold answer
# then failed to match its solution), ``\$1{,}000`` as ``1``
@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\$32,\\!348", "32,\\!348"),
        ("So she pays \\$12,\\!000 in total.", "12,\\!000"),
        ("\\$1{,}000", "1{,}000"),
        ("It costs 12\\,000 €", "12\\,000"),
        ("The total is 1{,}000.", "1{,}000"),  # the last number
        ("Therefore she pays 12,\\!000 dollars.", "12,\\!000"),  # ``\!`` ends no concluding sentence
        ("Thus we pay 7,\\!425,\\!000.50 in all.", "7,\\!425,\\!000.50"),
    ],
)
def test_latex_thousands_separators_are_extracted(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Thus we get 1,2.", "1,2"),  # a list
        ("Thus x is 1,22.", "1,22"),  # a list, or a decimal comma against a decimal gold (normalize_pair)
        ("Thus the total is 12,000 dollars.", "12,000"),
        ("We get $(1,3)$", "(1,3)"),
        ("\\boxed{12\\,000}", "12\\,000"),  # a box's content is whole: normalisation joins the groups
    ],
)
def test_lists_decimal_commas_and_boxes_are_read_as_before(text, expected):
    assert extract_answer(text) == expected


def test_latex_thousands_separators_score_as_the_number():
    verifier = MathVerifier(workers=1)
    try:
        completions = ["So she pays \\$12,\\!000 in total.", "\\$1{,}000", "The total is 12\\,000 apples."]
        references = ["12000", "1000", "12000"]
        assert [s.correct for s in verifier.score_batch(completions, references)] == [True, True, True]
        assert not verifier.score("So she pays \\$12,\\!000 in total.", "12").correct  # was read as 12
        answers = verifier.score_answers(["\\$32,\\!348", "32348", "32"], ["\\$32,\\!348"] * 3)
        assert [s.correct for s in answers] == [True, True, False]
    finally:
        verifier.pool.close()


def test_every_math500_gold_answer_matches_its_own_solution():
    """Each MATH-500 reference solution, extracted as a completion, must match its own gold answer; the gold
    ``\\$32,\\!348`` did not."""
    rows = [json.loads(line) for line in shared_path("datasets", "math500", "test.jsonl").open()]
    verifier = MathVerifier(workers=2)
    try:
        scores = verifier.score_batch([row["solution"] for row in rows], [row["answer"] for row in rows])
    finally:
        verifier.pool.close()
    assert len(rows) == 500
    assert [row["answer"] for row, score in zip(rows, scores, strict=True) if not score.correct] == []


# 4. a comma without a space separates list elements unless the other answer is a decimal with as many places
@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("3,12", "3, 12", True),
        ("-2,10", "-2.1", False),
        ("-2,10", "10, -2", True),
        ("0,5", "0, 5", True),
        ("1,22", "1.22", True),
        ("2,74", "2.74", True),
        ("0,111", "0.111", True),
        ("-0,5", "-0.5", True),  # a negative decimal below one reads as the positive one does
        ("-0,25", "-0.25", True),
    ],
)
def test_comma_lists_and_decimal_commas(pred, gold, same):
    assert equivalent(pred, gold) is same


def test_comma_normalisation():
    assert normalize("3,12") == "3, 12"
    assert normalize_pair("3,12", "3.12") == ("3.12", "3.12")
    assert normalize_pair("1,000", "1.000") == ("1000", "1.000")  # a thousands group is never a decimal


# 5. a box beats a later prose phrase that states no value
@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{44}. Check: 17*44=748=9*83+1, so our answer is correct.", "44"),
        ("So $x = \\boxed{3}$; the answer is consistent with the constraints.", "3"),
        ("\\boxed{12}\nNote: the final answer does not depend on n.", "12"),
        ("\\boxed{4}\nFinal Answer: The final answer is $5$. I hope it is correct.", "5"),  # states a value
        ("\\boxed{4}, so the answer is 5.", "5"),
    ],
)
def test_box_beats_prose_without_a_value(text, expected):
    assert extract_answer(text) == expected


# 5b. a reason after the answer on its line is not part of it (it was: "7 because 3+4=7" scored 0)
@pytest.mark.parametrize(
    "text, expected",
    [
        ("3+4=7, so she has \\boxed{7} apples. The answer is 7 because 3+4=7.", "7"),
        ("\\boxed{18}. The answer is 18 (from 9 * 2).", "18"),
        ("The final answer is 18 because 9 * 2 = 18.", "18"),
        ("The answer is 7, since 3+4=7.", "7"),
        ("The answer is 7, which is odd.", "7"),
        ("Final Answer: 18 (9 eggs at $2 each)", "18"),  # was the last number, 2
        ("The answer is 1/2 of 36, which is 18.", "18"),  # the restated value
        ("The answer is 5; we check it below.", "5"),
        ("Answer: 42 as computed above", "42"),
        ("The answer is \\frac{1}{2} (about half).", "\\frac{1}{2}"),
        # not cut: inside math, an interval's parentheses, a parenthesis without a word
        ("The answer is $f(x) = (x+1)^2$ since it fits.", "f(x) = (x+1)^2"),
        ("The answer is (-\\infty, 3) \\cup (5, \\infty).", "(-\\infty, 3) \\cup (5, \\infty)"),
        ("The answer is 2 (x+1).", "2 (x+1)"),
    ],
)
def test_a_reason_after_the_answer_is_cut_off(text, expected):
    assert extract_answer(text) == expected


def test_a_correct_answer_with_its_reason_scores_as_correct():
    verifier = MathVerifier()
    completions = ["The answer is 7 because 3+4=7.", "Final Answer: 18 (9 eggs at $2 each)"]
    assert [score.correct for score in verifier.score_batch(completions, ["7", "18"])] == [True, True]


# 6. self-corrections are not answer lists; genuine multi-box lists still are
@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{5}. Hmm no, \\boxed{6}.", "6"),
        ("The answer is \\boxed{5}. Wait, actually it's \\boxed{7}.", "7"),
        ("\\boxed{5}, wait, \\boxed{7}", "7"),
        ("\\boxed{1} and \\boxed{2}", "1, 2"),
        ("\\boxed{1}, \\boxed{2}", "1, 2"),
        ("$x_1 = \\boxed{1}$ and $x_2 = \\boxed{2}$", "1, 2"),
        ("\\boxed{1} papers and \\boxed{2} bins", "1, 2"),
        ("\\boxed{\\boxed{12}}", "12"),  # a box inside a box is its content, not a second answer
    ],
)
def test_self_correction_is_not_a_list(text, expected):
    assert extract_answer(text) == expected


# 7. string work in the calling process is linear: only the tail of a text is searched, answers are capped
def test_extraction_searches_only_the_tail():
    assert extract_answer("\\boxed{1} " + "more text " * SEARCH_TAIL) is None
    assert extract_answer("more text " * SEARCH_TAIL + "\\boxed{2}") == "2"


def test_wrappers_are_peeled_to_a_bounded_depth():
    def nest(depth: int) -> str:
        return "\\boxed{" * depth + "1" + "}" * depth

    assert strip_wrappers(f"${nest(MAX_WRAPPERS)}$") == "1"  # a box and its delimiters in one pass
    assert strip_wrappers(nest(MAX_WRAPPERS + 1)) == nest(1)  # a pass each: deeper nests stay wrapped
    assert strip_wrappers(nest(1000)) == nest(1000 - MAX_WRAPPERS)


def test_wrappers_of_a_bare_answer_are_peeled():
    assert strip_wrappers("$\\boxed{-2,1}$.") == "-2,1"  # a trailing period after the math span
    assert strip_wrappers("$$\\boxed{\\boxed{7}}$$") == "7"  # a box doubled inside display math


def test_overlong_answers_are_not_normalised():
    text = "\\text{" * MAX_NORMALIZE_LENGTH + "}" * MAX_NORMALIZE_LENGTH
    assert normalize(text) == text


def test_boxes_are_matched_in_one_pass():
    text = "\\boxed{" * 20_000 + "1" + "}" * 20_000
    found = boxes(text)
    assert len(found) == 20_000 and found[-1][2] == "1"


@pytest.mark.parametrize(
    "text",
    [
        "7" * 8000,
        "Total: " + "12," * 3000 + "5",
        "1" * 50_000,
        "\\boxed{" * 16_000,
        "1,000" * 10_000,
        "\\boxed{" * 1400 + "1" + "}" * 1400,  # nested boxes were joined into a list of every level
    ],
)
def test_hostile_texts_are_extracted_and_normalised_quickly(text):
    start = time.monotonic()
    answer = extract_answer(text)
    normalize(answer or "")
    assert time.monotonic() - start < 2.0  # these took 3-150 s with quadratic scans


# 8. cheap ones: list multiplicity, empty-set spellings, scientific notation
@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("1, 1, 2", "1, 2", False),
        ("1, 2, 1", "1, 1, 2", True),
        ("\\emptyset", "\\varnothing", True),
        ("1e3", "1000", True),
        ("2.5e-3", "\\frac{1}{400}", True),
        ("1e3", "100", False),
    ],
)
def test_multiplicity_empty_set_and_scientific_notation(pred, gold, same):
    assert equivalent(pred, gold) is same


# 9. the batch CLI: answer rows skip extraction, bad options exit 2 with a message
class Recorder(Verifier):
    """Says which entry point scored each row."""

    def score(self, completion: str, reference: str) -> Score:
        return Score(0.0, False, "completion", "completion")

    def score_answers(self, answers, references):
        return [Score(1.0, True, "answer", "answer") for _ in answers]


@pytest.fixture
def cases(tmp_path):
    path = tmp_path / "cases.jsonl"
    rows = [
        {"id": "a", "gold": "1", "pred": "1", "mode": "answer"},
        {"id": "c", "gold": "1", "pred": "1", "mode": "completion"},
        {"id": "d", "gold": "1", "pred": "1"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_scores_answer_rows_as_answers(cases, capsys):
    assert main(["score", str(cases), "--verifier", f"{__name__}.Recorder"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["id"], r["extracted"]) for r in records] == [
        ("a", "answer"),
        ("c", "completion"),
        ("d", "completion"),
    ]


class StreamRecorder(Verifier):
    """Records each batch's size and how many output lines were already written when it was scored."""

    batches: list[tuple[int, int]] = []

    def score(self, completion: str, reference: str) -> Score:
        return Score(1.0, True, completion, "equal")

    def score_batch(self, completions, references, prompts=None):
        StreamRecorder.batches.append((len(completions), sys.stdout.getvalue().count("\n")))
        return super().score_batch(completions, references, prompts)


def test_cli_writes_each_batch_before_scoring_the_next(tmp_path, monkeypatch):
    """A long file is scored in batches whose lines are written at once: a run killed midway keeps them."""
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": i, "gold": "1", "pred": str(i)}) + "\n" for i in range(5)))
    monkeypatch.setattr("rewards.__main__.BATCH_ROWS", 2)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    StreamRecorder.batches = []
    assert main(["score", str(path), "--verifier", f"{__name__}.StreamRecorder"]) == 0
    assert StreamRecorder.batches == [(2, 0), (2, 2), (1, 4)]
    *lines, summary = sys.stdout.getvalue().splitlines()
    assert [json.loads(line)["extracted"] for line in lines] == ["0", "1", "2", "3", "4"]
    assert summary.startswith("summary: n=5 ")


class NaNReward(Verifier):
    """A buggy verifier: reward NaN for the completion ``nan``, 1 for any other."""

    def score(self, completion: str, reference: str) -> Score:
        return Score(float(completion), True, completion, "given")


def test_cli_scores_a_non_finite_reward_as_the_trainer_does(tmp_path, capsys):
    """A NaN reward was written as ``"reward": NaN`` (not JSON) and not counted in ``errors``; the trainer
    gives it reward 0 with the error ``non-finite reward nan``."""
    path = tmp_path / "cases.jsonl"
    path.write_text(
        "".join(json.dumps({"id": pred, "gold": "1", "pred": pred}) + "\n" for pred in ("nan", "1"))
    )
    assert main(["score", str(path), "--verifier", f"{__name__}.NaNReward"]) == 0
    *lines, summary = capsys.readouterr().out.splitlines()

    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    records = [json.loads(line, parse_constant=reject) for line in lines]
    assert [(r["id"], r["reward"], r["equivalent"], r["error"]) for r in records] == [
        ("nan", 0.0, False, "non-finite reward nan"),
        ("1", 1.0, True, None),
    ]
    assert " errors=1 " in summary


@pytest.mark.parametrize("name", ["Bogus", "nomod.Bogus", "rewards.normalize.normalize"])
def test_cli_rejects_an_unknown_verifier(cases, capsys, name):
    assert main(["score", str(cases), "--verifier", name]) == 2
    assert f"--verifier {name}" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--workers", "--timeout"])
def test_cli_rejects_non_positive_limits(cases, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(cases), option, "0"])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_math_verifier_scores_bare_answers_without_extraction():
    verifier = MathVerifier(workers=1)
    try:
        assert verifier.score_answers(["$\\boxed{1,2}$"], ["2, 1"])[0].correct
        prose = (
            "the value is 5 dollars"  # as a completion its last number is extracted; as an answer it is text
        )
        assert verifier.score_batch([prose], ["5"])[0].correct
        assert not verifier.score_answers([prose], ["5"])[0].correct
    finally:
        verifier.pool.close()


def test_cli_passes_warm_start_only_when_asked(cases, capsys):
    """A one-shot batch starts cold (it pays only for the answer forms it meets); ``--warm-start`` trains the
    parser first, as a trainer's verifier does by default."""
    from rewards.__main__ import make_verifier

    assert make_verifier("MathVerifier", 3.0, 1).pool.warmup is None
    assert make_verifier("MathVerifier", 3.0, 1, warm_start=True).pool.warmup is not None
    assert MathVerifier().pool.warmup is not None
    assert main(["score", str(cases), "--warm-start"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["equivalent"] for r in records] == [True, True, True]


# 10. Markdown emphasis around an answer label or an answer is not part of the answer
@pytest.mark.parametrize(
    "text, expected",
    [
        ("**Answer:** 18", "18"),
        ("**Answer**: 18", "18"),
        ("**Final Answer:** 18", "18"),
        ("**Final Answer**: 18", "18"),
        ("**Final Answer**: $18$", "18"),
        ("*Answer:* 18", "18"),
        ("__Answer:__ 18", "18"),
        ("__Answer__: 18", "18"),
        ("**Answer:**\n18", "18"),
        ("**Answer: 18**", "18"),
        ("The answer is **18**.", "18"),
        ("The answer is: **$\\frac{1}{2}$**", "\\frac{1}{2}"),
        ("**The answer is 18.**", "18"),
        ("Final answer: **5!**", "5!"),
        # after work with math spans and numbers, the label's answer, not the last math span or number
        ("We have $x = 3$, so $2x + 12 = 18$.\n\n**Answer:** 18", "18"),
        ("With 3 cats and 5 dogs:\n\n**Answer**: $\\frac{3}{8}$", "\\frac{3}{8}"),
        ("Solving $x + 1 = 19$ gives $x = 18$.\n\nAnswer: 18", "18"),
        ("We get $x = 3$.\n\n**Final Answer**\n\n$18$", "18"),
        ("We get $x = 3$.\n\n**Final Answer**: $18$", "18"),
        ("Thus $x = 3$.\n\n- **Answer:** $x = 18$", "x = 18"),
        ("We get $x = 3$.\n\n**Answer:**\n\n$18$", "18"),
        # a label that opens the work rather than stating a value is not the answer
        ("**Answer:**\nWe first note that $x = 3$, so the total is $18$.", "18"),
        ("Answer: let us count the cases.\n\nThere are $18$ of them.", "18"),
    ],
)
def test_markdown_answer_labels(text, expected):
    assert extract_answer(text) == expected


# a label keeps the other prose markers' rule: after a box it wins only when it states a value
@pytest.mark.parametrize(
    "text, expected",
    [
        ("**Answer:** $\\boxed{18}$", "18"),
        ("\\boxed{4}\n\n**Answer:** 18", "18"),
        ("\\boxed{44}\n\n**Answer:** see above", "44"),
        ("The final answer is: $\\boxed{5}$", "5"),
        ("**Answer:** 1,000", "1,000"),
        ("**Answer:** $18", "$18"),
        ("**Answer:** 18.00 cm", "18.00 cm"),
        ("The answer is $x^*$", "x^*"),
        ("Answer: **18** apples", "18 apples"),  # bold inside the answer goes, the unit is normalised away
        ("The answer is x**2 + 1", "x**2 + 1"),  # Python's power is not emphasis
    ],
)
def test_markdown_answer_labels_keep_the_other_rules(text, expected):
    assert extract_answer(text) == expected


def test_markdown_answer_labels_score_as_correct():
    verifier = MathVerifier(workers=1)
    try:
        completions = [
            "**Answer:** 18",
            "**Final Answer**: $18$",
            "We get $x=3$.\n\n**Answer**: 18.00",
            "**Answer:** $18",
            "The answer is **18 cm**.",
        ]
        scores = verifier.score_batch(completions, ["18"] * len(completions))
        assert [score.correct for score in scores] == [True] * len(completions)
        assert not verifier.score_batch(["We get $18$.\n\n**Answer:** 17"], ["18"])[0].correct
    finally:
        verifier.pool.close()


# 11. a box cut off by the token limit (``\boxed{13`` never closed) holds no answer: extraction falls back as
# for a text without it, and the verifier reports no error (the unfinished box reached the parser, which
# failed: ``crash: Exception: I expected something else here``, counted in ``train/verifier_errors``)
@pytest.mark.parametrize(
    "text, expected, without_last_number",
    [
        ("4+9=13 \\boxed{13", "13", None),  # the last number
        ("The answer is 4+9=13 \\boxed{13", "13", None),
        ("$4+9=13 \\boxed{13$", "13", None),
        ("So $x = 4$. Then 4+9=13 \\boxed{13", "x = 4", "x = 4"),  # the last math span
        ("\\boxed{5}. Checking: 4+9=13 \\boxed{13", "5", "5"),  # a closed box still counts
        ("\\boxed{13", "\\boxed{13", "\\boxed{13"),  # a stray opening of a bare answer: normalised to 13
    ],
)
def test_a_cut_off_box_is_no_answer(text, expected, without_last_number):
    assert extract_answer(text) == expected
    assert extract_answer(text, last_number_fallback=False) == without_last_number


def test_a_cut_off_box_is_no_verifier_error():
    with_fallback, without = MathVerifier(workers=1), MathVerifier(workers=1, last_number_fallback=False)
    try:
        score = with_fallback.score("4+9=13 \\boxed{13", "13")
        assert (score.correct, score.extracted, score.error) == (True, "13", None)
        score = without.score("4+9=13 \\boxed{13", "13")
        assert (score.correct, score.extracted, score.details, score.error) == (
            False,
            None,
            "no final answer found",
            None,
        )
    finally:
        with_fallback.pool.close()
        without.pool.close()
