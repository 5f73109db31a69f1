"""The Llama fast decoding path: logits and samples equal the model's own forward and ``generate``."""

import pytest
import torch
from transformers import (
    Lfm2Config,
    Lfm2ForCausalLM,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.prompt_cache import position_ids, prefill
from rgra_lightning.rollout import SamplingConfig
from rgra_lightning.rollout.llama_decode import LlamaDecoder
from tests.conftest import TINY_POLICY
from tests.conftest import sample as sample_rollout
from tests.tiny_models import PROMPTS, generate_reference, tiny_dimensions, tiny_policy


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

