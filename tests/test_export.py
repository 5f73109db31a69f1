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


def test_a_lora_policy_on_a_bf16_base_is_merged_in_float32_so_a_small_update_survives(tmp_path):
    """A small trained update (scale x B A ~ 1e-5 of weights ~ 1e-1: below bf16's spacing there) is kept
    by the merged export: its weights equal the float32 sum, where a bf16 merge would drop it."""
    import torch
    from transformers import AutoModelForCausalLM

    policy = add_lora(load_causal_lm(str(TINY_POLICY), dtype="bfloat16"), LoraConfig(rank=2, alpha=4))
    torch.manual_seed(0)
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    layer.lora_B["default"].weight.data.normal_(std=1e-3)
    layer.lora_A["default"].weight.data.normal_(std=1e-3)
    delta = 2 * layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()
    expected = layer.base_layer.weight.float() + delta
    output = export_policy(policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    weight = merged.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, expected, rtol=0, atol=1e-7)  # float32 rounding of the sum
    in_bf16 = (layer.base_layer.weight + delta.bfloat16()).float()
    assert (in_bf16 == layer.base_layer.weight.float()).float().mean() > 0.9  # what bf16 would keep
