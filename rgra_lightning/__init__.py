"""rgra-lightning: GRPO, RGRA and their ablations as a PyTorch Lightning trainer for math reasoning.

The names below are imported on first use (so ``rgra score`` and ``import rgra_lightning.errors`` start
without torch); configs name them as ``rgra_lightning.<Name>``. Importing the package checks the installed
transformers, Lightning and peft against their floors (``versions``): one line says which is too old.
"""

from __future__ import annotations

import importlib
from typing import Any

from rgra_lightning.versions import check_versions

check_versions()

_EXPORTS = {
    "AdvantageConfig": "rgra_lightning.advantages",
    "group_advantages": "rgra_lightning.advantages",
    "ArithmeticDataModule": "rgra_lightning.data",
    "DatasetDataModule": "rgra_lightning.data",
    "JsonFilesDataModule": "rgra_lightning.data",
    "LossConfig": "rgra_lightning.losses",
    "rl_loss": "rgra_lightning.losses",
    "RLModule": "rgra_lightning.module",
    "RewardDataModule": "rgra_lightning.reward_models",
    "RewardModelModule": "rgra_lightning.reward_models",
    "RewardModelScorer": "rgra_lightning.reward_models",
    "HFEngine": "rgra_lightning.rollout",
    "SamplingConfig": "rgra_lightning.rollout",
    "SFTModule": "rgra_lightning.sft",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rgra_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
