"""Encoding left-padded prompts once and sharing their key/value cache across the completions of each.

Both the rollout engine (decoding G completions per prompt) and the training log-probs (one forward over
the completions of a micro-batch) encode each distinct prompt once and repeat its cache for every row that
has it. Position ids count real tokens only, so left padding does not shift positions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from rgra_lightning.versions import CACHE

# Cache layers holding only keys and values, which ``DynamicCache.batch_repeat_interleave`` and
# ``batch_select_indices`` repeat exactly.
KEY_VALUE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions ``[N, L]`` that count real tokens only (0 on left padding), as for left-padded prompts."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def last_positions(count: int, length: int, device: torch.device) -> Tensor:
    """A ``logits_to_keep`` for the last ``count`` of ``length`` positions, as their indices ``[count]``.

    The model then gathers those positions' hidden states into a contiguous ``[N, count, H]``; an int
    keeps a strided slice of them, which ``torch.matmul`` does not fold into one matrix multiply when the
    head's weight needs no gradient (a LoRA policy's, a frozen reference's or reward model's), and on the
    CPU in bfloat16 the batched multiply it runs instead copies the whole head weight for every row: 2.4 s
    of a 2.6 s prompt prefill of a Qwen2.5-0.5B LoRA policy (151,936 x 896 head, 2 prompts)."""
    return torch.arange(length - count, length, device=device)


def distinct_prompts(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The distinct rows of left-padded prompts ``[N, P]`` (ids ``[U, P]`` and mask ``[U, P]``) and each
    row's index among them ``[N]``, or None when no two rows hold the same prompt. Rows are compared by
    ids and mask both, so a padding id that is also a real token cannot merge two prompts."""
    length = prompt_ids.shape[1]
    unique, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
    if len(unique) == len(prompt_ids):
        return None
    return unique[:, :length], unique[:, length:], inverse


def encode_prompts(model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Cache]:
    """Next-token logits ``[B, V]`` after left-padded prompts ``[B, P]``, and the cache ``model`` built."""
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids(prompt_mask),
        use_cache=True,
        logits_to_keep=last_positions(1, prompt_ids.shape[1], prompt_ids.device),
    )
    return out.logits[:, -1], getattr(out, CACHE)


def repeatable(cache: Cache) -> bool:
    """Whether ``DynamicCache.batch_repeat_interleave`` (and ``batch_select_indices``) repeat ``cache``
    exactly: key/value layers only.
    Any other state (the recurrent state of linear-attention or convolution layers, a model's own cache
    class) is not guaranteed to be repeatable."""
    return type(cache) is DynamicCache and all(type(layer) in KEY_VALUE_LAYERS for layer in cache.layers)


def prefill(
    model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int
) -> tuple[Tensor, Cache]:
    """Next-token logits ``[B * repeats, V]`` after left-padded prompts ``[B, P]`` and the cache the model
    built for them, both with each prompt's row repeated ``repeats`` times (prompt-major).

    The B prompts are encoded once and their cache repeated when it is ``repeatable``; otherwise the cache
    is rebuilt from the repeated prompts, as ``generate`` does.
    """
    return repeat_encoded(
        model, *encode_prompts(model, prompt_ids, prompt_mask), prompt_ids, prompt_mask, repeats
    )


def repeat_encoded(
    model: PreTrainedModel,
    logits: Tensor,
    cache: Cache,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    repeats: int,
) -> tuple[Tensor, Cache]:
    """``prefill`` of prompts already encoded: ``encode_prompts``'s ``logits`` ``[B, V]`` and ``cache``."""
    if repeats == 1:
        return logits, cache
    if repeatable(cache):
        cache.batch_repeat_interleave(repeats)
        return logits.repeat_interleave(repeats, dim=0), cache
    repeated_ids, repeated_mask = (x.repeat_interleave(repeats, dim=0) for x in (prompt_ids, prompt_mask))
    return encode_prompts(model, repeated_ids, repeated_mask)
