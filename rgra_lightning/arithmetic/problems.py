"""The embedded synthetic task: short signed-integer and fraction arithmetic, generated in code.

It exists so the default config runs offline on a CPU in minutes and visibly learns. Answers include
negative numbers and fractions whose unreduced forms are also correct (``6/8`` is ``3/4``), so the sympy
verifier, not string matching, decides the reward.

The problem space is enumerated exhaustively and split once with a fixed seed, so validation problems
never appear in training (neither in the supervised warm-up nor in RL).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Split = Literal["train", "val"]

OPERAND_RANGE = range(-9, 10)
DENOMINATORS = range(2, 10)


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer, a worked step, and the answer a misconception gives.

    ``answer`` is reduced (``3/4``); ``equivalent_answer`` is an unreduced form that is just as correct
    (``6/8``, or ``answer`` itself for integers). ``steps`` rewrites the question so its signs are explicit
    (``6-(-2)`` becomes ``6+2``, ``6*(-2)`` becomes ``-(6*2)``, ``1/8+5/8`` becomes ``(1+5)/8``) and ends
    with the unreduced result. ``slip`` is the misconception's answer: the sign flipped, or for fractions
    the denominators added too.
    """

    question: str
    answer: str
    equivalent_answer: str
    steps: str
    slip: str


def _signed(value: int) -> str:
    return f"({value})" if value < 0 else str(value)


def _fraction(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _integer_problem(a: int, b: int, symbol: str) -> Problem:
    if symbol == "*":
        result = a * b
        sign = "-" if result < 0 else ""
        steps = f"{sign}({abs(a)}*{abs(b)})={result}"
    else:
        result = a + b if symbol == "+" else a - b
        adds = (symbol == "+") == (b >= 0)
        steps = f"{a}{'+' if adds else '-'}{abs(b)}={result}"
    return Problem(f"{a}{symbol}{_signed(b)}", str(result), str(result), steps, str(-result))


def _fraction_problem(a: int, b: int, d: int) -> Problem:
    unreduced = f"{a + b}/{d}"
    answer = _fraction(Fraction(a + b, d))
    slip = _fraction(Fraction(a + b, 2 * d))
    return Problem(f"{a}/{d}+{b}/{d}", answer, unreduced, f"({a}+{b})/{d}={unreduced}", slip)


def enumerate_problems() -> list[Problem]:
    """Every problem of the task, in a fixed order: ``a+b``, ``a-b``, ``a*b`` for a, b in [-9, 9] and
    ``a/d+b/d`` for 0 < a, b < d <= 9 (1,287 problems)."""
    problems = [
        _integer_problem(a, b, symbol) for a in OPERAND_RANGE for b in OPERAND_RANGE for symbol in "+-*"
    ]
    problems += [_fraction_problem(a, b, d) for d in DENOMINATORS for a in range(1, d) for b in range(1, d)]
    return problems


def split_problems(val_size: int = 128, seed: int = 0) -> dict[Split, list[Problem]]:
    """Shuffle all problems with ``seed`` and hold out the first ``val_size`` for validation."""
    problems = enumerate_problems()
    random.Random(seed).shuffle(problems)
    return {"val": problems[:val_size], "train": problems[val_size:]}


def worked_answer(
    problem: Problem, rng: random.Random, steps_probability: float, slip_probability: float
) -> str:
    """A warm-up completion in one of two styles, drawn with ``rng``.

    With ``steps_probability`` the careful style: the worked step, then the correct answer boxed (reduced
    or unreduced at random). Otherwise the hasty style: only a boxed answer, which is the misconception's
    slip with ``slip_probability`` and correct otherwise.
    """
    correct = rng.choice((problem.answer, problem.equivalent_answer))
    if rng.random() < steps_probability:
        return f"{problem.steps} \\boxed{{{correct}}}"
    return f"\\boxed{{{problem.slip if rng.random() < slip_probability else correct}}}"
