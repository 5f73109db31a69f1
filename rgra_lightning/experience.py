"""The experience of one rollout batch: what the update trains on and what the logs show.

``make_experience`` runs the stages before the loss in order: the rollout engine samples completions, the
verifier scores them (in a background thread), meanwhile the reference and pi_old log-probs are computed,
then rewards become advantages. Evaluation makes experience too, without log-probs or advantages.
``Experience.records()`` is the one place where per-completion rows are built, for the sample logger,
the validation/test/predict JSONL files and ``rgra label``.

Shapes: B prompts, N = B x G completions (prompt-major), T completion tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewards import Score, Verifier
from rgra_lightning.advantages import AdvantageConfig, group_advantages
from rgra_lightning.rollout import Rollout, RolloutEngine, SamplingConfig
from rgra_lightning.scoring import start_scoring

# {"prompt": [B], "reference": [B]}, as the data modules yield; evaluation batches also "index": [B], each
# problem's place in its split (``distributed.counted_on_rank``)
PromptBatch = dict[str, list[Any]]
LogprobPasses = Callable[[Rollout], tuple[Tensor | None, Tensor | None]]  # -> reference, pi_old log-probs


@dataclass
class Experience:
    """One rollout batch with its scores and, for training, its advantages and fixed log-probs."""

    rollout: Rollout  # N completions of the B prompts
    prompts: list[str]  # B
    references: list[str]  # B reference answers
    scores: list[Score]  # N verifier scores
    rewards: Tensor  # [N] float32
    correct: Tensor  # [N] float32 0/1
    advantages: Tensor | None = None  # [N], training only
    all_rewards: Tensor | None = None  # every rank's rewards (batch_std and train/reward_std), training only
    ref_logprobs: Tensor | None = None  # [N, T] reference log-probs, when the loss has a KL term
    old_logprobs: Tensor | None = None  # [N, T] pi_old log-probs, when a ratio term needs them stored
    generation_s: float = 0.0
    verification_s: float = 0.0  # overlaps the log-prob passes

    @property
    def completion_tokens(self) -> Tensor:
        """Real completion tokens of the batch ``[]``."""
        return self.rollout.completion_mask.sum()

    @property
    def group_size(self) -> int:
        """Completions per prompt."""
        return len(self.scores) // len(self.prompts)

    def records(self, first_group: int = 0) -> list[dict[str, Any]]:
        """One row per completion: ``prompt``, ``completion``, ``reference``, ``reward``, ``correct``,
        ``extracted`` (the answer the verifier read), ``details``, ``error`` and ``group`` (the prompt's
        index in the batch plus ``first_group``, its batch's place in a file; shared by its completions)."""
        group = self.group_size
        return [
            {
                "prompt": self.prompts[i // group],
                "completion": completion,
                "reference": self.references[i // group],
                "reward": score.reward,
                "correct": bool(score.correct),
                "extracted": score.extracted,
                "details": score.details,
                "error": score.error,
                "group": first_group + i // group,
            }
            for i, (completion, score) in enumerate(zip(self.rollout.completions, self.scores, strict=True))
        ]


def make_experience(
    engine: RolloutEngine,
    batch: PromptBatch,
    sampling: SamplingConfig,
    verifier: Verifier,
    device: torch.device,
    *,
    greedy: bool = False,
    score_in_background: bool = True,
    logprob_passes: LogprobPasses | None = None,
    advantage: AdvantageConfig | None = None,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> Experience:
    """Sample, score and (for training) compute log-probs and advantages for one batch of prompts.

    Args:
        engine: samples ``sampling.num_generations`` completions per prompt (one when ``greedy``).
        batch: the prompts and their reference answers.
        verifier: scores each completion; in a background thread when ``score_in_background``.
        device: where rewards and correctness live.
        logprob_passes: the reference and pi_old log-probs of a rollout (either may be None), computed
            while the verifier runs; given (training), the engine is ``release``d before them.
        advantage: how rewards become advantages; None: no advantages (evaluation).
        gather: all-gathers a tensor from every rank (the LightningModule's ``all_gather``); ``batch_std``
            scales by the std of every rank's rewards.
    """
    start = time.perf_counter()
    rollout = engine.generate(batch["prompt"], sampling, greedy=greedy)
    if logprob_passes is not None:
        engine.release()  # the log-prob passes and the update need the memory a separate engine holds
    generation_s = time.perf_counter() - start
    scoring = start_scoring(
        verifier, rollout.completions, batch["prompt"], batch["reference"], device, score_in_background
    )
    ref_logprobs, old_logprobs = logprob_passes(rollout) if logprob_passes else (None, None)
    scored = scoring.result()
    experience = Experience(
        rollout,
        batch["prompt"],
        batch["reference"],
        scored.scores,
        scored.rewards,
        scored.correct,
        ref_logprobs=ref_logprobs,
        old_logprobs=old_logprobs,
        generation_s=generation_s,
        verification_s=scored.seconds,
    )
    if advantage is not None:
        all_rewards = scored.rewards if gather is None else gather(scored.rewards).flatten()
        grouped = scored.rewards.view(-1, experience.group_size)
        experience.advantages = group_advantages(grouped, advantage, all_rewards).view(-1)
        experience.all_rewards = all_rewards
    return experience
