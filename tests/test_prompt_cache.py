"""A prompt encoded once per micro-batch gives the log-probs and gradients of full sequences."""

import pytest
import torch
from transformers import (
    Lfm2Config,
    Lfm2ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from rgra_lightning import logprobs
from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import load_tokenizer
from rgra_lightning.prompt_cache import distinct_prompts, encode_prompts, position_ids
from rgra_lightning.rollout import Rollout, SamplingConfig
from tests.conftest import (
    LOGPROB_RTOL,
    TINY_POLICY,
    assert_close_normwise,
    head_input_layouts,
    rounding_rtol,
)
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


def full_vocabulary_logprobs(
    model, rollout: Rollout, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward computation: one pass over every full-width sequence, the logits of every
    position, a full-vocabulary fp32 log-softmax, the sampled tokens' entries and the entropy ``[N, T]``."""
    logits = model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=position_ids(rollout.attention_mask),
    ).logits
    log_probs = torch.log_softmax(logits[:, rollout.prompt_length - 1 : -1].float() / temperature, dim=-1)
    token_logp = log_probs.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    return token_logp, -(log_probs.exp() * log_probs).sum(dim=-1).detach()


def test_distinct_prompts_compare_ids_and_mask():
    """Rows 0 and 2 hold one prompt; row 1 has the same ids as row 3, but its first id is padding there
    (the padding id is also a real token): they stay apart."""
    ids = torch.tensor([[0, 5, 6], [0, 7, 8], [0, 5, 6], [0, 7, 8]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1]])
    unique_ids, unique_mask, rows = distinct_prompts(ids, mask)
    assert (
        len(unique_ids) == 3 and torch.equal(unique_ids[rows], ids) and torch.equal(unique_mask[rows], mask)
    )
    assert distinct_prompts(ids[:2], mask[:2]) is None  # nothing shared: one pass is cheaper


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama-lora", "sliding-window", "hybrid"])
def test_a_prompt_encoded_once_per_micro_batch_gives_the_log_probs_and_gradients_of_full_sequences(kind):
    """``token_logprobs`` on G = 4 rows sharing each prompt (the prompt's keys and values repeated) equals
    the pass over every full sequence, in value and in every parameter's gradient, for all 12 rows and
    for a micro-batch that splits two groups (rows 2-7: 2 + 4 rows, two prompts encoded once each). The
    hybrid model's cache holds convolution state, which is not repeated: it takes the full pass."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = shared_prompt_models(tokenizer)[kind]
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(num_generations=4, max_new_tokens=12))
    assert rollout.attention_mask[:, : rollout.prompt_length].eq(0).any()
    prompt_rows: list[int] = []
    policy.register_forward_pre_hook(
        lambda module, args, kwargs: prompt_rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    policy.train()
    # Gradients also sum over the 12 rows' tokens: summed in another order, equal up to rounding.
    gradient_rtol = rounding_rtol(torch.float32, 128 * 40 * 12 * 12)
    for rows in (slice(0, 12), slice(2, 8)):
        part = rollout.select(rows)
        real = part.completion_mask.bool()
        weights = torch.linspace(-1, 1, real.numel()).view_as(real) * real
        results = {}
        for name, compute in (("shared", token_logprobs), ("full", full_vocabulary_logprobs)):
            policy.zero_grad()
            prompt_rows.clear()
            logp, entropy = compute(policy, part, 0.9)
            (logp * weights).sum().backward()
            gradients = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
            results[name] = logp.detach(), entropy, gradients, list(prompt_rows)
        (logp, entropy, gradients, calls), (full_logp, full_entropy, full_gradients, _) = (
            results["shared"],
            results["full"],
        )
        # The prompts first, then the completions on their cache (the hybrid's cannot be repeated: then
        # every full sequence)
        assert calls == [3 if rows == slice(0, 12) else 2, len(real)]
        assert_close_normwise(logp[real], full_logp[real], LOGPROB_RTOL, "log-probs")
        assert_close_normwise(entropy[real], full_entropy[real], LOGPROB_RTOL, "entropy")
        assert gradients.keys() == full_gradients.keys() and gradients
        for name, gradient in gradients.items():
            assert_close_normwise(gradient, full_gradients[name], gradient_rtol, name)


def test_a_frozen_head_gets_the_kept_positions_contiguous(monkeypatch):
    """The prompt prefill, and the log-prob passes where the head runs inside the forward, hand the output
    head a contiguous [N, K, H], not a strided slice of the hidden states: with a frozen head (LoRA) the
    slice made ``torch.matmul`` copy the head's weight per row on the CPU in bfloat16 (2.4 s a rollout on
    Qwen2.5-0.5B). The logits are the full forward's at the kept positions."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy("llama-lora", tokenizer).eval()
    assert not policy.get_output_embeddings().weight.requires_grad
    encoded = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad(), head_input_layouts(policy) as layouts:
        last, _ = encode_prompts(policy, ids, mask)
        full = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    assert layouts[0] is True
    torch.testing.assert_close(last, full[:, -1])  # float32, the same sums over 64 features
    config = SamplingConfig(num_generations=2, max_new_tokens=4, temperature=1.0)
    rollout = sample_rollout(policy, tokenizer, PROMPTS[:2], config)
    monkeypatch.setattr(logprobs, "output_head", lambda model: None)  # the head inside the forward
    # rows sharing their prompts (each encoded once, then the completions); rows that do not (one pass)
    for rows in (rollout, rollout.select(torch.tensor([0, 2]))):
        with torch.no_grad(), head_input_layouts(policy) as layouts:
            token_logprobs(policy, rows)
        assert layouts and all(layouts), layouts
