"""Extraction, normalisation and equivalence families, positive and negative cases (in-process)."""

import pytest

from rewards.equivalence import equivalent
from rewards.extract import extract_answer
from rewards.normalize import normalize


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{-12}", "-12"),
        ("\\boxed{1} was wrong; checking again gives \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("\\fbox{7}", "7"),
        ("thus \\boxed 5.", "5"),
        ("\\boxed{1} and \\boxed{2}", "1, 2"),
        ("<answer>17</answer>", "17"),
        ("work\n#### 72", "72"),
        ("The answer is 42.", "42"),
        ("Final Answer: The final answer is $24$. I hope it is correct.", "24"),
        ("Final Answer: The largest $n$ is 34.", "34"),
        ("We get \\[ 9 \\]", "9"),
        ("The last digits are:\n  \\[Answer: 009\\]", "009"),
        ("\\dfrac{9}{7}", "\\dfrac{9}{7}"),
        ("so the total is 3 + 10 = 13 birds", "13"),
        ("no number at all here", None),
        # a currency amount in the last sentence of marker-less prose beats a later bare number
        ("Antwort: sie zahlt noch 75 € in den nächsten 6 Monaten.", "75"),
        ("Le prix est 30 $. Il reste donc 100 - 30 = 70", "70"),  # the amount is not in the last sentence
        # a concluding sentence after the last math span states the answer
        ("Let $n$ be the count, $d = 90/n$. Therefore, there are 12 such sequences.", "12"),
        ("We get $$\\frac{a}{b} \\geq 2.$$ Therefore, the error increases by 100%.", "100%"),
        ("Thus the balance is 16386.20 dollars. Check: 2 + 2 = 4", "16386.20"),
        ("Thus the balance is 16 after $t$ years", "t"),  # the conclusion precedes the last math span
        # boxes joined by at most four words of prose are one answer list
        ("\\boxed{3} for part (a) and \\boxed{4}", "3, 4"),
        # a short text of math spans and connectors is one answer list, not its last span
        ("$x = 1$ and $y = 2$", "x = 1, y = 2"),
        ("The temperature fell to -7 overnight", "-7"),  # the last number keeps its sign
        ("Final answer: the sum of what is left is 17.", "17"),  # prose: the value after its last "is"
    ],
)
def test_extraction(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\text{13}", "13"),
        ("10\\text{ units}", "10"),
        ("\\$1,000.99", "1000.99"),
        ("1{,}000", "1000"),
        ("1 000", "1000"),
        ("90^\\circ", "90"),
        ("90°", "90"),
        ("28 percent", "28\\%"),
        ("−5", "-5"),
        ("\\tfrac83", "\\frac{8}{3}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("\\left( 1 \\right)", "( 1 )"),
        ("x = 5+5+1 = 11", "x = 5+5+1 = 11"),  # chains are resolved by the parser (test_equation_chains)
        ("(B)", "B"),
        ("204_5", "54"),
        ("6 \\text{ and } 8", "6, 8"),
        ("(c)", "C"),  # a choice letter is upper case
        ("8:34 P.M.", "20:34"),
        ("12:30 PM", "12:30"),  # noon is 12, not 24
        ("12:05 AM", "0:05"),  # midnight is 0
        ("24_5", "14"),  # 2 * 5 + 4
        ("25_5", "25_5"),  # 5 is no digit in base 5: not a base-5 numeral
        ("-0.5", "-0.5"),
        ("-.5", "-0.5"),
        ("-0", "0"),
        ("-0.0", "0.0"),
        ("\\frac{9.5}{3.14} \\approx 3.03", "\\frac{9.5}{3.14}"),  # the exact value, not its rounding
        ("x \\approx 11", "11"),
    ],
)
def test_normalisation(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("6/8", "3/4", True),
        ("-3/4", "\\frac{-3}{4}", True),
        ("0.75", "3/4", True),
        ("7/16", "7/8", False),
        ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}", False),
        ("0.0833333333333333", "\\frac{1}{12}", True),
        ("4.123105625617661", "\\sqrt{17}", True),
        ("0.14", "0.1", False),
        ("3\\sqrt{13}", "\\sqrt{117}", True),
        ("4\\sqrt{2}", "4", False),
        ("\\frac{9}{4}\\pi", "\\frac94\\pi", True),
        ("3\\frac{1}{2}", "3.5", True),
        ("x^2-x-6", "(x-3)(x+2)", True),
        ("x^2-x+6", "(x-3)(x+2)", False),
        ("y=-\\frac{1}{2}x+\\frac{3}{4}", "2x+4y-3=0", True),
        ("x + y - z + 2 = 0", "5x - 7y + 11z + 4 = 0", False),
        ("x = 10", "10", True),
        ("(1, 4.5)", "(1,\\frac{9}{2})", True),
        ("(2, 1)", "(1, 2)", False),
        ("2, 3", "3, 2", True),
        ("\\{1, 3\\}", "1, 2", False),
        ("[0,1)", "[0,1)", True),
        ("(0,1]", "[0,1)", False),
        ("x<3", "(-\\infty, 3)", True),
        ("x > -1", "x < 1", False),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        ("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
        ("10\\%", "0.1", True),
        ("10\\%", "0.2", False),
        ("\\text{Evelyn}", "Evelyn", True),
        ("B", "(C)", False),
        ("\\infty", "+\\infty", True),
        ("12:00", "1:00", False),
        ("12:30 PM", "12:30", True),
        # a chain with a bare-name left side is its last member, not the member after the name
        ("x = 2 + 3 = 6", "6", True),
        ("x = 2 + 3 = 6", "5", False),
        # an approximation of a non-name states the exact value before it
        ("\\frac{1}{3} \\approx 0.3", "\\frac{1}{3}", True),
        # 33.3% is 0.333: a decimal stated in full is no rounding of another decimal
        ("33.3\\%", "0.3333", False),
        ("33.3\\%", "0.333", True),
        # 1/8 = 0.125 terminates: 0.13 is not its rounding (1/3 repeats: 0.33 is), inside a tuple as alone
        ("(0.13, 2)", "(\\frac{1}{8}, 2)", False),
        ("(0.33, 2)", "(\\frac{1}{3}, 2)", True),
        # a root that zeroes the denominator is no solution: (y^2 - 1)/(y - 1) = 0 only at y = -1
        ("\\frac{y^2 - 1}{y - 1} = 0", "y^2 = 1", False),
        ("\\frac{y^2 - 1}{y - 1} = 0", "y = -1", True),
        # assignments cycling through the same names are one tuple per solution
        ("a=1,b=2;a=3,b=4", "(3,4),(1,2)", True),
        ("a=1,b=2;a=3,b=4", "(1,2),(3,5)", False),
        ("a = 1, b = 2 \\text{ and } a = 3, b = 4", "a=1,b=2;a=3,b=4", True),
        # sums and products of explicit matrices are evaluated
        (
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}+\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}",
            "\\begin{pmatrix}2&2\\\\3&5\\end{pmatrix}",
            True,
        ),  # fmt: skip
        (
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix} \\begin{pmatrix}0&1\\\\1&0\\end{pmatrix}",
            "\\begin{pmatrix}2&1\\\\4&3\\end{pmatrix}",
            True,
        ),  # fmt: skip
        (
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix} \\begin{pmatrix}0&1\\\\1&0\\end{pmatrix}",
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
            False,
        ),  # fmt: skip
    ],
)
def test_equivalence(pred, gold, same):
    assert equivalent(pred, gold) is same


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("[-2,7]", "[-2, 7]", True),
        ("(x-2)(x+2)", "(x-2 ) (x+2 )", True),
        ("-2, 1", "1, -2", True),
        ("1, 2, 3", "2, 3, 4", False),
        ("1, 2", "2", False),
        ("2, 2", "2", False),  # answer lists keep multiplicity
        ("6/8, 1", "1, \\frac{3}{4}", True),
        ("E", "D", False),
        ("Evelyn", "evelyn", True),
        ("4, 0.1, 2", "0.1, 4, 2", True),
        ("\\pi x", "x \\pi", None),  # whitespace between letters is kept: left to the full check
        ("0.3333", "\\frac{1}{3}", None),  # rounding: left to the full check
        ("0.5, 123456789.1", "0.5, 123456789", False),  # terminating decimals: exact
        ("(1, 2)", "(2, 1)", None),  # brackets: left to the full check
    ],
)
def test_fast_path_agrees_with_the_full_check(pred, gold, verdict):
    """The in-process shortcut either defers (None) or gives exactly the parser's structural verdict."""
    from rewards.equivalence import _values_equal, fast_equivalent, parse

    assert fast_equivalent(pred, gold) is verdict
    if verdict is not None:
        a, b = parse(pred), parse(gold)
        full = a == b if isinstance(a, str) or isinstance(b, str) else _values_equal(a, b)
        assert full is verdict


@pytest.mark.parametrize(
    "pred, gold, verdict",
    [
        ("x = 10", "10", True),
        ("10\\%", "0.1", True),
        ("28", "28\\%", True),
        ("y = 2x", "2x", True),
        ("5\\%", "6", False),
        ("k = 2", "3", None),  # the reading "k = 2" needs the parser
        ("10\\%", "0.2", False),  # terminating decimals: exact
        ("33\\%", "\\frac{1}{3}", None),  # 0.33 may round 1/3: left to the full check
    ],
)
def test_fast_path_tries_every_reading(pred, gold, verdict):
    from rewards.equivalence import fast_readings_equivalent

    assert fast_readings_equivalent(pred, gold) is verdict
    if verdict is not None:
        assert equivalent(pred, gold) is verdict


def test_an_unparseable_answer_is_a_failure_not_a_different_answer():
    """Every reading failing to parse raises (the verifier reports a verification error), rather than a
    verdict of "different" that would hide the parser's failure."""
    with pytest.raises(Exception):  # noqa: B017 (the parser raises its own exception types)
        equivalent("\\frac{{}", "3")
