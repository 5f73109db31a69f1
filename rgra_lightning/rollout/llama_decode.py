"""Decoding steps of Llama-family causal LMs as a few plain tensor operations on the model's own weights.

A decoding step feeds one token per row. Through a model's forward, or even through its decoder layers, a
step of a small model costs far more in per-module Python and tensor bookkeeping than in arithmetic. Here a
layer is about fifteen tensor operations:

- the q/k/v projections are one matrix multiply on weights concatenated once per rollout (so are gate/up);
- keys and values go into buffers allocated once for the whole completion, not a cache grown by
  concatenation at every step;
- the rotary cos/sin of every step are computed in one call before the first step.

In float32 on CPU the logits are bit-identical to the model's forward; in bfloat16 they are within one
bfloat16 step of it (both tested); on other devices they agree up to rounding.

A ``peft`` LoRA policy decodes here too: each adapted layer's active adapters are folded into a copy of its
weight once per rollout, W + scaling * B A (``scaling`` is peft's: alpha / r, or alpha / sqrt(r)
rank-stabilised), added in the weight's dtype as peft's merge adds it. The model's weights are never
modified, and with the adapters disabled (``disable_adapter()``, the KL reference) the base weights are
read. The folded logits equal peft's forward (base output + scaling * B(A x)) up to rounding, not bit for
bit: float32 within its rounding; over bfloat16 weights no further from the float32 model than peft's own
(both tested). Adapters that do not fold into one plain weight (DoRA and the other variants, LoRA biases,
``modules_to_save`` and trainable-token wrappers, other tuners) decode through the forward instead
(``supports`` is False).

Shapes: N rows, P prompt positions (the prefilled cache), T new tokens at most, H query heads, K key/value
heads, D head dims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    Cache,
    DynamicCache,
    LlamaForCausalLM,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from transformers.cache_utils import DynamicLayer

# Causal LMs whose forward on one new token per row is, as read in transformers 5.24: embed the tokens, the
# rotary (cos, sin), every decoder layer (RMSNorm, attention with optional q/k/v biases and, for Qwen3,
# per-head q/k RMSNorm, RMSNorm, gated MLP), final RMSNorm, ``lm_head``; no embedding scale, logit scale
# or softcap.
# Exact classes only: a subclass may change the forward.
SUPPORTED_MODELS = (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)


def lora_base_model(model: torch.nn.Module) -> PreTrainedModel | None:
    """The transformers model under a ``peft`` LoRA model whose adapters all fold into plain weights (see
    ``_foldable``), or None: not a peft model, another tuner, or an adapter that does not fold."""
    try:
        from peft import PeftModelForCausalLM
        from peft.tuners.lora import LoraModel
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # peft is optional; without it no model is a peft model
        return None
    if type(model) is not PeftModelForCausalLM or type(model.base_model) is not LoraModel:
        return None
    base = model.base_model.model
    for module in base.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):  # modules_to_save, trainable tokens
            return None
        if isinstance(module, BaseTunerLayer) and not _foldable(module):
            return None
    return base


def _foldable(layer: torch.nn.Module) -> bool:
    """Whether a peft tuner layer's forward is its base layer's with the weight W + scaling * B A: a LoRA
    ``Linear`` over an ``nn.Linear`` or ``Embedding`` over a plain ``nn.Embedding``, without LoRA biases,
    ``fan_in_fan_out`` or a variant (DoRA, aLoRA, ...) on an active adapter. Merged adapters are in the base
    weight already, unless the adapters are disabled (the forward would unmerge them)."""
    from peft.tuners.lora import Embedding, Linear

    base = layer.get_base_layer()
    if type(layer) is Linear:
        if type(base) is not torch.nn.Linear or layer.fan_in_fan_out:
            return False
    elif type(layer) is Embedding:
        if type(base) is not torch.nn.Embedding or base.max_norm is not None:
            return False
    else:
        return False
    if layer.merged:
        return not layer.disable_adapters
    return not any(
        adapter in layer.lora_variant or layer.lora_bias.get(adapter, False)
        for adapter in layer.active_adapters
    )


def _weights(module: torch.nn.Module) -> tuple[Tensor, Tensor | None, list[str]]:
    """A linear or embedding layer's weight and bias (None when it has none), and the names of the active
    LoRA adapters that its forward adds (none for a plain layer or disabled adapters)."""
    if not hasattr(module, "get_base_layer"):
        return module.weight, getattr(module, "bias", None), []
    base = module.get_base_layer()
    weight, bias = base.weight, getattr(base, "bias", None)
    if module.disable_adapters or module.merged:
        return weight, bias, []
    present = module.lora_A.keys() if hasattr(module, "lora_A") else module.lora_embedding_A.keys()
    return weight, bias, [adapter for adapter in module.active_adapters if adapter in present]


def _add_update(weight: Tensor, layer: torch.nn.Module, adapter: str) -> None:
    """``weight`` ``[out, in]`` += scaling * B A, the update of ``layer``'s LoRA ``adapter``, in place in the
    weight's dtype as peft's merge adds it; one fused multiply-add when the adapter has the weight's dtype."""
    if hasattr(layer, "lora_A"):  # Linear: A [r, in], B [out, r]
        left, right = layer.lora_B[adapter].weight, layer.lora_A[adapter].weight
    else:  # Embedding: A [r, vocabulary], B [hidden, r], and the update is (B A)^T
        left, right = layer.lora_embedding_A[adapter].T, layer.lora_embedding_B[adapter].T
    if left.dtype == weight.dtype:
        weight.addmm_(left, right, alpha=layer.scaling[adapter])
    else:  # e.g. float32 adapters over bfloat16 weights
        weight += layer.get_delta_weight(adapter)


def _folded(*modules: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weights ``[sum of outputs, inputs]`` and biases (None when they have none) of layers that read
    the same input, stacked so that one matrix multiply computes all of them, with their LoRA updates
    added. The stack (or the folded copy of one layer's weight) is a new tensor; the layers' own weights are
    returned unchanged only when one layer without an update is asked for."""
    parts = [_weights(module) for module in modules]
    biases = [bias for _, bias, _ in parts]
    bias = biases[0] if len(parts) == 1 or biases[0] is None else torch.cat(biases)
    if len(parts) == 1:
        weight, _, adapters = parts[0]
        if not adapters:
            return weight, bias
        weight = weight.clone()
    else:
        weight = torch.cat([weight for weight, _, _ in parts])
    start = 0
    for module, (part, _, adapters) in zip(modules, parts, strict=True):
        for adapter in adapters:  # in the new tensor only
            _add_update(weight[start : start + part.shape[0]], module, adapter)
        start += part.shape[0]
    return weight, bias


@dataclass
class _Layer:
    """One decoder layer's weights, and its key/value buffers ``[N, K, P + T, D]``."""

    input_norm: Tensor
    qkv: tuple[Tensor, Tensor | None]
    qk_norm: Tensor | None  # [H + K, D] Qwen3's per-head q and k RMSNorm weights, else None
    output: tuple[Tensor, Tensor | None]
    post_attention_norm: Tensor
    gate_up: tuple[Tensor, Tensor | None]
    down: tuple[Tensor, Tensor | None]
    activation: Callable[[Tensor], Tensor]
    keys: Tensor
    values: Tensor


class LlamaDecoder:
    """Decoding steps of a ``SUPPORTED_MODELS`` model after its prompt cache; see the module docstring.

    Args:
        model: the causal LM, or a ``peft`` LoRA model of one (``lora_base_model``), in eval mode; its
            weights and adapters must not change while the decoder is in use.
        cache: the ``DynamicCache`` its forward built for the prompts, N rows of P positions.
        positions: ``[N, 1]`` the position id of each row's first new token.
        attention_mask: ``[N, P + T]`` 1 on the positions attended to (left padding 0), or None when all are.
        max_new_tokens: T.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        positions: Tensor,
        attention_mask: Tensor | None,
        max_new_tokens: int,
    ) -> None:
        lora_base = lora_base_model(model)
        model = model if lora_base is None else lora_base
        config, decoder = model.config, model.model
        self.prompt_length = cache.get_seq_length()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.layers = []
        for layer, cached in zip(decoder.layers[: config.num_hidden_layers], cache.layers, strict=True):
            attention, mlp = layer.self_attn, layer.mlp
            rows, kv_heads, prompt_length, head_dim = cached.keys.shape
            keys = cached.keys.new_empty(rows, kv_heads, prompt_length + max_new_tokens, head_dim)
            values = torch.empty_like(keys)
            keys[:, :, :prompt_length], values[:, :, :prompt_length] = cached.keys, cached.values
            qk_norm = None
            if hasattr(attention, "q_norm"):
                qk_norm = torch.cat(
                    [
                        attention.q_norm.weight.expand(self.heads, head_dim),
                        attention.k_norm.weight.expand(self.kv_heads, head_dim),
                    ]
                )
            self.layers.append(
                _Layer(
                    input_norm=layer.input_layernorm.weight,
                    qkv=_folded(attention.q_proj, attention.k_proj, attention.v_proj),
                    qk_norm=qk_norm,
                    output=_folded(attention.o_proj),
                    post_attention_norm=layer.post_attention_layernorm.weight,
                    gate_up=_folded(mlp.gate_proj, mlp.up_proj),
                    down=_folded(mlp.down_proj),
                    activation=mlp.act_fn,
                    keys=keys,
                    values=values,
                )
            )
        self.head_dim, self.scaling = head_dim, attention.scaling
        self.eps = config.rms_norm_eps
        self.embedding, self.final_norm = _folded(decoder.embed_tokens)[0], decoder.norm.weight
        self.lm_head = _folded(model.lm_head)
        steps = positions + torch.arange(max_new_tokens, device=positions.device)  # [N, T]
        cos, sin = decoder.rotary_emb(self.embedding, steps)  # [N, T, D] each
        self.cos, self.sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [N, T, 1, D]: the same for every head
        # SDPA's boolean mask: True where attended; ``create_causal_mask`` gives None when all are.
        self.padding_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        half = head_dim // 2  # rotate_half(x) = cat(-x[half:], x[:half]) = x @ rotation, exactly
        identity = torch.eye(half, dtype=cos.dtype, device=cos.device)
        self.rotation = torch.zeros(head_dim, head_dim, dtype=cos.dtype, device=cos.device)
        self.rotation[half:, :half], self.rotation[:half, half:] = -identity, identity

    @staticmethod
    def supports(model: PreTrainedModel, cache: Cache) -> bool:
        """Whether ``model`` and the cache its forward built can be decoded here: a ``SUPPORTED_MODELS``
        class (or a peft LoRA model of one whose adapters fold, ``lora_base_model``) with SDPA attention
        (whose boolean mask ``step`` builds), rotary frequencies that do not depend on the sequence length,
        and full-attention key/value cache layers only (a sliding window would need its own mask)."""
        lora_base = lora_base_model(model)
        model = model if lora_base is None else lora_base
        return (
            type(model) in SUPPORTED_MODELS
            and model.config._attn_implementation == "sdpa"
            and "dynamic" not in model.model.rotary_emb.rope_type
            and model.model.rotary_emb.rope_type != "longrope"
            and type(cache) is DynamicCache
            and all(type(layer) is DynamicLayer for layer in cache.layers)
        )

    def _rms_norm(self, hidden: Tensor, weight: Tensor) -> Tensor:
        return F.rms_norm(hidden, (hidden.shape[-1],), weight, self.eps)

    def step(self, token: Tensor, step: int) -> Tensor:
        """Next-token logits ``[N, V]`` after feeding ``token`` ``[N]`` as new token ``step`` (from 0)."""
        rows, heads, kv_heads = token.shape[0], self.heads, self.kv_heads
        seen = self.prompt_length + step + 1  # positions attended to, this token's included
        mask = None if self.padding_mask is None else self.padding_mask[..., :seen]
        cos, sin = self.cos[:, step], self.sin[:, step]  # [N, 1, D]
        hidden = F.embedding(token, self.embedding)  # [N, hidden]
        for layer in self.layers:
            qkv = F.linear(self._rms_norm(hidden, layer.input_norm), *layer.qkv)
            qkv = qkv.view(rows, heads + 2 * kv_heads, self.head_dim)
            qk = qkv[:, : heads + kv_heads]
            if layer.qk_norm is not None:
                qk = F.rms_norm(qk, (self.head_dim,), None, self.eps) * layer.qk_norm
            qk = qk * cos + (qk @ self.rotation) * sin
            layer.keys[:, :, seen - 1] = qk[:, heads:]
            layer.values[:, :, seen - 1] = qkv[:, heads + kv_heads :]
            # As transformers' SDPA attention does, for the same rounding: without a mask, SDPA's own
            # grouped-query support; with one, the query heads grouped by their key/value head.
            query = qk[:, :heads]
            if mask is None:
                query = query.unsqueeze(2)  # [N, H, 1, D]
            else:
                query = query.reshape(rows, kv_heads, heads // kv_heads, self.head_dim)
            attended = F.scaled_dot_product_attention(
                query,
                layer.keys[:, :, :seen],
                layer.values[:, :, :seen],
                attn_mask=mask,
                scale=self.scaling,
                enable_gqa=mask is None and heads != kv_heads,
            )
            hidden = hidden + F.linear(attended.reshape(rows, heads * self.head_dim), *layer.output)
            normed = self._rms_norm(hidden, layer.post_attention_norm)
            gate, up = F.linear(normed, *layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(layer.activation(gate) * up, *layer.down)
        return F.linear(self._rms_norm(hidden, self.final_norm), *self.lm_head)
