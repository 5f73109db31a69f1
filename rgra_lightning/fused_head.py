"""Log-probs of the sampled tokens straight from the output head's input, the head's multiply and the
log-softmax fused chunk by chunk, so that no more than one chunk of logits ever exists.

The straightforward way (the head, ``float()``, ``log_softmax``, ``gather``; each chunk checkpointed so that
its logits are not kept for the backward pass) runs the head's multiply twice per chunk before its backward
pass and allocates about five ``[C, V]`` tensors each time (on CPU each a fresh mapping that the kernel
zeroes page by page, ``host_memory``). Here the forward pass keeps only each token's log-normaliser ``[M]``;
the backward pass computes each chunk's logits once more and turns them in place into the gradient of the
log-probs, ``g (onehot(target) - softmax) / temperature``, then multiplies it by the weight (the features'
gradient) and, when the head trains (full fine-tuning, tied to the embedding or not), by the features (the
weight's). The ``[C, V]`` buffers (two float32 ones in the forward pass, one in the backward, and one more in
the multiply's dtype under autocast) are allocated once per call and reused for every chunk; so, when a head
that trains multiplies in a lower precision than float32, are a ``[V, H]`` buffer for each chunk's weight
gradient in that dtype and a float32 block of rows through which it is added to the float32 sum (adding
it directly would allocate a float32 copy of it, and ``torch.mm`` a new product, for every chunk). On
SmolLM2-135M (768 tokens, 49,152 entries, one CPU thread) the forward and backward passes took 1.9 s
instead of 2.5 s with a frozen head and 2.5 instead of 3.7 s with a trained one (docs/scaling.md).

The rounding is the straightforward way's: the multiply in the autocast dtype where autocast is on (else in
the weights' dtype), the logits then cast to float32, divided by the temperature, normalised in float32;
in the backward pass the logits' gradient is cast back to the multiply's dtype, as autograd casts it, and
the weight's gradient is each chunk's product in that dtype, summed in float32.

Shapes: M tokens, H features, V vocabulary entries, C tokens per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

# Elements of the float32 block through which each chunk's low-precision weight gradient is added to the
# float32 sum (4 MiB): on SmolLM2's [49152, 576] as fast as blocks of 1 MiB, and faster than 16 MiB or the
# whole gradient at once.
_CAST_BLOCK_ELEMENTS = 1 << 20


def head_token_logprobs(
    features: Tensor,
    weight: Tensor,
    targets: Tensor,
    temperature: float,
    chunk_tokens: int,
    with_entropy: bool,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[M]`` (float32) of ``targets`` ``[M]`` under ``softmax(features @ weight^T / temperature)``
    for ``features`` ``[M, H]`` and the head's ``weight`` ``[V, H]`` (no bias), with gradient to both where
    they require it; and the entropy ``[M]`` (nats, float32, no gradient) when ``with_entropy``, else None.
    ``chunk_tokens`` tokens' logits are computed at a time."""
    device = features.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    logp, entropy = _FusedHeadLogProbs.apply(
        features, weight, targets, temperature, max(1, chunk_tokens), dtype, with_entropy
    )
    return logp, entropy if with_entropy else None


def _chunk_logits(
    features: Tensor, weight: Tensor, temperature: float, chunk_tokens: int
) -> Iterator[tuple[slice, Tensor, Tensor, Tensor | None]]:
    """For each chunk of ``chunk_tokens`` tokens of ``features`` ``[M, H]``: its token slice, its features
    ``[C, H]``, and its logits ``features @ weight^T / temperature`` ``[C, V]`` in float32, multiplied in
    ``weight``'s dtype and, when that is not float32, also as that product ``[C, V]`` (else None). Each
    chunk's logits overwrite the previous chunk's: one buffer per call."""
    tokens, vocabulary = features.shape[0], weight.shape[0]
    logits = features.new_empty(min(chunk_tokens, tokens), vocabulary, dtype=torch.float32)
    low = None if weight.dtype == torch.float32 else torch.empty_like(logits, dtype=weight.dtype)
    for start in range(0, tokens, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        x = features[part]
        z, product = logits[: x.shape[0]], None
        if low is None:
            torch.mm(x, weight.T, out=z)
        else:
            product = torch.mm(x, weight.T, out=low[: x.shape[0]])
            z.copy_(product)
        if temperature != 1.0:
            z.div_(temperature)
        yield part, x, z, product


class _FusedHeadLogProbs(torch.autograd.Function):
    """See ``head_token_logprobs``; autocast is off inside, the casts it would make done explicitly."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        features: Tensor,
        weight: Tensor,
        targets: Tensor,
        temperature: float,
        chunk_tokens: int,
        dtype: torch.dtype,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        tokens = features.shape[0]
        with torch.autocast(features.device.type, enabled=False):
            low_features, low_weight = features.to(dtype), weight.to(dtype)
            exps = None
            if with_entropy:
                exps = features.new_empty(min(chunk_tokens, tokens), weight.shape[0], dtype=torch.float32)
            logp = features.new_empty(tokens, dtype=torch.float32)
            entropy = torch.zeros_like(logp)
            normaliser = torch.empty_like(logp)  # log sum exp of each token's logits
            for part, x, z, _ in _chunk_logits(low_features, low_weight, temperature, chunk_tokens):
                count = x.shape[0]
                shift = z.amax(dim=-1, keepdim=True)
                z.sub_(shift)  # z = logits - max: exp cannot overflow
                picked = z.gather(1, targets[part, None]).squeeze(1)
                if exps is None:
                    log_total = z.exp_().sum(dim=-1).log()
                else:
                    e = torch.exp(z, out=exps[:count])
                    total = e.sum(dim=-1)
                    log_total = total.log()
                    entropy[part] = log_total - e.mul_(z).sum(dim=-1) / total  # -sum p log p
                logp[part] = picked - log_total
                normaliser[part] = log_total + shift.squeeze(1)
        ctx.save_for_backward(features, weight, targets, normaliser)
        ctx.temperature, ctx.chunk_tokens, ctx.dtype = temperature, chunk_tokens, dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        features, weight, targets, normaliser = ctx.saved_tensors
        temperature, chunk_tokens, dtype = ctx.temperature, ctx.chunk_tokens, ctx.dtype
        needs_features, needs_weight = ctx.needs_input_grad[:2]
        with torch.autocast(features.device.type, enabled=False):
            low_features, low_weight = features.to(dtype), weight.to(dtype)
            grad_features = torch.empty_like(low_features) if needs_features else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
            if needs_weight and dtype != torch.float32:  # see the module's docstring
                vocabulary, hidden = weight.shape
                chunk_grad_weight = weight.new_empty(vocabulary, hidden, dtype=dtype)
                rows = max(1, min(vocabulary, _CAST_BLOCK_ELEMENTS // max(1, hidden)))
                cast_dtype = torch.promote_types(dtype, torch.float32)  # what += computed in
                cast_block = weight.new_empty(rows, hidden, dtype=cast_dtype)
            scale = grad_logp.float() / temperature  # d logits / d (logits / temperature)
            for part, x, z, product in _chunk_logits(low_features, low_weight, temperature, chunk_tokens):
                # d logp[target] / d logits = onehot(target) - softmax, times the incoming gradient
                z.sub_(normaliser[part, None]).exp_().mul_(-scale[part, None])
                z.scatter_add_(1, targets[part, None], scale[part, None])
                grad = z if product is None else product.copy_(z)
                if grad_features is not None:
                    torch.mm(grad, low_weight, out=grad_features[part])
                if grad_weight is not None and product is None:
                    grad_weight.addmm_(grad.T, x)
                elif grad_weight is not None:  # each chunk's product in the multiply's dtype, summed in fp32
                    torch.mm(grad.T, x, out=chunk_grad_weight)
                    for start in range(0, vocabulary, rows):
                        block = chunk_grad_weight[start : start + rows]
                        grad_weight[start : start + rows].add_(cast_block[: len(block)].copy_(block))
        return (
            None if grad_features is None else grad_features.to(features.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None,
            None,
            None,
            None,
            None,
        )
