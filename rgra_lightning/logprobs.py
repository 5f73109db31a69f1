"""Per-token log-probabilities of sampled completions under a model: the policy (with gradient), the
reference and pi_old (without).

Shapes: N completions, T completion tokens, V vocabulary entries; see ``rollout.base`` for the layout.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from rgra_lightning.distributed import is_sharded
from rgra_lightning.prompt_cache import encode_prompts, position_ids, repeatable
from rgra_lightning.rollout import Rollout


def row_slices(rows: slice, size: int | None) -> list[slice]:
    """``rows`` (a step-1 slice) cut into consecutive slices of at most ``size`` rows (None: one slice)."""
    size = size or rows.stop - rows.start
    return [slice(first, min(first + size, rows.stop)) for first in range(rows.start, rows.stop, size)]


def completion_logits(model: PreTrainedModel, rollout: Rollout) -> Tensor:
    """The logits ``[N, T, V]`` that predict the completion tokens (those at positions P-1 .. P+T-2).

    Rows that share a prompt (``rollout.group_size`` G > 1) have it encoded once: its keys and values are
    repeated G times and the completions run on them, so the prompt costs a G-th of its compute and
    memory in the forward and backward passes (equal to one pass over prompt + completion up to
    rounding). Otherwise, and for models whose every forward has a cost of its own (FSDP2-sharded ones
    gather all parameters again) or which drop caches (gradient checkpointing), one pass over prompt +
    completion. Position ids count real tokens only, as in decoding.
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

    Logits are divided by ``temperature``, so the log-probs are those of the full tempered softmax, not of
    the distribution after the sampler's nucleus filter and EOS suppression. The entropy (nats) is computed
    without gradient: it is a diagnostic, not part of the loss.
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


@torch.no_grad()
def logprobs_without_grad(
    model: PreTrainedModel, rollout: Rollout, temperature: float, micro_batch_size: int | None
) -> Tensor:
    """Token log-probs ``[N, T]`` of ``model`` (the reference, or pi_old), one micro-batch of at most
    ``micro_batch_size`` rows per forward pass."""
    parts = row_slices(slice(0, len(rollout.completions)), micro_batch_size)
    return torch.cat(
        [token_logprobs(model, rollout.select(part), temperature, with_entropy=False)[0] for part in parts]
    )
