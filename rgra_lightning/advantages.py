"""Group-relative advantages: one scalar per completion, computed from its group's rewards.

Every function is pure: ``rewards`` has shape ``[B, G]`` (B prompts, G completions each) and the result
has the same shape. The trainer broadcasts each advantage over its completion's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rgra_lightning.errors import ConfigError, require_one_of

Baseline = Literal["group_mean", "leave_one_out", "none"]
Scale = Literal["group_std", "batch_std", "none"]
SignFilter = Literal["all", "positive", "negative"]
Selection = Literal["all", "best_of_group"]


@dataclass(frozen=True)
class AdvantageConfig:
    """How rewards become advantages. The fields combine freely, except two that fix others:
    ``baseline: none`` needs ``scale: none``, and ``selection: best_of_group`` needs no baseline, scale or
    sign filter.

    Args:
        baseline: subtracted from each reward. ``group_mean`` (GRPO, arXiv 2402.03300; RGRA, arXiv
            2603.18756), ``leave_one_out`` (RLOO, arXiv 2402.14740: the mean of the other G-1 rewards) or
            ``none`` (REINFORCE with direct rewards; with ``scale: none``: a group of equal rewards would be
            divided by ``epsilon``).
        scale: divisor after the baseline. ``group_std`` (GRPO), ``batch_std`` (REINFORCE++, arXiv 2501.03262:
            the std of the whole batch's rewards) or ``none`` (Dr. GRPO, arXiv 2503.20783). Standard
            deviations use Bessel's correction, as TRL does.
        sign_filter: ``positive`` keeps only advantages above zero ("train only on samples above the
            baseline": the paper's GRPO-pos and RGRA-pos, arXiv 2603.18756), ``negative`` only those below;
            the rest become zero.
        selection: ``best_of_group`` gives the first highest-rewarded completion of each group the advantage 1
            and every other completion 0, and a group whose best reward is not positive 0 throughout: RAFT's
            unweighted cross-entropy on the best sample, with its rejection of groups that have nothing
            rewarded to imitate (Dong et al. 2023, arXiv 2304.06767; the paper's RAFT row). The other fields
            then change nothing (a config that sets them otherwise is refused). ``all`` keeps every
            completion.
        epsilon: added to the standard deviation, so that the division stays finite (TRL's 1e-4). With a
            baseline a group of identical rewards gives exactly 0.
    """

    baseline: Baseline = "group_mean"
    scale: Scale = "group_std"
    sign_filter: SignFilter = "all"
    selection: Selection = "all"
    epsilon: float = 1e-4

    def __post_init__(self) -> None:
        require_one_of(
            "model.loss.advantage.",
            ("baseline", self.baseline, Baseline),
            ("scale", self.scale, Scale),
            ("sign_filter", self.sign_filter, SignFilter),
            ("selection", self.selection, Selection),
        )
        if self.epsilon <= 0:
            raise ConfigError(f"model.loss.advantage.epsilon must be > 0, got {self.epsilon}")
        if self.baseline == "none" and self.scale != "none" and self.selection == "all":
            raise ConfigError(
                f"model.loss.advantage.baseline='none' with scale={self.scale!r} divides raw rewards by a "
                "standard deviation that is 0 for a group (or batch) of equal rewards, i.e. by epsilon "
                "(advantages up to 1e4 x the reward): set scale='none' too (raw-reward REINFORCE, as "
                "configs/loss/reinforce.yaml does), or keep a baseline"
            )
        if self.selection == "best_of_group":
            ignored = [
                f"{name}={value!r}"
                for name, value, neutral in (
                    ("baseline", self.baseline, "none"),
                    ("scale", self.scale, "none"),
                    ("sign_filter", self.sign_filter, "all"),
                )
                if value != neutral
            ]
            if ignored:
                raise ConfigError(
                    f"model.loss.advantage.selection='best_of_group' weighs the best completion 1 whatever "
                    f"the rewards' baseline and scale: set {', '.join(ignored)} back to "
                    "baseline='none', scale='none', sign_filter='all'"
                )


def group_advantages(
    rewards: Tensor, config: AdvantageConfig = AdvantageConfig(), batch_rewards: Tensor | None = None
) -> Tensor:
    """Advantages ``[B, G]`` for rewards ``[B, G]`` (float, any units) under ``config``.

    ``batch_rewards`` (any shape; default ``rewards``) are the rewards whose standard deviation
    ``batch_std`` divides by: in a multi-process run, every rank's, so that the scale is the global batch's.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ConfigError(f"rewards must have shape [B, G] with G >= 2, got {tuple(rewards.shape)}")
    rewards = rewards.float()
    group_size = rewards.shape[1]

    if config.baseline == "group_mean":
        advantages = rewards - rewards.mean(dim=1, keepdim=True)
    elif config.baseline == "leave_one_out":
        others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
        advantages = rewards - others_mean
    else:
        advantages = rewards.clone()
    if config.baseline != "none":
        # A group of equal rewards carries no signal; its float mean may be a rounding step off the
        # rewards (0.1, 4.27), which the std scaling would blow up into same-signed advantages.
        tied = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
        advantages = advantages.masked_fill(tied, 0.0)

    if config.scale == "group_std":
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + config.epsilon)
    elif config.scale == "batch_std":
        batch = (rewards if batch_rewards is None else batch_rewards).float()
        batch_std = batch.std() if batch.numel() > 1 else batch.new_zeros(())
        advantages = advantages / (batch_std + config.epsilon)

    if config.sign_filter == "positive":
        advantages = advantages.clamp(min=0)
    elif config.sign_filter == "negative":
        advantages = advantages.clamp(max=0)

    if config.selection == "best_of_group":
        best = torch.zeros_like(rewards, dtype=torch.bool)
        best.scatter_(1, rewards.argmax(dim=1, keepdim=True), True)
        advantages = (best & (rewards > 0)).to(advantages.dtype)
    return advantages


def zero_std_group_fraction(rewards: Tensor) -> Tensor:
    """Fraction of groups (rows of ``[B, G]`` rewards) whose rewards are all equal: they teach nothing."""
    return (rewards.max(dim=1).values == rewards.min(dim=1).values).float().mean()
