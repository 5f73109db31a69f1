"""Exporting policies: merged Hugging Face directories and adapter-only PEFT directories."""

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rgra_lightning.checkpointing import sharded_weights
from rgra_lightning.cli import main as cli_main
from rgra_lightning.errors import RUN_REFUSED, ConfigError
from rgra_lightning.export import export_checkpoint, export_policy, plain_model
from rgra_lightning.export import main as export_main
from rgra_lightning.models import (
    LoraConfig,
    add_lora,
    load_causal_lm,
    load_tokenizer,
)
from rgra_lightning.reward_models.label import label
from rgra_lightning.reward_models.label import main as label_main
from tests.conftest import FAST, ROOT, TINY_POLICY, assert_close_normwise, rounding_rtol


@pytest.fixture(scope="module")
def reward_model_run(tmp_path_factory):
    """A 2-step fit of configs/reward_model.yaml on the tiny policy: its config and checkpoint directory."""
    tmp_path = tmp_path_factory.mktemp("orm")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1=", "completion": f"\\boxed{{{i + 1 - k}}}", "correct": k == 0})
            + "\n"
            for i in range(16)
            for k in (0, 1)
        )
    )
    config = yaml.safe_load((ROOT / "configs" / "reward_model.yaml").read_text())
    config["trainer"].update(
        max_steps=2, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False
    )
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    config["trainer"]["callbacks"][1]["init_args"]["output_dir"] = str(tmp_path / "hf_model")
    config["model"]["init_args"].update(model_path=str(TINY_POLICY), dtype="float32")
    config["data"]["init_args"].update(train_file=str(rows), val_file=str(rows), batch_size=16)
    path = tmp_path / "reward_model.yaml"
    path.write_text(yaml.safe_dump(config))
    cli_main(["fit", "--config", str(path)])
    return path, tmp_path / "checkpoints"


def test_adapter_only_export_is_a_peft_directory(tmp_path, monkeypatch):
    """Its base model path is absolute: a relative one (models/...) resolves from the run's directory only."""
    monkeypatch.chdir(TINY_POLICY.parents[1])
    policy = add_lora(
        load_causal_lm(str(TINY_POLICY.relative_to(TINY_POLICY.parents[1]))), LoraConfig(rank=2)
    )
    output = export_policy(
        policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "adapter"), adapter_only=True
    )
    assert (output / "adapter_config.json").is_file() and not (output / "model.safetensors").exists()
    settings = json.loads((output / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(TINY_POLICY.resolve())
    # a policy without adapters: the full model would be written under the adapter's name
    plain = load_causal_lm(str(TINY_POLICY))
    with pytest.raises(ConfigError, match=r"^--adapter-only: this policy has no LoRA adapters"):
        export_policy(plain, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "plain"), adapter_only=True)
    assert not (tmp_path / "plain").exists()


def test_the_exported_tokenizer_keeps_its_settings_not_how_it_was_loaded(tmp_path):
    """Loaded offline (``HF_HUB_OFFLINE=1``, as the tests run), transformers records ``local_files_only``
    among the tokenizer's settings; the export leaves it out, and the tokenizer keeps it."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    assert tokenizer.init_kwargs.get("local_files_only") is True
    output = export_policy(load_causal_lm(str(TINY_POLICY)), tokenizer, str(tmp_path / "hf"))
    assert "local_files_only" not in json.loads((output / "tokenizer_config.json").read_text())
    assert tokenizer.init_kwargs.get("local_files_only") is True


def test_commands_that_load_a_checkpoint_name_a_missing_one_before_building_the_module(tmp_path):
    # The config does not exist either: the checkpoint is checked first.
    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="missing.ckpt' does not exist"):
        export_checkpoint("no-such-config.yaml", missing, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="missing.ckpt' does not exist"):
        label("no-such-config.yaml", str(tmp_path / "rows.jsonl"), ckpt_path=missing)
    with pytest.raises(
        ConfigError, match=f"--ckpt-path {TINY_POLICY} is a Hugging Face model directory: give"
    ):
        label("no-such-config.yaml", str(tmp_path / "rows.jsonl"), ckpt_path=str(TINY_POLICY))
    with pytest.raises(ConfigError, match=f"--ckpt-path {tmp_path} is not a Lightning checkpoint"):
        export_checkpoint("no-such-config.yaml", str(tmp_path), str(tmp_path / "out"))


def test_a_checkpoint_of_another_model_or_no_checkpoint_and_an_output_file_are_one_line(
    reward_model_run, small_config, tmp_path, capsys
):
    config, rows = str(small_config("rgra")), tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ConfigError, match=f"--ckpt-path {rows} is not a Lightning checkpoint"):
        export_checkpoint(config, str(rows), str(tmp_path / "out"))
    reward_model = str(reward_model_run[1] / "last.ckpt")
    with pytest.raises(ConfigError, match=f"checkpoint {reward_model} holds a reward model "):
        export_checkpoint(config, reward_model, str(tmp_path / "out"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # before building the module
        export_main(["checkpoint", "--config", config, "--ckpt-path", reward_model, "--output", str(rows)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --output {rows} is a file: give a directory to export the model to\n"
    )


def test_every_command_names_a_checkpoint_of_the_other_kind_of_module(
    reward_model_run, small_config, tmp_path, capsys
):
    """A reward model's checkpoint given with a policy's config listed the settings that differ (learning
    rate, max_length, ...) as if it were another run of the policy, and a policy's given with a reward
    model's config a truncated list of dataclass reprs: each command that takes a checkpoint says what it
    holds and what the config trains, in one line."""
    policy_config = small_config("rgra", **FAST, **{"trainer.max_steps": 2})
    cli_main(["fit", "--config", str(policy_config)])
    reward_model_config, checkpoints = reward_model_run
    policy_checkpoint, reward_model_checkpoint = (
        tmp_path / "checkpoints" / "last.ckpt",
        checkpoints / "last.ckpt",
    )
    policy, reward_model = (
        "a policy (RLModule, configs/rgra.yaml)",
        "a reward model (RewardModelModule, configs/reward_model.yaml)",
    )
    give = "give the config it was trained with (saved as config.yaml in its log directory)"
    resume = (
        "resume with the config it was trained with (saved as config.yaml in its log directory), or start a "
        "new run without --ckpt_path"
    )
    for config, checkpoint, held, trains in [
        (policy_config, reward_model_checkpoint, reward_model, policy),
        (reward_model_config, policy_checkpoint, policy, reward_model),
    ]:
        given = ["--config", str(config)]
        commands = [
            (
                export_main,
                ["checkpoint", *given, "--ckpt-path", str(checkpoint), "--output", str(tmp_path / "out")],
            ),
            *[
                (cli_main, [command, *given, "--ckpt_path", str(checkpoint)])
                for command in ("validate", "test", "predict")
            ],
            (cli_main, ["fit", *given, "--ckpt_path", str(checkpoint)]),
        ]
        if config == policy_config:  # label samples from a policy
            commands.append(
                (
                    label_main,
                    [*given, "--output", str(tmp_path / "rows.jsonl"), "--ckpt-path", str(checkpoint)],
                )
            )
        for run, args in commands:
            capsys.readouterr()
            with pytest.raises(SystemExit) as exit_info:
                run(args)
            fitting = args[0] == "fit"
            assert exit_info.value.code == (RUN_REFUSED if fitting else 2), args
            errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
            assert errors == [
                f"error: checkpoint {checkpoint} holds {held}; this config trains {trains}: "
                f"{resume if fitting else give}"
            ], args
    assert not (tmp_path / "out").exists() and not (tmp_path / "rows.jsonl").exists()


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
    # Equal, not close: the export merges a float32 copy as peft does, W + (B @ A) x 2, and 2 B @ A is that
    # product to the bit (a power-of-two scaling rounds nothing); a float32 file keeps every bit.
    assert torch.equal(weight, expected)
    in_bf16 = (layer.base_layer.weight + delta.bfloat16()).float()
    assert (in_bf16 == layer.base_layer.weight.float()).float().mean() > 0.9  # what bf16 would keep


def test_a_reward_model_checkpoint_exports_as_the_classifier_it_trained(reward_model_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config, checkpoints = reward_model_run
    output = export_checkpoint(str(config), str(checkpoints / "last.ckpt"), str(tmp_path / "orm"))
    exported = AutoModelForSequenceClassification.from_pretrained(output)
    assert exported.config.num_labels == 1 and (output / "tokenizer.json").is_file()
    trained = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    weights = {
        name.removeprefix("model."): value for name, value in trained.items() if name.startswith("model.")
    }
    state = exported.state_dict()
    assert "score.weight" in state and all(torch.equal(state[name], weights[name]) for name in state)


def test_the_config_a_run_saved_exports_its_checkpoint(small_config, tmp_path):
    """LightningCLI saves fit's config with fit's own keys (``ckpt_path``, ``weights_only``) beside the
    module's: the export builds the module from it all the same."""
    cli = cli_main(["fit", "--config", str(small_config("rgra", **FAST, **{"trainer.max_steps": 2}))])
    saved = next((tmp_path / "runs").rglob("config.yaml"))
    assert "ckpt_path" in yaml.safe_load(saved.read_text())
    output = export_checkpoint(str(saved), str(tmp_path / "checkpoints" / "last.ckpt"), str(tmp_path / "out"))
    exported = load_file(output / "model.safetensors")
    policy = cli.model.policy.state_dict()
    assert exported and all(torch.equal(value, policy[name]) for name, value in exported.items())


def test_a_checkpoint_that_keeps_the_reference_as_fsdp2_runs_do_exports_and_validates(small_config, tmp_path):
    """An FSDP2 run's checkpoints keep its frozen models (its strategy restores every key of the module),
    a one-device run's leave them out; a module built for export or evaluation has no reference, and reads
    such a checkpoint all the same (they were refused: "30 unexpected (reference.lm_head.weight, ...)")."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 2})
    cli = cli_main(["fit", "--config", str(config)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    policy = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith("policy.")}
    assert policy and not any(key.startswith("reference.") for key in checkpoint["state_dict"])
    checkpoint["state_dict"] |= {
        "reference." + key.removeprefix("policy."): value for key, value in policy.items()
    }
    torch.save(checkpoint, last)
    output = export_checkpoint(str(config), str(last), str(tmp_path / "out"))
    exported, trained = load_file(output / "model.safetensors"), cli.model.policy.state_dict()
    assert exported and all(torch.equal(value, trained[name]) for name, value in exported.items())
    # Lightning loads its weights strictly (unexpected keys were an error), after the CLI's own check
    cli_main(["validate", "--config", str(config), "--ckpt_path", str(last)])


def shard_the_checkpoint(last: Path, sharded: Path) -> None:
    """Write ``last`` (a one-process checkpoint) as ``ModelParallelStrategy`` writes a sharded one: the
    weights (the reference among them, as FSDP2 keeps it) and optimizer state through
    ``torch.distributed.checkpoint`` (``.metadata`` and a shard file), everything else in ``meta.pt``."""
    from torch.distributed import checkpoint as dcp

    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    weights = checkpoint.pop("state_dict")
    weights |= {"reference." + key.removeprefix("policy."): value.clone() for key, value in weights.items()}
    optimizer = checkpoint.pop("optimizer_states")[0]
    dcp.save({"state_dict": weights, "optimizer_0": optimizer}, checkpoint_id=str(sharded), no_dist=True)
    torch.save(checkpoint, sharded / "meta.pt")


def test_a_sharded_checkpoint_exports_in_one_process_and_a_damaged_one_is_one_line(small_config, tmp_path):
    """``rgra export checkpoint`` (and ``rgra label``, through ``load_trained_weights``) reads a sharded
    checkpoint's weights in one process, without the frozen reference it holds; one missing its index,
    its ``meta.pt`` or a shard is refused in one line; one of another model, by its shapes alone."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 2}).rename(tmp_path / "trained.yaml")
    cli = cli_main(["fit", "--config", str(config)])
    sharded = tmp_path / "sharded.ckpt"
    shard_the_checkpoint(tmp_path / "checkpoints" / "last.ckpt", sharded)
    assert {path.name for path in sharded.iterdir()} == {".metadata", "__0_0.distcp", "meta.pt"}
    weights = sharded_weights(str(sharded))
    assert weights.keys() == cli.model.policy.state_dict(prefix="policy.").keys()  # no reference read
    assert all(tensor.is_meta for tensor in sharded_weights(str(sharded), read=False).values())
    output = export_checkpoint(str(config), str(sharded), str(tmp_path / "out"))
    exported, trained = load_file(output / "model.safetensors"), cli.model.policy.state_dict()
    assert exported and all(torch.equal(value, trained[name]) for name, value in exported.items())

    other = small_config("rgra", **{"model.init_args.model_path": str(tmp_path / "wider")})
    wider = load_causal_lm(str(TINY_POLICY))
    wider.resize_token_embeddings(wider.config.vocab_size + 8)
    wider.save_pretrained(tmp_path / "wider")
    load_tokenizer(str(TINY_POLICY)).save_pretrained(tmp_path / "wider")
    with pytest.raises(
        ConfigError, match="trained with other settings than this run's \\(model.model_path: "
    ):
        export_checkpoint(str(other), str(sharded), str(tmp_path / "out"))

    damaged = {"no index": ".metadata", "no meta.pt": "meta.pt", "no shard": "__0_0.distcp"}
    for name, missing in damaged.items():
        copy = tmp_path / name
        shutil.copytree(sharded, copy)
        (copy / missing).unlink()
        with pytest.raises(ConfigError) as caught:
            export_checkpoint(str(config), str(copy), str(tmp_path / "out"))
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"--ckpt-path {copy}"), (name, message)
        assert (
            "a shard could not be read" if name == "no shard" else "is not a Lightning checkpoint"
        ) in message


def test_several_configs_apply_in_order(reward_model_run, tmp_path, capsys):
    config, checkpoints = reward_model_run
    override = tmp_path / "bf16.yaml"
    override.write_text(yaml.safe_dump({"model": {"init_args": {"dtype": "bfloat16"}}}))
    args = ["--ckpt-path", str(checkpoints / "last.ckpt"), "--output", str(tmp_path / "out")]
    export_main(["checkpoint", "--config", str(config), "--config", str(override), *args])
    assert "exported to" in capsys.readouterr().out
    exported = load_file(tmp_path / "out" / "model.safetensors")
    trained = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert exported and all(value.dtype == torch.bfloat16 for value in exported.values())
    assert torch.equal(exported["score.weight"], trained["model.score.weight"].bfloat16())


@pytest.mark.parametrize("spelling", ["--ckpt-path", "--ckpt_path"])
def test_export_takes_the_checkpoint_in_either_spelling(spelling, tmp_path, capsys):
    """rgra fit, validate, test and predict spell it --ckpt_path (LightningCLI's); export refused that
    spelling as a missing --ckpt-path, with no hint."""
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit) as exit_info:  # the checkpoint is checked before the config is read
        export_main(["checkpoint", "--config", "no.yaml", spelling, str(missing), "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --ckpt-path '{missing}' does not exist\n"


def _trained_lora_policy(std: float, dtype: str = "float32"):
    """The tiny policy with rank-2 adapters whose B is random (a trained-looking, nonzero update)."""
    torch.manual_seed(0)
    policy = add_lora(load_causal_lm(str(TINY_POLICY), dtype=dtype), LoraConfig(rank=2, alpha=4))
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=std)
    return policy


def _train_further(policy, std: float) -> None:
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=std)


def test_an_export_replaces_an_earlier_one_whole_merged_or_adapter_only(tmp_path):
    """A merged export over an adapter-only one left its adapter_config.json beside the new weights:
    transformers then loaded the base with the old adapters (logits 3.15 off the policy's). Each export
    now holds exactly the files it writes into a new directory, and nothing is left beside it."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = _trained_lora_policy(std=0.05)
    output = tmp_path / "exported"
    export_policy(policy, tokenizer, str(output), adapter_only=True)
    _train_further(policy, std=0.5)
    export_policy(policy, tokenizer, str(output))
    fresh = export_policy(policy, tokenizer, str(tmp_path / "fresh"))
    assert sorted(os.listdir(output)) == sorted(os.listdir(fresh))
    assert not (output / "adapter_config.json").exists()
    ids = tokenizer(["6*(-2)="], return_tensors="pt").input_ids
    with torch.no_grad():
        exported, trained = AutoModelForCausalLM.from_pretrained(output)(ids).logits, policy(ids).logits
    # The merged weight W + s B A multiplies once where peft adds s B (A x): float32 sums of up to 384
    # terms (the MLP's width) in another order, three layers deep (see ``rounding_rtol``).
    assert_close_normwise(exported, trained, rounding_rtol(torch.float32, 384), "merged vs adapters")
    # the reverse: an adapter-only export over the merged one keeps no model.safetensors
    export_policy(policy, tokenizer, str(output), adapter_only=True)
    fresh = export_policy(policy, tokenizer, str(tmp_path / "fresh-adapter"), adapter_only=True)
    assert sorted(os.listdir(output)) == sorted(os.listdir(fresh))
    assert not (output / "model.safetensors").exists()
    assert sorted(os.listdir(tmp_path)) == ["exported", "fresh", "fresh-adapter"]  # no partial/replaced dirs


def test_a_failed_export_leaves_the_earlier_one_as_it_was(tmp_path, monkeypatch):
    """Written in place, an export that stopped after the weights left the new weights with the old
    tokenizer files; it is written beside the directory and moved in only when whole."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = _trained_lora_policy(std=0.05)
    output = export_policy(policy, tokenizer, str(tmp_path / "exported"))
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    _train_further(policy, std=0.5)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tokenizer), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        export_policy(policy, tokenizer, str(output))
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert os.listdir(tmp_path) == ["exported"]


def test_an_export_refuses_a_directory_that_holds_other_files(reward_model_run, tmp_path, capsys):
    """An export replaces its directory whole: one holding files but no earlier export (no config.json or
    adapter_config.json) is refused, in one line and before the module is built, and left as it was."""
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("keep me")
    message = (
        f"export directory {notes.parent} holds files but no exported model (no config.json or "
        "adapter_config.json), and an export replaces it whole: give a new or empty directory"
    )
    tokenizer = load_tokenizer(str(TINY_POLICY))
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        export_policy(load_causal_lm(str(TINY_POLICY)), tokenizer, str(notes.parent))
    checkpoint = str(reward_model_run[1] / "last.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the config does not exist: the directory is checked first
        export_main(
            ["checkpoint", "--config", "no.yaml", "--ckpt-path", checkpoint, "--output", str(notes.parent)]
        )
    assert exit_info.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert os.listdir(notes.parent) == ["notes.txt"] and notes.read_text() == "keep me"
    (tmp_path / "empty").mkdir()  # an empty directory is taken
    assert (
        export_policy(load_causal_lm(str(TINY_POLICY)), tokenizer, str(tmp_path / "empty")) / "config.json"
    ).is_file()


def test_gguf_to_hf_replaces_an_earlier_export_whole(tmp_path, monkeypatch, capsys):
    def convert(model_path: str, gguf_file: str, output_dir: str, dtype: str) -> Path:
        """What models.gguf_to_hf writes, without a GGUF file to read."""
        (Path(output_dir) / "config.json").write_text("{}")
        (Path(output_dir) / "model.safetensors").write_text("")
        return Path(output_dir)

    monkeypatch.setattr("rgra_lightning.export.gguf_to_hf", convert)
    output = tmp_path / "model"
    output.mkdir()
    for name in ("config.json", "adapter_config.json", "adapter_model.safetensors"):
        (output / name).write_text("old")
    export_main(["gguf-to-hf", "--model-path", "m", "--gguf-file", "m.gguf", "--output", str(output)])
    assert capsys.readouterr().out == f"exported to {output}\n"
    assert sorted(os.listdir(output)) == ["config.json", "model.safetensors"]
    assert os.listdir(tmp_path) == ["model"]


def test_a_lora_policy_is_merged_on_a_cpu_copy_with_the_same_weights(monkeypatch):
    """On the policy's device, the deep copy merged at the end of fit took another float32 model's memory
    beside the optimizer state (~6 GB for a 1.5B policy). The copy is built on the CPU, none of the
    policy's tensors is deep-copied where it is, and the merged weights are those merged before."""
    policy = _trained_lora_policy(std=0.05, dtype="bfloat16")
    before = copy.deepcopy(policy).float().merge_and_unload().state_dict()  # the export's former merge
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    B, A = layer.lora_B["default"].weight.float(), layer.lora_A["default"].weight.float()
    expected = layer.base_layer.weight.float() + (B @ A) * layer.scaling["default"]  # peft's merge, by hand
    own = {id(tensor) for tensor in [*policy.parameters(), *policy.buffers()]}
    copied = []
    for cls in (torch.Tensor, torch.nn.Parameter):
        original = cls.__deepcopy__

        def recording(self, memo, original=original):
            copied.append(id(self))
            return original(self, memo)

        monkeypatch.setattr(cls, "__deepcopy__", recording)
    merged = plain_model(policy)
    assert not own & set(copied)
    state = merged.state_dict()
    assert state.keys() == before.keys()
    assert all(
        value.device.type == "cpu" and torch.equal(value, before[name]) for name, value in state.items()
    )
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"], expected)
    assert merged.model.embed_tokens.weight.dtype == torch.float32
    assert not hasattr(merged, "peft_config") or not merged.peft_config
    assert layer.base_layer.weight.dtype == torch.bfloat16 and hasattr(policy, "merge_and_unload")


def test_a_gathered_state_dict_is_saved_as_given_with_a_tied_weight_once(tmp_path):
    """An FSDP2 policy's full state dict (``ExportHuggingFace``) names the tied head's weight twice, as
    ``model.embed_tokens.weight`` and ``lm_head.weight``: the export saves the given tensors, not the
    policy's, the tied one once, and the directory loads with the head tied to the embedding."""
    from transformers import AutoModelForCausalLM

    policy = load_causal_lm(str(TINY_POLICY))
    gathered = {name: value + 1 for name, value in policy.state_dict().items()}
    assert "lm_head.weight" in gathered and "model.embed_tokens.weight" in gathered
    output = export_policy(
        policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "hf"), state_dict=gathered
    )
    saved = load_file(output / "model.safetensors")
    assert set(saved) == set(gathered) - {"lm_head.weight"}
    assert all(torch.equal(value, gathered[name]) for name, value in saved.items())
    exported = AutoModelForCausalLM.from_pretrained(output)
    assert exported.lm_head.weight is exported.model.embed_tokens.weight
    assert torch.equal(exported.lm_head.weight, gathered["model.embed_tokens.weight"])


def test_a_merged_lora_export_is_the_base_plus_alpha_over_rank_b_a_once(tmp_path):
    """Rank 2, alpha 4: each adapted weight is exported as W + 2 B A, computed here by hand in float32
    (merged once: not W, not W + 4 B A), with the tied head equal to the untouched embedding, and every
    other weight the base's."""
    policy = _trained_lora_policy(std=0.05)
    base = load_causal_lm(str(TINY_POLICY)).state_dict()
    output = export_policy(policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "merged"))
    saved = load_file(output / "model.safetensors")
    assert set(saved) == set(base) - {"lm_head.weight"}
    adapted = {
        name.removeprefix("base_model.model.") + ".weight": module
        for name, module in policy.named_modules()
        if hasattr(module, "lora_A")
    }
    assert len(adapted) == 21
    for name, value in saved.items():
        expected = base[name]
        if name in adapted:
            layer = adapted[name]
            B, A = layer.lora_B["default"].weight.detach(), layer.lora_A["default"].weight.detach()
            expected = base[name] + (B @ A) * 2.0
            assert not torch.equal(expected, base[name]), name
        assert value.dtype == torch.float32 and torch.equal(value, expected), name
    # the policy itself keeps its adapters, unmerged over its base weights
    assert not any(layer.merged for layer in adapted.values())
    assert all(torch.equal(layer.base_layer.weight, base[name]) for name, layer in adapted.items())
    exported = json.loads((output / "config.json").read_text())
    assert exported["tie_word_embeddings"] is True and "lora" not in json.dumps(exported).lower()


def test_an_adapter_only_export_leaves_a_hub_base_name_as_it_is(tmp_path):
    """Only a relative local directory is made absolute; a hub name (owner/name) is not a path."""
    policy = add_lora(load_causal_lm(str(TINY_POLICY)), LoraConfig(rank=2))
    policy.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    output = export_policy(
        policy, load_tokenizer(str(TINY_POLICY)), str(tmp_path / "adapter"), adapter_only=True
    )
    settings = json.loads((output / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (settings["r"], settings["lora_alpha"]) == (2, 32.0)


SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"


def test_an_export_keeps_the_tokenizers_chat_template_and_special_tokens(tmp_path):
    """SmolLM2's tokenizer (ChatML template, EOS ``<|im_end|>`` padding) exported beside the tiny policy
    loads with the same template and tokens."""
    if not (SMOLLM2 / "tokenizer.json").is_file():
        pytest.skip(f"no {SMOLLM2} (rgra export gguf-to-hf writes it)")
    tokenizer = load_tokenizer(str(SMOLLM2))
    assert tokenizer.chat_template
    output = export_policy(load_causal_lm(str(TINY_POLICY)), tokenizer, str(tmp_path / "hf"))
    exported = load_tokenizer(str(output))
    assert exported.chat_template == tokenizer.chat_template
    assert (exported.eos_token, exported.pad_token) == ("<|im_end|>", "<|im_end|>")
    messages = [{"role": "user", "content": "1+1="}]
    assert exported.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    assert tokenizer.chat_template  # the tokenizer keeps it too


def test_gguf_to_hf_writes_the_dtype_asked_for(tmp_path, monkeypatch, capsys):
    asked = []

    def convert(model_path: str, gguf_file: str, output_dir: str, dtype: str) -> Path:
        asked.append((model_path, gguf_file, dtype))
        (Path(output_dir) / "config.json").write_text("{}")
        return Path(output_dir)

    monkeypatch.setattr("rgra_lightning.export.gguf_to_hf", convert)
    for dtype in (["--dtype", "bfloat16"], []):
        export_main(
            ["gguf-to-hf", "--model-path", "m", "--gguf-file", "m.gguf", "--output", str(tmp_path), *dtype]
        )
    assert asked == [("m", "m.gguf", "bfloat16"), ("m", "m.gguf", "float32")]
