"""Sampling options and the choice of the next token from a row of logits: greedy, or a sample after EOS
suppression, temperature, top-k, top-p and min-p, in ``generate``'s order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rgra_lightning.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled during training.

    Args:
        num_generations: G, completions per prompt (a group); >= 2 so a group has a baseline.
        temperature: softmax temperature for sampling, > 0. Log-probs are taken at this temperature too,
            from the full softmax (as TRL does): with ``top_k``, ``top_p < 1``, ``min_p`` or
            ``min_new_tokens`` they are not exactly those of the filtered distribution the tokens were drawn
            from.
        top_k: sample among the ``top_k`` most probable tokens only (ties at the k-th score kept); 0: off.
        top_p: nucleus sampling mass in (0, 1]; 1.0 samples from the full distribution.
        min_p: drop the tokens less probable than ``min_p`` times the most probable one, in [0, 1]; 0: off.
            The filters apply in ``generate``'s order: temperature, top-k, top-p (on what top-k kept),
            min-p (on the temperature-scaled probabilities that are left).
        max_new_tokens: completion length cap in tokens; a completion also ends at its first stop token
            (any EOS id of the tokenizer or the model's generation config).
        min_new_tokens: the stop tokens are suppressed before this many tokens (0: never); benchmarks set it
            to ``max_new_tokens`` so every completion has the same length.
        stop_strings: texts that end a completion (as vLLM's ``stop``): the completion's tokens run to the
            token that completes the first one found, which stays in the trained tokens, and its text (what
            is scored) ends before it. None: the data module's: a plain prompt template's label before
            ``{question}`` when it ends in a colon (``Question:`` with the GSM8K and MATH-500 presets'
            template, where lm-evaluation-harness stops GSM8K), else none (chat prompts end at their EOS
            token). ``[]``: none. They are looked for after the first ``min_new_tokens`` tokens, as vLLM does.
        prompt_overflow: what to do with a prompt longer than the model's context window minus
            ``max_new_tokens``: ``truncate`` keeps its last tokens (with a warning, counted in
            ``train/truncated_prompts``) or ``error`` stops with a message naming the lengths.
    """

    num_generations: int = 8
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 16
    min_new_tokens: int = 0
    stop_strings: tuple[str, ...] | None = None
    prompt_overflow: Literal["truncate", "error"] = "truncate"

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"model.sampling.num_generations (G) must be >= 2, got {self.num_generations}")
        if self.temperature <= 0:
            raise ConfigError(f"model.sampling.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"model.sampling.top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"model.sampling.top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError(f"model.sampling.min_p must be in [0, 1] (0: off), got {self.min_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"model.sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"model.sampling.min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if self.stop_strings is not None and not all(self.stop_strings):
            raise ConfigError(
                f"model.sampling.stop_strings must not hold an empty string, got {list(self.stop_strings)}"
            )

    @property
    def filters(self) -> list[str]:
        """The options on that make the sampled distribution other than the full softmax at
        ``temperature``: ``top_k``, ``top_p``, ``min_p``, ``min_new_tokens``, in that order."""
        on = {
            "top_k": self.top_k > 0,
            "top_p": self.top_p < 1,
            "min_p": self.min_p > 0,
            "min_new_tokens": self.min_new_tokens > 0,
        }
        return [name for name, active in on.items() if active]


def filter_top_k(scores: Tensor, top_k: int) -> Tensor:
    """Scores ``[N, V]`` with every token scored below the ``top_k``-th highest set to -inf (ties at the
    k-th score are kept), as ``TopKLogitsWarper`` does; ``top_k >= V`` keeps all."""
    kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
    return scores.masked_fill(scores < kth, -float("inf"))


def filter_top_p(scores: Tensor, top_p: float) -> Tensor:
    """Scores ``[N, V]`` with the tokens outside the nucleus set to -inf: the smallest set of most probable
    tokens holding at least ``top_p`` of the mass (always at least one), as ``TopPLogitsWarper`` does."""
    sorted_scores, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= 1 - top_p
    sorted_remove[:, -1] = False
    remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)
    return scores.masked_fill(remove, -float("inf"))


def filter_min_p(scores: Tensor, min_p: float) -> Tensor:
    """Scores ``[N, V]`` with the tokens whose probability is below ``min_p`` times the row's highest set to
    -inf, as ``MinPLogitsWarper`` does; the most probable token always stays."""
    probabilities = scores.softmax(dim=-1)
    remove = probabilities < min_p * probabilities.amax(dim=-1, keepdim=True)
    return scores.masked_fill(remove, -float("inf"))


def next_tokens(logits: Tensor, config: SamplingConfig | None, eos_ids: Tensor, step: int) -> Tensor:
    """The token ``[N]`` chosen after next-token ``logits`` ``[N, V]`` at completion position ``step``.

    ``config`` None: greedy (argmax). Otherwise a sample, with ``generate``'s processing in its order:
    the stop tokens ``eos_ids`` ``[S]`` suppressed while ``step < min_new_tokens``, logits divided by
    ``temperature``, then ``top_k``, nucleus ``top_p`` and ``min_p`` filtering (each only when on).
    """
    scores = logits.float()
    if config is None:
        return scores.argmax(dim=-1)
    if step < config.min_new_tokens:
        scores = scores.index_fill(1, eos_ids, -float("inf"))
    scores = scores / config.temperature
    if config.top_k > 0:
        scores = filter_top_k(scores, config.top_k)
    if config.top_p < 1:
        scores = filter_top_p(scores, config.top_p)
    if config.min_p > 0:
        scores = filter_min_p(scores, config.min_p)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
