"""Notations a verifier met as false negatives or positives: repeating decimals written with a bar or
dots (MATH writes ``0.\\overline{7}``, ``0.436\\overline{7}``), "and" between two inequalities in one variable
(their intersection, not an answer list), two quantities with their units in math spans on one line without a
connector (a list, not its last quantity), and a percentage written with a decimal against the fraction it
rounds (``33.3\\%`` against 1/3). Every verdict is written by hand; equivalence is checked both ways."""

import pytest

from rewards import MathVerifier
from rewards.equivalence import equivalent, fast_readings_equivalent
from rewards.extract import extract_answer
from rewards.normalize import normalize


def verdicts(pred: str, gold: str) -> tuple[bool, bool]:
    return equivalent(pred, gold), equivalent(gold, pred)


# 1. repeating decimals: the exact fraction they are
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("0.\\overline{3}", "\\frac{1}{3}"),
        ("-0.\\overline{3}", "-\\frac{1}{3}"),
        (".\\overline{3}", "\\frac{1}{3}"),
        ("0.\\overline{142857}", "\\frac{1}{7}"),
        ("1.2\\overline{3}", "\\frac{37}{30}"),
        ("0.436\\overline{7}", "\\frac{3931}{9000}"),
        ("279.\\overline{00279}", "\\frac{3100000}{11111}"),
        ("0.\\overline{9}", "1"),
        ("0.\\overline 3", "\\frac{1}{3}"),
        ("0.\\bar{6}", "\\frac{2}{3}"),
        ("0.\\dot{3}", "\\frac{1}{3}"),
        ("0.1\\dot{6}", "\\frac{1}{6}"),
        ("0.\\dot{1}4285\\dot{7}", "\\frac{1}{7}"),
        ("$x = 0.\\overline{81}$", "x = \\frac{9}{11}"),  # the name is dropped when compared
        ("2^0.\\overline{3}", "2^{\\frac{1}{3}}"),  # an exponent keeps the whole fraction
        ("0.\\overline{3}, 0.\\overline{6}", "\\frac{1}{3}, \\frac{2}{3}"),
        # not a repeating decimal: a bar over letters (a segment), digits after the bar
        ("\\overline{AB}", "\\overline{AB}"),
        ("0.\\overline{3}4", "0.\\overline{3}4"),
    ],
)
def test_a_repeating_decimal_is_normalised_to_its_fraction(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("0.\\overline{3}", "\\frac{1}{3}", True),
        ("0.\\overline{142857}", "\\frac{1}{7}", True),
        ("1.2\\overline{3}", "\\frac{37}{30}", True),
        ("0.\\dot{3}", "\\frac13", True),
        ("0.\\dot{1}4285\\dot{7}", "\\frac{1}{7}", True),
        ("0.\\overline{3}", "0.\\overline{33}", True),
        ("-0.\\overline{6}", "-\\frac{2}{3}", True),
        ("0.\\overline{9}", "1", True),
        ("0.\\overline{3}", "0.33", True),  # the rounding rule: 0.33 rounds 1/3
        ("0.\\overline{3}", "0.3", False),  # too coarse, as against \frac{1}{3}
        ("0.\\overline{3}", "\\frac{3}{10}", False),
        ("0.\\overline{3}", "0.\\overline{36}", False),
        ("1.2\\overline{3}", "1.\\overline{23}", False),
        ("0.\\overline{142857}", "\\frac{1}{8}", False),
    ],
)
def test_a_repeating_decimal_equals_its_fraction(pred, gold, verdict):
    assert verdicts(pred, gold) == (verdict, verdict)


def test_a_completion_with_a_repeating_decimal_scores_against_its_fraction():
    verifier = MathVerifier(workers=1)
    try:
        completions = [
            "Let $x = 0.\\overline{81}$. Then $100x - x = 81$, so $x = \\boxed{0.\\overline{81}}$.",
            "The answer is $\\boxed{0.\\overline{3}}$.",
            "The answer is $\\boxed{0.\\overline{3}}$.",
        ]
        golds = ["\\frac{9}{11}", "$\\frac{1}{3}$", "\\frac{3}{10}"]
        assert [s.correct for s in verifier.score_batch(completions, golds)] == [True, True, False]
    finally:
        verifier.pool.close()


# 2. "and" between inequalities in one variable: their intersection
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("x>-1 and x<1", "x>-1 \\land x<1"),
        ("x > -1 \\text{ and } x < 1", "x > -1 \\land x < 1"),
        ("x \\geq 1 \\land x \\leq 3", "x \\geq 1 \\land x \\leq 3"),
        ("x < -1 \\text{ or } x > 1 \\text{ and } x < 3", "x < -1 \\lor x > 1 \\land x < 3"),
        # answer lists, inequalities in two variables: a list, as before
        ("x=1 and x=3", "1, 3"),
        ("x = 1 \\text{ and } x > 3", "1, x > 3"),
        ("x > 0 \\text{ and } y > 0", "x > 0, y > 0"),
    ],
)
def test_and_between_inequalities_in_one_variable_is_normalised_to_land(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("x>-1 and x<1", "(-1,1)", True),
        ("x > -1 \\text{ and } x < 1", "-1<x<1", True),
        ("x > -1 \\text{ and } x < 1", "(-1, 1)", True),
        ("x>-1 \\land x<1", "(-1,1)", True),
        ("x < 1 \\text{ and } x > -1", "\\{x | -1 < x < 1\\}", True),
        ("x \\geq -1 \\text{ and } x \\leq 1", "[-1, 1]", True),
        ("x \\geq -1 \\text{ and } x < 1", "-1 \\leq x < 1", True),
        ("x > 1 \\text{ and } x < 3 \\text{ or } x > 5", "(1,3) \\cup (5, \\infty)", True),
        ("x<-1 and x>1", "\\emptyset", False),  # contradictory bounds: a list (_list_if_contradictory)
        ("x \\geq 2 \\text{ and } x \\leq 2", "2", True),  # a point is no contradiction
        ("x>-1 and x<1", "(-1,1]", False),
        ("x \\geq -1 \\text{ and } x \\leq 1", "(-1, 1)", False),
        ("x>-1 and x<1", "x>-1 or x<1", False),
        ("x>-1 and x<1", "(-\\infty, \\infty)", False),
        ("x>-1 and x<2", "(-1,1)", False),
        ("x>-1 and x<1", "-1, 1", False),
        # answer lists keep their reading
        ("x=1 and x=3", "1, 3", True),
        ("x=1 and x=3", "(1,3)", False),
        ("x > 0 \\text{ and } y > 0", "x > 0, y > 0", True),
    ],
)
def test_and_between_inequalities_in_one_variable_is_their_intersection(pred, gold, verdict):
    assert verdicts(pred, gold) == (verdict, verdict)


def test_a_completion_ending_in_two_bounds_joined_by_and_scores_as_the_interval():
    verifier = MathVerifier(workers=1)
    try:
        completions = [
            "So the solution is $x > -1$ and $x < 1$, that is \\boxed{x>-1 \\text{ and } x<1}."
        ] * 2
        scores = verifier.score_batch(completions, ["$(-1,1)$", "$(-1,1]$"])
        assert [s.correct for s in scores] == [True, False]
    finally:
        verifier.pool.close()


# 3. two quantities on one line, each with its unit in a math span, no connector: a list, not its last one
@pytest.mark.parametrize(
    "text, expected",
    [
        ("$3$ $cm$ $4$ $cm$", "3, cm, 4, cm"),
        ("The sides are $3$ $cm$ $4$ $cm$", "cm"),
        ("The sides are $3$ $\\text{cm}$ $4$ $\\text{cm}$.", "\\text{cm}"),
        # three or more: each quantity after the first is listed (the third was read alone before)
        ("$2$ $cm$, $3$ $cm$, $4$ $cm$", "2, cm, 3, cm, 4, cm"),
        ("The sides are $2$ $cm$, $3$ $cm$ and $4$ $cm$", "cm"),
        ("$2$ $cm$ $3$ $cm$ $4$ $cm$", "2, cm, 3, cm, 4, cm"),
    ],
)
def test_two_quantities_side_by_side_are_not_read_as_the_last_one(text, expected):
    assert extract_answer(text) == expected
    assert not MathVerifier().score(text, "4").correct


@pytest.mark.parametrize("separator", [", ", " "])
def test_a_long_list_of_quantities_is_extracted_without_deep_recursion(separator):
    """Each quantity's check looks one quantity back, not down the whole list (700 quantities raised
    RecursionError in the calling process)."""
    assert extract_answer(separator.join(["$3$ $cm$"] * 700)) == "cm"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("AB = $3$ $cm$\n$4$ $cm$", "4 cm"),  # a line break: the last line states the answer
        ("$3$ $4$ $cm$", "4 cm"),  # a bare number before: no quantity to list with
        ("So the length is $12$ $\\text{cm}$", "12 \\text{cm}"),
    ],
)
def test_a_single_quantity_is_still_read_with_its_unit(text, expected):
    assert extract_answer(text) == expected


# 4. a percentage written with a decimal rounds the fraction as the same decimal written as a fraction does
@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("33.3\\%", "\\frac{1}{3}", True),  # 0.333: three significant digits
        ("33.33\\%", "\\frac{1}{3}", True),
        ("66.7\\%", "\\frac{2}{3}", True),
        ("14.3\\%", "\\frac{1}{7}", True),
        ("3.33\\%", "\\frac{1}{30}", True),
        ("33.\\overline{3}\\%", "\\frac{1}{3}", True),
        ("33.3\\%", "33\\frac{1}{3}\\%", True),
        ("33.3\\%", "0.333", True),
        ("33\\%", "\\frac{1}{3}", False),  # the integer 33 is exact: 33/100
        ("3.3\\%", "\\frac{1}{30}", False),  # two significant digits, one place: too coarse, as 3.3 is
        ("33.4\\%", "\\frac{1}{3}", False),  # not the correct rounding
        ("66.6\\%", "\\frac{2}{3}", False),
        ("33.3\\%", "0.3333", False),  # terminating decimals compare exactly
        ("12.5\\%", "0.13", False),
        ("12.5\\%", "0.125", True),
    ],
)
def test_a_decimal_percentage_rounds_a_fraction_by_the_decimal_rule(pred, gold, verdict):
    assert verdicts(pred, gold) == (verdict, verdict)


def test_a_decimal_percentage_against_a_terminating_decimal_is_settled_on_the_fast_path():
    assert fast_readings_equivalent("33.3\\%", "0.3333") is False
    assert fast_readings_equivalent("33.3\\%", "0.333") is True
    assert fast_readings_equivalent("33.3\\%", "\\frac{1}{3}") is None  # a rounding question: the full check
