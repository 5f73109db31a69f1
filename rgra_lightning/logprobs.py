"""Per-token log-probabilities of sampled completions under a model: the policy (with gradient), the
reference and pi_old (without).

Shapes: N completions, T completion tokens, H hidden features, V vocabulary entries; see ``rollout.base``
for the layout.

Two things keep a pass small. First, padding is not computed: each micro-batch runs at the width of its
own longest completion, and prompt columns that are padding in all of its rows are dropped
(``trim_padding``). Second, the full-vocabulary logits are never held at once: for the model families in
``PLAIN_HEAD_MODEL_TYPES`` the forward pass stops before the output head, and the head, the fp32
log-softmax, the gather of the sampled token and the entropy run on chunks of the real completion tokens'
hidden states, each chunk's logits recomputed in the backward pass instead of being kept: fused in one
autograd function (``fused_head``) where the head is a plain linear layer, else each chunk checkpointed.
Other models return their logits (in their own dtype), and the fp32 part runs chunk by chunk on those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import Cache, PreTrainedModel

from rgra_lightning.distributed import is_sharded, reshard_root
from rgra_lightning.errors import ConfigError
from rgra_lightning.fused_head import head_token_logprobs
from rgra_lightning.models import is_activation_checkpointing
from rgra_lightning.prompt_cache import distinct_prompts, last_positions, position_ids, repeatable
from rgra_lightning.rollout import Rollout
from rgra_lightning.versions import CACHE

# Model types whose causal-LM forward ends with ``logits = self.lm_head(hidden_states)`` and nothing after
# it (no soft-capping or logit scaling, as Gemma 2, Cohere and Granite have): their head may be applied
# outside the forward pass.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "lfm2", "phi3", "smollm3", "olmo2"}
)
# fp32 entries of one chunk of logits (128 MiB): 220 tokens at Qwen2.5's 151,936-token vocabulary.
LOGIT_CHUNK_ELEMENTS = 1 << 25
# On CPU one token more than 2^23 entries (32 MiB): near the caches between the log-softmax's passes over
# a chunk, and each [C, V] tensor just over glibc's largest mmap threshold, so that malloc never keeps it in
# its heap, where the small tensors a chunk leaves alive would split each freed chunk's hole and the heap
# would grow by a chunk per chunk (host_memory). Smaller chunks read the head's weight more often: on
# SmolLM2-135M (768 tokens, 49,152 entries) the head, log-softmax and backward took 2.3 s at 2^23 entries,
# 2.5 s at 2^22 and 3.3 s at 2^25 (docs/scaling.md); fused (``fused_head``), 2.2 s at 2^23, 2.3 at 2^24,
# 2.5 at 2^22 and 2.6 at 2^25.
CPU_LOGIT_CHUNK_ELEMENTS = 1 << 23

MicroBatch = slice | Tensor  # a step-1 slice of rows, or row indices [n]


def row_slices(rows: slice, size: int | None) -> list[slice]:
    """``rows`` (a step-1 slice) cut into consecutive slices of at most ``size`` rows (None: one slice)."""
    size = size or rows.stop - rows.start
    return [slice(first, min(first + size, rows.stop)) for first in range(rows.start, rows.stop, size)]


def micro_batches(
    rollout: Rollout, rows: slice, size: int | None, token_budget: int | None = None
) -> list[MicroBatch]:
    """The micro-batches of ``rows`` of ``rollout``, each run in one forward pass.

    Without ``token_budget``: consecutive slices of at most ``size`` rows (``row_slices``); a multiple of
    G keeps each group in one micro-batch, its prompt encoded once. With it: the rows sorted by length
    (prompt and completion, longest first) and cut greedily so that each micro-batch's rows x padded width
    (its longest prompt plus its longest completion, what ``trim_padding`` leaves) stays within
    ``token_budget`` tokens, at most ``size`` rows, and at least one row; index tensors [n] (sorted). A
    group's rows may then land in several micro-batches, each encoding the prompt once, and the budget
    counts every row's prompt, so it is conservative.
    """
    if token_budget is None:
        return row_slices(rows, size)
    prompt_length = rollout.prompt_length
    prompts = rollout.attention_mask[rows, :prompt_length].sum(dim=1)
    completions = _lengths(rollout.completion_mask[rows])
    order = torch.argsort(prompts + completions, descending=True, stable=True)
    parts: list[list[int]] = []
    widest_prompt = widest_completion = 0
    for index, prompt, completion in zip(
        order.tolist(), prompts[order].tolist(), completions[order].tolist(), strict=True
    ):
        if parts:
            wider_prompt, wider_completion = max(widest_prompt, prompt), max(widest_completion, completion)
            count = len(parts[-1]) + 1
            if count * (wider_prompt + wider_completion) <= token_budget and (size is None or count <= size):
                parts[-1].append(rows.start + index)
                widest_prompt, widest_completion = wider_prompt, wider_completion
                continue
        parts.append([rows.start + index])
        widest_prompt, widest_completion = prompt, completion
    device = rollout.completion_mask.device
    return [torch.tensor(sorted(part), device=device) for part in parts]


def check_token_budget(model: nn.Module, token_budget: int | None) -> None:
    """Raise a ``ConfigError`` for a token budget with an FSDP2-sharded ``model``: ranks would then run
    different numbers of forward passes, and FSDP2's per-pass collectives would wait forever."""
    if token_budget is not None and is_sharded(model):
        raise ConfigError(
            "model.micro_batch_tokens does not work with FSDP2 (ranks would run different numbers of "
            "micro-batches and deadlock): unset it, or use DDP"
        )


def _lengths(mask: Tensor) -> Tensor:
    """Index after the last nonzero entry of each row of ``mask`` ``[n, L]`` (0 for an all-zero row)."""
    columns = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.ne(0) * columns).amax(dim=1) if mask.shape[1] else mask.new_zeros(mask.shape[0])


def trim_padding(rollout: Rollout) -> Rollout:
    """``rollout`` without the columns no row needs: completion columns after the last real completion
    token of every row (at least one column is kept) and leading prompt columns that are padding in every
    row (prompts are left-padded). Attention is causal and padding is masked, and position ids count real
    tokens only, so the log-probs of the real tokens do not change (up to the order of sums)."""
    prompt_length = rollout.prompt_length
    real_prompt = rollout.attention_mask[:, :prompt_length].ne(0).any(dim=0)  # [P]
    # The first column with a real token (0 when there is none): ``argmax`` returns the first maximum.
    start = real_prompt.int().argmax() if prompt_length else real_prompt.new_zeros((), dtype=torch.long)
    width = _lengths(rollout.completion_mask).amax().clamp(min=1)
    start, width = torch.stack([start, width]).tolist()  # one host sync for both
    if start == 0 and width == rollout.completion_mask.shape[1]:
        return rollout
    columns = slice(start, prompt_length + width)
    return replace(
        rollout,
        input_ids=rollout.input_ids[:, columns],
        attention_mask=rollout.attention_mask[:, columns],
        completion_mask=rollout.completion_mask[:, :width],
        prompt_length=prompt_length - start,
    )


def output_head(model: PreTrainedModel) -> nn.Module | None:
    """The output head (``lm_head``) when the model's logits are nothing but the head applied to the
    final hidden states (``PLAIN_HEAD_MODEL_TYPES``), so it may be applied outside the forward; else None."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = model.get_output_embeddings()
    return head if isinstance(head, nn.Module) else None


def fusable_head(model: nn.Module, head: nn.Module | None) -> bool:
    """Whether the log-probs may be computed from ``head``'s weight directly (``fused_head``): a plain
    ``nn.Linear`` without bias or hooks (not a LoRA-wrapped head), outside FSDP2 (whose sharded head
    gathers its weight in a hook)."""
    return (
        type(head) is nn.Linear
        and head.bias is None
        and not (head._forward_hooks or head._forward_pre_hooks)
        and not is_sharded(model)
    )


def _forward(model: PreTrainedModel, head: nn.Module | None, **inputs: Any) -> tuple[Tensor, Cache | None]:
    """The model's features at the positions ``inputs`` keep and the cache it returns: the logits
    ``[N, K, V]`` when ``head`` is None, else the head's input ``[N, K, H]``, the head itself then running
    on no position at all (a pre-hook hands it an empty slice)."""
    if head is None:
        out = model(**inputs)
        return out.logits, getattr(out, CACHE)
    captured: list[Tensor] = []

    def keep_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep_input)
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"{type(model).__name__} called its output head {len(captured)} times, not once")
    return captured[0], getattr(out, CACHE)


def completion_features(model: PreTrainedModel, rollout: Rollout) -> tuple[Tensor, nn.Module | None]:
    """What predicts the completion tokens (those at positions P-1 .. P+T-2) and the head that turns it
    into logits: the final hidden states ``[N, T, H]`` and the output head (see ``output_head``), or the
    logits ``[N, T, V]`` and None.

    Rows that share a prompt (the G completions of a group, whichever rows the micro-batch holds) have it
    encoded once: its keys and values are repeated for each of them and the completions run on them, so a
    prompt costs one row's compute and memory in the forward and backward passes (equal to one pass over
    prompt + completion up to rounding). Otherwise, and for models whose every forward has a cost of its
    own (FSDP2-sharded ones gather all parameters again) or which drop caches (gradient checkpointing), one
    pass over prompt + completion. Position ids count real tokens only, as in decoding.
    """
    head = output_head(model)
    forward = partial(_forward, model, head)
    prompt_length, num_completion = rollout.prompt_length, rollout.completion_mask.shape[1]
    positions = position_ids(rollout.attention_mask)
    shared = None
    if not is_sharded(model) and not is_activation_checkpointing(model):
        shared = distinct_prompts(
            rollout.input_ids[:, :prompt_length], rollout.attention_mask[:, :prompt_length]
        )
    if shared is not None:
        prompt_ids, prompt_mask, row_prompt = shared
        first, cache = forward(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=position_ids(prompt_mask),
            use_cache=True,
            logits_to_keep=last_positions(1, prompt_ids.shape[1], prompt_ids.device),
        )
        if repeatable(cache):
            cache.batch_select_indices(row_prompt)
            first = first[row_prompt]  # [N, 1, F]
            if num_completion == 1:
                return first, head
            rest, _ = forward(
                input_ids=rollout.input_ids[:, prompt_length:-1],
                attention_mask=rollout.attention_mask[:, :-1],
                position_ids=positions[:, prompt_length:-1],
                use_cache=True,
                **{CACHE: cache},
            )
            return torch.cat([first, rest], dim=1), head
    features, _ = forward(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=positions,
        # only the positions that predict completion tokens
        logits_to_keep=last_positions(
            num_completion + 1, rollout.input_ids.shape[1], rollout.input_ids.device
        ),
        use_cache=False,  # nothing reads it (the config's True builds one, and warns under checkpointing)
    )
    return features[:, :-1], head


def _chunk_logprobs(
    head: nn.Module | None,
    temperature: float,
    targets: Tensor,
    entropy: list[Tensor] | None,
    features: Tensor,
) -> Tensor:
    """Log-probs ``[C]`` of ``targets`` ``[C]`` from features ``[C, H]`` (through ``head``) or logits
    ``[C, V]``; the entropy ``[C]`` (nats, no gradient) is appended to ``entropy`` on the first call only,
    so that the recomputation in a checkpointed backward pass skips it."""
    logits = (features if head is None else head(features)).float()
    if temperature != 1.0:  # dividing by 1 would only make another [C, V] copy
        logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    if entropy is not None and not entropy:
        with torch.no_grad():
            entropy.append(-log_probs.exp().mul_(log_probs).sum(dim=-1))
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(
    model: PreTrainedModel,
    rollout: Rollout,
    temperature: float = 1.0,
    with_entropy: bool = True,
    *,
    chunk_tokens: int | None = None,
    trim: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities ``[N, T]`` of the sampled completion tokens and the policy entropy ``[N, T]``
    (None unless ``with_entropy``), both fp32 and 0 where ``rollout.completion_mask`` is 0: the rollout
    runs at its own width (``trim_padding``) and the head only on its real completion tokens.

    Logits are divided by ``temperature``, so the log-probs are those of the full tempered softmax, not of
    the distribution after the sampler's filters (top-k, top-p, min-p) and stop-token suppression. The
    entropy (nats) is computed without gradient: it is a diagnostic, not part of the loss.

    Memory: the fp32 log-softmax runs on ``chunk_tokens`` positions at a time (default: as many as fit
    ``LOGIT_CHUNK_ELEMENTS`` fp32 entries; on CPU one more than fit ``CPU_LOGIT_CHUNK_ELEMENTS``). With
    gradient, each chunk's head and log-softmax run again in the backward pass (``fused_head`` for a
    ``fusable_head``, else checkpointing where there is more than one chunk), so only one chunk's
    ``[chunk_tokens, V]`` tensors are alive at any time; the model's hidden states are the only per-token
    tensors kept. ``trim=False`` runs the whole padded width (for comparisons).
    """
    width = rollout.completion_mask.shape[1]
    rows = trim_padding(rollout) if trim else rollout
    features, head = completion_features(model, rows)
    real = rows.completion_mask.ne(0)  # [N, T']
    if head is not None:  # the head runs on the real tokens only
        inputs, targets = features[real], rows.completion_ids[real]
        vocabulary = head.out_features if hasattr(head, "out_features") else head.weight.shape[0]
    else:  # the logits exist already, padding included: chunk over every position
        inputs, targets = features.flatten(0, 1), rows.completion_ids.flatten()
        vocabulary = features.shape[-1]
    if chunk_tokens:
        chunk = chunk_tokens
    elif inputs.device.type == "cpu":
        chunk = CPU_LOGIT_CHUNK_ELEMENTS // vocabulary + 1
    else:
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // vocabulary)
    if fusable_head(model, head):
        values, entropy = head_token_logprobs(inputs, head.weight, targets, temperature, chunk, with_entropy)
        token_logp = _place(values, real, False, width)
        return token_logp, None if entropy is None else _place(entropy, real, False, width)
    # Recompute each chunk in backward when anything before the log-softmax trains: the hidden states, or
    # the head itself (LoRA on ``lm_head`` alone leaves the hidden states without gradient).
    head_trains = head is not None and any(p.requires_grad for p in head.parameters())
    checkpointed = torch.is_grad_enabled() and (inputs.requires_grad or head_trains) and len(inputs) > chunk
    values, entropies = [], []
    for piece, target in zip(inputs.split(chunk), targets.split(chunk), strict=True):
        store: list[Tensor] | None = [] if with_entropy else None
        compute: Callable[[Tensor], Tensor] = partial(_chunk_logprobs, head, temperature, target, store)
        values.append(checkpoint(compute, piece, use_reentrant=False) if checkpointed else compute(piece))
        if store is not None:
            entropies.append(store[0])
    token_logp = _place(torch.cat(values), real, head is None, width)  # split yields >= 1 piece
    if not with_entropy:
        return token_logp, None
    return token_logp, _place(torch.cat(entropies), real, head is None, width)


def _place(values: Tensor, real: Tensor, every_position: bool, width: int) -> Tensor:
    """Per-token ``values`` (``[N * T']`` for ``every_position``, else ``[real.sum()]``) as ``[N, width]``
    fp32, zero where ``real`` ``[N, T']`` is False and in the trimmed columns."""
    values = values.float()
    if every_position:
        placed = torch.where(real, values.view(real.shape), 0.0)
    else:
        placed = values.new_zeros(real.shape).masked_scatter(real, values)
    return F.pad(placed, (0, width - real.shape[1]))


@torch.no_grad()
def logprobs_without_grad(
    model: PreTrainedModel, rollout: Rollout, temperature: float, parts: Iterable[MicroBatch]
) -> Tensor:
    """Token log-probs ``[N, T]`` of ``model`` (the reference, or pi_old), one forward pass per micro-batch
    of ``parts`` (``micro_batches``), which must cover every row."""
    out = rollout.completion_mask.new_zeros(rollout.completion_mask.shape, dtype=torch.float32)
    for part in parts:
        out[part] = token_logprobs(model, rollout.select(part), temperature, with_entropy=False)[0]
    reshard_root(model)
    return out
