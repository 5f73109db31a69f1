"""A rollout engine that samples with vLLM on a CUDA GPU, colocated with the trainer in its process.

Each training process starts its own vLLM engine (``LLM``) at the first rollout, on the GPU it trains on, with
a share of that GPU's memory of its own (``gpu_memory_utilization``). Between rollouts the engine sleeps
(``sleep_level``) when the trainer needs the memory (``release``: after a training rollout, at the end of an
evaluation loop): its key/value cache, and at level 2 its weights, are released. Before a rollout it wakes up
and, when its weights may differ from the policy's (always after a level-2 sleep; after ``update_weights``
otherwise), the policy's weights are streamed into it one tensor at a time, in vLLM's dtype: gathered from
FSDP2 shards (``DTensor.full_tensor``) and, for a LoRA policy, merged (W + scaling * B A, computed without
touching the policy), under vLLM's parameter names.

Four things that vLLM in the training process would change or inherit are kept apart: the trainer's random
generators (saved before vLLM starts and put back, ``random_state_kept``), ``LOCAL_RANK`` (the policy's GPU
only while vLLM starts, ``local_rank_set``), torch's CPU thread count (which vLLM's worker sets to one) and
autocast (off while vLLM starts, takes weights and generates). The process-wide changes vLLM makes that remain
are listed in docs/rollout-engines.md.

Prompts go in as the token ids ``HFEngine`` feeds the policy (``tokenize_prompts``: same special tokens,
same context-window cut), the sampling options map one to one onto ``SamplingParams`` (``sampling_kwargs``)
with a seed per prompt drawn from torch's generator, and the completions come back as a ``Rollout`` with
the sampler's log-prob of every token (``Rollout.sampler_logprobs``), for the importance-sampling
correction of ``LossConfig.sampler_correction_cap``.

vLLM is imported inside the engine only (``_load_vllm``): without CUDA or without vllm, choosing the engine
is a one-line ``ConfigError`` when it is bound. This path is verified only where a GPU has run it; see
docs/rollout-engines.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rgra_lightning.checkpointing import rng_states, set_rng_states
from rgra_lightning.errors import ConfigError
from rgra_lightning.rollout.base import Rollout, RolloutEngine, Stops, assemble_rollout, tokenize_prompts
from rgra_lightning.rollout.sampling import SamplingConfig

# The releases whose in-process layout the engine reaches into (``_vllm_model``) and whose effects on the
# process it undoes, as read in vLLM 0.34's source.
MIN_VLLM_VERSION, BELOW_VLLM_VERSION = "0.34", "0.35"
NEEDS = (
    f"model.rollout VLLMEngine needs a CUDA GPU and vllm>={MIN_VLLM_VERSION},<{BELOW_VLLM_VERSION} "
    "(pip install -e '.[vllm]')"
)
SEED_RANGE = 2**31 - 1  # vLLM's per-request seeds; child k of a request with seed s samples with s + k
# vLLM's SamplingParams refuses a temperature above 2 and raises one below 0.01 to 0.01 (vLLM 0.34,
# sampling_params.py), which would sample from another distribution than the loss's log-probs assume.
TEMPERATURE_RANGE = (0.01, 2.0)
# Default ``vllm.LLM`` arguments that ``engine_kwargs`` may override. vLLM's memory profiling at start-up
# runs a batch of ``max_num_batched_tokens`` (16,384 by default on large GPUs), which can leave too little
# of a small ``gpu_memory_utilization`` for the KV cache; TRL's colocate mode passes 4,096 for this reason.
# Longer prompt batches are prefilled in chunks of this size.
DEFAULT_ENGINE_KWARGS = {"max_num_batched_tokens": 4096}
# ``vllm.LLM`` arguments the engine sets itself (``_start``), refused in ``engine_kwargs``: the option that
# sets it, or why it is fixed.
FIXED_ENGINE_ARGUMENTS = {
    "model": "use model.rollout.model",
    "gpu_memory_utilization": "use model.rollout.gpu_memory_utilization",
    "enable_sleep_mode": "use model.rollout.sleep_level",
    "dtype": "use model.rollout.dtype",
    "enforce_eager": "use model.rollout.enforce_eager",
    "seed": "each request carries its own seed, drawn from torch's generator",
    "distributed_executor_backend": "the engine runs in the training process (external_launcher)",
    "tensor_parallel_size": "one engine per training process",
    "logprobs_mode": "the sampler correction needs the log-probs of the distribution sampled from",
    "skip_tokenizer_init": "token ids go in and out; a tokenizer is loaded for stop strings only",
}


def _load_vllm() -> Any:
    """The ``vllm`` module, or a one-line ``ConfigError`` saying what is missing (tests replace this
    function to run the engine against a stand-in)."""
    if not torch.cuda.is_available():
        raise ConfigError(f"{NEEDS}: this machine has no CUDA device; use the default HFEngine")
    try:
        import vllm
    except ImportError as error:
        raise ConfigError(f"{NEEDS}: vllm is not installed") from error
    from packaging.version import Version

    release = Version(vllm.__version__).release
    if not Version(MIN_VLLM_VERSION).release <= release < Version(BELOW_VLLM_VERSION).release:
        raise ConfigError(f"{NEEDS}: vllm {vllm.__version__} is installed")
    return vllm


def check_engine_kwargs(vllm: Any, engine_kwargs: dict[str, Any]) -> None:
    """A one-line ``ConfigError`` for a key of ``engine_kwargs`` that ``vllm.LLM`` does not take (neither
    its own parameter nor an ``EngineArgs`` field, which it passes its other keywords to), so that a typo
    stops the run when the engine is bound rather than at the first rollout, in vLLM's traceback."""
    parameters = inspect.signature(vllm.LLM).parameters.values()
    known = {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    known |= {field.name for field in dataclasses.fields(vllm.EngineArgs)}
    for key in engine_kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model.rollout.engine_kwargs: vllm.LLM takes no argument {key!r}{hint}")


# ----------------------------------------------------------------------------------- weights


def vllm_name(name: str) -> str:
    """The name vLLM's ``load_weights`` knows a parameter of the HF policy by: its name in the model's
    checkpoint, without peft's ``base_model.model.`` prefix and ``.base_layer`` level (and torch's
    ``_checkpoint_wrapped_module.``)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer", "").replace("_checkpoint_wrapped_module.", "")


def _is_adapter_parameter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def _full(tensor: Tensor) -> Tensor:
    """The whole tensor of an FSDP2 shard (an all-gather every rank joins), or ``tensor`` itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _lora_layers(policy: nn.Module) -> dict[str, nn.Module]:
    """peft's LoRA-wrapped layers of ``policy`` by module name (they hold ``base_layer`` and the adapters)."""
    needed = ("base_layer", "get_delta_weight", "scaling")
    return {
        name: module
        for name, module in policy.named_modules()
        if all(hasattr(module, attribute) for attribute in needed)
    }


def merged_weight(layer: nn.Module, weight: Tensor) -> Tensor:
    """``weight`` (the base layer's, whole) plus the update of each active adapter of the peft LoRA
    ``layer``, W + scaling * B A (peft's ``get_delta_weight``: scaling alpha / r, or alpha / sqrt(r)
    rank-stabilised), in float32; the layer is not changed.
    Unchanged when the adapters are off or already merged into the base weight."""
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return weight
    merged = weight.float()
    for adapter in layer.active_adapters:
        if adapter not in layer.scaling:
            continue
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise ConfigError("VLLMEngine cannot push DoRA adapters (use_dora): use plain LoRA")
        merged = merged + _full(layer.get_delta_weight(adapter)).float()
    return merged


@torch.no_grad()
def vllm_weights(policy: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """``(vLLM name, whole tensor)`` for every parameter of the HF ``policy``, one at a time (only one
    gathered or merged tensor is alive per step), in ``dtype`` (None: the parameter's own): LoRA adapters
    are merged into their base weights in float32, then cast, and not sent themselves; other parameters
    are cast before they are gathered, so a float32 shard going to a bfloat16 engine gathers half the
    bytes; tied parameters are sent once (``named_parameters`` de-duplicates them)."""
    layers = _lora_layers(policy)
    for name, parameter in policy.named_parameters():
        if _is_adapter_parameter(name):
            continue
        module_name, _, leaf = name.rpartition(".")
        layer = layers.get(module_name.removesuffix(".base_layer"))
        if layer is not None and module_name.endswith(".base_layer") and leaf == "weight":
            tensor = merged_weight(layer, _full(parameter.detach())).to(dtype)
        else:
            tensor = _full(parameter.detach().to(dtype))
        yield vllm_name(name), tensor


def check_pushable(policy: nn.Module) -> None:
    """A ``ConfigError`` for a peft policy whose trained weights are not all LoRA adapters of base layers
    (``modules_to_save`` copies, trainable tokens): their names are not vLLM's, and merging does not apply."""
    try:
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # peft is optional; without it no policy has such layers
        return
    for name, module in policy.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            raise ConfigError(
                f"VLLMEngine cannot push peft's {type(module).__name__} ({name}: modules_to_save or "
                "trainable tokens): train LoRA adapters only, or sample with HFEngine"
            )


def _vllm_model(llm: Any) -> nn.Module:
    """The model inside an in-process vLLM engine (``distributed_executor_backend="external_launcher"``
    keeps the worker in this process), whose ``load_weights`` takes ``(name, tensor)`` pairs."""
    try:
        worker = llm.llm_engine.model_executor.driver_worker
        worker = getattr(worker, "worker", worker)  # a WorkerWrapperBase holds the worker
        return worker.model_runner.model
    except AttributeError as error:
        raise RuntimeError(
            "VLLMEngine cannot reach vLLM's model in this process (llm.llm_engine.model_executor."
            f"driver_worker.model_runner.model): {error}. This vllm release lays out its engine otherwise"
        ) from error


def push_weights(llm: Any, policy: nn.Module) -> None:
    """The ``policy``'s weights into the engine ``llm``, in one ``load_weights`` call that streams them
    (``vllm_weights`` is a generator that vLLM's loader reads one tensor at a time, so memory stays bounded
    by one whole tensor, FSDP2 gathers included): one call, because each call builds vLLM's weight loader
    again and looks for tied parameters (vLLM 0.34). Each tensor comes in vLLM's own dtype: vLLM warns
    for every copy that narrows one (``AutoWeightsLoader._load_param``), about 290 lines per push for a
    float32 Qwen2.5-0.5B going into bfloat16."""
    dtype = llm.llm_engine.model_config.dtype
    model = _vllm_model(llm)
    loaded = model.load_weights(vllm_weights(policy, dtype))
    if loaded is None:  # a model class that does not say what it loaded
        return
    # Every parameter must be set: after a level-2 sleep one left out holds garbage, and samples with it.
    missing = sorted({name for name, _ in model.named_parameters()} - set(loaded))
    if missing:
        raise ConfigError(
            f"VLLMEngine: the policy's weights left {len(missing)} of vLLM's parameters unset "
            f"({', '.join(missing[:3])}{', ...' * (len(missing) > 3)}): vLLM's model (model.rollout.model, "
            "default the policy's name_or_path) must be the policy's architecture, unquantized, without "
            "enable_lora"
        )


# ---------------------------------------------------------------------------------- sampling


def sampling_kwargs(
    config: SamplingConfig, greedy: bool, stop_ids: Iterable[int], stop_strings: Iterable[str] = ()
) -> dict[str, Any]:
    """``SamplingParams`` arguments that sample as ``HFEngine`` does: ``n`` = G completions, the same
    temperature, top-k (0, off, is vLLM's -1), top-p, min-p, maximum and minimum new tokens, every stop
    id and the ``stop_strings``, the sampled token's log-prob (``logprobs=0``); token ids out, no text
    (``detokenize=False``) unless there are stop strings, which vLLM looks for in its text.
    ``greedy``: one completion at temperature 0, min_new_tokens not applied (as ``HFEngine``)."""
    stop_strings = list(stop_strings)
    common = {
        "max_tokens": config.max_new_tokens,
        "stop_token_ids": list(stop_ids),
        "detokenize": bool(stop_strings),
        **({"stop": stop_strings} if stop_strings else {}),
    }
    if greedy:
        return {"n": 1, "temperature": 0.0, **common}
    return {
        "n": config.num_generations,
        "temperature": config.temperature,
        "top_k": config.top_k if config.top_k > 0 else -1,
        "top_p": config.top_p,
        "min_p": config.min_p,
        "min_tokens": config.min_new_tokens,
        "logprobs": 0,
        **common,
    }


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def request_seeds(prompts: int) -> list[int]:
    """One vLLM seed per prompt, drawn from torch's default generator (so ``seed_everything`` makes
    rollouts reproducible): a ``[world size, prompts]`` draw of which this rank takes its row, so ranks
    (whose generators are seeded alike) sample differently and every rank's generator advances alike."""
    rank, world = _rank_and_world()
    return torch.randint(0, SEED_RANGE, (world, prompts))[rank].tolist()


def completion_tensors(
    outputs: list[Any], repeats: int, pad_id: int, with_logprobs: bool
) -> tuple[Tensor, list[int], Tensor | None]:
    """vLLM's ``RequestOutput``s (one per prompt, in prompt order) as completion ids ``[B * repeats, T]``
    right-padded with ``pad_id`` (T: the longest completion), the number of tokens of each, and the sampled
    tokens' log-probs ``[N, T]`` (0 on padding; None unless ``with_logprobs``), prompt-major: the
    ``repeats`` completions of each prompt in the order of their ``index``."""
    completions = []
    for output in outputs:
        children = sorted(output.outputs, key=lambda child: child.index)
        if len(children) != repeats:
            raise RuntimeError(f"vLLM returned {len(children)} completions of a prompt, not {repeats}")
        completions.extend(children)
    width = max(1, max(len(child.token_ids) for child in completions))
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(completions), width) if with_logprobs else None
    for row, child in enumerate(completions):
        tokens = list(child.token_ids)
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if logprobs is not None:
            # One {token id: Logprob} per position, holding at least the sampled token (logprobs=0)
            values = [step[token].logprob for step, token in zip(child.logprobs, tokens, strict=True)]
            logprobs[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return ids, [len(child.token_ids) for child in completions], logprobs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------- the trainer's state around vLLM


@contextmanager
def random_state_kept() -> Iterator[None]:
    """Python's, numpy's, torch's CPU and every CUDA random generator put back as they were when the block
    ends. vLLM's GPU worker seeds all of them with the engine's seed (the rank) as it starts
    (``set_random_seed``, vLLM 0.34). Without this, from then on runs with different seeds would draw
    alike (the sampling seeds of later rollouts too), and a resumed run unlike the uninterrupted one."""
    states = rng_states()  # what checkpoints save for an exact resume
    try:
        yield
    finally:
        set_rng_states(states)


@contextmanager
def local_rank_set(index: int) -> Iterator[None]:
    """``LOCAL_RANK`` = ``index`` inside the block, then as it was (unset if it was). vLLM takes its GPU
    from it (``cuda:LOCAL_RANK``), and a launcher's value need not be the policy's device index (one
    visible GPU per task: LOCAL_RANK=3 on ``cuda:0``); Lightning reads it too, so it is put back."""
    previous = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = str(index)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = previous


# ------------------------------------------------------------------------------------ engine


class VLLMEngine(RolloutEngine):
    """Samples with a vLLM engine colocated in the training process (CUDA and ``vllm>=0.34,<0.35``).

    Args:
        gpu_memory_utilization: the share of the GPU's memory vLLM may take for its weights, activations
            and key/value cache, in (0, 1]; the rest is the trainer's. vLLM checks at start that this much
            is free.
        sleep_level: after each training rollout and each evaluation loop the engine sleeps so that the
            update gets its memory back: 1 moves its weights to CPU memory and frees the cache (weights
            are pushed again only after ``update_weights``), 2 frees both (weights pushed before every
            training rollout, as TRL's colocate mode does, and once per evaluation loop); null: never
            sleeps (fastest when both fit).
        dtype: vLLM's compute dtype (``auto``: the model config's; ``bfloat16`` on GPUs).
        model: the directory vLLM reads the model's config (and first weights) from; default: the
            policy's ``name_or_path`` (for a LoRA policy, its base). The policy's weights replace those
            before the first rollout.
        enforce_eager: no CUDA graphs (starts faster, decodes slower).
        engine_kwargs: more ``vllm.LLM`` arguments (``max_model_len``, ``max_num_seqs``,
            ``load_format: dummy`` to skip reading weights that are pushed anyway, ...), over
            ``DEFAULT_ENGINE_KWARGS`` (``max_num_batched_tokens: 4096``); checked against vLLM's when
            the engine is bound. Prompts are cut to fit ``max_model_len`` with ``max_new_tokens``.
    """

    returns_sampler_logprobs = True

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        sleep_level: int | None = 2,
        dtype: str = "auto",
        model: str | None = None,
        enforce_eager: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(
                f"model.rollout.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if sleep_level not in (None, 1, 2):
            raise ConfigError(f"model.rollout.sleep_level must be 1, 2 or null, got {sleep_level}")
        self.gpu_memory_utilization = gpu_memory_utilization
        self.sleep_level = sleep_level
        self.dtype = dtype
        self.model = model
        self.enforce_eager = enforce_eager
        self.engine_kwargs = dict(engine_kwargs or {})
        for key in self.engine_kwargs:
            if key in FIXED_ENGINE_ARGUMENTS:
                why = FIXED_ENGINE_ARGUMENTS[key]
                raise ConfigError(f"model.rollout.engine_kwargs.{key}: VLLMEngine sets it itself ({why})")
        self._llm: Any = None  # started by the first rollout of a bound copy
        self._stale = True  # the engine's weights may differ from the policy's
        self._asleep = False
        self._detokenizes = False  # whether the started engine has a tokenizer, for stop strings

    def bind(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> VLLMEngine:
        """A bound copy (see ``RolloutEngine.bind``); a ``ConfigError`` without CUDA or vllm."""
        check_engine_kwargs(_load_vllm(), self.engine_kwargs)
        check_pushable(policy)
        bound = super().bind(policy, tokenizer)
        bound._llm, bound._stale, bound._asleep, bound._detokenizes = None, True, False, False
        return bound

    def check_sampling(self, sampling: SamplingConfig, field: str = "model.sampling") -> None:
        """A ``ConfigError`` for a temperature vLLM cannot sample at exactly (``TEMPERATURE_RANGE``), and
        for min-p together with top-p, which vLLM applies in another order than ``HFEngine``."""
        # top-k and min-p keep the same tokens in either order (neither drops the most probable one, which
        # min-p's cut is relative to); top-p and min-p do not.
        if sampling.min_p > 0 and sampling.top_p < 1:
            raise ConfigError(
                f"{field}: min_p={sampling.min_p} with top_p={sampling.top_p}: vLLM applies min_p before "
                "top_p, HFEngine (as transformers' generate) after it, so the two would sample different "
                "distributions: with VLLMEngine set min_p or top_p, not both"
            )
        low, high = TEMPERATURE_RANGE
        if not low <= sampling.temperature <= high:
            raise ConfigError(
                f"{field}.temperature={sampling.temperature} is outside [{low}, {high}], the range in "
                "which vLLM samples at the temperature it is given: use a temperature in it, or HFEngine"
            )

    def update_weights(self) -> None:
        """The policy changed: its weights are pushed when the engine next wakes up for a rollout (once per
        rollout however many updates came before it)."""
        self._stale = True

    def generate(self, prompts: list[str], sampling: SamplingConfig, greedy: bool = False) -> Rollout:
        """``sampling.num_generations`` completions of each prompt (one greedy completion if ``greedy``),
        with the sampler's log-probs unless ``greedy``."""
        policy, tokenizer = self.policy, self.tokenizer
        # vLLM refuses a prompt longer than its max_model_len and ends a completion there: cut to it too.
        max_length = self.engine_kwargs.get("max_model_len")
        prompt_ids, prompt_mask, truncated = tokenize_prompts(
            tokenizer, prompts, sampling, policy, max_length
        )
        real = prompt_mask.bool().cpu()
        rows = [ids[keep].tolist() for ids, keep in zip(prompt_ids.cpu(), real, strict=True)]
        repeats = 1 if greedy else sampling.num_generations
        vllm = _load_vllm()
        if not greedy:
            self.check_sampling(sampling)
        stops = Stops.of(self.stop_ids, sampling, greedy)
        # A greedy request needs no seed, but without one vLLM draws one from numpy's generator (ours).
        seeds = [0] * len(rows) if greedy else request_seeds(len(rows))
        # Rollouts run inside training_step, under Lightning's autocast with bf16-mixed: vLLM must start
        # (compile, capture CUDA graphs) and generate in its own dtypes, and a LoRA merge stay float32.
        with torch.autocast(policy.device.type, enabled=False):
            llm = self._ready(with_tokenizer=bool(stops.strings))
            # Without a tokenizer vLLM cannot see stop strings: it decodes on, and the rollout ends there.
            kwargs = sampling_kwargs(
                sampling, greedy, self.stop_ids, stops.strings if self._detokenizes else ()
            )
            params = [vllm.SamplingParams(**kwargs, seed=seed) for seed in seeds]
            outputs = llm.generate([{"prompt_token_ids": row} for row in rows], params, use_tqdm=False)
        completion_ids, lengths, logprobs = completion_tensors(
            outputs, repeats, tokenizer.pad_token_id, not greedy
        )
        device = prompt_ids.device
        rollout = assemble_rollout(
            tokenizer, prompt_ids, prompt_mask, completion_ids.to(device), repeats, truncated, stops, lengths
        )
        if logprobs is not None:
            rollout.sampler_logprobs = logprobs.to(device) * rollout.completion_mask
        return rollout

    # ------------------------------------------------------------------ engine life cycle

    def _ready(self, with_tokenizer: bool = False) -> Any:
        """The engine, started or woken up, holding the policy's current weights and an empty cache:
        wake up the weights, push the policy's (when stale), reset the prefix cache, wake up the cache.
        ``with_tokenizer``: an engine started now loads its tokenizer, to look for stop strings."""
        if self._llm is None:
            self._llm = self._start(with_tokenizer)
            self._detokenizes = with_tokenizer
        llm = self._llm
        if self._asleep:
            # vLLM's sleep-mode allocator takes its memory from CUDA, not from the blocks torch's allocator
            # keeps cached after the update: give those back first (as TRL does, against out-of-memory).
            torch.cuda.empty_cache()
            llm.wake_up(tags=["weights"])
        if self._stale:
            push_weights(llm, self.policy)
            llm.reset_prefix_cache()  # cached prompt keys/values came from the old weights
            self._stale = False
        if self._asleep:
            llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        return llm

    def release(self) -> None:
        """Sleep at ``sleep_level`` (if set and awake), so that the trainer gets the memory back; the next
        rollout wakes the engine."""
        if self.sleep_level is None or self._llm is None or self._asleep:
            return
        self._llm.sleep(level=self.sleep_level)
        self._asleep = True
        if self.sleep_level == 2:  # the weights are gone: push them again before the next rollout
            self._stale = True

    def _start(self, with_tokenizer: bool = False) -> Any:
        """``vllm.LLM`` in this process, on this rank's GPU, as TRL's colocate mode starts it: the external
        launcher (one engine per training process, the worker in-process), the environment it reads for
        its rank, the log-probs after temperature and the sampling filters (the distribution the tokens were
        drawn from), and sleep mode when ``sleep_level`` is set. The trainer's random generators and
        ``LOCAL_RANK`` are as before once it has started (``random_state_kept``, ``local_rank_set``), and
        so is torch's CPU thread count. Token ids go in and out: vLLM loads the model's tokenizer only
        ``with_tokenizer``, to find stop strings in its text (the rollout's text is the trainer's
        tokenizer's)."""
        vllm = _load_vllm()
        rank, world = _rank_and_world()
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        device = self.policy.device  # the GPU this process trains on
        local_rank = (device.index or 0) if device.type == "cuda" else rank
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        arguments = {
            "model": self.model or self.policy.name_or_path,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_sleep_mode": self.sleep_level is not None,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "seed": rank,  # every request carries its own seed; this one is a fallback
            "distributed_executor_backend": "external_launcher",
            "tensor_parallel_size": 1,
            "logprobs_mode": "processed_logprobs",
            "skip_tokenizer_init": not with_tokenizer,
            **DEFAULT_ENGINE_KWARGS,
            **self.engine_kwargs,
        }
        threads = torch.get_num_threads()  # vLLM 0.34's worker sets one for the whole process
        torch.cuda.empty_cache()  # vLLM checks at start that its share of the GPU is free
        with random_state_kept(), local_rank_set(local_rank):
            llm = vllm.LLM(**arguments)
        torch.set_num_threads(threads)
        return llm
