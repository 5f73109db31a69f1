"""The learning-rate schedule shared by the RL trainer and the reward-model trainer: linear warm-up, then
constant, linear decay or cosine decay to zero at the last update."""

from __future__ import annotations

import math
from typing import Literal

import torch

from rgra_lightning.errors import ConfigError

LRSchedule = Literal["constant", "linear", "cosine"]


def lr_factor(step: int, warmup_steps: int, schedule: LRSchedule, total_steps: int | None) -> float:
    """The fraction of the peak learning rate used by optimizer update ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` updates, so the first update
    already moves the weights (Hugging Face's warm-up starts at 0, wasting the first update). After it,
    as Hugging Face's ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``
    (``transformers.optimization``): ``linear`` falls as ``(total - step) / (total - warmup)``, ``cosine``
    as ``(1 + cos(pi * progress)) / 2`` with ``progress = (step - warmup) / (total - warmup)``; both reach
    0 at ``step = total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    schedule: LRSchedule = "constant",
    total_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` as a scheduler stepped once per optimizer update; ``linear`` and ``cosine`` need the
    number of updates of the run (``trainer.max_steps``)."""
    if schedule != "constant" and (total_steps is None or total_steps <= 0):
        raise ConfigError(f"model.lr_schedule={schedule} decays over trainer.max_steps: set it (> 0)")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, schedule, total_steps)
    )
