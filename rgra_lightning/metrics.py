"""The ``train/*`` and ``time/*`` metrics of one rollout batch, how each is reduced over ranks, and how
they reach the loggers."""

from __future__ import annotations

import torch
from lightning import LightningModule
from torch import Tensor

from rewards import Verifier
from rgra_lightning.advantages import zero_std_group_fraction
from rgra_lightning.experience import Experience
from rgra_lightning.scoring import reward_components
from rgra_lightning.update import UpdateStats

# Across ranks every metric is the mean of the per-rank values (every rank holds B x G rows), except these
# (see ``distributed.reduce_gathered``): ``token_mean`` ones are weighted by each rank's completion tokens,
# ``trained_token_mean`` ones by the tokens the loss trains on (fewer with ``mask_truncated_completions``),
# over which the loss averages them. The loss terms stay plain means, as DDP averages the ranks' gradients
# whatever the aggregation.
TRAIN_REDUCTIONS = {
    "train/completion_length_max": "max",
    "train/verifier_errors": "sum",
    "train/truncated_prompts": "sum",
    "train/completion_tokens_per_s": "sum",
    "time/generation_s": "max",
    "time/verification_s": "max",
    "time/update_s": "max",
    "time/step_s": "max",
    "train/entropy": "token_mean",
    "train/clip_fraction": "trained_token_mean",
    "train/ratio_mean": "trained_token_mean",
    "train/sampler_logprob_diff": "trained_token_mean",
    "train/sampler_is_clipped_fraction": "trained_token_mean",
}


def truncated_fraction(experience: Experience) -> Tensor:
    """The fraction of completions cut at ``max_new_tokens`` without a stop token ``[]``."""
    truncated = experience.rollout.truncated
    return torch.tensor(0.0) if truncated is None else truncated.float().mean().cpu()


def metric_weights(experience: Experience, stats: UpdateStats) -> dict[str, Tensor]:
    """This rank's weights ``[]`` of the weighted reductions of ``TRAIN_REDUCTIONS``."""
    return {"token_mean": experience.completion_tokens, "trained_token_mean": stats.trained_tokens}


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
    if not verifier.judges_correctness:  # a learned reward model alone: no verdict, so no accuracy
        del metrics["train/accuracy"]
    components = reward_components(verifier, experience.scores)
    return metrics | {f"train/rewards/{name}": value.mean() for name, value in components.items()}


PROGRESS_BAR = ("train/reward", "train/accuracy")


def log_training_metrics(
    module: LightningModule, metrics: dict[str, Tensor], batch_size: int
) -> dict[str, float]:
    """Log a training step's ``metrics`` (reduced over ranks) at x = the optimizer updates so far; return
    them as floats.

    All of them are written straight to the trainer's loggers, on the steps where Lightning writes its own
    (``trainer.log_every_n_steps``), during the training step: before the step's checkpoint, which flushes
    them (``ContinuedLog``), so a checkpointed update's points are on disk whatever kills the run after it.
    ``step`` and the progress-bar metrics also go through ``LightningModule.log`` (not to the loggers), so
    the progress bar and callbacks (``trainer.callback_metrics``: a checkpoint's ``monitor``) see them.
    ``LightningModule.log`` costs ~0.25 ms of bookkeeping per key and step (a ``_ResultMetric.to`` walk per
    call): for 25 keys, about 6 ms of a 108 ms step of the tiny CPU policy. Callbacks read all of them from
    the module's ``latest_metrics``.
    """
    step = module.global_step
    values = {name: float(value) for name, value in metrics.items()}
    shown = {name: metrics[name] for name in PROGRESS_BAR if name in metrics}
    module.log_dict(shown, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=batch_size)
    module.log("step", float(step), logger=False, on_step=True, on_epoch=False, batch_size=batch_size)
    trainer = module.trainer
    if trainer.loggers and trainer._logger_connector.should_update_logs:  # Lightning's own rule
        for logger in trainer.loggers:  # x = updates, as checkpoints, samples and ``max_steps`` count
            logger.log_metrics(values, step=step)
    return values
