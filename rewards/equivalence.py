"""Deciding whether two answer strings are mathematically equal.

Plain numbers and fractions take an exact fast path (``fractions.Fraction``); anything else is parsed as
LaTeX by sympy's LaTeX parser (a real grammar, never ``eval``/``sympify`` of model text) and compared by
simplifying the difference. Inputs over ``MAX_LENGTH`` characters are rejected as unparseable.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_LENGTH = 200
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(/[+-]?\d+)?$")


def normalize(answer: str) -> str:
    """Strip spacing, ``$``, ``\\left``/``\\right``, thousands separators and a trailing period."""
    text = answer.strip().strip("$").strip().rstrip(".")
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("−", "-")
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)
    return text.replace(" ", "")


def as_fraction(text: str) -> Fraction | None:
    """An exact rational for plain numerals like ``-12``, ``0.5``, ``6/8``; None otherwise."""
    if not _NUMBER.match(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def equivalent(prediction: str, reference: str) -> bool:
    """True if ``prediction`` and ``reference`` denote the same value or expression."""
    pred, ref = normalize(prediction), normalize(reference)
    if pred == ref:
        return True
    pred_number, ref_number = as_fraction(pred), as_fraction(ref)
    if pred_number is not None and ref_number is not None:
        return pred_number == ref_number
    if len(pred) > MAX_LENGTH or len(ref) > MAX_LENGTH:
        return False
    import sympy
    from sympy.parsing.latex import parse_latex

    try:
        difference = sympy.simplify(parse_latex(pred) - parse_latex(ref))
    except Exception:  # the parser raises many error types on malformed input
        return False
    return difference == 0
