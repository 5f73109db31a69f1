"""The ``Verifier`` interface and the default math verifier.

A verifier turns (completion text, reference answer) into a ``Score``. It never raises on model output:
anything it cannot parse earns reward 0 with the reason in ``details``/``error``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from rewards.equivalence import equivalent
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
