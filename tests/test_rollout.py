"""Sampling and log-probs: masks, grouping, and agreement with what ``generate`` sampled from."""

from dataclasses import replace

import pytest
import torch
from transformers import (
    GenerationConfig,
    Lfm2Config,
    Lfm2ForCausalLM,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import LoraConfig, add_lora, load_causal_lm, load_tokenizer
from rgra_lightning.prompt_cache import position_ids, prefill
from rgra_lightning.rollout import Rollout, SamplingConfig
from rgra_lightning.rollout.base import completion_mask
from rgra_lightning.rollout.llama_decode import LlamaDecoder
from tests.conftest import TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.conftest import sample as sample_rollout

# fp32 logits of the tiny models sum over at most 128 features and 40 positions per layer.
LOGPROB_RTOL = rounding_rtol(torch.float32, 128 * 40)

PROMPTS = ["6*(-2)=", "1/8+5/8=", "-3-(-4)="]  # different lengths, so the batch is left-padded


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 1, 7, 0], [1, 0, 0, 0, 0], [5, 5, 5, 5, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(completion_mask(ids, eos_token_id=1), expected)


def test_rollout_groups_samples_prompt_major():
    torch.manual_seed(0)
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    rollout = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(num_generations=4, max_new_tokens=28))
    assert rollout.input_ids.shape[0] == len(rollout.completions) == 12
    prompt_part = rollout.input_ids[:, : rollout.prompt_length]
    for row in range(12):  # rows 4k..4k+3 share prompt k
        assert torch.equal(prompt_part[row], prompt_part[(row // 4) * 4])
    assert all("boxed" in completion for completion in rollout.completions)
    assert policy.training  # sampling restores train mode


def test_token_logprobs_match_the_sampling_distribution():
    """The training forward pass (left padding, explicit positions) reproduces generate's log-probs."""
    torch.manual_seed(0)
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    policy.eval()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    config = GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=None,
        max_new_tokens=20,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    out = policy.generate(
        **encoded, generation_config=config, output_logits=True, return_dict_in_generate=True
    )
    generated = out.sequences[:, encoded["input_ids"].shape[1] :]
    expected = torch.stack(
        [
            torch.log_softmax(logits.float() / 0.7, dim=-1).gather(1, generated[:, t : t + 1]).squeeze(1)
            for t, logits in enumerate(out.logits)
        ],
        dim=1,
    )
    mask = completion_mask(generated, tokenizer.eos_token_id)

    rollout = Rollout(
        input_ids=out.sequences,
        attention_mask=torch.cat([encoded["attention_mask"], mask], dim=1),
        completion_mask=mask,
        prompt_length=encoded["input_ids"].shape[1],
        completions=tokenizer.batch_decode(generated, skip_special_tokens=True),
    )
    logp, entropy = token_logprobs(policy, rollout, temperature=0.7)
    real = mask.bool()
    assert_close_normwise(logp[real], expected[real], LOGPROB_RTOL, "log-probs")
    assert (entropy[real] >= 0).all()
    logp_only, no_entropy = token_logprobs(policy, rollout, temperature=0.7, with_entropy=False)
    assert no_entropy is None and torch.equal(logp_only, logp)


def shared_prompt_models(tokenizer) -> dict[str, torch.nn.Module]:
    """Models whose prompt cache is repeated (Llama, Qwen2, LoRA, a sliding window shorter than the
    sequences) and one whose cache is not repeatable (convolution state: one pass over everything)."""
    sliding = MistralConfig(**tiny_dimensions(tokenizer), num_attention_heads=4, sliding_window=4)
    hybrid = Lfm2Config(
        **tiny_dimensions(tokenizer), num_attention_heads=2, layer_types=["conv", "full_attention"]
    )
    models = {kind: tiny_policy(kind, tokenizer) for kind in ("llama", "qwen2", "llama-lora")}
    torch.manual_seed(0)
    return models | {"sliding-window": MistralForCausalLM(sliding), "hybrid": Lfm2ForCausalLM(hybrid)}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama-lora", "sliding-window", "hybrid"])
def test_a_prompt_encoded_once_per_group_gives_the_log_probs_and_gradients_of_full_sequences(kind):
    """``token_logprobs`` on G rows sharing each prompt (the prompt's keys and values repeated) equals the
    pass over every full sequence, in value and in every parameter's gradient, also for a mini-batch of
    whole groups; a mini-batch that splits a group takes the full pass."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = shared_prompt_models(tokenizer)[kind]
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(num_generations=4, max_new_tokens=12))
    assert rollout.group_size == 4 and rollout.attention_mask[:, : rollout.prompt_length].eq(0).any()
    assert rollout.select(slice(4, 12)).group_size == 4 and rollout.select(slice(2, 6)).group_size == 1
    policy.train()
    results = {}
    for name, rows in (("shared", rollout), ("full", replace(rollout, group_size=1))):
        policy.zero_grad()
        logp, entropy = token_logprobs(policy, rows, temperature=0.9)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        gradients = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results[name] = logp.detach(), entropy, gradients
    (logp, entropy, gradients), (full_logp, full_entropy, full_gradients) = results["shared"], results["full"]
    real = rollout.completion_mask.bool()
    assert_close_normwise(logp[real], full_logp[real], LOGPROB_RTOL, "log-probs")
    assert_close_normwise(entropy[real], full_entropy[real], LOGPROB_RTOL, "entropy")
    assert gradients.keys() == full_gradients.keys() and gradients
    # Gradients also sum over the 12 rows' tokens: summed in another order, equal up to rounding.
    gradient_rtol = rounding_rtol(torch.float32, 128 * 40 * 12 * 12)
    for name, gradient in gradients.items():
        assert_close_normwise(gradient, full_gradients[name], gradient_rtol, name)
    with torch.no_grad():
        mini_logp, _ = token_logprobs(policy, rollout.select(slice(4, 12)), temperature=0.9)
    assert_close_normwise(mini_logp[real[4:12]], full_logp[4:12][real[4:12]], LOGPROB_RTOL, "mini-batch")


def test_greedy_rollout_is_deterministic():
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    first = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=28), greedy=True)
    second = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=28), greedy=True)
    assert len(first.completions) == 3 and first.completions == second.completions


def generate_reference(policy, tokenizer, config: SamplingConfig, greedy: bool) -> torch.Tensor:
    """What ``generate`` returns ``[N, P + T]`` for ``PROMPTS`` under ``config``, with nothing but our
    sampling options: top_k=0 disables the top-k of 50 that ``generate`` otherwise applies by default."""
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    generation = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else config.temperature,
        top_p=None if greedy else config.top_p,
        top_k=0,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=None if greedy else config.min_new_tokens or None,
        num_return_sequences=1 if greedy else config.num_generations,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    policy.eval()
    with torch.no_grad():
        return policy.generate(**encoded, generation_config=generation)


@pytest.mark.parametrize(
    ("config", "greedy"),
    [
        (SamplingConfig(max_new_tokens=28), True),
        (SamplingConfig(num_generations=4, max_new_tokens=28), False),
        (SamplingConfig(num_generations=4, max_new_tokens=28, temperature=1.7, top_p=0.8), False),
        (SamplingConfig(num_generations=4, max_new_tokens=28, temperature=1.3, min_new_tokens=20), False),
        (
            SamplingConfig(
                num_generations=8, max_new_tokens=40, temperature=0.6, top_p=0.95, min_new_tokens=5
            ),
            False,
        ),
    ],
)
def test_sampling_draws_what_generate_draws_from_the_same_seed(config, greedy):
    """Token for token equal to ``generate`` (same RNG stream): the same temperature, nucleus and EOS
    suppression, prompt-major rows, pad after EOS, and the same number of decoding steps."""
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    for seed in range(3):
        torch.manual_seed(seed)
        expected = generate_reference(policy, tokenizer, config, greedy)
        torch.manual_seed(seed)
        rollout = sample_rollout(policy, tokenizer, PROMPTS, config, greedy=greedy)
        assert torch.equal(rollout.input_ids, expected)


def test_completions_respect_min_new_tokens_and_pad_after_eos():
    torch.manual_seed(0)
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    config = SamplingConfig(num_generations=8, max_new_tokens=30, min_new_tokens=12, temperature=1.5)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config)
    ids, mask, eos = rollout.completion_ids, rollout.completion_mask, tokenizer.eos_token_id
    assert ids.shape[1] <= 30 and not (ids[:, :12] == eos).any()
    lengths = mask.sum(dim=1)
    assert (lengths >= 12).all() and (lengths < ids.shape[1]).any()  # some rows stop early
    ended = lengths < ids.shape[1]
    assert (ids[ended, lengths[ended] - 1] == eos).all()  # the last real token is the EOS
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    assert torch.equal(rollout.attention_mask[:, rollout.prompt_length :], mask)
    # Ordinary tensors (not inference tensors): the update's forward pass saves them for backward.
    logp, _ = token_logprobs(policy, rollout)
    logp.sum().backward()


def tiny_dimensions(tokenizer) -> dict[str, int]:
    """Sizes of the random test models: the tiny vocabulary, 2 layers, 64 wide, 2 key-value heads."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
    }


def test_a_model_with_recurrent_cache_state_samples_what_generate_samples():
    """A hybrid model (a convolution layer's state besides keys and values) takes the path that encodes the
    repeated prompts rather than repeating the cache; the draws still equal ``generate``'s."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    config = Lfm2Config(
        **tiny_dimensions(tokenizer),
        num_attention_heads=2,
        layer_types=["conv", "full_attention"],
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    policy = Lfm2ForCausalLM(config)
    sampling = SamplingConfig(num_generations=4, max_new_tokens=12)
    torch.manual_seed(1)
    expected = generate_reference(policy, tokenizer, sampling, greedy=False)
    torch.manual_seed(1)
    assert torch.equal(sample_rollout(policy, tokenizer, PROMPTS, sampling).input_ids, expected)


def tiny_policy(kind: str, tokenizer) -> torch.nn.Module:
    """The shipped tiny Llama; a random tiny Qwen2 (q/k/v biases, two query heads per key/value head) or
    Qwen3 (per-head q/k RMSNorm, with random weights so that it matters); or the tiny Llama under LoRA
    adapters with random (non-zero) updates, so that the adapters change every logit."""
    torch.manual_seed(0)
    if kind in ("qwen2", "qwen3"):
        config_class, model_class = {
            "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        }[kind]
        config = config_class(
            **tiny_dimensions(tokenizer),
            num_attention_heads=4,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = model_class(config)
        for name, parameter in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                torch.nn.init.normal_(parameter, mean=1.0, std=0.3)
        return model
    policy = load_causal_lm(str(TINY_POLICY))
    if kind == "llama-lora":
        policy = add_lora(policy, LoraConfig(rank=4))
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.05)
    return policy


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_llama_decoder_step_computes_the_models_logits(kind, padded, dtype):
    """``LlamaDecoder.step`` gives the model's forward's logits, with left padding (an explicit mask) and
    without (no mask), at every step of a few: bit-identical in float32 on CPU, within bfloat16 rounding
    (the same operations, some fused) in bfloat16."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy(kind, tokenizer).to(dtype).eval()
    prompts = PROMPTS if padded else ["1+2=", "3*4=", "5-6="]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert bool(mask.all()) != padded
    new_tokens = torch.tensor([[5, 9, 13, 17, 21, 25], [7, 7, 7, 2, 2, 2], [3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        _, cache = prefill(policy, ids, mask, repeats=2)
        _, reference_cache = prefill(policy, ids, mask, repeats=2)
        assert LlamaDecoder.supports(policy, cache)
        attention_mask = torch.ones(6, ids.shape[1] + len(new_tokens), dtype=mask.dtype)
        attention_mask[:, : ids.shape[1]] = mask.repeat_interleave(2, dim=0)
        positions = position_ids(attention_mask)
        first = positions[:, ids.shape[1] : ids.shape[1] + 1]
        decoder = LlamaDecoder(policy, cache, first, attention_mask if padded else None, len(new_tokens))
        for step, token in enumerate(new_tokens):
            seen = ids.shape[1] + step + 1
            expected = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask[:, :seen],
                position_ids=positions[:, seen - 1 : seen],
                cache=reference_cache,
                use_cache=True,
            ).logits[:, -1]
            logits = decoder.step(token, step)
            if dtype == torch.float32:
                assert torch.equal(logits, expected), step
            else:
                # The same operations, some fused, rounded to bfloat16: within one or two bfloat16 steps
                # (8 bits of mantissa) at the logits' largest magnitude.
                tolerance = torch.finfo(dtype).eps * expected.abs().max().item()
                torch.testing.assert_close(logits, expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "llama-lora"])
@pytest.mark.parametrize("greedy", [True, False])
def test_decoding_samples_what_the_full_forward_and_generate_sample(kind, greedy, monkeypatch):
    """Completions token for token equal to decoding through the model's forward and to ``generate``
    (``LlamaDecoder`` for the plain models, the forward for LoRA)."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy(kind, tokenizer)
    config = SamplingConfig(num_generations=4, max_new_tokens=24, temperature=1.3, top_p=0.9)
    runs = {}
    for path in ("decoder", "forward"):
        if path == "forward":
            monkeypatch.setattr(LlamaDecoder, "supports", staticmethod(lambda model, cache: False))
        torch.manual_seed(1)
        runs[path] = sample_rollout(policy, tokenizer, PROMPTS, config, greedy=greedy).input_ids
    torch.manual_seed(1)
    expected = generate_reference(policy, tokenizer, config, greedy)
    assert torch.equal(runs["decoder"], runs["forward"])
    assert torch.equal(runs["decoder"], expected)


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
    unsupported = [
        MistralForCausalLM(mistral),  # sliding-window cache layers
        SubclassedLlama(llama.config),
        LlamaForCausalLM.from_pretrained(TINY_POLICY, attn_implementation="eager"),  # another mask format
        LlamaForCausalLM(type(llama.config)(**dynamic_rope)),  # frequencies change with the length
        tiny_policy("llama-lora", tokenizer),  # the adapters live in the forward of peft's layers
        Lfm2ForCausalLM(  # convolution state in the cache
            Lfm2Config(
                **tiny_dimensions(tokenizer),
                num_attention_heads=2,
                layer_types=["conv", "full_attention"],
            )
        ),
    ]
    with torch.no_grad():
        for policy in [llama, *unsupported]:
            _, cache = prefill(policy.eval(), encoded["input_ids"], encoded["attention_mask"], repeats=2)
            assert LlamaDecoder.supports(policy, cache) == (policy is llama), type(policy).__name__
