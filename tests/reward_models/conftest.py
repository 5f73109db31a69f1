"""A reward-model classifier started from the tiny policy and a verifier config that weights it, shared by
the scorer, trainer and distributed tests."""

from pathlib import Path

import pytest
import torch

from rgra_lightning.models import load_sequence_classifier, load_tokenizer
from tests.conftest import TINY_POLICY


def save_classifier(directory: Path, num_labels: int, seed: int = 0) -> Path:
    """A reward model started from the tiny policy's backbone with a random score head."""
    torch.manual_seed(seed)
    model = load_sequence_classifier(str(TINY_POLICY), num_labels=num_labels)
    model.save_pretrained(directory)
    load_tokenizer(str(TINY_POLICY)).save_pretrained(directory)
    return directory


def verifier_plus_reward_model(model_dir: Path) -> dict:
    """The verifier config 1.0 x MathVerifier + 0.2 x RewardModelScorer(model_dir)."""
    return {
        "class_path": "rewards.WeightedSum",
        "init_args": {
            "verifiers": [
                {"class_path": "rewards.MathVerifier"},
                {
                    "class_path": "rgra_lightning.RewardModelScorer",
                    "init_args": {"model_path": str(model_dir), "max_length": 64},
                },
            ],
            "weights": [1.0, 0.2],
        },
    }


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("orm"), num_labels=1)
