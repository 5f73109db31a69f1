"""rgra-lightning: GRPO, RGRA and their ablations as a PyTorch Lightning trainer for math reasoning."""

from rgra_lightning.advantages import AdvantageConfig, group_advantages
from rgra_lightning.data import MathPromptDataModule
from rgra_lightning.losses import LossConfig, policy_loss
from rgra_lightning.module import RLModule
from rgra_lightning.reward_model import RewardModelScorer
from rgra_lightning.reward_training import RewardDataModule, RewardModelModule
from rgra_lightning.rollout import SamplingConfig

__all__ = [
    "AdvantageConfig",
    "LossConfig",
    "MathPromptDataModule",
    "RLModule",
    "RewardDataModule",
    "RewardModelModule",
    "RewardModelScorer",
    "SamplingConfig",
    "group_advantages",
    "policy_loss",
]
