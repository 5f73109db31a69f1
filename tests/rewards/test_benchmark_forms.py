"""Answer forms of the benchmark references (Qwen2.5-Math's evaluation data: gaokao2023en, olympiadbench):
sets in set-builder notation compared as solution sets, units written in a math span after a number (``20
$cm^{2}$``), and constant expressions of decimals evaluated exactly (``\\frac{0.25}{2}`` is 1/8, so the
rounding tolerance of a decimal does not make ``0.13`` equal to it). Every verdict is written by hand."""

import time
from fractions import Fraction

import pytest

from rewards import MathVerifier
from rewards.equivalence import _exact_rational, _latex2sympy, decimals_written_in, equivalent
from rewards.extract import extract_answer
from rewards.normalize import normalize, set_builder


def same(pred: str, gold: str) -> bool:
    """The verifier's verdict: ``equivalent``, an answer the parser rejects judged different (reward 0)."""
    try:
        return equivalent(pred, gold)
    except Exception:
        return False


# 1. set-builder notation: a one-variable inequality (or chain) as its solution set
HALF_OPEN = "\\{x|-2\\leq x < 1\\}"


@pytest.mark.parametrize(
    "pred",
    [
        "\\{x|-2\\le x<1\\}",
        "[-2, 1)",
        "-2\\le x<1",
        "x\\in[-2,1)",
        "\\{x \\mid -2 \\leq x < 1\\}",
        "\\{x : -2 \\leq x < 1\\}",
        "\\left\\{x \\mid -2 \\leq x < 1\\right\\}",
        "\\{x\\in\\mathbb{R} | -2\\le x<1\\}",
        "\\{x \\in \\mathbf{R} : -2\\le x<1\\}",
        "\\{t | -2 \\leq t < 1\\}",  # the bound variable's name does not matter
        "\\{x | 1 > x \\geq -2\\}",
    ],
)
def test_a_set_builder_set_is_the_solution_set_of_its_condition(pred):
    assert (same(pred, HALF_OPEN), same(HALF_OPEN, pred)) == (True, True)


@pytest.mark.parametrize(
    "pred",
    [
        "(-2,1]",
        "[-2, 1]",
        "(-2, 1)",
        "-2 < x < 1",
        "x \\in [-2, 1]",
        "\\{x | -2 \\leq x \\leq 1\\}",
        "\\{x | -2 < x < 1\\}",
        "\\{-2, -1, 0\\}",
        "\\{x \\in \\mathbb{Z} | -2 \\leq x < 1\\}",  # integers: {-2, -1, 0}, compared as written only
        "\\{x | -2 \\leq y < 1\\}",  # a condition on another variable
    ],
)
def test_a_set_builder_set_does_not_match_another_set(pred):
    assert (same(pred, HALF_OPEN), same(HALF_OPEN, pred)) == (False, False)


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("\\{x|x>2\\}", "(2, +\\infty)", True),
        ("\\{x \\mid x > 2\\}", "x > 2", True),
        ("\\{x|x\\ge 2\\}", "(2, +\\infty)", False),
        ("\\{y|y\\geq 0\\}", "[0,+\\infty)", True),
        ("\\{x|x^2<4\\}", "(-2,2)", True),
        ("\\{x|x^2<4\\}", "[-2,2]", False),
        ("\\{x|x^2>4\\}", "(-\\infty,-2)\\cup(2,+\\infty)", True),
        ("\\{x|x<-1\\}", "\\{x|x\\le -1\\}", False),
    ],
)
def test_set_builder_conditions(pred, gold, verdict):
    assert (same(pred, gold), same(gold, pred)) == (verdict, verdict)


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("\\{x \\mid x=3k, k\\in\\mathbb{Z}\\}", "\\{x|x=3k,k\\in \\mathbb{Z}\\}", True),  # \mid is |
        ("\\{x : x=3k, k\\in\\mathbb{Z}\\}", "\\{x|x=3k,k\\in \\mathbb{Z}\\}", True),
        ("\\left\\{x \\mid x=3k, k\\in\\mathbb{Z}\\right\\}", "\\{x|x=3k,k\\in \\mathbb{Z}\\}", True),
        # both were normalised to `\mathbb{Z}\}` (the text after `\in`) and judged equal
        ("\\{x|x=2k,k\\in \\mathbb{Z}\\}", "\\{x|x=3k,k\\in \\mathbb{Z}\\}", False),
        ("\\mathbb{Z}", "\\{x|x=3k,k\\in \\mathbb{Z}\\}", False),
        ("\\{x|x \\neq 3\\}", "\\{x \\mid x \\neq 3\\}", True),
        ("\\{x|x \\neq 3\\}", "\\{x|x \\neq 4\\}", False),
    ],
)
def test_other_set_builder_sets_compare_as_written(pred, gold, verdict):
    assert (same(pred, gold), same(gold, pred)) == (verdict, verdict)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\{x \\mid f(x) > 0\\}", "(0, \\infty)"),
        ("\\{x \\mid f(x) \\geq 2\\}", "[2,\\infty)"),
        ("\\{x|f(x)>0\\}", "\\{x|x>0\\}"),
        ("\\{x|g(x) < 1\\}", "x < 1"),
        ("\\{x|\\sin x > 0\\}", "x > 0"),
        ("\\{x|f(x+1)>0\\}", "(-1, \\infty)"),
    ],
)
def test_a_condition_on_a_function_of_x_is_not_solved_for_the_function(pred, gold):
    assert (same(pred, gold), same(gold, pred)) == (False, False)
    assert same(pred, pred)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\left\\{x \\mid -2 \\leq x < 1\\right\\}", "\\{x|-2 \\leq x < 1\\}"),
        ("\\{x \\in \\mathbb{R} : x > 0\\}", "\\{x|x > 0\\}"),
        ("\\{n \\in \\mathbb{Z} \\mid n > 0\\}", "\\{n \\in \\mathbb{Z}|n > 0\\}"),
        ("\\{x|x=3k,k\\in \\mathbb{Z}\\}", "\\{x|x=3k,k\\in \\mathbb{Z}\\}"),
        ("x \\in \\{x | x > 0\\}", "\\{x|x > 0\\}"),
    ],
)
def test_set_builder_normalisation(raw, expected):
    assert normalize(raw) == expected


def test_only_a_whole_set_is_read_as_set_builder_notation():
    assert set_builder("\\{x | x > 0\\}") == ("x", "", "x > 0")
    assert set_builder("\\{x|x>0\\} \\cup \\{y|y<-1\\}") is None
    assert set_builder("\\{1, 2\\}") is None


# "or" between inequalities is the union of their solution sets, "and" (like a comma) joins bounds: the two
# answers are never one answer list (``x<-1 or x>1`` and ``x<-1 and x>1`` were both ``x<-1, x>1``)
@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("x<-1 \\text{ or } x>1", "x<-1 \\text{ and } x>1", False),
        ("x<-1 or x>1", "x<-1 and x>1", False),
        ("x<-1 \\lor x>1", "x<-1 \\land x>1", False),
        ("\\{x \\mid x<-1 \\text{ or } x>1\\}", "\\{x : x<-1 \\text{ and } x>1\\}", False),
        ("x>-1 \\text{ and } x<1", "x>-1 \\text{ or } x<1", False),
        ("x<-1 \\text{ or } x>1", "x<-1, x>1", False),
        ("x>0 \\text{ or } y>0", "x>0 \\text{ and } y>0", False),
        ("x<-1 \\text{ or } x>1", "x<-1 \\text{ or } x>2", False),
        ("x<-1 \\text{ or } x>1", "(-\\infty,-1)\\cup(1,\\infty)", True),
        ("x<-1 \\lor x>1", "(-\\infty,-1)\\cup(1,\\infty)", True),
        ("x \\le -1 \\text{ or } x \\ge 1", "(-\\infty,-1]\\cup[1,\\infty)", True),
        ("x \\le -1 \\text{ or } x \\ge 1", "(-\\infty,-1)\\cup(1,\\infty)", False),
        ("-2<x<-1 \\text{ or } x>1", "(-2,-1)\\cup(1,\\infty)", True),
        ("x<-1 \\text{ or } x>1", "x>1 \\text{ or } x<-1", True),
        ("x<-1 \\text{ or } x>1", "\\{x|x^2>1\\}", True),
        ("\\{x \\mid x<-1 \\text{ or } x>1\\}", "(-\\infty,-1)\\cup(1,\\infty)", True),
        ("\\{x : x<-1 \\text{ and } x>1\\}", "\\emptyset", True),
        ("\\{x \\mid x>-1 \\text{ and } x<1\\}", "(-1,1)", True),
        ("x>0 \\text{ or } y>0", "y>0 \\text{ or } 0<x", True),
        # "and" between inequalities in one variable is their intersection, but an empty one is "and"
        # written for "or" or a list: read as the list, as a comma between bounds is
        ("x<-1 \\text{ and } x>1", "x<-1, x>1", True),
        ("x<-1 \\text{ and } x>1", "\\emptyset", False),
        ("x<5 \\text{ and } x>7", "x<-1 \\text{ and } x>1", False),  # not two equal empty sets
        ("x<-1 \\text{ and } x>1 \\text{ or } x>5", "x>5", False),  # nor an empty part of a union
        # answer lists written with "and"/"or" stay lists
        ("x=1 \\text{ or } x=3", "1, 3", True),
        ("x=1 \\text{ or } x=3", "x=1 \\text{ and } x=3", True),
        ("2 \\text{ and } 3", "2, 3", True),
        ("2 \\text{ or } 3", "2, 4", False),
    ],
)
def test_and_or_between_inequalities(pred, gold, verdict):
    assert (equivalent(pred, gold), equivalent(gold, pred)) == (verdict, verdict)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("x<-1 \\text{ or } x>1", "x<-1 \\lor x>1"),
        ("x<-1 \\text{ and } x>1", "x<-1 \\land x>1"),
        ("x>0 \\text{ and } y>0", "x>0, y>0"),  # inequalities in two variables: a list, as before
        ("x \\leq 0 \\lor x \\geq 2", "x \\leq 0 \\lor x \\geq 2"),
        ("x = 1 \\text{ or } x = 3", "1, 3"),
        ("x = 1 \\text{ or } x > 3", "1, x > 3"),  # not all inequalities: an answer list, as before
    ],
)
def test_and_or_normalisation(raw, expected):
    assert normalize(raw) == expected
    assert set_builder("\\{x\\}") is None


# 2. a unit in a math span after a number is dropped, as it is outside one
@pytest.mark.parametrize(
    "text, expected",
    [
        ("20 $cm^{2}$", "20 cm^{2}"),
        ("$20$ cm$^2$", "20 cm^2"),
        ("$20$ $cm^2$", "20 cm^2"),
        ("20 $\\mathrm{cm}^2$", "20 \\mathrm{cm}^2"),
        ("So the length is $12$ $\\text{cm}$", "12 \\text{cm}"),
        ("The area of the square is 20 $cm^{2}$.", "20 cm^{2}"),
        ("It takes 5 $hours$", "5 hours"),
        # not a unit by the rules for units outside math spans: kept as before
        ("$5$ $x$", "5, x"),
        ("we get 3 $n$", "n"),
        ("1,000 $m$", "m"),  # a single letter is a variable (`5 m` keeps its m)
        ("$3$ and $k$", "3, k"),
        ("$145$solution:", "145"),
        ("$5$ km", "5"),
    ],
)
def test_a_unit_in_a_math_span_after_a_number_is_extracted_with_it(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # a list of quantities is extracted as without the unit rule (its spans), never as its last quantity
        ("$3$ $\\text{cm}$ and $4$ $\\text{cm}$", "3, \\text{cm}, 4, \\text{cm}"),
        ("$3$, $4$ $\\text{cm}$", "3, 4, \\text{cm}"),
        ("The sides are $3$ $\\text{cm}$ or $4$ $\\text{cm}$", "\\text{cm}"),
        ("3 cm and $4$ $\\text{cm}$", "\\text{cm}"),
    ],
)
def test_a_list_of_quantities_is_not_read_as_its_last_one(text, expected):
    assert extract_answer(text) == expected
    assert not MathVerifier().score(text, "4").correct


def test_a_reference_with_its_unit_in_a_math_span_scores_as_its_number():
    verifier = MathVerifier(workers=1)
    try:
        cases = [
            ("20 $cm^{2}$", "\\boxed{20}", True),
            ("20 $cm^{2}$", "\\boxed{20 cm^2}", True),
            ("20 $cm^{2}$", "\\boxed{20 \\text{ cm}^2}", True),
            ("20 $cm^{2}$", "The area is 20 $cm^{2}$.", True),
            ("$20$ cm$^2$", "\\boxed{20}", True),
            ("20 $cm^{2}$", "\\boxed{21}", False),
            ("20 $cm^{2}$", "\\boxed{2}", False),
            ("20 $cm^{2}$", "\\boxed{20 x^2}", False),
            (HALF_OPEN, "\\boxed{[-2, 1)}", True),
            (HALF_OPEN, "\\boxed{(-2,1]}", False),
        ]
        scores = verifier.score_batch([c for _, c, _ in cases], [r for r, _, _ in cases])
        assert [s.correct for s in scores] == [verdict for _, _, verdict in cases]
    finally:
        verifier.pool.close()


# 3. a constant built from decimals is evaluated exactly: terminating values compare with no tolerance
@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("0.13", "\\frac{0.25}{2}", False),  # 0.125: no rounding allowance between terminating values
        ("12.6", "\\frac{25.1}{2}", False),  # 12.55
        ("3.00", "2 \\cdot 1.502", False),  # 3.004
        ("0.13", "\\frac{1}{2^3}", False),
        ("0.13", "2^{-3}", False),
        ("0.13", "12.5\\%", False),  # read as 12.5 or \frac{12.5}{100}
        ("0.125", "\\frac{0.25}{2}", True),
        ("12.55", "\\frac{25.1}{2}", True),
        ("3.004", "2 \\cdot 1.502", True),
        ("\\frac{1}{8}", "\\frac{0.25}{2}", True),
        ("0.125", "12.5\\%", True),
        ("0.3", "0.1 + 0.2", True),
        ("0.5", "\\sqrt{0.25}", True),
        ("0.51", "\\sqrt{0.25}", False),
        ("1.21", "1.1^{2}", True),
        ("1.2", "1.1^{2}", False),
        # a repeating value keeps the rounding rule: 0.5/3 = 1/6
        ("0.167", "\\frac{0.5}{3}", True),
        ("0.17", "\\frac{0.5}{3}", True),
        ("0.2", "\\frac{0.5}{3}", False),
        ("0.168", "\\frac{0.5}{3}", False),
        ("\\frac{1}{6}", "\\frac{0.5}{3}", True),
    ],
)
def test_decimal_expressions_are_evaluated_exactly(pred, gold, verdict):
    assert (same(pred, gold), same(gold, pred)) == (verdict, verdict)


@pytest.mark.parametrize(
    "latex, value",
    [
        ("\\frac{25.1}{2}", Fraction(251, 20)),
        ("2 \\cdot 1.502", Fraction(751, 250)),
        ("0.1 + 0.2", Fraction(3, 10)),
        ("\\sqrt{0.25}", Fraction(1, 2)),
        ("\\left(\\frac{4}{9}\\right)^{-\\frac{3}{2}}", Fraction(27, 8)),
        ("2^{-3}", Fraction(1, 8)),
        ("\\sqrt{2}", None),
        ("\\pi \\cdot 0.5", None),
        ("\\sqrt{-4}", None),
        ("\\frac{1}{0.0}", None),
        ("2 \\cdot 0.447213595499958", Fraction(447213595499958, 5 * 10**14)),  # 15 digits, as written
        ("2 \\cdot 0.12345678901234567890123", Fraction(12345678901234567890123, 5 * 10**22)),
        ("e^{0.3}", None),  # a float the parser computed (1.34985880757600), written nowhere
        ("1000 e^{-1.5}", None),
        ("2 \\cdot 1500000.0", Fraction(3000000)),
        ("0.00012 \\cdot 2", Fraction(6, 25000)),
    ],
)
def test_exact_rational_values(latex, value):
    with decimals_written_in(latex):
        assert _exact_rational(_latex2sympy(latex)) == value


def test_a_float_is_exact_only_as_a_decimal_written_in_the_answers():
    value = _latex2sympy("\\frac{25.1}{2}")
    assert _exact_rational(value) is None  # no answer text: any float may be computed
    with decimals_written_in("\\frac{25.1}{2}", "12.6"):
        assert _exact_rational(value) == Fraction(251, 20)
    with decimals_written_in("\\frac{25.2}{2}", "12.6"):
        assert _exact_rational(value) is None


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        # the parser computes e^{0.3} as a float; one whose 15-digit form ends in 0 is no written decimal
        ("1000e^{0.3}", "1349.86", True),
        ("1000e^{0.3}", "1349.87", False),
        ("1000e^{-1.5}", "223.13", True),
        ("1000e^{-1.5}", "223.12", False),
        ("3e^{0.3}", "3e^{\\frac{3}{10}}", True),
        ("e^{0.3}+1", "e^{\\frac{3}{10}}+1", True),
        ("e^{0.3}+1", "e^{\\frac{3}{10}}+2", False),
        ("\\frac{e^{0.3}}{2}", "0.675", True),
        ("\\frac{e^{0.3}}{2}", "0.674", False),
        # written decimals stay exact
        ("\\frac{0.25}{2}", "0.13", False),
        ("\\frac{25.1}{2}", "12.6", False),
        ("2 \\cdot 1.502", "3.00", False),
        ("2 \\cdot 1.502", "3.004", True),
    ],
)
def test_computed_floats_keep_the_rounding_rule(pred, gold, verdict):
    assert (same(pred, gold), same(gold, pred)) == (verdict, verdict)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("10^{3000}+1", "10^{3000}"),
        ("2^{9000}+1", "2^{9000}"),
        ("\\frac{1}{10^{3000}}+1", "1"),
        ("3^{6000}-1", "3^{6000}"),
    ],
)
def test_huge_exact_values_within_the_bounds_are_compared_exactly(pred, gold):
    assert (same(pred, gold), same(gold, pred)) == (False, False)
    assert same(pred, pred) and same(gold, gold)


def test_the_power_size_check_refuses_only_what_is_too_big():
    with decimals_written_in():
        assert _exact_rational(_latex2sympy("10^{3000}")) == 10**3000  # 9,966 bits
        assert _exact_rational(_latex2sympy("2^{9999}")) == 2**9999
        assert _exact_rational(_latex2sympy("2^{10000}")) is None  # 10,001 bits
        assert _exact_rational(_latex2sympy("10^{3011}")) is None  # 10,002 bits


@pytest.mark.parametrize(
    "latex",
    [
        "2^{10^{10}}",
        "0.5^{10^{10}}",
        "1.5^{2^{2^{2^{2^{2}}}}}",
        "9^{9^{9}} \\cdot 0.5",
        "+".join(["0.1"] * 450),
    ],
)
def test_exact_evaluation_gives_up_cheaply_on_hostile_input(latex):
    value = _latex2sympy(latex)
    start = time.perf_counter()
    assert _exact_rational(value) is None
    assert time.perf_counter() - start < 0.5


def test_exact_evaluation_gives_up_on_a_deep_tree():
    """A tree deeper than the parser builds from 1,000 characters (it recurses too deep first): no recursion
    error, no work beyond the depth bound."""
    import sympy

    value = sympy.Float("2.5")
    for _ in range(2000):
        value = sympy.Mul(sympy.Integer(1), sympy.Pow(value, -1, evaluate=False), evaluate=False)
    start = time.perf_counter()
    assert _exact_rational(value) is None
    assert time.perf_counter() - start < 0.5
