"""The learning-rate schedule shared by the RL trainer and the reward-model trainer."""

from __future__ import annotations

import torch


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``1 / warmup_steps`` of the learning rate to all of it over ``warmup_steps``
    optimizer updates, then constant; stepped once per update."""
    warmup = max(warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
