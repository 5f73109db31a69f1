"""Sampling completions from the policy and scoring their tokens' log-probabilities.

Shapes: B prompts, G completions per prompt, N = B * G rows ordered prompt-major (the G samples of
prompt 0 first), P prompt tokens (left-padded), T completion tokens (right-padded after EOS).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import (
    Cache,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from rgra_lightning.errors import ConfigError
from rgra_lightning.llama_decode import LlamaDecoder
from rgra_lightning.parallel import gathered_for_generation, is_sharded

# Cache layers holding only keys and values, which ``DynamicCache.batch_repeat_interleave`` repeats exactly.
KEY_VALUE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled during training.

    Args:
        num_generations: G, completions per prompt (a group); >= 2 so a group has a baseline.
        temperature: softmax temperature for sampling, > 0. Log-probs are taken at this temperature too,
            from the full softmax (as TRL does): with ``top_p < 1`` or ``min_new_tokens`` they are not
            exactly those of the filtered distribution the tokens were drawn from.
        top_p: nucleus sampling mass in (0, 1]; 1.0 samples from the full distribution.
        max_new_tokens: completion length cap in tokens; generation also stops at EOS.
        min_new_tokens: EOS is suppressed before this many tokens (0: never); benchmarks set it to
            ``max_new_tokens`` so every completion has the same length.
        prompt_overflow: what to do with a prompt longer than the model's context window minus
            ``max_new_tokens``: ``truncate`` keeps its last tokens (with a warning, counted in
            ``train/truncated_prompts``) or ``error`` stops with a message naming the lengths.
    """

    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    min_new_tokens: int = 0
    prompt_overflow: Literal["truncate", "error"] = "truncate"

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"sampling.num_generations (G) must be >= 2, got {self.num_generations}")
        if self.temperature <= 0:
            raise ConfigError(f"sampling.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"sampling.min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )


@dataclass
class Rollout:
    """Prompts and sampled completions as one padded batch of N sequences ``[N, P + T]``."""

    input_ids: Tensor  # [N, P + T] prompt (left-padded) followed by completion (right-padded)
    attention_mask: Tensor  # [N, P + T] 1 on real prompt tokens and real completion tokens
    completion_mask: Tensor  # [N, T] 1 on completion tokens up to and including the first EOS
    prompt_length: int  # P
    completions: list[str]  # N decoded completions, special tokens removed
    truncated_prompts: int = 0  # prompts (of B) cut to fit the context window
    group_size: int = 1  # rows per prompt, consecutive (G after sampling); 1: no sharing assumed

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length :]

    def select(self, rows: Tensor | slice) -> Rollout:
        """The rollout restricted to some rows (a mini-batch); it keeps ``group_size`` when ``rows`` is a
        step-1 slice of whole groups."""
        indices = range(len(self.completions))[rows] if isinstance(rows, slice) else rows.tolist()
        whole_groups = (
            isinstance(rows, slice)
            and len(indices) > 0
            and indices.step == 1
            and indices.start % self.group_size == 0
            and len(indices) % self.group_size == 0
        )
        return Rollout(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.completion_mask[rows],
            self.prompt_length,
            [self.completions[i] for i in indices],
            group_size=self.group_size if whole_groups else 1,
        )


def fit_prompts_to_context(
    encoded: dict[str, Tensor], context_window: int | None, config: SamplingConfig
) -> tuple[dict[str, Tensor], int]:
    """Left-padded prompts ``[B, P]`` cut from the left so that prompt + ``max_new_tokens`` fits in
    ``context_window`` tokens (``None``: unknown, nothing is cut), and the number of prompts cut."""
    if context_window is None:
        return encoded, 0
    budget = context_window - config.max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"sampling.max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the model's "
            f"context window of {context_window} tokens"
        )
    lengths = encoded["attention_mask"].sum(dim=1)
    too_long = int((lengths > budget).sum())
    if too_long == 0:
        return encoded, 0
    if config.prompt_overflow == "error":
        raise ConfigError(
            f"{too_long} of {len(lengths)} prompts are longer than {budget} tokens (the context window of "
            f"{context_window} minus sampling.max_new_tokens={config.max_new_tokens}); the longest has "
            f"{int(lengths.max())} tokens. Shorten them or set sampling.prompt_overflow=truncate"
        )
    warnings.warn(
        f"{too_long} of {len(lengths)} prompts are longer than {budget} tokens (the context window of "
        f"{context_window} minus sampling.max_new_tokens={config.max_new_tokens}); kept their last "
        f"{budget} tokens",
        stacklevel=3,
    )
    # Left padding: the last ``budget`` columns hold the last ``budget`` tokens of every prompt.
    return {name: values[:, -budget:] for name, values in encoded.items()}, too_long


def completion_mask(completion_ids: Tensor, eos_token_id: int | list[int]) -> Tensor:
    """1 for every token up to and including the first EOS of each row, 0 after it; ``[N, T]``."""
    eos_ids = torch.as_tensor(eos_token_id, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos_ids).int()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions ``[N, L]`` that count real tokens only (0 on left padding), as for left-padded prompts."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def filter_top_p(scores: Tensor, top_p: float) -> Tensor:
    """Scores ``[N, V]`` with the tokens outside the nucleus set to -inf: the smallest set of most probable
    tokens holding at least ``top_p`` of the mass (always at least one), as ``TopPLogitsWarper`` does."""
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= 1 - top_p
    sorted_remove[:, -1] = False
    remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)
    return scores.masked_fill(remove, -float("inf"))


def next_tokens(logits: Tensor, config: SamplingConfig | None, eos_ids: Tensor, step: int) -> Tensor:
    """The token ``[N]`` chosen after next-token ``logits`` ``[N, V]`` at completion position ``step``.

    ``config`` None: greedy (argmax). Otherwise a sample, with ``generate``'s processing in its order:
    EOS suppressed while ``step < min_new_tokens``, logits divided by ``temperature``, nucleus ``top_p``.
    """
    scores = logits.float()
    if config is None:
        return scores.argmax(dim=-1)
    if step < config.min_new_tokens:
        scores = scores.index_fill(1, eos_ids, -float("inf"))
    scores = scores / config.temperature
    if config.top_p < 1:
        scores = filter_top_p(scores, config.top_p)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


def encode_prompts(model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Cache]:
    """Next-token logits ``[B, V]`` after left-padded prompts ``[B, P]``, and the cache ``model`` built."""
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids(prompt_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1], out.cache


def repeatable(cache: Cache) -> bool:
    """Whether ``DynamicCache.batch_repeat_interleave`` repeats ``cache`` exactly: key/value layers only.
    Any other state (the recurrent state of linear-attention or convolution layers, a model's own cache
    class) is not guaranteed to be repeatable."""
    return type(cache) is DynamicCache and all(type(layer) in KEY_VALUE_LAYERS for layer in cache.layers)


def prefill(
    policy: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int
) -> tuple[Tensor, Cache]:
    """Next-token logits ``[B * repeats, V]`` after left-padded prompts ``[B, P]`` and the cache the model
    built for them, both with each prompt's row repeated ``repeats`` times (prompt-major).

    The B prompts are encoded once and their cache repeated when it is ``repeatable``; otherwise the cache
    is rebuilt from the repeated prompts, as ``generate`` does.
    """
    logits, cache = encode_prompts(policy, prompt_ids, prompt_mask)
    if repeats == 1:
        return logits, cache
    if repeatable(cache):
        cache.batch_repeat_interleave(repeats)
        return logits.repeat_interleave(repeats, dim=0), cache
    repeated_ids, repeated_mask = (x.repeat_interleave(repeats, dim=0) for x in (prompt_ids, prompt_mask))
    return encode_prompts(policy, repeated_ids, repeated_mask)


def decode(
    policy: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    repeats: int,
    config: SamplingConfig,
    greedy: bool,
    eos_ids: Tensor,
    pad_id: int,
) -> Tensor:
    """Completion tokens ``[B * repeats, T]`` (``T <= max_new_tokens``) for left-padded prompts ``[B, P]``.

    After the prompts' ``prefill``, each step feeds the previous token through a ``LlamaDecoder`` where it
    supports the policy (the same logits in a third of the time on the tiny policy), else through the
    policy's forward with the cache: other architectures, ``peft`` adapters, FSDP2-sharded policies (whose
    forward hooks gather the parameters). A row that has produced an EOS gets ``pad_id`` from then on, and
    decoding stops once every row has one.
    """
    logits, cache = prefill(policy, prompt_ids, prompt_mask, repeats)
    rows, prompt_length = logits.shape[0], prompt_ids.shape[1]
    # Generated tokens are all attended to, as in ``generate``: a row's tokens after its EOS are ignored.
    attention_mask = torch.ones(
        rows, prompt_length + config.max_new_tokens, dtype=prompt_mask.dtype, device=prompt_mask.device
    )
    attention_mask[:, :prompt_length] = prompt_mask.repeat_interleave(repeats, dim=0)
    positions = prompt_mask.sum(dim=1, keepdim=True).repeat_interleave(repeats, dim=0)  # [N, 1]
    decoder = None
    if not is_sharded(policy) and LlamaDecoder.supports(policy, cache):
        padded = not bool(prompt_mask.all())
        decoder = LlamaDecoder(
            policy, cache, positions, attention_mask if padded else None, config.max_new_tokens
        )
    finished = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    tokens = []
    for step in range(config.max_new_tokens):
        token = next_tokens(logits, None if greedy else config, eos_ids, step).masked_fill(finished, pad_id)
        tokens.append(token)
        finished |= torch.isin(token, eos_ids)
        if step + 1 == config.max_new_tokens or bool(finished.all()):
            break
        if decoder is not None:
            logits = decoder.step(token, step)
        else:
            logits = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask[:, : prompt_length + step + 1],
                position_ids=positions + step,
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
    return torch.stack(tokens, dim=1)


def sample_rollout(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    config: SamplingConfig,
    greedy: bool = False,
) -> Rollout:
    """Sample ``config.num_generations`` completions for each prompt (one when ``greedy``).

    Sampling runs in eval mode without autograd; the returned tensors are built after it, as ordinary
    tensors that the update's forward pass may save for backward.
    """
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(policy.device)
    context_window = getattr(policy.config, "max_position_embeddings", None)
    encoded, truncated = fit_prompts_to_context(dict(encoded), context_window, config)
    prompt_ids, prompt_mask = encoded["input_ids"], encoded["attention_mask"]
    repeats = 1 if greedy else config.num_generations
    eos_ids = torch.as_tensor(tokenizer.eos_token_id, device=prompt_ids.device).reshape(-1)
    was_training = policy.training
    policy.eval()
    # Inference mode skips autograd's bookkeeping, a tenth of each decoding step here; FSDP2 would unshard
    # parameters into inference tensors that it later updates in place, so a sharded policy uses no_grad.
    inference = torch.inference_mode(not is_sharded(policy))
    with gathered_for_generation(policy), torch.no_grad(), inference:
        completion_ids = decode(
            policy, prompt_ids, prompt_mask, repeats, config, greedy, eos_ids, tokenizer.pad_token_id
        )
    policy.train(was_training)

    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
    return Rollout(
        input_ids=torch.cat([prompt_ids.repeat_interleave(repeats, dim=0), completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        completion_mask=mask,
        prompt_length=prompt_ids.shape[1],
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        truncated_prompts=truncated,
        group_size=repeats,
    )


def completion_logits(model: PreTrainedModel, rollout: Rollout) -> Tensor:
    """The logits ``[N, T, V]`` that predict the completion tokens (those at positions P-1 .. P+T-2).

    Rows that share a prompt (``rollout.group_size`` G > 1) have it encoded once: its keys and values are
    repeated G times and the completions run on them, so the prompt costs a G-th of its compute and
    memory in the forward and backward passes (equal to one pass over prompt + completion up to
    rounding). Otherwise, and for models whose every forward has a cost of its own (FSDP2-sharded ones
    gather all parameters again) or which drop caches (gradient checkpointing), one pass over prompt +
    completion. Position ids count real tokens only, as in ``decode``.
    """
    prompt_length, num_completion, group = (
        rollout.prompt_length,
        rollout.completion_mask.shape[1],
        rollout.group_size,
    )
    positions = position_ids(rollout.attention_mask)
    if group > 1 and not is_sharded(model) and not getattr(model, "is_activation_checkpointing", False):
        prompt_ids, prompt_mask = (
            x[::group, :prompt_length] for x in (rollout.input_ids, rollout.attention_mask)
        )
        first, cache = encode_prompts(model, prompt_ids, prompt_mask)
        if repeatable(cache):
            cache.batch_repeat_interleave(group)
            first = first.repeat_interleave(group, dim=0).unsqueeze(1)  # [N, 1, V]
            if num_completion == 1:
                return first
            rest = model(
                input_ids=rollout.input_ids[:, prompt_length:-1],
                attention_mask=rollout.attention_mask[:, :-1],
                position_ids=positions[:, prompt_length:-1],
                cache=cache,
                use_cache=True,
            ).logits
            return torch.cat([first, rest], dim=1)
    return model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=positions,
        logits_to_keep=num_completion + 1,  # only the logits that predict completion tokens
    ).logits[:, :-1]


def token_logprobs(
    model: PreTrainedModel, rollout: Rollout, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities ``[N, T]`` of the sampled completion tokens and the policy entropy ``[N, T]``
    (None unless ``with_entropy``: passes that only need log-probs skip its ``[N, T, V]`` temporary).

    Logits are divided by ``temperature``, so the log-probs are those of the sampling distribution before
    its nucleus filter and EOS suppression (``next_tokens``), which they do not apply. The
    entropy (nats) is computed without gradient: it is a diagnostic, not part of the loss.
    """
    # One [N, T, V] fp32 tensor is alive at a time beside ``log_probs``: the logits are released once
    # the log-softmax has them, and the entropy's product is taken in place.
    log_probs = torch.log_softmax(completion_logits(model, rollout).float() / temperature, dim=-1)
    token_logp = log_probs.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return token_logp, None
    with torch.no_grad():
        entropy = -log_probs.exp().mul_(log_probs).sum(dim=-1)
    return token_logp, entropy
