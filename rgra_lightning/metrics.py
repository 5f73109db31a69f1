"""The ``train/*`` and ``time/*`` metrics of one rollout batch, and how each is reduced over ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from rewards import Verifier
from rgra_lightning.advantages import zero_std_group_fraction
from rgra_lightning.experience import Experience
from rgra_lightning.scoring import reward_components
from rgra_lightning.update import UpdateStats

# Across ranks every metric is the mean of the per-rank values (every rank holds B x G rows), except these
# (see ``distributed.reduce_gathered``). The loss terms stay plain means, as DDP averages the ranks'
# gradients whatever the aggregation.
TRAIN_REDUCTIONS = {
    "train/completion_length_max": "max",
    "train/verifier_errors": "sum",
    "train/completion_tokens_per_s": "sum",
    "time/generation_s": "max",
    "time/verification_s": "max",
    "time/update_s": "max",
    "time/step_s": "max",
    "train/entropy": "token_mean",
    "train/clip_fraction": "token_mean",
    "train/ratio_mean": "token_mean",
    "train/sampler_logprob_diff": "token_mean",
    "train/sampler_is_clipped_fraction": "token_mean",
}


def truncated_fraction(experience: Experience) -> Tensor:
    """The fraction of completions cut at ``max_new_tokens`` without a stop token ``[]``."""
    truncated = experience.rollout.truncated
    return torch.tensor(0.0) if truncated is None else truncated.float().mean().cpu()


def training_metrics(
    experience: Experience, stats: UpdateStats, step_s: float, verifier: Verifier
) -> dict[str, Tensor]:
    """This rank's metrics of a training step: the update diagnostics (means over the batch's updates),
    rewards, advantages, completion lengths (tokens), counts (the fraction of truncated completions too),
    and wall times (seconds, ``step_s`` for the whole step); with a ``WeightedSum`` verifier each
    component's mean reward as ``train/rewards/<name>``."""
    rewards, lengths = experience.rewards, experience.rollout.completion_mask.sum(dim=1).float()
    errors = sum(score.error is not None for score in experience.scores)
    metrics = stats.means() | {
        "train/reward": rewards.mean(),
        "train/reward_std": experience.all_rewards.std(),
        "train/accuracy": experience.correct.mean(),
        "train/advantage_abs_mean": experience.advantages.abs().mean(),
        "train/zero_std_group_fraction": zero_std_group_fraction(rewards.view(-1, experience.group_size)),
        "train/completion_length_mean": lengths.mean(),
        "train/completion_length_max": lengths.max(),
        "train/verifier_errors": torch.tensor(float(errors)),
        "train/nonfinite_updates": torch.tensor(float(stats.skipped)),
        "train/truncated_prompts": torch.tensor(float(experience.rollout.truncated_prompts)),
        "train/truncated_fraction": truncated_fraction(experience),
        "time/generation_s": torch.tensor(experience.generation_s),
        "time/verification_s": torch.tensor(experience.verification_s),  # overlaps the log-prob passes
        "time/update_s": torch.tensor(step_s - experience.generation_s),  # + any wait for the verifier
        "time/step_s": torch.tensor(step_s),
        "train/completion_tokens_per_s": lengths.sum().cpu() / max(experience.generation_s, 1e-9),
    }
    components = reward_components(verifier, experience.scores)
    return metrics | {f"train/rewards/{name}": value for name, value in components.items()}
