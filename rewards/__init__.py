"""Verifiers: decide whether a model's final answer is mathematically equivalent to the reference."""

from rewards.verifiers import (
    FormatReward,
    MathVerifier,
    MathVerifyAdapter,
    NumericVerifier,
    Score,
    Verifier,
    WeightedSum,
)

__all__ = [
    "FormatReward",
    "MathVerifier",
    "MathVerifyAdapter",
    "NumericVerifier",
    "Score",
    "Verifier",
    "WeightedSum",
]
