"""The rollout stage's types: a ``Rollout`` (prompts and sampled completions as one padded batch) and the
``RolloutEngine`` interface every sampler implements, with the prompt and completion handling they share.

Shapes: B prompts, G completions per prompt, N = B * G rows ordered prompt-major (the G samples of
prompt 0 first), P prompt tokens (left-padded), T completion tokens (right-padded after the first stop
token), S stop tokens.

A completion stops at any of the model's EOS tokens (``stop_token_ids``: the tokenizer's and every one of
the generation config's, as ``generate`` stops), and a prompt gets the tokenizer's special tokens (its BOS)
only when its text does not already hold them (``prompt_token_ids``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rgra_lightning.data.base import ChatPrompt
from rgra_lightning.errors import ConfigError
from rgra_lightning.rollout.sampling import SamplingConfig


@dataclass
class Rollout:
    """Prompts and sampled completions as one padded batch of N sequences ``[N, P + T]``."""

    input_ids: Tensor  # [N, P + T] prompt (left-padded) followed by completion (right-padded)
    attention_mask: Tensor  # [N, P + T] 1 on real prompt tokens and real completion tokens
    completion_mask: Tensor  # [N, T] 1 on completion tokens up to and including the first stop token
    prompt_length: int  # P
    completions: list[str]  # N decoded completions up to their first stop token, special tokens removed
    truncated_prompts: int = 0  # prompts (of B) cut to fit the context window
    # [N] bool: no stop token within max_new_tokens (the completion was cut, not finished); None: unknown
    truncated: Tensor | None = None
    # [N, T] the sampler's log-probs of the completion tokens (0 after each completion), from an engine with
    # weights and kernels of its own (VLLMEngine); None: the engine samples with the trained policy itself
    sampler_logprobs: Tensor | None = None

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length :]

    def select(self, rows: Tensor | slice) -> Rollout:
        """The rollout restricted to some rows (a mini-batch)."""
        indices = range(len(self.completions))[rows] if isinstance(rows, slice) else rows.tolist()
        return Rollout(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.completion_mask[rows],
            self.prompt_length,
            [self.completions[i] for i in indices],
            truncated=None if self.truncated is None else self.truncated[rows],
            sampler_logprobs=None if self.sampler_logprobs is None else self.sampler_logprobs[rows],
        )


class RolloutEngine:
    """Samples completions of prompts: ``generate(prompts, sampling, greedy) -> Rollout``.

    The module ``bind``s the engine it is given (an option, possibly a default instance shared by every
    module) to its policy and tokenizer once, which also fixes the stop tokens; an engine that keeps weights
    of its own (a separate inference engine) gets ``update_weights`` after every optimizer update that
    changed the policy, and ``release`` when the trainer needs the memory it holds. Subclasses implement
    ``generate`` and, if they need them, ``update_weights`` and ``release``; one that fills
    ``Rollout.sampler_logprobs`` sets ``returns_sampler_logprobs``.
    """

    # Whether rollouts carry the sampler's own log-probs (``Rollout.sampler_logprobs``): only then can the
    # loss correct for a sampler that differs from the trainer (``LossConfig.sampler_correction_cap``).
    returns_sampler_logprobs: bool = False
    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_ids: tuple[int, ...]  # S token ids that end a completion (``stop_token_ids``)

    def bind(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> RolloutEngine:
        """A copy of this engine that samples from ``policy`` with ``tokenizer``; this one is unchanged.

        Raises a ``ConfigError`` when an EOS id lies outside the policy's vocabulary."""
        bound = copy.copy(self)
        bound.policy, bound.tokenizer = policy, tokenizer
        bound.stop_ids = stop_token_ids(policy, tokenizer)
        return bound

    def check_sampling(self, sampling: SamplingConfig, field: str = "model.sampling") -> None:
        """Raise a ``ConfigError`` naming ``field`` when this engine cannot sample as ``sampling`` says;
        every option is honoured here. The module checks its sampling options when it is built."""

    def generate(self, prompts: list[str], sampling: SamplingConfig, greedy: bool = False) -> Rollout:
        """``sampling.num_generations`` completions of each prompt (one, decoded greedily, if ``greedy``)."""
        raise NotImplementedError

    def update_weights(self) -> None:
        """The bound policy's weights changed; an engine that samples from the policy itself has
        nothing to do."""

    def release(self) -> None:
        """The trainer needs the memory the engine holds: called after a training rollout (before the
        log-prob passes and the update) and at the end of an evaluation loop, not between its batches, so
        an engine with weights of its own pushes them once per loop. An engine that samples from the
        policy itself holds none."""


def _as_ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(i) for i in value]


def stop_token_ids(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The token ids that end a completion, in first-seen order: the tokenizer's EOS and every EOS id of
    ``policy.generation_config`` (an int or a list: Qwen2.5-Instruct has two, Llama-3.x three).

    Raises a ``ConfigError`` naming an id that is not a row of the policy's input embedding."""
    generation_config = getattr(policy, "generation_config", None)
    sources = [
        ("the tokenizer's eos_token_id", _as_ids(tokenizer.eos_token_id)),
        ("generation_config.eos_token_id", _as_ids(getattr(generation_config, "eos_token_id", None))),
    ]
    vocabulary = policy.get_input_embeddings().weight.shape[0]  # also under a peft embedding adapter
    stop_ids: dict[int, None] = {}
    for source, ids in sources:
        for token_id in ids:
            if not 0 <= token_id < vocabulary:
                raise ConfigError(
                    f"EOS id {token_id} ({source}) is outside the policy's vocabulary of {vocabulary} "
                    "tokens; use the tokenizer and generation_config.json that belong to the model"
                )
            stop_ids[token_id] = None
    return tuple(stop_ids)


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
            f"model.sampling.max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the "
            f"model's context window of {context_window} tokens"
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
        stacklevel=4,
    )
    # Left padding: the last ``budget`` columns hold the last ``budget`` tokens of every prompt.
    return {name: values[:, -budget:] for name, values in encoded.items()}, too_long


def adds_special_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str) -> bool:
    """Whether ``prompt`` is tokenized with the tokenizer's special tokens (its BOS, where it adds one): a
    plain prompt is, unless its text already starts with the BOS token; a ``ChatPrompt`` never is, since
    its template wrote what the model expects (as ``apply_chat_template(..., tokenize=True)`` encodes)."""
    if isinstance(prompt, ChatPrompt):
        return False
    bos = tokenizer.bos_token
    return not (bos and prompt.startswith(bos))


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """The token ids of each prompt, with the tokenizer's special tokens only where
    ``adds_special_tokens`` says so; no BOS is ever doubled."""
    ids: list[list[int]] = [[] for _ in prompts]
    for add in (True, False):
        rows = [i for i, prompt in enumerate(prompts) if adds_special_tokens(tokenizer, prompt) == add]
        if rows:
            encoded = tokenizer([prompts[i] for i in rows], add_special_tokens=add)["input_ids"]
            for i, row in zip(rows, encoded, strict=True):
                ids[i] = row
    return ids


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    config: SamplingConfig,
    model: PreTrainedModel,
    max_length: int | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Left-padded prompt ids and mask ``[B, P]`` on ``model``'s device (tokenized by
    ``prompt_token_ids``), cut to its context window or to ``max_length`` tokens (prompt + completion)
    where that is shorter (see ``fit_prompts_to_context``), and the number of prompts cut."""
    ids = prompt_token_ids(tokenizer, prompts)
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
    encoded = {"input_ids": input_ids.to(model.device), "attention_mask": attention_mask.to(model.device)}
    context_window = getattr(model.config, "max_position_embeddings", None)
    if max_length is not None:
        context_window = max_length if context_window is None else min(context_window, max_length)
    encoded, truncated = fit_prompts_to_context(encoded, context_window, config)
    return encoded["input_ids"], encoded["attention_mask"], truncated


class Stops(NamedTuple):
    """Where completions end: at any of the stop tokens ``token_ids``, or at the token completing any of
    the stop ``strings`` in the text decoded after the first ``skip`` tokens."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = ()
    skip: int = 0

    @classmethod
    def of(cls, token_ids: Sequence[int], sampling: SamplingConfig, greedy: bool) -> Stops:
        """The stops of a rollout with ``sampling``: ``min_new_tokens`` applies to sampling only, as it
        suppresses the stop tokens in sampling only (``next_tokens``)."""
        skip = 0 if greedy else sampling.min_new_tokens
        return cls(tuple(token_ids), tuple(sampling.stop_strings or ()), skip)


def first_stop_string(text: str, stop_strings: Sequence[str], start: int = 0) -> int | None:
    """The character offset in ``text`` of the earliest occurrence of any of ``stop_strings`` beginning at or
    after ``start``, or None."""
    found = [i for i in (text.find(stop, start) for stop in stop_strings) if i >= 0]
    return min(found) if found else None


def completion_ends(
    tokenizer: PreTrainedTokenizerBase,
    completion_ids: Tensor,
    stops: Stops,
    lengths: Sequence[int] | None = None,
) -> list[int | None]:
    """The index of each row's last token in ``completion_ids`` ``[N, T]`` (of which each row's first
    ``lengths`` were generated; None: all T): its first stop token, or the token that completes the first
    stop string in the text decoded from token ``stops.skip`` on (special tokens removed), whichever comes
    first; None for a row with neither (cut at the length limit)."""
    stop_strings, skip = stops.strings, stops.skip
    stop_ids = torch.tensor(stops.token_ids, dtype=torch.long, device=completion_ids.device)
    is_stop = torch.isin(completion_ids, stop_ids)
    if lengths is not None:
        columns = torch.arange(completion_ids.shape[1], device=completion_ids.device)
        is_stop &= columns < torch.tensor(lengths, device=completion_ids.device).unsqueeze(1)
    first, found = is_stop.int().argmax(dim=1).tolist(), is_stop.any(dim=1).tolist()
    ends: list[int | None] = [index if stopped else None for index, stopped in zip(first, found, strict=True)]
    if not stop_strings:
        return ends
    rows = completion_ids.tolist()
    if lengths is not None:
        rows = [row[:n] for row, n in zip(rows, lengths, strict=True)]
    limits = [len(row) if end is None else end for row, end in zip(rows, ends, strict=True)]

    def decode(row: list[int], stop: int) -> str:
        return tokenizer.decode(row[skip:stop], skip_special_tokens=True)

    texts = tokenizer.batch_decode(
        [row[skip:n] for row, n in zip(rows, limits, strict=True)], skip_special_tokens=True
    )
    for i, text in enumerate(texts):
        if first_stop_string(text, stop_strings) is None:
            continue
        # The fewest tokens whose text holds a stop string (a prefix's text is a prefix of the full text).
        low, high = skip + 1, limits[i]
        while low < high:
            middle = (low + high) // 2
            if first_stop_string(decode(rows[i], middle), stop_strings) is None:
                low = middle + 1
            else:
                high = middle
        ends[i] = low - 1
    return ends


def assemble_rollout(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    repeats: int,
    truncated_prompts: int,
    stops: Stops,
    lengths: Sequence[int] | None = None,
) -> Rollout:
    """The ``Rollout`` of left-padded prompts ``[B, P]`` and their completions ``[B * repeats, T]``
    (prompt-major; each row's first ``lengths`` tokens generated, None: all), each ending where
    ``completion_ends`` says (at its first stop token, or at the token completing a stop string): masks
    up to that token, pad after it, the texts decoded before the stop token or the stop string, and which
    completions have neither (``truncated``: an engine decodes until every row has ended or
    ``max_new_tokens`` tokens are generated, so a row that has not was cut at the limit)."""
    ends = completion_ends(tokenizer, completion_ids, stops, lengths)
    stop_strings, skip = stops.strings, stops.skip
    width = completion_ids.shape[1]
    generated = [width] * len(ends) if lengths is None else lengths
    kept = [n if end is None else end + 1 for n, end in zip(generated, ends, strict=True)]  # tokens per row
    columns = torch.arange(width, device=completion_ids.device)
    mask = (columns < torch.tensor(kept, device=completion_ids.device).unsqueeze(1)).long()
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    rows = completion_ids.tolist()
    stop_ids = set(stops.token_ids)
    # The text is the tokens before a stop token (not text, whether or not the tokenizer calls it special)
    # and before a stop string.
    texts = tokenizer.batch_decode(
        [
            row[: n - 1] if n and row[n - 1] in stop_ids else row[:n]
            for row, n in zip(rows, kept, strict=True)
        ],
        skip_special_tokens=True,
    )
    if stop_strings:
        starts = (
            tokenizer.batch_decode([row[:skip] for row in rows], skip_special_tokens=True) if skip else None
        )
        for i, text in enumerate(texts):
            cut = first_stop_string(text, stop_strings, len(starts[i]) if starts else 0)
            texts[i] = text if cut is None else text[:cut]
    prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
    return Rollout(
        input_ids=torch.cat([prompt_ids.repeat_interleave(repeats, dim=0), completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        completion_mask=mask,
        prompt_length=prompt_ids.shape[1],
        completions=texts,
        truncated_prompts=truncated_prompts,
        truncated=torch.tensor([end is None for end in ends], device=completion_ids.device),
    )
