"""The scoring stage: rewards and correctness of every completion, from a ``rewards.Verifier`` (a rule-based
verifier, a learned reward model, or a weighted sum of them).

A verifier that fails on some completions does not end a run: a batch call that raises is retried one
completion at a time (unless the verifier says ``scored_in_whole_batches``, as a standardizing reward
model's scores, which depend on the batch, and a sharded reward model's collectives do: the batch then fails
as a whole), and a
completion that still raises, gets a NaN/inf reward or a result that is not one ``Score``, gets reward 0
with the error recorded (``train/verifier_errors``) and a warning. A ``WeightedSum``'s components are
scored each on its own, so a failing one costs only its part. A verifier that fails on every completion of
a batch (of two or more) is broken, not unlucky: the run stops with one line saying why, rather than
training on rewards that are all 0. Scoring runs in a background thread while the trainer computes
reference log-probs: the verifier's Python and its worker processes then overlap tensor work (which
releases the GIL) instead of adding to the step.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from rewards import Score, Verifier, WeightedSum
from rewards.verifiers import VERIFIER_FAILED, finite_score
from rgra_lightning.errors import ConfigError

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
    """``verifier.score_batch``, one finite ``Score`` per completion, never raising for a completion that
    fails (see the module docstring); a ``WeightedSum`` combines its components' robust scores.

    Raises:
        ConfigError: the verifier (or a component) failed on every completion of two or more.
    """
    if isinstance(verifier, WeightedSum):
        per_component = [robust_score_batch(v, completions, references, prompts) for v in verifier.verifiers]
        return verifier.combine(per_component)
    name = type(verifier).__name__
    try:
        scores = _checked_result(verifier.score_batch(completions, references, prompts), len(completions))
    except Exception as batch_error:
        if getattr(verifier, "scored_in_whole_batches", False):
            failed = Score(0.0, False, None, VERIFIER_FAILED, error=f"{name} raised {batch_error!r}")
            return _checked_scores([failed] * len(completions), name)
        warnings.warn(f"{name}.score_batch raised {batch_error!r}; scoring one at a time", stacklevel=2)
        scores = []
        for index, (completion, reference) in enumerate(zip(completions, references, strict=True)):
            # learned rewards score (prompt, completion) pairs
            prompt = None if prompts is None else [prompts[index]]
            try:
                scores.append(_checked_result(verifier.score_batch([completion], [reference], prompt), 1)[0])
            except Exception as error:
                scores.append(Score(0.0, False, None, VERIFIER_FAILED, error=f"{name} raised {error!r}"))
    return _checked_scores(scores, name)


def _checked_scores(scores: list[Score], name: str) -> list[Score]:
    """``scores`` of verifier ``name`` with non-finite rewards made failures; raise when all failed."""
    scores = [finite_score(score) for score in scores]
    failures = [score.error for score in scores if score.details == VERIFIER_FAILED]
    if len(scores) > 1 and len(failures) == len(scores):
        raise ConfigError(
            f"model.verifier: {name} failed on all {len(scores)} completions of a batch ({failures[0]}): "
            "score_batch must return one rewards.Score with a finite reward per completion"
        )
    errors = [score.error for score in scores if score.error is not None]
    if len(scores) > 1 and len(errors) == len(scores):  # its own checks failing (timeouts, worker crashes)
        warnings.warn(
            f"{name} could not check any of the {len(scores)} completions of a batch ({errors[0]}); they "
            "score 0 (train/verifier_errors): check its timeout and memory_mb",
            stacklevel=2,
        )
    if any(score.details == VERIFIER_FAILED and "non-finite" in score.error for score in scores):
        warnings.warn(f"{name} returned a non-finite reward: scored 0 (train/verifier_errors)", stacklevel=2)
    return scores


def _checked_result(result: object, count: int) -> list[Score]:
    """``result`` when it is a list of ``count`` ``Score``s, else a ``TypeError`` saying what it is."""
    if not isinstance(result, list):
        raise TypeError(f"score_batch returned {type(result).__name__}, not a list of rewards.Score")
    if len(result) != count:
        raise TypeError(f"score_batch returned {len(result)} scores for {count} completions")
    wrong = next((item for item in result if not isinstance(item, Score)), None)
    if wrong is not None:
        raise TypeError(f"score_batch returned a {type(wrong).__name__} where a rewards.Score belongs")
    return result


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
    sharded reward model runs collectives, whose order must match on every rank). The thread scores under
    the caller's autocast (``bf16-mixed``), which is per thread: a reward model gives the same rewards in
    either place."""
    if in_background:
        autocast = torch.autocast(
            device.type,
            dtype=torch.get_autocast_dtype(device.type),
            enabled=torch.is_autocast_enabled(device.type),
        )
        args = (verifier, completions, prompts, references, device)
        return _VERIFIER_THREAD.submit(autocast(score_completions), *args)
    done: Future[Scores] = Future()
    done.set_result(score_completions(verifier, completions, prompts, references, device))
    return done


def reward_components(verifier: Verifier, scores: list[Score]) -> dict[str, Tensor]:
    """The unweighted rewards ``[N]`` of the N ``scores`` from each named component of a combined verifier
    (``WeightedSum``); none for a single verifier. A row whose scoring failed (no components) gets 0, as
    its reward does. The names come from the verifier, so every rank logs the same metrics whatever its
    rows."""
    names = verifier.names if isinstance(verifier, WeightedSum) else []
    return {name: torch.tensor([s.components.get(name, 0.0) for s in scores]) for name in names}
