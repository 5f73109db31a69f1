"""A seeded generator of labelled answer pairs: one value per draw, written in several equivalent
notations and in near-miss wrong forms, for six families -- rationals, radicals, polynomials, intervals,
tuples and sets.

Every pair is ``(pred, gold, label, family)`` with ``gold`` the value's plain LaTeX. The equivalent notations
are LaTeX variants (``\\dfrac``, unreduced fractions, ``\\left(...\\right)``, reordered terms), plain text
(``3*sqrt(2)``, ``x**2 - 5*x + 6``), decimals with enough digits (at least eight significant, correctly
rounded), equality chains that end in the value (``\\sqrt{18} = 3\\sqrt{2}``), and the ``\\boxed{}``/``$``
wrappers.
The near misses change one thing a careless reader could miss: a coefficient or endpoint off by one, a
flipped sign, a decimal rounded the wrong way, a bracket of the wrong kind, a reordered
tuple, a set for a tuple, a chain whose members disagree.

Usage as a script writes the pairs, in both directions, as a cases file for ``benchmarks.verifier_accuracy``:
``python -m tests.rewards.generated_cases OUT.jsonl [--per-family N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from fractions import Fraction

Pair = tuple[str, str, bool, str]
SQUARE_FREE = (2, 3, 5, 6, 7, 10, 11, 13, 14, 15)


def _frac(value: Fraction, command: str = "\\frac") -> str:
    """``value`` as a LaTeX fraction (an integer as itself), the sign in front."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}{command}{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _decimal(value: float, places: int) -> str:
    return f"{value:.{places}f}"


def _signed(coefficient: int, term: str, first: bool = False) -> str:
    """``coefficient * term`` as a summand (``+ 3x``, ``- x``, ``+ 5``)."""
    body = term if abs(coefficient) == 1 and term else f"{abs(coefficient)}{term}"
    if first:
        return ("-" if coefficient < 0 else "") + body
    return (" - " if coefficient < 0 else " + ") + body


def rationals(rng: random.Random) -> list[Pair]:
    while True:
        value = Fraction(rng.randint(-60, 60), rng.randint(2, 24))
        if value.denominator > 1:
            break
    k = rng.randint(2, 5)
    gold = _frac(value)
    exact = float(value)
    digits = 8 if abs(exact) >= 1 else 9  # at least eight significant digits
    same = [
        _frac(value, "\\dfrac"),
        f"{'-' if value < 0 else ''}{abs(value.numerator)}/{value.denominator}",
        f"{'-' if value < 0 else ''}\\frac{{{k * abs(value.numerator)}}}{{{k * value.denominator}}}",
        f"\\frac{{{value.numerator}}}{{{value.denominator}}}",  # the sign in the numerator
        _decimal(exact, digits),
        f"\\frac{{{k * value.numerator}}}{{{k * value.denominator}}} = {gold}",
        f"\\boxed{{{gold}}}",
        f"${gold}$",
    ]
    wrong_decimal = _decimal(exact, digits)
    last = int(wrong_decimal[-1])
    wrong_decimal = wrong_decimal[:-1] + str((last + 5) % 10)  # the last digit off by five
    near = [
        _frac(value + Fraction(1, value.denominator)),
        _frac(-value),
        _frac(Fraction(value.numerator, value.denominator + 1)),
        _decimal(exact + 0.1, 1),  # a rounding off by one in its last place
        wrong_decimal,
        f"\\frac{{{k * value.numerator}}}{{{k * value.denominator}}} = {_frac(value + 1)}",  # a false chain
    ]
    return _pairs("rational", gold, same, near)


def radicals(rng: random.Random) -> list[Pair]:
    a, b = rng.randint(2, 9), rng.choice(SQUARE_FREE)
    gold = f"{a}\\sqrt{{{b}}}"
    inside = a * a * b
    value = a * b**0.5
    same = [
        f"\\sqrt{{{inside}}}",
        f"sqrt({inside})",
        f"{a}*sqrt({b})",
        f"{a} \\cdot \\sqrt{{{b}}}",
        f"{inside}^{{1/2}}",
        f"{a}*{b}^(1/2)",
        _decimal(value, 8),
        f"\\sqrt{{{inside}}} = {gold}",
        f"\\boxed{{\\sqrt{{{inside}}}}}",
    ]
    near = [
        f"{a + 1}\\sqrt{{{b}}}",
        f"{a}\\sqrt{{{b + 1}}}",
        f"\\sqrt{{{a * b}}}",
        _decimal(value + 0.1, 1),
        f"sqrt({inside + 1})",
        f"\\sqrt{{{inside}}} = {a + 1}\\sqrt{{{b}}}",
    ]
    return _pairs("radical", gold, same, near)


def polynomials(rng: random.Random) -> list[Pair]:
    r, s = rng.sample([i for i in range(-9, 10) if i != 0], 2)
    lead = rng.choice([1, 2, 3])
    b, c = -lead * (r + s), lead * r * s  # lead * (x - r)(x - s)
    expanded = _signed(lead, "x^2", first=True) + _signed(b, "x") + _signed(c, "")
    gold = expanded
    factor = "" if lead == 1 else str(lead)
    root = lambda q: f"(x {'-' if q > 0 else '+'} {abs(q)})"  # noqa: E731
    same = [
        f"{factor}{root(r)}{root(s)}",
        f"{factor}{root(s)}{root(r)}",
        f"{lead}*x**2 {'-' if b < 0 else '+'} {abs(b)}*x {'-' if c < 0 else '+'} {abs(c)}",
        _signed(c, "", first=True) + _signed(b, "x") + _signed(lead, "x^2"),  # terms in another order
        f"{factor}\\left{root(r)[:-1]}\\right)\\left{root(s)[:-1]}\\right)",
        f"{factor}{root(r)}{root(s)} = {expanded}",
    ]
    near = [
        _signed(lead, "x^2", first=True) + _signed(b + 1, "x") + _signed(c, ""),
        _signed(lead, "x^2", first=True) + _signed(b, "x") + _signed(c - 1, ""),
        f"{factor}{root(-r)}{root(s)}",
        f"{lead + 1}{root(r)}{root(s)}",
        _signed(lead, "x^3", first=True) + _signed(b, "x") + _signed(c, ""),
    ]
    return _pairs("polynomial", gold, same, near)


def intervals(rng: random.Random) -> list[Pair]:
    a, b = sorted(rng.sample(range(-20, 21), 2))
    closed_left, closed_right = rng.random() < 0.5, rng.random() < 0.5
    left, right = "[" if closed_left else "(", "]" if closed_right else ")"
    below, above = ("\\le" if closed_left else "<"), ("\\le" if closed_right else "<")
    gold = f"{left}{a}, {b}{right}"
    same = [
        f"\\left{left}{a}, {b}\\right{right}",
        f"{a} {below} x {above} {b}",
        f"x \\in {gold}",
        f"\\boxed{{{a} {below} x {above} {b}}}",
    ]
    flipped = "<" if closed_left else "\\le"
    near = [
        f"{'(' if closed_left else '['}{a}, {b}{right}",
        f"{left}{a}, {b + 1}{right}",
        f"{left}{a - 1}, {b}{right}",
        f"{a} {flipped} x {above} {b}",
        f"{left}{-b}, {-a}{right}" if a != -b else f"{left}{a}, {b + 2}{right}",
    ]
    pairs = _pairs("interval", gold, same, near)
    if rng.random() < 0.5:  # an unbounded interval and its inequality
        at_least, more = ("\\ge", ">") if closed_left else (">", "\\ge")
        unbounded = f"{left}{a}, \\infty)"
        pairs += _pairs(
            "interval",
            unbounded,
            [f"x {at_least} {a}", f"{left}{a}, +\\infty)"],
            [f"x {more} {a}", f"(-\\infty, {a}]"],
        )
    return pairs


def tuples(rng: random.Random) -> list[Pair]:
    size = rng.choice([2, 3])
    values: list[Fraction] = []
    while len(values) < size:  # distinct elements, so that a reordering is a different tuple
        value = Fraction(rng.randint(-12, 12), rng.choice([1, 1, 2, 4]))
        values += [] if value in values else [value]
    gold = "(" + ", ".join(_frac(v) for v in values) + ")"
    same = [
        "\\left(" + ", ".join(_frac(v, "\\dfrac") for v in values) + "\\right)",
        "(" + ",".join(str(float(v)) if v.denominator > 1 else str(v.numerator) for v in values) + ")",
        "(" + ", ".join(f"{v.numerator}/{v.denominator}" for v in values) + ")",
    ]
    near = [
        "(" + ", ".join(_frac(v) for v in reversed(values)) + ")",
        "(" + ", ".join(_frac(v) for v in values[:-1]) + f", {_frac(values[-1] + 1)})",
        "\\{" + ", ".join(_frac(v) for v in values) + "\\}",
        "(" + ", ".join(_frac(v) for v in values[:-1]) + ")" if len(values) > 2 else _frac(values[0]),
    ]
    return _pairs("tuple", gold, same, near)


def sets(rng: random.Random) -> list[Pair]:
    values = rng.sample(range(-15, 16), rng.choice([2, 3]))
    gold = "\\{" + ", ".join(map(str, values)) + "\\}"
    shuffled = values[:]
    rng.shuffle(shuffled)
    same = [
        "\\{" + ", ".join(map(str, reversed(values))) + "\\}",
        ", ".join(map(str, shuffled)),
        "\\left\\{" + ", ".join(map(str, shuffled)) + "\\right\\}",
        " \\text{ and } ".join(map(str, shuffled)),
        "x = " + ", ".join(map(str, values)),
    ]
    near = [
        "(" + ", ".join(map(str, values)) + ")",
        "\\{" + ", ".join(map(str, values[:-1])) + "\\}",
        "\\{" + ", ".join(map(str, values[:-1] + [values[-1] + 1])) + "\\}",
        ", ".join(map(str, values + [values[0]])),  # a repeated element: lists keep multiplicity
    ]
    return _pairs("set", gold, same, near)


FAMILIES: dict[str, Callable[[random.Random], list[Pair]]] = {
    "rational": rationals,
    "radical": radicals,
    "polynomial": polynomials,
    "interval": intervals,
    "tuple": tuples,
    "set": sets,
}


def _pairs(family: str, gold: str, same: list[str], near: list[str]) -> list[Pair]:
    return [(pred, gold, True, family) for pred in same] + [(pred, gold, False, family) for pred in near]


def generate(per_family: int, seed: int = 0) -> list[Pair]:
    """``per_family`` values of each family, every one in all its notations and near misses."""
    rng = random.Random(seed)
    return [pair for family in FAMILIES.values() for _ in range(per_family) for pair in family(rng)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--per-family", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8") as file:
        for index, (pred, gold, label, family) in enumerate(generate(args.per_family, args.seed)):
            for direction, (first, second) in (("a", (pred, gold)), ("b", (gold, pred))):  # both directions
                row = {"id": f"gen-{index:05d}{direction}", "gold": second, "pred": first}
                row.update(equivalent=label, mode="answer", source=f"generated:{family}")
                file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
