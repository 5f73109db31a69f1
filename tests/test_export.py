"""Exporting policies: merged Hugging Face directories and adapter-only PEFT directories."""

import pytest

from rgra_lightning.errors import ConfigError
from rgra_lightning.export import export_checkpoint, export_policy
from rgra_lightning.models import (
    LoraConfig,
    add_lora,
    load_causal_lm,
    load_tokenizer,
)
from rgra_lightning.reward_models.label import label
from tests.conftest import TINY_POLICY


def test_adapter_only_export_is_a_peft_directory(tmp_path):

    policy = add_lora(load_causal_lm(str(TINY_POLICY)), LoraConfig(rank=2))
    output = export_policy(
        policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "adapter"), adapter_only=True
    )
    assert (output / "adapter_config.json").is_file() and not (output / "model.safetensors").exists()


def test_commands_that_load_a_checkpoint_name_a_missing_one_before_building_the_module(tmp_path):
    # The config does not exist either: the checkpoint is checked first.
    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="missing.ckpt' does not exist"):
        export_checkpoint("no-such-config.yaml", missing, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="missing.ckpt' does not exist"):
        label("no-such-config.yaml", str(tmp_path / "rows.jsonl"), ckpt_path=missing)
    (tmp_path / "sharded.ckpt").mkdir()  # what FSDP2 writes
    with pytest.raises(ConfigError, match="is a sharded \\(FSDP2\\) checkpoint directory"):
        export_checkpoint("no-such-config.yaml", str(tmp_path / "sharded.ckpt"), str(tmp_path / "out"))

