"""Verifiers: decide whether a model's final answer is mathematically equivalent to the reference."""

from rewards.verifiers import MathVerifier, Score, Verifier

__all__ = ["MathVerifier", "Score", "Verifier"]
