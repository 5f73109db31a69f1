"""The Llama fast decoding path: logits and samples equal the model's own forward and ``generate``, with
LoRA adapters folded into float32 weights, applied as peft applies them elsewhere, or, for other adapters,
through the forward."""

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import (
    Lfm2Config,
    Lfm2ForCausalLM,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.prompt_cache import encode_prompts, prefill
from rgra_lightning.rollout import SamplingConfig, llama_decode
from rgra_lightning.rollout.llama_decode import LlamaDecoder, _packed, _Projection
from rgra_lightning.versions import CACHE, release
from tests.conftest import LOGPROB_RTOL, TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.conftest import sample as sample_rollout
from tests.tiny_models import PROMPTS, decoding_inputs, generate_reference, tiny_dimensions, tiny_policy


def count_decoder_steps(monkeypatch) -> list[int]:
    """A one-element list counting the ``LlamaDecoder.step`` calls from now on."""
    count, step = [0], LlamaDecoder.step

    def counted(self, token, index):
        count[0] += 1
        return step(self, token, index)

    monkeypatch.setattr(LlamaDecoder, "step", counted)
    return count


def pack_every_weight(monkeypatch) -> None:
    """Have the decoder reorder every float32 weight for oneDNN, as it does a larger model's."""
    monkeypatch.setattr(llama_decode, "PACK_MIN_ENTRIES", 0)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_a_llama_decoder_step_computes_the_models_logits(kind, padded, dtype, packed, monkeypatch):
    """``LlamaDecoder.step`` gives the model's forward's logits, with left padding (an explicit mask) and
    without (no mask), at every step of a few: bit-identical in float32 on CPU (within float32 rounding
    for grouped key/value heads with a mask under transformers before 5.24, or with the weights reordered
    for oneDNN, which sums in another order), within bfloat16 rounding (the same operations, some fused)
    in bfloat16, where no weight is reordered."""
    if packed:
        pack_every_weight(monkeypatch)
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy(kind, tokenizer).to(dtype).eval()
    grouped = policy.config.num_key_value_heads < policy.config.num_attention_heads
    transformers_repeats_kv = release(transformers.__version__) < (5, 24)
    prompts = PROMPTS if padded else ["1+2=", "3*4=", "5-6="]
    new_tokens = torch.tensor([[5, 9, 13, 17, 21, 25], [7, 7, 7, 2, 2, 2], [3, 4, 5, 6, 7, 8]])
    ids, mask, attention_mask, positions = decoding_inputs(tokenizer, prompts, len(new_tokens))
    assert bool(mask.all()) != padded
    with torch.no_grad():
        _, cache = encode_prompts(policy, ids, mask)  # the decoder repeats it
        _, reference_cache = prefill(policy, ids, mask, repeats=2)
        assert LlamaDecoder.unsupported(policy, cache) is None
        first = positions[:, ids.shape[1] : ids.shape[1] + 1]
        decoder = LlamaDecoder(policy, cache, 2, first, attention_mask if padded else None, len(new_tokens))
        projections = [decoder.lm_head] + [layer.qkv for layer in decoder.layers]
        assert {projection.packed for projection in projections} == {packed and dtype == torch.float32}
        for step, token in enumerate(new_tokens):
            seen = ids.shape[1] + step + 1
            expected = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask[:, :seen],
                position_ids=positions[:, seen - 1 : seen],
                use_cache=True,
                **{CACHE: reference_cache},
            ).logits[:, -1]
            logits = decoder.step(token, step)
            if dtype == torch.float32 and packed:
                # Sums of up to 384 terms (the MLP's down projection) in another order, three layers deep.
                assert_close_normwise(logits, expected, rounding_rtol(dtype, 384), f"step {step}")
            elif dtype == torch.float32 and not (padded and grouped and transformers_repeats_kv):
                assert torch.equal(logits, expected), step
            elif dtype == torch.float32:
                # transformers before 5.24 attends with a mask over repeated key/value heads, where the
                # decoder (and 5.24) group the query heads: the same sums in another order.
                torch.testing.assert_close(logits, expected)
            else:
                # The same operations, some fused, rounded to bfloat16: within one or two bfloat16 steps
                # (8 bits of mantissa) at the logits' largest magnitude.
                tolerance = torch.finfo(dtype).eps * expected.abs().max().item()
                torch.testing.assert_close(logits, expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "llama-lora"])
@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_decoding_samples_what_the_full_forward_and_generate_sample(kind, greedy, packed, monkeypatch):
    """Completions token for token equal to decoding through the model's forward and to ``generate``
    (LoRA: the adapters folded into the decoder's float32 weights, against peft's forward; packed: the
    weights reordered for oneDNN, whose logits differ by rounding only, far below the gaps between the
    candidates' scores)."""
    if packed:
        pack_every_weight(monkeypatch)
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy(kind, tokenizer)
    config = SamplingConfig(num_generations=4, max_new_tokens=24, temperature=1.3, top_p=0.9)
    runs = {}
    for path in ("decoder", "forward"):
        if path == "forward":
            monkeypatch.setattr(LlamaDecoder, "unsupported", staticmethod(lambda model, cache: "forced"))
        steps = count_decoder_steps(monkeypatch)
        torch.manual_seed(1)
        runs[path] = sample_rollout(policy, tokenizer, PROMPTS, config, greedy=greedy).input_ids
        assert (steps[0] > 0) == (path == "decoder")
    torch.manual_seed(1)
    expected = generate_reference(policy, tokenizer, config, greedy)
    assert torch.equal(runs["decoder"], runs["forward"])
    assert torch.equal(runs["decoder"], expected)


def test_only_large_float32_cpu_weights_are_reordered_for_onednn():
    """A weight is reordered where a few-row multiply reads it faster so: float32 on the CPU, at least
    ``PACK_MIN_ENTRIES`` entries, oneDNN enabled; the reordered weight multiplies as ``F.linear`` does, up
    to float32 rounding of its 576-term sums; the weight itself is left as it was."""
    torch.manual_seed(0)
    large = torch.randn(1024, 576) * 0.05  # SmolLM2-135M's width; 2.25 PACK_MIN_ENTRIES
    original = large.clone()
    reordered, packed = _packed(large)
    assert packed and reordered.is_mkldnn and torch.equal(large, original)
    hidden = torch.randn(16, 576)
    expected = F.linear(hidden, large)
    got = torch.ops.mkldnn._linear_pointwise(hidden, reordered, None, "none", [], "")
    assert_close_normwise(got, expected, rounding_rtol(torch.float32, 576), "reordered multiply")
    for weight in (large[:256], large.bfloat16(), large.double()):  # too small; not float32
        assert _packed(weight) == (weight, False)
    with torch.backends.mkldnn.flags(enabled=False):
        assert _packed(large) == (large, False)


class SubclassedLlama(LlamaForCausalLM):
    """A subclass may change the forward, so it is not decoded by ``LlamaDecoder``."""


def test_models_without_the_plain_decoder_structure_decode_through_their_forward():
    tokenizer = load_tokenizer(str(TINY_POLICY))
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    mistral = MistralConfig(
        **tiny_dimensions(tokenizer),
        num_attention_heads=4,
        sliding_window=4,
    )
    llama = load_causal_lm(str(TINY_POLICY))
    dynamic_rope = llama.config.to_dict() | {
        "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    }
    reasons = [  # each model, and the reason the decoder gives for refusing it
        (MistralForCausalLM(mistral), "cache has layers other than full attention (a sliding window)"),
        (SubclassedLlama(llama.config), "SubclassedLlama is not one of LlamaForCausalLM, Mistral"),
        (  # another mask format
            LlamaForCausalLM.from_pretrained(TINY_POLICY, attn_implementation="eager"),
            "its attention is 'eager', not 'sdpa'",
        ),
        (  # frequencies change with the length
            LlamaForCausalLM(type(llama.config)(**dynamic_rope)),
            "its rotary embedding ('dynamic') depends on the sequence length",
        ),
        (  # convolution state in the cache
            Lfm2ForCausalLM(
                Lfm2Config(
                    **tiny_dimensions(tokenizer),
                    num_attention_heads=2,
                    layer_types=["conv", "full_attention"],
                )
            ),
            "Lfm2ForCausalLM is not one of",
        ),
    ]
    with torch.no_grad():
        for policy, reason in [(llama, None), *reasons]:
            _, cache = prefill(policy.eval(), encoded["input_ids"], encoded["attention_mask"], repeats=2)
            unsupported = LlamaDecoder.unsupported(policy, cache)
            assert unsupported is None if reason is None else reason in unsupported, type(policy).__name__


def lora_policy(
    tokenizer, dtype: torch.dtype = torch.float32, kind: str = "llama", **options
) -> torch.nn.Module:
    """The tiny Llama, or another ``tiny_policy`` ``kind`` (weights in ``dtype``), under peft LoRA adapters
    (rank 4, alpha 8, every linear layer unless ``options`` say otherwise; float32 adapters) whose updates
    are random and non-zero, so that they change every logit."""
    import peft

    torch.manual_seed(0)
    if kind == "llama":
        policy = load_causal_lm(str(TINY_POLICY), dtype=str(dtype).removeprefix("torch."))
    else:
        policy = tiny_policy(kind, tokenizer).to(dtype)
    options = {"target_modules": "all-linear"} | options
    config = peft.LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **options)
    policy = peft.get_peft_model(policy, config, autocast_adapter_dtype=True)
    randomize_adapters(policy)
    return policy


def randomize_adapters(policy: torch.nn.Module) -> None:
    """Random non-zero LoRA updates (B starts at zero), DoRA magnitudes and LoRA biases."""
    for name, parameter in policy.named_parameters():
        if any(part in name for part in ("lora_B", "lora_embedding_B", "lora_magnitude")):
            torch.nn.init.normal_(parameter, mean=1.0 if "magnitude" in name else 0.0, std=0.05)


def two_active_adapters(tokenizer) -> torch.nn.Module:
    import peft

    policy = lora_policy(tokenizer)
    policy.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "down_proj"]))
    randomize_adapters(policy)
    policy.base_model.set_adapter(["default", "second"])
    return policy


def cast_adapters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every LoRA A and B matrix in ``model`` (a peft model or one of its layers) to ``dtype``, in place."""
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.lora_A.to(dtype), module.lora_B.to(dtype)


def mixed_adapter_dtypes(tokenizer) -> torch.nn.Module:
    policy = lora_policy(tokenizer)
    cast_adapters(policy.base_model.model.model.layers[0].self_attn.k_proj, torch.bfloat16)
    return policy


def merged_adapters(tokenizer) -> torch.nn.Module:
    policy = lora_policy(tokenizer)
    policy.merge_adapter()
    return policy


# q/k/v and gate/up stacks that mix scalings (2, 0.75 on k_proj) and ranks (4, 2 on up_proj)
MIXED_SCALINGS_AND_RANKS = {"alpha_pattern": {"k_proj": 3}, "rank_pattern": {"up_proj": 2}}
PLAIN_LORA = {  # LoRA policies whose adapters the decoder applies itself (folded or as peft does)
    "all-linear": lambda tokenizer: lora_policy(tokenizer),
    "rank-stabilised": lambda tokenizer: lora_policy(tokenizer, use_rslora=True),
    # tied embeddings: the input embedding's adapter is not the head's, and the head's not the embedding's
    "embedding-and-head": lambda tokenizer: lora_policy(
        tokenizer, target_modules=["embed_tokens", "v_proj", "lm_head"]
    ),
    "head": lambda tokenizer: lora_policy(tokenizer, target_modules=["q_proj", "lm_head"]),
    "per-layer-scaling-and-rank": lambda tokenizer: lora_policy(tokenizer, **MIXED_SCALINGS_AND_RANKS),
    "merged": merged_adapters,  # the adapters are in the base weights already
}


def decode_steps(policy, tokenizer, new_tokens: torch.Tensor, decoder_path: bool) -> list[torch.Tensor]:
    """Next-token logits after feeding each row of ``new_tokens`` ``[steps, N]`` (N = 2 x ``PROMPTS``),
    through ``LlamaDecoder`` or through the model's forward with its cache."""
    ids, mask, attention_mask, positions = decoding_inputs(tokenizer, PROMPTS, len(new_tokens))
    length = ids.shape[1]
    logits = []
    with torch.no_grad():
        if decoder_path:
            _, cache = encode_prompts(policy.eval(), ids, mask)
            assert LlamaDecoder.unsupported(policy, cache) is None
            first = positions[:, length : length + 1]
            decoder = LlamaDecoder(policy, cache, 2, first, attention_mask, len(new_tokens))
        else:
            _, cache = prefill(policy.eval(), ids, mask, repeats=2)
        for step, token in enumerate(new_tokens):
            if decoder_path:
                logits.append(decoder.step(token, step))
            else:
                seen = length + step + 1
                logits.append(
                    policy(
                        input_ids=token.unsqueeze(1),
                        attention_mask=attention_mask[:, :seen],
                        position_ids=positions[:, seen - 1 : seen],
                        use_cache=True,
                        **{CACHE: cache},
                    ).logits[:, -1]
                )
    return logits


NEW_TOKENS = torch.tensor(
    [[5, 9, 13, 17, 21, 25], [7, 7, 7, 2, 2, 2], [3, 4, 5, 6, 7, 8], [1, 30, 2, 40, 3, 50]]
)


@pytest.mark.parametrize("variant", sorted(PLAIN_LORA))
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "bf16-mixed"])
def test_lora_decoding_gives_the_peft_forwards_logits_and_leaves_the_weights_alone(variant, precision):
    """The decoder's logits equal peft's forward: float32 weights with the adapters folded
    (W + scaling * B A) up to float32 rounding at every step; over bfloat16 weights, or float32 ones under
    bfloat16 autocast (``bf16-mixed``), the adapters applied as peft applies them, the two paths round
    differently (fused operations), so the decoder's logits are held to be no further from the exact
    (float32) computation on the same weights than peft's own (measured: 0.82-0.95 of peft's error under
    bfloat16 weights, equal bit for bit under autocast). The model's parameters are exactly what they
    were."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = PLAIN_LORA[variant](tokenizer)
    exact = None
    if precision == "bfloat16":  # the base weights only; peft keeps the adapters in float32
        for name, parameter in policy.named_parameters():
            if "lora_" not in name:
                parameter.data = parameter.data.to(torch.bfloat16)
        widened = copy.deepcopy(policy).float()  # the same values, computed in float32
        exact = torch.stack(decode_steps(widened, tokenizer, NEW_TOKENS, decoder_path=False))
    elif precision == "bf16-mixed":
        exact = torch.stack(decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=False))
    before = {name: value.clone() for name, value in policy.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        decoded = decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=True)
        expected = decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=False)
    if exact is None:
        for step, (logits, reference) in enumerate(zip(decoded, expected, strict=True)):
            assert_close_normwise(logits, reference, LOGPROB_RTOL, f"step {step}")
    else:
        peft_error = (torch.stack(expected).float() - exact).norm()
        assert 0 < (torch.stack(decoded).float() - exact).norm() <= 1.5 * peft_error
    after = policy.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    if variant != "merged":  # the adapters matter: without them the logits are far off
        with policy.disable_adapter():
            base = decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=True)
        assert (base[-1] - expected[-1]).float().norm() > 100 * LOGPROB_RTOL * expected[-1].float().norm()


BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
UNFOLDED = {  # (weights, adapters, autocast): the settings in which the decoder applies the adapters unfolded
    "bf16-weights": (BF16, F32, None),
    "bf16-mixed-over-bf16": (BF16, F32, BF16),  # the paper configs
    "bf16-mixed-over-fp32": (F32, F32, BF16),
    "fp16-mixed-over-bf16": (BF16, F32, F16),
    "bf16-adapters-over-fp32": (F32, BF16, None),  # peft computes the update in bfloat16: no fold
}


@pytest.mark.parametrize("setting", ["bf16-weights", "bf16-mixed-over-bf16", "bf16-mixed-over-fp32"])
def test_lora_projections_keep_an_update_a_fold_would_round_away(setting):
    """bfloat16 base weights, or float32 ones under bfloat16 autocast (``bf16-mixed``); float32 adapters
    with an update far below the weights' bfloat16 rounding step (as after a few steps at lr 1e-5). peft's
    forward keeps such an update where it moves an output across a rounding boundary; the decoder's
    projections (each layer alone and the q/k/v stack) move the same outputs, and are within one bfloat16
    step of peft's everywhere (one matrix multiply over several weights may sum in another order, which
    moves an output by a step about once in 2^15 outputs). Folded into the weights (W + scaling * B A,
    multiplied in bfloat16) most of the update would round away and the samples would come from an older
    policy."""
    dtype, _, autocast = UNFOLDED[setting]
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = lora_policy(tokenizer, dtype=dtype)
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=3e-5)
    attention = policy.base_model.model.model.layers[0].self_attn
    modules = (attention.q_proj, attention.k_proj, attention.v_proj)
    bases = torch.cat([module.get_base_layer().weight for module in modules])
    updates = torch.cat([module.get_delta_weight("default") for module in modules])
    assert bases.dtype == dtype and updates.dtype == torch.float32
    folded = (bases.float() + updates).to(dtype)
    rounded_away = (folded.bfloat16() == bases.bfloat16())[updates != 0].float().mean()
    assert rounded_away > 0.9
    torch.manual_seed(0)
    hidden = torch.randn(64, bases.shape[1], dtype=dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16, enabled=autocast is not None):
        stacked = _Projection.of(*modules)(hidden)
        one_by_one = torch.cat([_Projection.of(module)(hidden) for module in modules], dim=-1)
        expected = torch.cat([module(hidden) for module in modules], dim=-1)
        with policy.disable_adapter():
            base = torch.cat([module(hidden) for module in modules], dim=-1)
        fold = F.linear(hidden, folded)
    change = expected.float() - base.float()  # peft's: the outputs the update moved by a rounding step
    assert change.count_nonzero() > 100
    step = torch.finfo(torch.bfloat16).eps * expected.abs().max().item()
    for projected in (stacked, one_by_one):
        torch.testing.assert_close(projected, expected, atol=step, rtol=0)
        assert (projected.float() - base.float() - change).norm() <= 0.25 * change.norm()
    assert (fold.float() - base.float() - change).norm() > 0.5 * change.norm(), "a fold loses the update"


STACKS = {  # policies whose q/k/v and gate/up stacks mix the adapters' scalings and ranks, or leave gaps
    "uniform": {},
    "per-layer-scaling-and-rank": MIXED_SCALINGS_AND_RANKS,
    "some-layers": {"target_modules": ["q_proj", "v_proj", "up_proj"]},
    "qwen2-biases": {"kind": "qwen2"},  # the q/k/v biases, then zeros for the A matrices' outputs
}


@pytest.mark.parametrize("variant", sorted(STACKS))
@pytest.mark.parametrize("setting", sorted(UNFOLDED))
def test_a_stacked_projection_adds_each_layers_own_adapter(variant, setting):
    """Unfolded, the q/k/v and gate/up stacks give each peft layer's output, its own adapter's update
    included, in peft's dtypes: at most 1 % of the outputs differ at all (one matrix multiply may sum in
    another order than several: here none do) and none by more than one rounding step of the largest;
    the updates are many steps large, so a misplaced B or scaling, or another dtype, shows."""
    weights, adapters, autocast = UNFOLDED[setting]
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = lora_policy(tokenizer, dtype=weights, **STACKS[variant])
    cast_adapters(policy, adapters)
    layer = policy.base_model.model.model.layers[1]
    torch.manual_seed(0)
    for modules in [
        (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
        (layer.mlp.gate_proj, layer.mlp.up_proj),
    ]:
        hidden = torch.randn(64, modules[0].in_features, dtype=weights)
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast or BF16, enabled=autocast is not None):
            projected = _Projection.of(*modules)(hidden)
            outputs = [module(hidden) for module in modules]
            with policy.disable_adapter():
                bases = [module(hidden) for module in modules]
        expected = torch.cat(outputs, dim=-1)
        step = torch.finfo(expected.dtype).eps * expected.abs().max().item()
        for module, output, base in zip(modules, outputs, bases, strict=True):
            adapted = hasattr(module, "lora_A")
            assert ((output - base).abs().max() > 5 * step) == adapted  # the update is many steps large
        assert projected.dtype == expected.dtype
        assert (projected != expected).float().mean() <= 0.01
        torch.testing.assert_close(projected, expected, atol=step, rtol=0)


def test_adapters_the_decoder_would_round_otherwise_decode_through_the_forward():
    """Under autocast peft rounds the input to A's dtype before autocast rounds it to its own: the decoder
    takes float32 adapters or adapters in autocast's dtype, and float16 ones under bfloat16 autocast decode
    through the forward; so do float64 weights, which autocast leaves as they are."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")

    def supported(policy, autocast: torch.dtype | None) -> bool:
        enabled = autocast is not None
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast or BF16, enabled=enabled):
            _, cache = prefill(policy.eval(), encoded["input_ids"], encoded["attention_mask"], repeats=2)
            return LlamaDecoder.unsupported(policy, cache) is None

    policy = lora_policy(tokenizer)
    assert supported(policy, BF16) and supported(policy, F16) and supported(policy, None)
    cast_adapters(policy, F16)
    assert supported(policy, F16) and supported(policy, None) and not supported(policy, BF16)
    wide = load_causal_lm(str(TINY_POLICY)).double()
    assert supported(wide, None) and not supported(wide, BF16)


def test_with_the_adapters_disabled_the_decoder_reads_the_base_weights():
    """Inside ``disable_adapter()`` (the KL reference of a LoRA policy) the decoder's logits are the base
    model's, bit for bit, and the adapters are back afterwards."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = lora_policy(tokenizer)
    base = load_causal_lm(str(TINY_POLICY))
    with policy.disable_adapter():
        disabled = decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=True)
    expected = decode_steps(base, tokenizer, NEW_TOKENS, decoder_path=False)
    assert all(torch.equal(a, b) for a, b in zip(disabled, expected, strict=True))
    enabled = decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=True)
    forward = decode_steps(policy, tokenizer, NEW_TOKENS, decoder_path=False)
    assert_close_normwise(enabled[-1], forward[-1], LOGPROB_RTOL)


@pytest.mark.parametrize("variant", ["rank-stabilised", "head", "per-layer-scaling-and-rank"])
@pytest.mark.parametrize("greedy", [True, False])
def test_lora_decoding_samples_what_generate_samples(variant, greedy, monkeypatch):
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = PLAIN_LORA[variant](tokenizer)
    config = SamplingConfig(num_generations=4, max_new_tokens=24, temperature=1.3, top_p=0.9)
    steps = count_decoder_steps(monkeypatch)
    torch.manual_seed(2)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config, greedy=greedy).input_ids
    assert steps[0] > 0
    torch.manual_seed(2)
    assert torch.equal(rollout, generate_reference(policy, tokenizer, config, greedy))


def ia3_policy(tokenizer) -> torch.nn.Module:
    import peft

    policy = load_causal_lm(str(TINY_POLICY))
    config = peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    return peft.get_peft_model(policy, config)


OTHER_ADAPTERS = {  # peft models whose forward the decoder does not reproduce
    "dora": lambda tokenizer: lora_policy(tokenizer, use_dora=True),
    "lora-bias": lambda tokenizer: lora_policy(tokenizer, lora_bias=True),
    "modules-to-save": lambda tokenizer: lora_policy(tokenizer, modules_to_save=["norm"]),
    "ia3": ia3_policy,
    # the decoder stacks the A matrices of the layers that read one input, in one dtype
    "two-active-adapters": two_active_adapters,
    "mixed-adapter-dtypes": mixed_adapter_dtypes,
}


@pytest.mark.parametrize("variant", sorted(OTHER_ADAPTERS))
def test_other_adapters_decode_through_the_forward(variant, monkeypatch):
    """DoRA, LoRA biases, fully trained modules (``modules_to_save``), other tuners, two active adapters
    or adapters in mixed dtypes: the decoder refuses them, and the rollout (through peft's forward) still
    samples what ``generate`` samples."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = OTHER_ADAPTERS[variant](tokenizer)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        _, cache = prefill(policy.eval(), encoded["input_ids"], encoded["attention_mask"], repeats=2)
    assert "peft adapters are not plain LoRA adapters" in LlamaDecoder.unsupported(policy, cache)
    config = SamplingConfig(num_generations=4, max_new_tokens=12, temperature=1.3)
    steps = count_decoder_steps(monkeypatch)
    torch.manual_seed(3)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config).input_ids
    assert steps[0] == 0
    torch.manual_seed(3)
    assert torch.equal(rollout, generate_reference(policy, tokenizer, config, greedy=False))
