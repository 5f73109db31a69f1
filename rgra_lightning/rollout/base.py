"""The rollout stage's types: a ``Rollout`` (prompts and sampled completions as one padded batch) and the
``RolloutEngine`` interface every sampler implements, with the prompt and completion handling they share.

Shapes: B prompts, G completions per prompt, N = B * G rows ordered prompt-major (the G samples of
prompt 0 first), P prompt tokens (left-padded), T completion tokens (right-padded after EOS).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rgra_lightning.errors import ConfigError
from rgra_lightning.rollout.sampling import SamplingConfig


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


class RolloutEngine:
    """Samples completions of prompts: ``generate(prompts, sampling, greedy) -> Rollout``.

    The module ``bind``s the engine it is given (an option, possibly a default instance shared by every
    module) to its policy and tokenizer once; an engine that keeps weights of its own (a separate inference
    engine) gets ``update_weights`` after every optimizer update that changed the policy. Subclasses
    implement ``generate`` and, if they need it, ``update_weights``.
    """

    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def bind(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> RolloutEngine:
        """A copy of this engine that samples from ``policy`` with ``tokenizer``; this one is unchanged."""
        bound = copy.copy(self)
        bound.policy, bound.tokenizer = policy, tokenizer
        return bound

    def generate(self, prompts: list[str], sampling: SamplingConfig, greedy: bool = False) -> Rollout:
        """``sampling.num_generations`` completions of each prompt (one, decoded greedily, if ``greedy``)."""
        raise NotImplementedError

    def update_weights(self) -> None:
        """The bound policy's weights changed; an engine that samples from the policy itself has
        nothing to do."""


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
        stacklevel=4,
    )
    # Left padding: the last ``budget`` columns hold the last ``budget`` tokens of every prompt.
    return {name: values[:, -budget:] for name, values in encoded.items()}, too_long


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: SamplingConfig, model: PreTrainedModel
) -> tuple[Tensor, Tensor, int]:
    """Left-padded prompt ids and mask ``[B, P]`` on ``model``'s device, cut to its context window (see
    ``fit_prompts_to_context``), and the number of prompts cut."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    context_window = getattr(model.config, "max_position_embeddings", None)
    encoded, truncated = fit_prompts_to_context(dict(encoded), context_window, config)
    return encoded["input_ids"], encoded["attention_mask"], truncated


def completion_mask(completion_ids: Tensor, eos_token_id: int | list[int]) -> Tensor:
    """1 for every token up to and including the first EOS of each row, 0 after it; ``[N, T]``."""
    eos_ids = torch.as_tensor(eos_token_id, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos_ids).int()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


def assemble_rollout(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    repeats: int,
    truncated_prompts: int,
) -> Rollout:
    """The ``Rollout`` of left-padded prompts ``[B, P]`` and their completions ``[B * repeats, T]``
    (prompt-major): masks up to each completion's first EOS, decoded texts."""
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
    return Rollout(
        input_ids=torch.cat([prompt_ids.repeat_interleave(repeats, dim=0), completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        completion_mask=mask,
        prompt_length=prompt_ids.shape[1],
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        truncated_prompts=truncated_prompts,
        group_size=repeats,
    )
