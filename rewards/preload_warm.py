"""Imported by the verifier's fork server after ``rewards.preload`` when the verifier starts warm: trains the
LaTeX parser's prediction tables once (``rewards.equivalence.warmup``), so every worker forked from the server
starts warm."""

from rewards.equivalence import warmup

warmup()
