"""The rollout stage: prompts in, B x G sampled completions out (a ``Rollout``), by a ``RolloutEngine``.

``HFEngine`` (the default) samples from the training policy itself; ``VLLMEngine`` samples with vLLM on a
CUDA GPU (docs/rollout-engines.md). Choose an engine in YAML with ``model.rollout: {class_path: ...}``.
"""

from rgra_lightning.rollout.base import Rollout, RolloutEngine
from rgra_lightning.rollout.hf import HFEngine
from rgra_lightning.rollout.sampling import SamplingConfig
from rgra_lightning.rollout.vllm import VLLMEngine

__all__ = ["HFEngine", "Rollout", "RolloutEngine", "SamplingConfig", "VLLMEngine"]
