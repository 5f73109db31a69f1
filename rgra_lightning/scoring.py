"""The scoring stage: rewards and correctness of every completion, from a ``rewards.Verifier`` (a rule-based
verifier, a learned reward model, or a weighted sum of them).

Scoring never raises on a bad verifier: a batch call that fails is retried one completion at a time, and a
completion that still fails, or gets a NaN/inf reward, gets reward 0 with the error recorded. It runs in a
background thread while the trainer computes reference log-probs: the verifier's Python and its worker
processes then overlap tensor work (which releases the GIL) instead of adding to the step.
"""

from __future__ import annotations

import math
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rewards import Score, Verifier, WeightedSum

_VERIFIER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier")


@dataclass
class Scores:
    """The verifier's verdicts on N completions."""

    rewards: Tensor  # [N] float32, on the trainer's device
    correct: Tensor  # [N] float32 0/1, on the trainer's device
    scores: list[Score]  # N verifier scores (extracted answer, details, error, components)
    seconds: float  # wall time of scoring


def robust_score_batch(
    verifier: Verifier, completions: list[str], references: list[str], prompts: list[str] | None = None
) -> list[Score]:
    """``verifier.score_batch``, never raising: if the batch call fails, each completion is scored alone
    (a batch of one, with its prompt, which learned rewards need) and one that still raises gets reward 0
    with the error recorded (a buggy verifier must not end a run)."""
    try:
        return verifier.score_batch(completions, references, prompts)
    except Exception as batch_error:
        warnings.warn(
            f"{type(verifier).__name__}.score_batch raised {batch_error!r}; scoring one at a time",
            stacklevel=2,
        )
    scores = []
    for index, (completion, reference) in enumerate(zip(completions, references, strict=True)):
        prompt = None if prompts is None else [prompts[index]]  # learned rewards score (prompt, completion)
        try:
            scores.append(verifier.score_batch([completion], [reference], prompt)[0])
        except Exception as error:
            scores.append(Score(0.0, False, None, "verifier raised", error=repr(error)))
    return scores


def checked_score(score: Score) -> Score:
    """The score, or reward 0 with an error when the verifier returned a NaN/inf reward."""
    if math.isfinite(score.reward):
        return score
    return replace(score, reward=0.0, correct=False, error=f"non-finite reward {score.reward}")


def score_completions(
    verifier: Verifier,
    completions: list[str],
    prompts: list[str],
    references: list[str],
    device: torch.device,
) -> Scores:
    """Scores of N completions of B prompts (N a multiple of B, prompt-major) against their prompts'
    references."""
    start = time.perf_counter()
    repeats = len(completions) // len(prompts)
    repeated_prompts, repeated_references = (
        [item for item in items for _ in range(repeats)] for items in (prompts, references)
    )
    scores = robust_score_batch(verifier, completions, repeated_references, repeated_prompts)
    scores = [checked_score(s) for s in scores]
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32, device=device)
    correct = torch.tensor([s.correct for s in scores], dtype=torch.float32, device=device)
    return Scores(rewards, correct, scores, time.perf_counter() - start)


def start_scoring(
    verifier: Verifier,
    completions: list[str],
    prompts: list[str],
    references: list[str],
    device: torch.device,
    in_background: bool = True,
) -> Future[Scores]:
    """``score_completions`` in the verifier thread, or, when not ``in_background``, here and now (a
    sharded reward model runs collectives, whose order must match on every rank)."""
    if in_background:
        return _VERIFIER_THREAD.submit(score_completions, verifier, completions, prompts, references, device)
    done: Future[Scores] = Future()
    done.set_result(score_completions(verifier, completions, prompts, references, device))
    return done


def reward_components(verifier: Verifier, scores: list[Score]) -> dict[str, Tensor]:
    """Mean unweighted reward ``[]`` of each named component of a combined verifier (``WeightedSum``); none
    for a single verifier. A row whose scoring failed (no components) counts 0, as its reward does. The
    names come from the verifier, so every rank logs the same metrics whatever its rows."""
    names = verifier.names if isinstance(verifier, WeightedSum) else []
    return {name: torch.tensor([s.components.get(name, 0.0) for s in scores]).mean() for name in names}
