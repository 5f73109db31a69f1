"""Learned reward models: scoring completions with a frozen model (``scorer``), labelling sampled
completions with the verifier (``label``), and training an outcome reward model on them (``training``)."""

from rgra_lightning.reward_models.scorer import RewardModelScorer
from rgra_lightning.reward_models.training import RewardDataModule, RewardModelModule

__all__ = ["RewardDataModule", "RewardModelModule", "RewardModelScorer"]
