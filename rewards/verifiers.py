"""The ``Verifier`` interface and its implementations.

A verifier turns (completion text, reference answer) into a ``Score``. It never raises on model output:
anything it cannot parse earns reward 0 with the reason in ``details``/``error``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from rewards.equivalence import as_fraction, equivalent, normalize
from rewards.extract import extract_answer


@dataclass(frozen=True)
class Score:
    """The verdict on one completion."""

    reward: float  # what the trainer optimises
    correct: bool  # the final answer is mathematically equivalent to the reference (accuracy)
    extracted: str | None  # the extracted answer, None if none was found
    details: str  # short human-readable reason, for logs
    error: str | None = None  # None, or why verification failed (reward is then 0)


class Verifier(abc.ABC):
    """Scores completions against reference answers. Subclass it and implement ``score``."""

    @abc.abstractmethod
    def score(self, completion: str, reference: str) -> Score:
        """The score of one completion."""

    def score_batch(self, completions: Sequence[str], references: Sequence[str]) -> list[Score]:
        """Scores of a batch, in order."""
        return [
            self.score(completion, reference)
            for completion, reference in zip(completions, references, strict=True)
        ]


class MathVerifier(Verifier):
    """Reward ``correct_reward`` when the extracted final answer equals the reference, else 0.

    Args:
        correct_reward: reward for an equivalent answer.
    """

    def __init__(self, correct_reward: float = 1.0) -> None:
        self.correct_reward = correct_reward

    def score(self, completion: str, reference: str) -> Score:
        answer = extract_answer(completion)
        if answer is None:
            return Score(0.0, False, None, "no final answer found")
        try:
            correct = equivalent(answer, reference)
        except Exception as error:  # never let model text crash training
            return Score(0.0, False, answer, "verification failed", error=f"crash: {error!r}")
        return Score(
            self.correct_reward if correct else 0.0, correct, answer, "equivalent" if correct else "different"
        )


class NumericVerifier(Verifier):
    """GSM8K-style: the extracted answer and the reference are plain numbers compared exactly.

    Args:
        correct_reward: reward for an equal number.
    """

    def __init__(self, correct_reward: float = 1.0) -> None:
        self.correct_reward = correct_reward

    def score(self, completion: str, reference: str) -> Score:
        answer = extract_answer(completion)
        if answer is None:
            return Score(0.0, False, None, "no final answer found")
        pred: Fraction | None = as_fraction(normalize(answer))
        gold: Fraction | None = as_fraction(normalize(extract_answer(reference) or reference))
        if pred is None or gold is None:
            return Score(0.0, False, answer, "not a plain number")
        correct = pred == gold
        return Score(
            self.correct_reward if correct else 0.0, correct, answer, "equal" if correct else "different"
        )


class FormatReward(Verifier):
    """Reward for the completion's shape, not its correctness (``correct`` is always False).

    Args:
        pattern: regular expression the completion must contain (searched, DOTALL).
        reward: reward when it does.
    """

    def __init__(self, pattern: str = r"\\boxed\{", reward: float = 1.0) -> None:
        self.pattern = re.compile(pattern, re.DOTALL)
        self.reward = reward

    def score(self, completion: str, reference: str) -> Score:
        found = self.pattern.search(completion) is not None
        return Score(self.reward if found else 0.0, False, None, "format ok" if found else "format missing")


class WeightedSum(Verifier):
    """``sum(w * v.reward)``; ``correct`` is True when every component that judges correctness (every one
    that is not a ``FormatReward``) says correct, and False when there is none.

    Args:
        verifiers: the components.
        weights: one weight per component.
    """

    def __init__(self, verifiers: list[Verifier], weights: list[float]) -> None:
        if len(verifiers) != len(weights) or not verifiers:
            raise ValueError("WeightedSum needs one weight per verifier and at least one verifier")
        self.verifiers = verifiers
        self.weights = weights

    def score(self, completion: str, reference: str) -> Score:
        scores = [v.score(completion, reference) for v in self.verifiers]
        judges = [s for v, s in zip(self.verifiers, scores, strict=True) if not isinstance(v, FormatReward)]
        errors = [s.error for s in scores if s.error]
        return Score(
            sum(w * s.reward for w, s in zip(self.weights, scores, strict=True)),
            bool(judges) and all(s.correct for s in judges),
            next((s.extracted for s in scores if s.extracted is not None), None),
            "; ".join(s.details for s in scores),
            errors[0] if errors else None,
        )


class MathVerifyAdapter(Verifier):
    """Hugging Face's ``math-verify`` (optional dependency: ``pip install math-verify``).

    Args:
        correct_reward: reward for an answer math-verify calls equivalent.
    """

    def __init__(self, correct_reward: float = 1.0) -> None:
        try:
            import math_verify
        except ImportError as error:
            raise ImportError(
                "MathVerifyAdapter needs the optional package math-verify: pip install math-verify"
            ) from error
        self._math_verify = math_verify
        self.correct_reward = correct_reward

    def score(self, completion: str, reference: str) -> Score:
        try:
            gold = self._math_verify.parse(reference)
            pred = self._math_verify.parse(completion)
            correct = bool(self._math_verify.verify(gold, pred))
        except Exception as error:  # math-verify raises on some inputs; the trainer must not see it
            return Score(0.0, False, None, "math-verify failed", error=f"crash: {error!r}")
        return Score(
            self.correct_reward if correct else 0.0,
            correct,
            str(pred[-1]) if pred else None,
            "equivalent" if correct else "different",
        )
