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
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from rgra_lightning.errors import ConfigError
from rgra_lightning.parallel import gathered_for_generation


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled during training.

    Args:
        num_generations: G, completions per prompt (a group); >= 2 so a group has a baseline.
        temperature: softmax temperature for sampling, > 0. Log-probs are taken at this temperature too.
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


@torch.no_grad()
def sample_rollout(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    config: SamplingConfig,
    greedy: bool = False,
) -> Rollout:
    """Sample ``config.num_generations`` completions for each prompt (one when ``greedy``).

    The prompts are encoded once; ``generate`` repeats each encoding G times (``num_return_sequences``).
    """
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(policy.device)
    context_window = getattr(policy.config, "max_position_embeddings", None)
    encoded, truncated = fit_prompts_to_context(dict(encoded), context_window, config)
    generation = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else config.temperature,
        top_p=None if greedy else config.top_p,
        top_k=None,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=None if greedy else config.min_new_tokens or None,
        num_return_sequences=1 if greedy else config.num_generations,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    was_training = policy.training
    policy.eval()
    with gathered_for_generation(policy):
        sequences = policy.generate(**encoded, generation_config=generation)
    policy.train(was_training)

    prompt_length = encoded["input_ids"].shape[1]
    completion_ids = sequences[:, prompt_length:]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    repeats = generation.num_return_sequences
    prompt_mask = encoded["attention_mask"].repeat_interleave(repeats, dim=0)
    return Rollout(
        input_ids=sequences,
        attention_mask=torch.cat([prompt_mask, mask], dim=1),
        completion_mask=mask,
        prompt_length=prompt_length,
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        truncated_prompts=truncated,
    )


def token_logprobs(
    model: PreTrainedModel, rollout: Rollout, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Log-probabilities ``[N, T]`` of the sampled completion tokens and the policy entropy ``[N, T]``.

    Logits are divided by ``temperature`` so the log-probs are those of the sampling distribution. The
    entropy (nats) is computed without gradient: it is a diagnostic, not part of the loss.
    """
    # Only the logits that predict completion tokens are materialised (positions P-1 .. P+T-2).
    # Position ids count real tokens only, as ``generate`` does for left-padded prompts.
    num_completion = rollout.completion_mask.shape[1]
    position_ids = (rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_completion + 1,
    ).logits[:, :-1]
    logits = logits.float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    token_logp = log_probs.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return token_logp, entropy
