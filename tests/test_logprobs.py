"""Training log-probs: agreement with the distribution the sampler drew from."""

import torch
from transformers import (
    GenerationConfig,
)

from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout import Rollout
from rgra_lightning.rollout.base import completion_mask
from tests.conftest import LOGPROB_RTOL, TINY_POLICY, assert_close_normwise
from tests.tiny_models import PROMPTS


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

