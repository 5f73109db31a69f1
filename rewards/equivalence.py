"""Deciding whether two normalised answers are mathematically equal.

``fast_equivalent`` is the cheap exact path (string identity, plain numerals and fractions compared as
``fractions.Fraction``); it needs no sympy and runs in the caller's process. ``equivalent`` is the full check:
it parses LaTeX with latex2sympy2_extended (an ANTLR grammar; model text is never passed to ``eval``,
``exec``, ``sympify`` or ``parse_expr`` -- the library only ``sympify``-s objects that are already sympy
trees) and compares structures: numbers (exact values exactly, constants of decimals evaluated exactly first:
``_exact_rational``; a decimal literal precise enough -- at least three significant digits, or two decimal
places and two significant digits, counted as written, trailing zeros included -- also matches an irrational
or repeating value it is the correct rounding of: ``0.33`` and ``3.14`` match ``1/3`` and ``\\pi``, ``0.3``,
``1.4`` and ``3.1`` do not match ``1/3``, ``\\sqrt{2}`` and ``\\pi``), expressions (values at random points,
``simplify`` of the difference only when the points cannot tell), equality chains (``_chain_value``: a chain
of constants must be true), equations (equal up to a non-zero factor, or the same solutions for a shared
symbol), inequalities (one variable: as solution sets, joined by "or" or "and" as their union or
intersection, as are sets in set-builder notation with such a condition; several: up to a positive factor),
intervals, unions, sets (unordered), answer lists (unordered, with multiplicity: ``1, 1, 2`` is not ``1, 2``),
tuples and matrices (ordered; a tuple never equals a set), and text. Run ``equivalent`` only inside a killable
worker (``rewards.sandbox``): sympy can hang or exhaust memory on hostile input.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import random
import re
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

from rewards.normalize import drop_simple_lhs, equality_members, normalize_pair, set_builder

MAX_ANSWER_LENGTH = 1000
FAST_NUMERAL_LENGTH = 60
_NUMERAL = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)(/\d+)?$|^-?\\frac\{-?\d+\}\{\d+\}$")
_RELATIVE_TOLERANCE = 1e-9
_ZERO_FLOOR = 1e-60  # an evaluated difference of exact values this small relative to them is zero
# bounds of exact rational evaluation (``_exact_rational``): far above any answer's numbers (a 1,000-digit
# integer has 3,322 bits), far below what costs time (a product of two 10,000-bit numbers takes microseconds)
EXACT_BITS = 10_000
EXACT_NODES = 400
EXACT_DEPTH = 60
# the decimal literals written in the two answers ``equivalent`` compares: a float of a parsed tree is exact
# only when it is one of them (``_float_as_written``)
_WRITTEN_DECIMALS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "written_decimals", default=frozenset()
)
_WRITTEN_DECIMAL = re.compile(r"\d*\.\d+")


def as_fraction(text: str) -> Fraction | None:
    """An exact rational for a bounded-length plain numeral (``-12``, ``0.5``, ``6/8``, ``\\frac{3}{4}``,
    ``\\frac{-3}{4}``)."""
    if len(text) > FAST_NUMERAL_LENGTH or not _NUMERAL.match(text):
        return None
    if "frac" in text:
        numerator, denominator = re.findall(r"\d+", text)
        negative = text.startswith("-") != ("{-" in text)
        text = f"{'-' if negative else ''}{numerator}/{denominator}"
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _word(text: str) -> str:
    """A plain-words answer as compared: case and spaces ignored (``Evelyn`` = ``evelyn``), except that a
    single letter keeps its case (``X`` and ``x`` are different variables)."""
    return text if len(text) == 1 else text.lower().replace(" ", "")


def _compact(text: str) -> str:
    """``text`` without the whitespace the parser ignores (kept only between two letters: ``\\pi x``)."""
    return re.sub(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])", "", text)


def _numeral_list(text: str) -> list[Fraction] | None:
    """The values of a plain numeral or a bracket-free list of them (``"1, -2, 3/4"``), else None."""
    values = [as_fraction(part) for part in text.split(", ")]
    return None if any(value is None for value in values) else values  # type: ignore[return-value]


def fast_equivalent(pred: str, gold: str) -> bool | None:
    """True/False when the normalised answers are settled cheaply, None when the full check is needed.

    Decided here, with the same verdict the full check gives: identical text up to ignorable whitespace;
    plain numerals and bracket-free lists of them (a list is an unordered multiset, as ``parse`` reads it)
    when no rounding question arises; plain words (compared as text, ignoring case and spaces)."""
    if pred == gold or _compact(pred) == _compact(gold):
        return True
    words = re.compile(r"[A-Za-z][A-Za-z ]*")
    if words.fullmatch(pred) and words.fullmatch(gold):
        return _word(pred) == _word(gold)
    pred_values, gold_values = _numeral_list(pred), _numeral_list(gold)
    if pred_values is None or gold_values is None:
        return None
    if sorted(pred_values) == sorted(gold_values):
        return True
    # A decimal may be the rounding of a repeating value (0.33 = 1/3: the full check decides); between
    # terminating values no rounding question arises (123456789.1 != 123456789)
    return False if all(_terminates(value) for value in pred_values + gold_values) else None


def _decimals(value: Any) -> tuple[int, int] | None:
    """Decimal places and significant digits of a float literal (``0.33`` -> (2, 2), ``33.3`` -> (1, 3)),
    None for exact numbers."""
    import sympy

    if not isinstance(value, sympy.Float):
        return None
    if isinstance(value, _decimal_literal_class()):
        return value.places, value.significant
    digits = format(float(value), ".15g")
    if "." not in digits or "e" in digits:
        return None
    return len(digits.split(".")[1]), len(digits.lstrip("-").replace(".", "").lstrip("0"))


def _precise_enough(places: int, significant: int) -> bool:
    """Whether a decimal may stand for an irrational or repeating value it rounds to: ``0.33`` (two places,
    two significant digits) and ``33.3`` (three significant digits) may; ``0.3``, ``1.4``, ``3.1`` and
    ``0.03`` are too coarse (a one-in-ten guess, an easy reward hack)."""
    return significant >= 3 or (places >= 2 and significant >= 2)


def _numbers_equal(a: Any, b: Any) -> bool | None:
    """Compare two constant expressions numerically; None when either is not a finite real/complex number."""
    import sympy

    if a.free_symbols or b.free_symbols:
        return None
    if a.has(sympy.zoo, sympy.nan) or b.has(sympy.zoo, sympy.nan):
        return False
    a, b = _evaluated(a), _evaluated(b)  # \frac{0.25}{2} is 1/8 exactly, not a float near 0.13
    if a.is_Rational and b.is_Rational:
        return bool(a == b)
    exact_a, exact_b = _terminating_value(a), _terminating_value(b)
    if exact_a is not None and exact_b is not None:
        return bool(exact_a == exact_b)  # decimals as written: no tolerance (1000000000.0 != 1000000001)
    if not (a.has(sympy.Float) or b.has(sympy.Float)) and (a - b).is_Rational:
        return bool(a - b == 0)  # exact: 2^(10^10) + 1 and 2^(10^10) agree to every digit a tolerance sees
    if not (a.is_finite and b.is_finite):
        return bool(a == b) if a.is_infinite or b.is_infinite else None
    try:
        x, y = sympy.N(a, 30), sympy.N(b, 30)
        gap, scale = abs(x - y), max(abs(x), abs(y))
        if not (gap.is_number and scale.is_number) or gap.has(sympy.nan):
            return None
        if not (a.has(sympy.Float) or b.has(sympy.Float)):
            # exact values: equal only when their difference evaluates to zero (evalf reports a difference it
            # cannot resolve at any working precision as 0.e-160 or so), so 99999999/10^8 != 99999998/99999999
            exact_gap = abs(sympy.N(a - b, 30))
            if exact_gap.is_number:
                return bool(exact_gap <= _ZERO_FLOOR * scale)
        tolerance = _RELATIVE_TOLERANCE * scale
        for value, other in ((a, b), (b, a)):
            literal = _decimals(value)
            exact_other = _decimals(other) is not None or (other.is_Rational and _terminates(other))
            if literal is not None and not exact_other and _precise_enough(*literal):
                tolerance = max(tolerance, sympy.Float(0.5 * 10.0 ** -literal[0] * (1 + 1e-9)))
        return bool(gap <= tolerance)
    except (TypeError, ValueError):
        return None


def _evaluated(value: Any) -> Any:
    """A constant expression the parser left unevaluated, built from numbers with ``+``, ``-``, ``*``, ``/``,
    integer powers and exact roots (``\\frac{0.25}{2}``, ``2 \\cdot 1.502``, ``2^{-3}``, ``\\sqrt{0.25}``), as
    the exact ``Rational`` it equals; ``value`` itself when it is a single number or anything else."""
    import sympy

    if value.is_Atom:
        return value  # a number as written (a decimal literal keeps its digits for the rounding rule)
    exact = _exact_rational(value)
    return value if exact is None else sympy.Rational(exact.numerator, exact.denominator)


class _Inexact(Exception):
    """The expression is not an exact rational ``_exact_rational`` computes within its bounds."""


def _exact_rational(value: Any) -> Fraction | None:
    """The exact value of a constant made of integers, fractions and decimals (each decimal as written:
    ``25.1`` is 251/10, not the binary float) with sums, products, integer powers and roots that come out
    rational, else None: a symbol, ``\\pi``, a function, an irrational root (``\\sqrt{2}``). Bounded for
    hostile input: None past ``EXACT_NODES`` nodes, ``EXACT_DEPTH`` levels, or a numerator or denominator (of
    a number, a partial result, or a power before it is computed) over ``EXACT_BITS`` bits
    (``2^{10^{10}}``)."""
    nodes = [EXACT_NODES]
    try:
        return _exact(value, nodes, 0)
    except (_Inexact, ValueError, ZeroDivisionError, OverflowError):
        return None


def _bounded(number: Fraction) -> Fraction:
    if max(number.numerator.bit_length(), number.denominator.bit_length()) > EXACT_BITS:
        raise _Inexact
    return number


def _exact(node: Any, nodes: list[int], depth: int) -> Fraction:
    import sympy

    nodes[0] -= 1
    if nodes[0] < 0 or depth > EXACT_DEPTH:
        raise _Inexact
    if isinstance(node, _decimal_literal_class()):
        return _bounded(Fraction(int(node.exact.p), int(node.exact.q)))
    if isinstance(node, sympy.Rational):
        return _bounded(Fraction(int(node.p), int(node.q)))
    if isinstance(node, sympy.Float):
        return _float_as_written(node)
    if isinstance(node, (sympy.Add, sympy.Mul)):
        result = Fraction(0 if isinstance(node, sympy.Add) else 1)
        for arg in node.args:
            term = _exact(arg, nodes, depth + 1)
            result = _bounded(result + term if isinstance(node, sympy.Add) else result * term)
        return result
    if isinstance(node, sympy.Pow):
        base, exponent = _exact(node.base, nodes, depth + 1), _exact(node.exp, nodes, depth + 1)
        return _power(base, exponent)
    raise _Inexact


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    """``base ** exponent`` when it is rational and within ``EXACT_BITS`` (a root only of a non-negative base:
    sympy's principal root of a negative number is complex)."""
    import sympy

    root = exponent.denominator
    if root > 1:
        if base < 0 or root > 64:
            raise _Inexact
        numerator, exact_numerator = sympy.integer_nthroot(base.numerator, root)
        denominator, exact_denominator = sympy.integer_nthroot(base.denominator, root)
        if not (exact_numerator and exact_denominator):
            raise _Inexact  # an irrational root, sqrt(2)
        base = Fraction(int(numerator), int(denominator))
    power = exponent.numerator
    if base == 0 and power < 0:
        raise _Inexact  # 0^{-1}: undefined
    if abs(base) == 1:
        return base ** (power % 2)  # (-1)^{10^{10}}: no size to bound
    # n >= 2^(L-1) for an L-bit n, so n^p has at least (L-1)p+1 bits: certainly too big past EXACT_BITS, and
    # otherwise at most Lp <= 2 EXACT_BITS bits (L >= 2), cheap to compute before ``_bounded`` checks it
    if max((n.bit_length() - 1) * abs(power) + 1 for n in (base.numerator, base.denominator)) > EXACT_BITS:
        raise _Inexact
    return _bounded(base**power)


def _float_as_written(value: Any) -> Fraction:
    """The decimal a parsed float was written as: ``25.1`` (stored as 25.100000000000001 in binary) is 251/10.
    Only a float that is, at its precision, a decimal literal of one of the answers compared
    (``_WRITTEN_DECIMALS``) counts as written; any other is a value the parser computed (``e^{0.3}`` is the
    float 1.34985880757600, ``\\sqrt{0.2}`` is 0.447213595499958), not exact: the rounding rule and the
    tolerance decide it."""
    import sympy

    sign, mantissa, exponent, bits = value._mpf_
    if mantissa == 0:
        if exponent != 0:
            raise _Inexact  # inf or nan
        return Fraction(0)
    if abs(exponent + bits) > EXACT_BITS:
        raise _Inexact
    for literal in _WRITTEN_DECIMALS.get():
        if sympy.Float(literal, precision=value._prec)._mpf_ == (0, mantissa, exponent, bits):
            return _bounded(-Fraction(literal) if sign else Fraction(literal))
    raise _Inexact


def _terminating_value(value: Any) -> Any:
    """The exact rational of a decimal literal as written (``123456789.1`` -> 1234567891/10) or of a
    rational with a terminating expansion; None for anything else (a repeating rational may be what a
    decimal rounds)."""
    import sympy

    if isinstance(value, _decimal_literal_class()):
        return value.exact
    if isinstance(value, sympy.Rational) and _terminates(value):
        return value
    return None


def _terminates(value: Any) -> bool:
    """True for a rational (sympy's or a ``Fraction``) with a terminating decimal expansion (denominator
    2^a 5^b)."""
    q = int(value.denominator if isinstance(value, Fraction) else value.q)
    for prime in (2, 5):
        while q % prime == 0:
            q //= prime
    return q == 1


def _sample(expressions: list[Any], points: int = 5) -> list[list[Any]] | None:
    """The values of ``expressions`` at ``points`` random rational points of their symbols (the same points
    for all), as mpmath complex numbers (no overflow: ``(x - a)^{6000}`` at ``x = 97`` is fine), or None
    when that cannot be told: a symbol that is not a plain ``Symbol``, or a value that is undefined or not a
    finite number at some point."""
    import mpmath
    import sympy

    symbols = sorted(set().union(*(e.free_symbols for e in expressions)), key=str)
    if not symbols or any(not isinstance(s, sympy.Symbol) for s in symbols):
        return None
    if any(_has_symbolic_operator(e) for e in expressions):
        return None
    rng = random.Random(0)
    samples = []
    for _ in range(points):
        # numerators and denominators from the same range: values from about 0.01 to 97, so that neither a
        # huge power ((x - a)^{5999}) nor a small term dominates at every point
        point = {s: sympy.Rational(rng.randint(-97, 97), rng.randint(1, 97)) for s in symbols}
        values = []
        for expression in expressions:
            try:
                value = sympy.N(expression, 30, subs=point)  # numeric substitution: no exact huge powers
                real, imaginary = value.as_real_imag()
                number = mpmath.mpc(real._to_mpmath(100), imaginary._to_mpmath(100))
            except (AttributeError, TypeError, ValueError, ZeroDivisionError):
                return None
            if not mpmath.isfinite(number):
                return None
            values.append(number)
        samples.append(values)
    return samples


def _close(x: Any, y: Any) -> bool:
    """Relative closeness of two sampled values. The absolute floor is far below any value a sample takes:
    an exactly cancelling expression evaluates to zero (``0.e-163``), while ``x / 2^{99}`` at ``x = 5`` is
    4e-30 and must not equal ``x / 2^{98}``."""
    return bool(abs(x - y) <= 1e-8 * max(abs(x), abs(y)) + 1e-60)


def _differs_numerically(a: Any, b: Any) -> bool | None:
    """True when ``a`` and ``b`` take different values at one of five random rational points of their
    symbols, False when they agree at all five, None when that cannot be told (see ``_sample``)."""
    samples = _sample([a, b])
    if samples is None:
        return None
    return any(not _close(x, y) for x, y in samples)


def _constant_ratio(a: Any, b: Any) -> Any:
    """The constant ``c`` (an mpmath complex) with ``a = c * b`` at five random points, or None when the ratio
    varies or cannot be evaluated (``b`` zero at a point, a value undefined)."""
    samples = _sample([a, b])
    if samples is None or any(y == 0 for _, y in samples):
        return None
    ratios = [x / y for x, y in samples]
    return ratios[0] if all(_close(r, ratios[0]) for r in ratios) else None


def _exprs_equal(a: Any, b: Any) -> bool:
    import sympy

    numeric = _numbers_equal(a, b)
    if numeric is not None:
        return numeric
    if a == b:
        return True
    # Random points decide most pairs in milliseconds; ``simplify`` (often 10-100x slower) only settles
    # the pairs the points cannot, e.g. values undefined at a point.
    if _has_symbolic_operator(a) or _has_symbolic_operator(b):
        return _rebuilt(a) == _rebuilt(b)  # a sum, product, integral or limit over a symbolic range
    differs = _differs_numerically(a, b)
    if differs is not None:
        return not differs
    return bool(sympy.simplify(a - b) == 0)


def _rebuilt(value: Any) -> Any:
    """``value`` rebuilt bottom-up with sympy's automatic evaluation, which puts the unevaluated sums and
    products the parser returns into canonical order (``F_{n-k-1} F_k`` and ``F_k F_{n-k-1}`` become the same
    tree) without computing any sum, product, integral or limit."""
    if not value.args:
        return value
    return value.func(*(_rebuilt(arg) for arg in value.args))


def _has_symbolic_operator(value: Any) -> bool:
    """Whether ``value`` holds a sum, product, integral or limit with a symbol left in it: sampled at random
    points such an operator is slow to evaluate (a sum to n - 2 at n = 97/13) and meaningless (a fractional
    number of terms), and ``simplify`` rarely settles it."""
    import sympy

    operators = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit)
    return any(operator.free_symbols for operator in value.atoms(*operators))


def _solution_set(relation: Any) -> Any:
    """A one-variable inequality (or chain) as the set of real values satisfying it, else the relation."""
    import sympy
    from sympy.core.function import AppliedUndef

    applied = relation.atoms(AppliedUndef)
    if len(applied) == 1:  # 0 < f(x) < 1: solve for the value f(x)
        relation = relation.subs(applied.pop(), sympy.Symbol("value"))
    symbols = relation.free_symbols
    if len(symbols) != 1:
        return relation
    (symbol,) = symbols
    if not isinstance(symbol, sympy.Symbol):
        return relation
    if isinstance(relation, sympy.Or):  # x < -1 \lor x > 1: the union of the parts' solution sets
        sets = [_solution_set(part) for part in relation.args]
        return sympy.Union(*sets) if all(isinstance(part, sympy.Set) for part in sets) else relation
    real = sympy.Symbol(symbol.name, real=True)
    parts = relation.args if isinstance(relation, sympy.And) else (relation,)
    try:
        return sympy.Intersection(*(sympy.solveset(p.subs(symbol, real), real, sympy.S.Reals) for p in parts))
    except (NotImplementedError, TypeError, ValueError):
        return relation


def _as_set(value: Any) -> Any:
    """Intervals, unions, finite sets and inequalities as sympy sets; other values unchanged."""
    import sympy

    if isinstance(value, (sympy.And, sympy.Or, *_inequality_types())):
        return _solution_set(value)
    return value


def _answer_list(values: list[Any]) -> Any:
    """A bracket-free answer list as a ``FiniteSet`` that keeps repeated elements (``1, 1, 2`` has three), so
    that the unordered comparison counts multiplicity."""
    from sympy import Basic, FiniteSet

    class AnswerList(FiniteSet):
        pass

    answer = Basic.__new__(AnswerList, *values)
    answer._args_set = set(values)
    return answer


def _elements(value: Any) -> list[Any] | None:
    import sympy

    if isinstance(value, sympy.FiniteSet):
        return list(value.args)
    return None


def _unordered_equal(xs: list[Any], ys: list[Any]) -> bool:
    if len(xs) != len(ys):
        return False
    remaining = list(ys)
    for x in xs:
        match = next((i for i, y in enumerate(remaining) if _values_equal(x, y)), None)
        if match is None:
            return False
        remaining.pop(match)
    return True


def _values_equal(a: Any, b: Any) -> bool:
    """Structural equivalence of two parsed answers."""
    import sympy

    a, b = _as_set(a), _as_set(b)
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)) or a.shape != b.shape:
            return False
        return all(_values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, sympy.Tuple) or isinstance(b, sympy.Tuple):
        xs = list(a.args) if isinstance(a, (sympy.Tuple, sympy.Interval)) else _elements(a)
        ys = list(b.args) if isinstance(b, (sympy.Tuple, sympy.Interval)) else _elements(b)
        if isinstance(a, sympy.Interval) or isinstance(b, sympy.Interval):
            # ``(1, 2)`` written for an open interval: its ends against the tuple's two elements
            interval = a if isinstance(a, sympy.Interval) else b
            if not (interval.left_open and interval.right_open):  # sympy's true, not Python's True
                return False
            xs, ys = (xs[:2] if a is interval else xs), (ys[:2] if b is interval else ys)
        if xs is None or ys is None or isinstance(a, sympy.FiniteSet) or isinstance(b, sympy.FiniteSet):
            return False  # a tuple is ordered, a set or answer list is not: different kinds of answer
        return len(xs) == len(ys) and all(_values_equal(x, y) for x, y in zip(xs, ys, strict=True))
    if isinstance(a, sympy.Interval) and isinstance(b, sympy.Interval):
        return (
            a.left_open == b.left_open
            and a.right_open == b.right_open
            and _values_equal(a.start, b.start)
            and _values_equal(a.end, b.end)
        )
    if isinstance(a, sympy.Union) and isinstance(b, sympy.Union):
        return _unordered_equal(list(a.args), list(b.args))
    if isinstance(a, sympy.Or) and isinstance(b, sympy.Or):  # inequalities in several variables, "or"
        return _unordered_equal(list(a.args), list(b.args))
    if isinstance(a, sympy.Set) and isinstance(b, sympy.Set):
        xs, ys = _elements(a), _elements(b)
        if xs is not None and ys is not None:
            return _unordered_equal(xs, ys)
        return bool(a == b)
    if isinstance(a, sympy.FiniteSet) and len(a.args) == 1:
        return _values_equal(a.args[0], b)
    if isinstance(b, sympy.FiniteSet) and len(b.args) == 1:
        return _values_equal(a, b.args[0])
    if isinstance(a, sympy.Set) or isinstance(b, sympy.Set):
        return False
    if isinstance(a, sympy.Equality) and isinstance(b, sympy.Equality):
        return _equations_equal(a, b)
    if isinstance(a, sympy.Rel) and isinstance(b, sympy.Rel):
        return _relations_equal(a, b)
    if isinstance(a, sympy.Rel) or isinstance(b, sympy.Rel):
        return False
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        return _exprs_equal(a, b)
    return bool(a == b)


def _equations_equal(a: Any, b: Any) -> bool:
    """Same equation: sides pairwise equal, ``lhs - rhs`` equal up to a non-zero constant factor
    (``2x + 4y = 3`` and ``y = -x/2 + 3/4``), or the same solutions for a symbol both contain, when each is
    linear or quadratic in it (``1/x + 1/y = 2`` and ``y = x/(2x - 1)``)."""
    import sympy

    if _values_equal(a.lhs, b.lhs) and _values_equal(a.rhs, b.rhs):
        return True
    x, y = a.lhs - a.rhs, b.lhs - b.rhs
    if y == 0 or x == 0:
        return bool(x == 0 and y == 0)
    if _has_symbolic_operator(x) or _has_symbolic_operator(y):
        return _rebuilt(x) == _rebuilt(y) or _rebuilt(x) == _rebuilt(-y)
    samples = _sample([x, y])
    if samples is None:  # the points cannot tell: a symbolic simplification of the ratio decides
        ratio = sympy.simplify(x / y)
        return bool(ratio.is_number and ratio != 0)
    ratio = _constant_ratio(x, y)
    if ratio is not None:
        return abs(ratio) > 1e-12
    return _same_solutions(x, y)


def _solutions(expression: Any, symbol: Any) -> list[Any] | None:
    """The solutions of ``expression = 0`` for ``symbol`` when the numerator of ``expression`` is of degree 1
    or 2 in it (roots that zero the denominator excluded), else None. The coefficients are found by
    differentiation, never by expanding: ``y - (x - a)^{6000}`` costs microseconds."""
    import sympy

    numerator, denominator = sympy.fraction(sympy.together(expression))
    derivatives = [numerator]
    for _ in range(3):
        derivatives.append(sympy.diff(derivatives[-1], symbol))
    if derivatives[3] != 0:
        return None
    c0, c1, c2 = (d.subs(symbol, 0) / factor for d, factor in zip(derivatives, (1, 1, 2), strict=False))
    if not _coprime([c for c in (c0, c1, c2) if c != 0]):
        return (
            None  # a common factor of the coefficients (a x = a y) can vanish and make every value a solution
        )
    if c2 == 0:
        roots = [] if c1 == 0 else [-c0 / c1]
    else:
        root = sympy.sqrt(c1**2 - 4 * c2 * c0)
        roots = [(-c1 + root) / (2 * c2), (-c1 - root) / (2 * c2)]
    return [root for root in roots if not _is_zero(denominator.subs(symbol, root))]


def _coprime(coefficients: list[Any]) -> bool:
    """Whether polynomial coefficients (in the other symbols) have no common factor that can vanish: their gcd
    is a constant. Coefficients with large powers are not factored (that would expand them): not coprime."""
    import sympy

    if any(isinstance(p, sympy.Pow) and p.exp.is_Integer and abs(p.exp) > 50 for c in coefficients for p in
           sympy.preorder_traversal(c)):  # fmt: skip
        return False
    try:
        divisor = functools.reduce(sympy.gcd, coefficients)
    except (sympy.PolynomialError, TypeError, ValueError):
        return False
    return not divisor.free_symbols


def _is_zero(value: Any) -> bool:
    """Whether ``value`` is zero: exactly, or at every random point of its symbols."""
    if value == 0:
        return True
    if not value.free_symbols:
        return _numbers_equal(value, value * 0) is True
    samples = _sample([value])
    return samples is not None and all(_close(x, 0) for (x,) in samples)


def _same_solutions(x: Any, y: Any) -> bool:
    """Whether ``x = 0`` and ``y = 0`` have the same solutions for one of the symbols both contain."""
    import sympy

    for symbol in sorted(x.free_symbols & y.free_symbols, key=lambda s: (s.name != "y", s.name))[:2]:
        if not isinstance(symbol, sympy.Symbol):
            continue
        xs, ys = _solutions(x, symbol), _solutions(y, symbol)
        if xs is not None and ys is not None:
            return _unordered_equal(xs, ys)
    return False


def _relations_equal(a: Any, b: Any) -> bool:
    """Two inequalities in several variables: the same strictness and ``lhs - rhs`` equal up to a positive
    constant factor once both point the same way (``a < b`` = ``b > a``, ``3x^2 < 9a`` = ``x^2 - 3a < 0``)."""
    import sympy

    def canonical(relation: Any) -> tuple[bool, Any]:  # (strict, d) meaning d < 0 or d <= 0
        strict = isinstance(relation, (sympy.StrictLessThan, sympy.StrictGreaterThan))
        if isinstance(relation, (sympy.StrictLessThan, sympy.LessThan)):
            return strict, relation.lhs - relation.rhs
        return strict, relation.rhs - relation.lhs

    inequalities = _inequality_types()
    if not (isinstance(a, inequalities) and isinstance(b, inequalities)):
        return bool(type(a) is type(b) and _values_equal(a.lhs - a.rhs, b.lhs - b.rhs))
    (strict_a, x), (strict_b, y) = canonical(a), canonical(b)
    if strict_a != strict_b:
        return False
    if _values_equal(x, y):
        return True
    ratio = _constant_ratio(x, y)
    return ratio is not None and abs(ratio.imag) < 1e-12 and ratio.real > 0


@functools.cache
def _latex_parser() -> Any:
    """latex2sympy2_extended's converter with ANTLR's two-stage prediction: the fast SLL mode first, the
    full LL mode only when SLL reports a syntax error. For an input SLL accepts, both give the same tree
    (checked on every answer of public.jsonl), and SLL skips the full-context prediction that takes ~90% of
    LL's time.
    ``_Latex2Sympy`` is the library's internal class; its ``create_parser`` is the one hook it offers."""
    from antlr4.atn.PredictionMode import PredictionMode
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    class TwoStage(_Latex2Sympy):
        mode = PredictionMode.SLL

        def create_parser(self, latex_str: str) -> Any:
            parser = super().create_parser(latex_str)
            parser._interp.predictionMode = self.mode
            return parser

    return TwoStage


def _latex2sympy(text: str) -> Any:
    from antlr4.atn.PredictionMode import PredictionMode
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig, normalize_latex
    from sympy.matrices.expressions import MatrixExpr

    converter = _latex_parser()()
    text = normalize_latex(text, NormalizationConfig())
    try:
        value = converter.parse(text)
    except Exception:
        converter.mode = PredictionMode.LL
        value = converter.parse(text)
    return value.doit() if isinstance(value, MatrixExpr) else value  # a sum or product of explicit matrices


class FalseChain:
    """The value of an equality chain whose members disagree (``2 + 2 = 5``): it states no value, so it is
    equivalent to nothing (neither to 4 nor to 5)."""

    def __repr__(self) -> str:
        return "FalseChain()"


def _is_expression(value: Any) -> bool:
    """A scalar expression (not a set, relation, matrix or word)."""
    import sympy

    return isinstance(value, sympy.Expr) and not isinstance(value, sympy.MatrixBase)


def _is_constant(value: Any) -> bool:
    """A number-valued expression without symbols (``\\sqrt{9}``, ``\\binom{6}{2}``, ``2^{10}``)."""
    import sympy

    return (
        isinstance(value, sympy.Expr) and not isinstance(value, sympy.MatrixBase) and not value.free_symbols
    )


def _chain_value(text: str) -> Any:
    """The value of an equality chain, or None when ``text`` is not one.

    Every member a constant (``\\sqrt{9} = 3``, ``\\binom{6}{2} = 15``, ``2^{10} = 1024``, ``7 - 4 = 3``): the
    value is the last member when all members are equal, and ``FalseChain`` when they are not (``2 + 2 = 5``
    pays neither for 5 nor for 4). Three or more members otherwise (``x = 5 + 6 = 11``, ``f(x) = (x+1)^2 =
    x^2+2x+1``): the last member, unchecked -- the reading Math-Verify gives a derivation that ends in its
    answer (``x = 5+5+1 = 7 = 11`` is 11). Two members with symbols that are the same expression, an identity
    (``(x + 1)^2 = x^2 + 2x + 1``): the last member. Any other two-member equation of expressions (``y = 2x``,
    ``x + y = 1``) is an equation, returned as one (built from its parsed sides); None for the rest."""
    members = equality_members(text)
    if len(members) < 2 or not all(members):
        return None
    try:
        values = [_value(member) for member in members]
    except Exception:  # an unparseable member: only a long chain still has a value, its last member
        return _value(members[-1]) if len(members) >= 3 else None
    if all(_is_constant(value) for value in values):
        return values[-1] if all(_values_equal(a, b) for a, b in itertools.pairwise(values)) else FalseChain()
    if len(members) >= 3:
        return values[-1]
    if all(_is_expression(value) for value in values):
        if _values_equal(values[0], values[1]):
            return values[-1]  # an identity, (x + 1)^2 = x^2 + 2x + 1: a derivation ending in its value
        import sympy

        return sympy.Eq(values[0], values[1], evaluate=False)  # an equation, from the sides already parsed
    return None


def _value(text: str) -> Any:
    """The sympy value of one answer element: a decimal literal that remembers its digits, a set in
    set-builder notation whose condition has a solution set (``_set_builder_solutions``), an equality chain's
    value, or else the parsed LaTeX."""
    if _DECIMAL_LITERAL.fullmatch(text):
        return _decimal_literal(text)
    builder = set_builder(text)
    if builder is not None and not builder[1]:
        solutions = _set_builder_solutions(builder[0], builder[2])
        if solutions is not None:
            return solutions
    connective = _connective(text) if "\\lor" in text or "\\land" in text else None
    if connective is not None:
        return connective
    chain = _chain_value(text) if "=" in text else None
    return _latex2sympy(text) if chain is None else chain


def _connective(text: str) -> Any:
    """``a \\lor b`` (normalised from "or" between inequalities) as ``sympy.Or`` of its parts, and ``a \\land
    b`` (from "and" between inequalities in one variable) as ``sympy.And``, when every part is an inequality
    or a chain of them (an "and" binds its parts before an "or" does), else None. ``_solution_set`` reads them
    as the union and the intersection of the parts' solution sets: ``x < -1 \\lor x > 1`` is ``(-\\infty, -1)
    \\cup (1, \\infty)``, ``x > -1 \\land x < 1`` is ``(-1, 1)``."""
    import sympy

    word, join = ("lor", sympy.Or) if "\\lor" in text else ("land", sympy.And)
    parts = re.split(rf"\s*\\{word}(?![A-Za-z])\s*", text)
    try:
        values = [_value(part) for part in parts]
    except Exception:  # a part the parser rejects: the text is parsed as written
        return None
    if len(values) < 2 or not all(isinstance(value, (sympy.And, *_inequality_types())) for value in values):
        return None
    return join(*values)


def _set_builder_solutions(variable: str, condition: str) -> Any:
    """The real solution set of the condition of ``\\{x | condition\\}`` when it is an inequality or a chain
    of them in ``x`` alone, or several joined by ``\\lor`` (union) or a comma (intersection), made of ``x``,
    numbers and arithmetic (``\\{x | -2 \\leq x < 1\\}`` is ``[-2, 1)``, as ``-2 \\leq x < 1`` is), else
    None: a set with another condition (``x = 3k, k \\in \\mathbb{Z}``, ``x \\neq 3``, ``f(x) > 0``) compares
    as written."""
    import sympy

    parts = [condition] if re.search(r"[\[\](){}]", condition) else condition.split(", ")
    try:  # in a condition, a comma (or "and") between inequalities joins them: x > -1, x < 1 is -1 < x < 1
        values = [_value(part) for part in parts]
        value = values[0] if len(values) == 1 else sympy.And(*values)
    except Exception:  # a condition the parser rejects: the set compares as written
        return None
    inequalities = _inequality_types()
    connectives = (sympy.And, sympy.Or)
    if not isinstance(value, (*connectives, *inequalities)) or value.free_symbols != {sympy.Symbol(variable)}:
        return None
    arithmetic = (
        *connectives,
        *inequalities,
        sympy.Add,
        sympy.Mul,
        sympy.Pow,
        sympy.Number,
        sympy.NumberSymbol,
    )
    nodes = sympy.preorder_traversal(value)
    if not all(isinstance(node, arithmetic) or node == sympy.Symbol(variable) for node in nodes):
        return None  # f(x) > 0 says nothing about x without f; only x, numbers and arithmetic are solved
    solutions = _solution_set(value)
    return solutions if isinstance(solutions, sympy.Set) and not solutions.free_symbols else None


_DECIMAL_LITERAL = re.compile(r"-?\d*\.\d+")


@functools.cache
def _inequality_types() -> tuple[type, ...]:
    """sympy's four inequality classes (``<``, ``<=``, ``>``, ``>=``), imported when first needed."""
    import sympy

    return (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)


@functools.cache
def _decimal_literal_class() -> type:
    """A sympy ``Float`` that keeps the decimal places and significant digits it was written with: a float
    forgets trailing zeros, but ``2.39130430`` states eight places (so it is not the rounding of 55/23,
    2.39130435) where ``2.3913043`` states seven (and is)."""
    import sympy

    class DecimalLiteral(sympy.Float):
        __slots__ = ("places", "significant", "exact")

    return DecimalLiteral


def _decimal_literal(text: str) -> Any:
    import sympy

    literal = _decimal_literal_class().__new__(_decimal_literal_class(), text)
    literal.places, literal.significant = _written_digits(text)
    literal.exact = sympy.Rational(text)
    return literal


def _written_digits(text: str) -> tuple[int, int]:
    """Decimal places and significant digits of a decimal literal as written (``0.330`` -> (3, 2))."""
    whole, _, fraction = text.lstrip("-").partition(".")
    return len(fraction), len((whole + fraction).lstrip("0"))


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Any:
    """The sympy value of a normalised answer (raises on unparseable text); ``FalseChain`` for an equality
    chain whose members disagree. Cached: a reference is parsed once per worker, not once per completion."""
    if len(text) > MAX_ANSWER_LENGTH:
        raise ValueError(f"answer longer than {MAX_ANSWER_LENGTH} characters")
    if re.fullmatch(r"[A-Za-z][A-Za-z ]*", text):
        return _word(text)  # plain words and choice letters compare as text
    if "\\land" in text:
        text = _list_if_contradictory(text)
    if ", " in text and not re.search(r"[\[\](){}]|matrix", text):
        from sympy import FiniteSet

        values = [_value(part) for part in text.split(", ")]
        if any(isinstance(value, FalseChain) for value in values):
            raise ValueError("an element of the list is a false equality chain")
        return _answer_list(values) if len(values) > len(FiniteSet(*values)) else FiniteSet(*values)
    return _value(text)


def _list_if_contradictory(text: str) -> str:
    """Each ``a \\land b`` (bounds joined by "and"; an "or" of them: each part) whose solution set is empty as
    the answer list ``a, b``, as it was read before "and" was an intersection: bounds that exclude each other
    (``x<-1 and x>1``) are "and" written for "or" or for a list, not the empty set an answer key would write
    as such; as the empty set they would equal every other contradiction (``x<5 and x>7``), and vanish from
    an "or" (``x<-1 and x>1 or x>5`` would equal ``x>5``)."""
    import sympy

    parts = re.split(r"(\s*\\lor(?![A-Za-z])\s*)", text)  # the parts, and the "or"s between them
    for index, part in enumerate(parts):
        if "\\land" not in part:
            continue
        try:
            value = _value(part)
        except Exception:  # the parser's to report, as for any reading
            continue
        if isinstance(value, sympy.And) and _solution_set(value) == sympy.S.EmptySet:
            parts[index] = re.sub(r"\s*\\land(?![A-Za-z])\s*", ", ", part)
    return "".join(parts)


def _readings(text: str) -> list[str]:
    """The ways to read a normalised answer: as written, without a bare-name left side (``y = 2x`` -> ``2x``),
    and a percentage both as its number and as a fraction (``10\\%`` -> ``10``, ``\\frac{10}{100}``)."""
    readings = [text]
    rhs = drop_simple_lhs(text)
    if rhs != text:
        readings.append(rhs)
    result = []
    for reading in readings:
        if reading.endswith("\\%"):
            value = reading[: -len("\\%")]
            result += [value, _hundredth(value)]
        else:
            result.append(reading)
    return result


def _hundredth(value: str) -> str:
    """A percentage's value as a fraction, ``\\frac{value}{100}``, except for a decimal literal precise enough
    as written to stand for a value it rounds (``_precise_enough``): its point moved two places, so that the
    rounding rule applies to it as to any decimal. ``33.3\\%`` is ``0.333``, which rounds 1/3 (as ``33.3``
    rounds 100/3); ``33\\%`` (the exact 33/100) and ``3.3\\%`` (too coarse, as ``3.3`` is for 10/3) do not."""
    if not (_DECIMAL_LITERAL.fullmatch(value) and _precise_enough(*_written_digits(value))):
        return f"\\frac{{{value}}}{{100}}"
    return format(Decimal(value).scaleb(-2), "f")


def fast_readings_equivalent(pred: str, gold: str) -> bool | None:
    """``fast_equivalent`` over every reading of the normalised answers (``x = 10`` also as ``10``, ``10\\%``
    also as ``10`` and ``\\frac{10}{100}``): True when one pair is equal, False when every pair is decided
    unequal, None when the full check is needed."""
    verdicts = {fast_equivalent(p, g) for p in _readings(pred) for g in _readings(gold)}
    if True in verdicts:
        return True
    return False if verdicts == {False} else None


def equivalent(pred: str, gold: str) -> bool:
    """True if the answers ``pred`` and ``gold`` (raw extracted strings) are mathematically equivalent.

    A percentage matches both its number and its fraction (``10\\%`` equals ``10`` and ``0.1``).
    """
    pred, gold = normalize_pair(pred, gold)
    fast = fast_readings_equivalent(pred, gold)
    if fast is not None:
        return fast
    with decimals_written_in(pred, gold):
        return _any_readings_equal(pred, gold)


@contextlib.contextmanager
def decimals_written_in(*texts: str) -> Iterator[None]:
    """Within the block, a float of a parsed tree counts as exact only when it is a decimal literal of one of
    ``texts`` (``_float_as_written``)."""
    written = _WRITTEN_DECIMALS.set(frozenset(_WRITTEN_DECIMAL.findall(" ".join(texts))))
    try:
        yield
    finally:
        _WRITTEN_DECIMALS.reset(written)


def _any_readings_equal(pred: str, gold: str) -> bool:
    failure: Exception | None = None
    for pred_reading in _readings(pred):
        for gold_reading in _readings(gold):
            try:
                if _readings_equal(pred_reading, gold_reading):
                    return True
            except Exception as error:  # one unparseable reading does not decide; another may match
                failure = error
    if failure is not None:
        raise failure
    return False


def _readings_equal(pred: str, gold: str) -> bool:
    if fast_equivalent(pred, gold):
        return True
    a, b = parse(pred), parse(gold)
    if isinstance(a, FalseChain) or isinstance(b, FalseChain):
        return False
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if _values_equal(a, b):
        return True
    return _complex_reading_equal(a, b)


def _complex_reading_equal(a: Any, b: Any) -> bool:
    """Answers whose only symbol is ``i`` compared with ``i`` as the imaginary unit: ``i(2 - i)`` = ``1 + 2i``
    (the parser reads ``i`` as a variable)."""
    import sympy

    i = sympy.Symbol("i")
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)) or (a.free_symbols | b.free_symbols) != {
        i
    }:
        return False
    return _values_equal(a.subs(i, sympy.I), b.subs(i, sympy.I))


_WARM = False  # whether this process has run ``warmup``
_WARMUP_PAIRS = (  # one of each common answer form: ANTLR learns its prediction tables per construct
    ("\\frac{x}{2}", "0.5x"),
    ("\\sqrt[3]{2} + \\sin^2(x) - \\log_{2}(8)", "\\pi e^{i} \\cdot 3!"),
    ("(1, \\frac{9}{2}]", "[0,1) \\cup (2, \\infty)"),
    ("\\{1, 3\\}", "(3, 2), (1, -4)"),
    ("x \\leq 3", "2x + 4y - 3 = 0"),
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{pmatrix}1 \\\\ 0.5\\end{pmatrix}"),
    ("x^{2}-2 x^{3}+14 x+24", "\\frac{-2(x^2+6)}{9(x^2-2)\\sqrt[3]{x^2-2}^2}"),
    ("24 + 14*x + (-13)*x^2", "y_{1}=-2 x^{2}+4 x+3, y_{2}=3 x^{2}"),
    ("S_{MBCN}:S=7:32", "\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}"),
    ("-1 \\leq |z| < \\frac{3}{2}", "m \\geq \\sqrt{2}"),
    ("\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}", "\\begin{bmatrix}0 & 0 \\\\0 & 0\\end{bmatrix}"),
    ("10^{\\frac{\\sqrt{13} - 5}{6}}", "\\frac{1}{2006!} \\pm 1"),
    ("f(x) = \\tan^2(y)+1", "\\sec^2(y) \\cdot \\cos(\\theta)"),
    ("(0;-2;6)", "1, 3, 5, \\ldots, 2n-1"),
    ("12\\%", "\\text{abc}"),
)


def warmup() -> None:
    """Import and exercise the parser (once per process; run by the verifier's fork server, or by each
    spawned worker, before any call): ANTLR builds its prediction tables lazily, so a process's first parses
    of each construct are several times slower than later ones. A process forked after it (a worker forked
    from the warm fork server) inherits the tables and returns at once."""
    global _WARM
    if _WARM:
        return
    _WARM = True
    for pred, gold in _WARMUP_PAIRS:
        with contextlib.suppress(Exception):  # a rejected form has still trained the tables
            equivalent(pred, gold)
    parse.cache_clear()
