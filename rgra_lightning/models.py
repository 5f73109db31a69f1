"""Loading causal language models and tokenizers: the one place every entry point gets them from.

A model is named by a local Hugging Face directory, a hub name (only when online), or a directory plus
a GGUF file inside it. Failures become one message that says what was tried and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rgra_lightning.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ConfigError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


def _load_kwargs(name_or_path: str, gguf_file: str | None) -> dict:
    """Check that a local model exists before transformers tries the hub, and build shared kwargs."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise ModelLoadError(
            f"model directory {str(path)!r} does not exist. Give the path to a local Hugging Face model "
            "directory (config.json + weights + tokenizer files)."
        )
    if gguf_file is not None and looks_local and not (path / gguf_file).is_file():
        raise ModelLoadError(f"GGUF file {gguf_file!r} not found in {str(path)!r}")
    return {"gguf_file": gguf_file} if gguf_file else {}


def _explain(name_or_path: str, what: str, error: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(error).lower()
    hint = (
        " The Hugging Face hub is not reachable (offline): download the model elsewhere and pass its local "
        "directory instead of a hub name."
        if offline or not Path(name_or_path).exists()
        else ""
    )
    reason = " ".join(str(error).split())  # one line, whatever transformers printed
    return ModelLoadError(f"could not load {what} from {name_or_path!r}: {reason}{hint}")


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer, with left padding for generation and a pad token (EOS when the model has none)."""
    kwargs = _load_kwargs(name_or_path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise _explain(name_or_path, "tokenizer", error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(
    name_or_path: str, gguf_file: str | None = None, dtype: str = "float32"
) -> PreTrainedModel:
    """A causal LM in ``dtype`` (``float32``, ``bfloat16`` or ``float16``), on the CPU, in train mode."""
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {list(DTYPES)}")
    kwargs = _load_kwargs(name_or_path, gguf_file)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as error:
        raise _explain(name_or_path, "model", error) from error
    model.train()
    return model


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Put ``model`` in eval mode with every parameter frozen (a reference model)."""
    model.eval()
    model.requires_grad_(False)
    return model
