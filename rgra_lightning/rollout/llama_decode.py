"""Decoding steps of Llama-family causal LMs as a few plain tensor operations on the model's own weights.

A decoding step feeds one token per row. Through a model's forward, or even through its decoder layers, a
step of a small model costs far more in per-module Python and tensor bookkeeping than in arithmetic. Here a
layer is about fifteen tensor operations:

- the q/k/v projections are one matrix multiply on weights concatenated once per rollout (so are gate/up);
- keys and values go into buffers allocated once for the whole completion, not a cache grown by
  concatenation at every step;
- the rotary cos/sin of every step are computed in one call before the first step;
- on the CPU, float32 weights of a quarter million entries or more (every one of SmolLM2-135M's, none of
  the tiny policy's) are reordered once per rollout into oneDNN's blocked layout, which a multiply of a
  few rows reads about twice as fast as ``F.linear`` reads a plain weight (``_packed``).

In float32 on CPU the logits are bit-identical to the model's forward where no weight is reordered (under
transformers before 5.24, which attends over repeated key/value heads where a mask is given, within float32
rounding of it for grouped key/value heads) and within float32 rounding of it where weights are (oneDNN
sums in another order); in bfloat16 they are within one bfloat16 step of it (all tested); on other devices
they agree up to rounding.

A ``peft`` LoRA policy decodes here too, with one active adapter per layer. Where the weights and adapters
are float32 and used as they are (no autocast to a narrower dtype), each adapted layer's adapter is folded
into a copy of its weight once per rollout, W + scaling * B A (``scaling`` is peft's: alpha / r, or
alpha / sqrt(r) rank-stabilised), so it decodes as fast as the plain model, within float32 rounding of
peft's forward. Otherwise (bfloat16 or float16 weights or adapters, or autocast: the paper's ``bf16-mixed``
LoRA) the adapters are applied as peft's forward applies them, each layer's output plus scaling * B(A x) in
the same operations and dtypes, so the logits are those of the policy the loss trains (each output within
one rounding step of peft's; tested): folded into bfloat16 weights an update of a few steps at lr 1e-5
would mostly round away (75-98 % of its entries on SmolLM2-135M), and the samples would come from an older
policy than the one trained. The adapters of the layers that read one input are stacked as their weights
are (``_Projection``), so a LoRA step costs a few operations per layer more than a plain one, not six per
adapted layer. The model's weights are never modified, and with the adapters disabled
(``disable_adapter()``, the KL reference) only the base weights are read. Other adapters decode through the
forward instead (``unsupported`` gives the reason): DoRA and the other variants, LoRA biases,
``modules_to_save`` and trainable-token wrappers, other tuners, several active adapters on a layer,
adapters in mixed dtypes, and under autocast adapters in neither float32 nor its dtype.

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
    """The transformers model under a ``peft`` LoRA model whose adapters are all plain LoRA (see
    ``_plain_lora``), with their A matrices in one dtype and one input-cast setting (the decoder stacks the A
    matrices of layers that read the same input), under autocast float32 or its dtype; or None: not a peft
    model, another tuner, an adapter of another kind, mixed A dtypes, or A in another dtype under
    autocast."""
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
    settings = set()
    for module in base.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):  # modules_to_save, trainable tokens
            return None
        if isinstance(module, BaseTunerLayer):
            if not _plain_lora(module):
                return None
            adapter = _active_adapter(module)
            if adapter is not None:
                settings.add((adapter[0].dtype, getattr(module, "cast_input_dtype_enabled", True)))
    if len(settings) > 1:
        return None
    device = base.device.type
    if settings and torch.is_autocast_enabled(device):
        ((dtype, _),) = settings
        if dtype not in (torch.float32, torch.get_autocast_dtype(device)):  # peft rounds the input to A's
            return None  # dtype first: another rounding than autocast's
    return base


def _plain_lora(layer: torch.nn.Module) -> bool:
    """Whether a peft tuner layer's forward is its base layer's plus scaling * B(A x): a LoRA ``Linear``
    over an ``nn.Linear`` or ``Embedding`` over a plain ``nn.Embedding`` (no embedding scale), with at most
    one active adapter, no LoRA bias, ``fan_in_fan_out`` or variant (DoRA, aLoRA, ...). Merged adapters are
    in the base weight already, unless the adapters are disabled (the forward would unmerge them)."""
    from peft.tuners.lora import Embedding, Linear

    base = layer.get_base_layer()
    if type(layer) is Linear:
        if type(base) is not torch.nn.Linear or layer.fan_in_fan_out:
            return False
    elif type(layer) is Embedding:
        if type(base) is not torch.nn.Embedding or base.max_norm is not None:
            return False
        if layer._get_embed_scale() is not None:  # its forward scales the adapters' output too
            return False
    else:
        return False
    if layer.merged:
        return not layer.disable_adapters
    adapters = layer.lora_A.keys() | layer.lora_embedding_A.keys()
    active = [adapter for adapter in layer.active_adapters if adapter in adapters]
    return len(active) <= 1 and not any(
        adapter in layer.lora_variant or layer.lora_bias.get(adapter, False) for adapter in active
    )


def _active_adapter(module: torch.nn.Module) -> tuple[Tensor, Tensor, float] | None:
    """(A, B, scaling) of the active LoRA adapter that ``module``'s forward adds (``_plain_lora``): for a
    ``Linear`` A ``[r, in]`` and B ``[out, r]``; for an ``Embedding`` A^T ``[vocabulary, r]`` and B^T
    ``[r, hidden]``. None for a plain layer, disabled adapters or adapters merged into the weight."""
    if not hasattr(module, "get_base_layer") or module.disable_adapters or module.merged:
        return None
    for name in module.active_adapters:
        if name in module.lora_A:
            return module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]
        if name in module.lora_embedding_A:
            return module.lora_embedding_A[name].T, module.lora_embedding_B[name].T, module.scaling[name]
    return None


def _base(module: torch.nn.Module) -> torch.nn.Module:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _keeps_updates(weight: Tensor, adapters: list[tuple[Tensor, Tensor, float]]) -> bool:
    """Whether ``weight`` + the LoRA updates of ``adapters`` is what peft's forward computes up to float32
    rounding: weights and adapters in float32 or wider, and no autocast that would round the sum to a
    narrower dtype in the matrix multiply."""
    wide = (torch.float32, torch.float64)
    tensors = [weight] + [matrix for down, up, _ in adapters for matrix in (down, up)]
    return all(t.dtype in wide for t in tensors) and not torch.is_autocast_enabled(weight.device.type)


# Below this many entries a weight stays in cache from one decoding step to the next, where oneDNN's
# costlier call outweighs what its blocked layout saves (``_packed``).
PACK_MIN_ENTRIES = 1 << 18


def _packed(weight: Tensor) -> tuple[Tensor, bool]:
    """``weight`` ``[out, in]`` reordered into oneDNN's blocked layout for its linear operator (as
    ``torch.compile``'s CPU weight freezing does), and True; or ``weight`` and False where that is not
    known to pay: not float32 on the CPU, fewer than ``PACK_MIN_ENTRIES`` entries, or oneDNN unavailable or
    disabled. A decoding step multiplies a few rows by each weight, so it is bound by reading the weights:
    on a 2-core AMD EPYC the reordered weights of SmolLM2-135M multiply 16 rows 1.5-2 times faster than
    ``F.linear`` (MKL) does, while the tiny policy's, which fit in cache, are 1.2 times slower. The sums
    are the same but in another order: within float32 rounding of ``F.linear``'s."""
    if (
        weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or weight.numel() < PACK_MIN_ENTRIES
        or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    ):
        return weight, False
    return torch.ops.mkldnn._reorder_linear_weight(weight), True


@dataclass
class _Projection:
    """Linear layers that read the same input, as one: ``x W^T + b`` on their weights stacked once per
    rollout (under autocast, cast once to its dtype, as autocast would cast them in every multiply).

    Their LoRA adapters are folded into that stack (W + scaling * B A) where it keeps them
    (``_keeps_updates``). Else they are applied as peft's ``Linear.forward`` applies them, elementwise the
    same operations in the same dtypes (input cast to the adapters' dtype, ``out + B(A x) * scaling``, cast
    back to the output's dtype), stacked too: the layers' A matrices under their weights where both multiply
    in one dtype and the weights are a copy already (a stack, or cast for autocast; else one multiply of
    their own), their B matrices on the diagonal of one block matrix (zeros elsewhere; a layer without an
    adapter has rank 0). So a stack's adapters cost one multiply, a scaling and an addition more than its
    plain weights, where peft's layers take six operations each: on a GPU, where a decoding step is bound
    by kernel launches, that separates a LoRA policy's speed from the plain model's. Each part of the one
    multiply is computed as on its own, but may be summed in another order: within one rounding step of
    it."""

    weight: Tensor  # [sum of outputs + R, in] the layers' weights, then (R > 0) their A matrices
    packed: bool  # ``weight`` is in oneDNN's blocked layout (``_packed``)
    bias: Tensor | None  # [sum of outputs + R] (zeros for the A matrices)
    widths: list[int]  # each layer's outputs
    up: Tensor | None  # [sum of outputs, R] each layer's B on the diagonal; None: no adapters, or folded
    down: Tensor | None  # [R, in] the A matrices where they multiply in another dtype than the weights
    scaling: float | list[float]  # the layers' (one number where they share it)
    cast_input: bool  # peft's ``cast_input_dtype_enabled``, the same on every layer (``lora_base_model``)

    @classmethod
    def of(cls, *modules: torch.nn.Module) -> _Projection:
        bases = [_base(module) for module in modules]
        widths = [base.weight.shape[0] for base in bases]
        device = bases[0].weight.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None

        def operand(tensor: Tensor) -> Tensor:
            """``tensor`` as autocast casts it in every multiply (float64 is refused: ``unsupported``)."""
            return tensor if low is None else tensor.to(low)

        weights = [operand(base.weight) for base in bases]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights)
        copied = weight is not bases[0].weight  # a stack, or a cast: a tensor of the decoder's own
        biases = [None if base.bias is None else operand(base.bias) for base in bases]
        bias = biases[0] if len(biases) == 1 or biases[0] is None else torch.cat(biases)
        adapters = [_active_adapter(module) for module in modules]
        present = [(a, module) for a, module in zip(adapters, modules, strict=True) if a is not None]
        if present and _keeps_updates(weight, [adapter for adapter, _ in present]):
            weight = weight if copied else weight.clone()  # never the layers' own weight
            for rows, adapter in zip(weight.split(widths), adapters, strict=True):
                if adapter is not None:
                    down, up, scaling = adapter
                    rows.addmm_(up.to(weight.dtype), down.to(weight.dtype), alpha=scaling)
            present = []
        if not present:
            return cls(*_packed(weight), bias, widths, None, None, 1.0, True)
        (first_down, first_up, first_scaling), first_module = present[0]
        downs, ups, scalings = [], [], []
        for width, adapter in zip(widths, adapters, strict=True):
            down, up, scaling = adapter or (
                first_down.new_empty(0, weight.shape[1]),
                first_up.new_empty(width, 0),
                first_scaling,
            )
            downs.append(down)
            ups.append(up)
            scalings.append(scaling)
        down = downs[0] if len(downs) == 1 else torch.cat(downs)
        up = ups[0] if len(ups) == 1 else torch.block_diag(*ups)
        scaling = scalings[0] if len(set(scalings)) == 1 else scalings
        cast = getattr(first_module, "cast_input_dtype_enabled", True)
        if low is not None:
            # A is float32 or autocast's dtype (``lora_base_model``): peft's cast of the input to it
            # changes nothing once autocast has cast the input to its dtype, as it casts A and B.
            down, up, cast = operand(down), operand(up), False
        if down.dtype != weight.dtype or not copied:  # never a copy of a layer's weight only for A
            return cls(*_packed(weight), bias, widths, up, down, scaling, cast)
        if bias is not None:
            bias = torch.cat([bias, bias.new_zeros(down.shape[0])])
        return cls(*_packed(torch.cat([weight, down])), bias, widths, up, None, scaling, cast)

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``[N, in]`` -> ``[N, sum of outputs]``."""
        if self.packed:
            out = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        else:
            out = F.linear(x, self.weight, self.bias)
        if self.up is None:
            return out
        if self.down is None:  # A x came out of the same multiply
            out, reduced = out.split([sum(self.widths), self.up.shape[1]], dim=-1)
        else:
            reduced = F.linear(x.to(self.down.dtype) if self.cast_input else x, self.down)
        lora = F.linear(reduced, self.up)  # [N, sum of outputs]
        if isinstance(self.scaling, list):
            parts = lora.split(self.widths, dim=-1)
            lora = torch.cat([part * s for part, s in zip(parts, self.scaling, strict=True)], dim=-1)
        else:
            lora = lora * self.scaling
        return (out + lora).to(out.dtype)


@dataclass
class _Embedding:
    """The token embedding. Its LoRA adapter is folded into a copy of the table where it keeps it
    (``_keeps_updates``), else added as peft's ``Embedding.forward`` adds it (``out + (A^T[token] B^T) *
    scaling``, cast back to the output's dtype)."""

    weight: Tensor  # [vocabulary, hidden]
    adapter: tuple[Tensor, Tensor, float] | None  # (A^T, B^T, scaling)

    @classmethod
    def of(cls, module: torch.nn.Module) -> _Embedding:
        weight, adapter = _base(module).weight, _active_adapter(module)
        if adapter is not None and _keeps_updates(weight, [adapter]):
            down, up, scaling = adapter
            weight = weight.addmm(down.to(weight.dtype), up.to(weight.dtype), alpha=scaling)
            adapter = None
        return cls(weight, adapter)

    def __call__(self, token: Tensor) -> Tensor:
        """``token`` ``[N]`` -> ``[N, hidden]``."""
        out = F.embedding(token, self.weight)
        if self.adapter is None:
            return out
        down, up, scaling = self.adapter
        return (out + (F.embedding(token, down) @ up) * scaling).to(out.dtype)


@dataclass
class _Layer:
    """One decoder layer's weights, and its key/value buffers ``[N, K, P + T, D]``."""

    input_norm: Tensor
    qkv: _Projection
    qk_norm: Tensor | None  # [H + K, D] Qwen3's per-head q and k RMSNorm weights, else None
    output: _Projection
    post_attention_norm: Tensor
    gate_up: _Projection
    down: _Projection
    activation: Callable[[Tensor], Tensor]
    keys: Tensor
    values: Tensor


class LlamaDecoder:
    """Decoding steps of a ``SUPPORTED_MODELS`` model after its prompt cache; see the module docstring.

    Args:
        model: the causal LM, or a ``peft`` LoRA model of one (``lora_base_model``), in eval mode; its
            weights and adapters must not change while the decoder is in use.
        cache: the ``DynamicCache`` its forward built for the prompts, N / ``repeats`` rows of P positions.
        repeats: how many consecutive rows continue each prompt (G); its keys and values are repeated into
            the decoder's buffers, so the repeated cache is never built.
        positions: ``[N, 1]`` the position id of each row's first new token.
        attention_mask: ``[N, P + T]`` 1 on the positions attended to (left padding 0), or None when all are.
        max_new_tokens: T.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        repeats: int,
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
            prompts, kv_heads, prompt_length, head_dim = cached.keys.shape
            # zeros, not garbage, in the slots not yet written: ``static_step`` attends to them with weight 0,
            # and 0 times a NaN left in memory would be NaN
            keys = cached.keys.new_zeros(prompts, repeats, kv_heads, prompt_length + max_new_tokens, head_dim)
            values = torch.zeros_like(keys)
            keys[..., :prompt_length, :] = cached.keys.unsqueeze(1)
            values[..., :prompt_length, :] = cached.values.unsqueeze(1)
            keys, values = keys.flatten(0, 1), values.flatten(0, 1)  # [N, K, P + T, D], prompt-major rows
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
                    qkv=_Projection.of(attention.q_proj, attention.k_proj, attention.v_proj),
                    qk_norm=qk_norm,
                    output=_Projection.of(attention.o_proj),
                    post_attention_norm=layer.post_attention_layernorm.weight,
                    gate_up=_Projection.of(mlp.gate_proj, mlp.up_proj),
                    down=_Projection.of(mlp.down_proj),
                    activation=mlp.act_fn,
                    keys=keys,
                    values=values,
                )
            )
        self.head_dim, self.scaling = head_dim, attention.scaling
        self.eps = config.rms_norm_eps
        self.embedding = _Embedding.of(decoder.embed_tokens)
        self.final_norm, self.lm_head = decoder.norm.weight, _Projection.of(model.lm_head)
        steps = positions + torch.arange(max_new_tokens, device=positions.device)  # [N, T]
        cos, sin = decoder.rotary_emb(self.embedding.weight, steps)  # [N, T, D] each
        self.cos, self.sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [N, T, 1, D]: the same for every head
        # SDPA's boolean mask: True where attended; ``create_causal_mask`` gives None when all are.
        self.padding_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        self.slots = torch.arange(self.prompt_length + max_new_tokens, device=positions.device)  # [P + T]
        half = head_dim // 2  # rotate_half(x) = cat(-x[half:], x[:half]) = x @ rotation, exactly
        identity = torch.eye(half, dtype=cos.dtype, device=cos.device)
        self.rotation = torch.zeros(head_dim, head_dim, dtype=cos.dtype, device=cos.device)
        self.rotation[half:, :half], self.rotation[:half, half:] = -identity, identity

    @staticmethod
    def unsupported(model: PreTrainedModel, cache: Cache) -> str | None:
        """Why ``model`` and the cache its forward built cannot be decoded here, or None where they can: a
        ``SUPPORTED_MODELS`` class (or a peft LoRA model of one with plain LoRA adapters,
        ``lora_base_model``) with SDPA attention (whose boolean mask ``step`` builds), rotary frequencies
        that do not depend on the sequence length, and full-attention key/value cache layers only (a sliding
        window would need its own mask); not float64 weights under autocast, which leaves them as they are
        where the decoder casts every weight to its dtype."""
        lora_base = lora_base_model(model)
        if lora_base is None and hasattr(model, "peft_config"):
            return (
                "its peft adapters are not plain LoRA adapters it can apply (DoRA, LoRA biases, "
                "modules_to_save, another tuner, several active adapters, A matrices in mixed dtypes or, "
                "under autocast, in neither float32 nor autocast's dtype)"
            )
        model = model if lora_base is None else lora_base
        if type(model) not in SUPPORTED_MODELS:
            names = ", ".join(supported.__name__ for supported in SUPPORTED_MODELS)
            return f"{type(model).__name__} is not one of {names}"
        if torch.is_autocast_enabled(model.device.type) and model.dtype == torch.float64:
            return "float64 weights under autocast"
        if model.config._attn_implementation != "sdpa":
            return f"its attention is {model.config._attn_implementation!r}, not 'sdpa'"
        rope_type = model.model.rotary_emb.rope_type
        if "dynamic" in rope_type or rope_type == "longrope":
            return f"its rotary embedding ({rope_type!r}) depends on the sequence length"
        if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return "its key/value cache has layers other than full attention (a sliding window)"
        return None

    def _rms_norm(self, hidden: Tensor, weight: Tensor) -> Tensor:
        return F.rms_norm(hidden, (hidden.shape[-1],), weight, self.eps)

    def step(self, token: Tensor, step: int) -> Tensor:
        """Next-token logits ``[N, V]`` after feeding ``token`` ``[N]`` as new token ``step`` (from 0)."""
        seen = self.prompt_length + step + 1  # positions attended to, this token's included
        mask = None if self.padding_mask is None else self.padding_mask[..., :seen]

        def store(layer: _Layer, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
            layer.keys[:, :, seen - 1] = keys
            layer.values[:, :, seen - 1] = values
            return layer.keys[:, :, :seen], layer.values[:, :, :seen]

        return self._logits(token, self.cos[:, step], self.sin[:, step], mask, store)

    def static_step(self, token: Tensor, step: Tensor) -> Tensor:
        """``step`` with the step a 0-dim long tensor on the model's device, and every tensor's shape the
        same at every step, so that one CUDA graph replays it (``rollout.cuda_graph``): the new keys and
        values are copied into their slot by index, and attention reads the whole buffers with the slots
        not yet written masked. Within rounding of ``step``: the masked slots add exact zeros to the
        softmax, but the kernel may group its sums otherwise."""
        slot = (step + self.prompt_length).view(1)
        mask = (self.slots <= slot).view(1, 1, 1, -1)  # [1, 1, 1, P + T]
        if self.padding_mask is not None:
            mask = self.padding_mask & mask  # [N, 1, 1, P + T]

        def store(layer: _Layer, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
            # in the buffers' dtype, as ``step``'s assignment casts: under autocast the rotated keys come
            # out float32 where the values are autocast's dtype, and the buffers are the prompt cache's
            layer.keys.index_copy_(2, slot, keys.unsqueeze(2).to(layer.keys.dtype))
            layer.values.index_copy_(2, slot, values.unsqueeze(2).to(layer.values.dtype))
            return layer.keys, layer.values

        cos, sin = (table.index_select(1, step.view(1)).squeeze(1) for table in (self.cos, self.sin))
        return self._logits(token, cos, sin, mask, store)

    def _logits(
        self,
        token: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        store: Callable[[_Layer, Tensor, Tensor], tuple[Tensor, Tensor]],
    ) -> Tensor:
        """Next-token logits ``[N, V]`` of ``token`` ``[N]`` at the rotary ``cos``, ``sin`` ``[N, 1, D]``;
        ``store`` puts each layer's new keys and values ``[N, K, D]`` into its buffers and returns the keys
        and values attended to, ``mask`` (boolean, None: all of them) says which."""
        rows, heads, kv_heads = token.shape[0], self.heads, self.kv_heads
        hidden = self.embedding(token)  # [N, hidden]
        for layer in self.layers:
            qkv = layer.qkv(self._rms_norm(hidden, layer.input_norm))
            qkv = qkv.view(rows, heads + 2 * kv_heads, self.head_dim)
            qk = qkv[:, : heads + kv_heads]
            if layer.qk_norm is not None:
                qk = F.rms_norm(qk, (self.head_dim,), None, self.eps) * layer.qk_norm
            qk = qk * cos + (qk @ self.rotation) * sin
            keys, values = store(layer, qk[:, heads:], qkv[:, heads + kv_heads :])
            # As transformers' SDPA attention does, for the same rounding: without a mask, SDPA's own
            # grouped-query support; with one, the query heads grouped by their key/value head.
            query = qk[:, :heads]
            if mask is None:
                query = query.unsqueeze(2)  # [N, H, 1, D]
            else:
                query = query.reshape(rows, kv_heads, heads // kv_heads, self.head_dim)
            attended = F.scaled_dot_product_attention(
                query,
                keys,
                values,
                attn_mask=mask,
                scale=self.scaling,
                enable_gqa=mask is None and heads != kv_heads,
            )
            hidden = hidden + layer.output(attended.reshape(rows, heads * self.head_dim))
            normed = self._rms_norm(hidden, layer.post_attention_norm)
            gate, up = layer.gate_up(normed).chunk(2, dim=-1)
            hidden = hidden + layer.down(layer.activation(gate) * up)
        return self.lm_head(self._rms_norm(hidden, self.final_norm))
