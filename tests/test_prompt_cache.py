"""A prompt encoded once per group gives the log-probs and gradients of full sequences."""

from dataclasses import replace

import pytest
import torch
from transformers import (
    Lfm2Config,
    Lfm2ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import load_tokenizer
from rgra_lightning.rollout import SamplingConfig
from tests.conftest import LOGPROB_RTOL, TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.conftest import sample as sample_rollout
from tests.tiny_models import PROMPTS, tiny_dimensions, tiny_policy


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


