"""The default rollout engine: samples from the training policy itself with Hugging Face models.

Prompts are encoded once per group (``prompt_cache.prefill``), then each step feeds the previous token
through a ``LlamaDecoder`` where it supports the policy (the same logits in a third of the time on the tiny
policy), else through the policy's forward with the cache: other architectures, ``peft`` adapters,
FSDP2-sharded policies (whose forward hooks gather the parameters).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from rgra_lightning.distributed import gathered_for_generation, is_sharded
from rgra_lightning.prompt_cache import prefill
from rgra_lightning.rollout.base import Rollout, RolloutEngine, assemble_rollout, tokenize_prompts
from rgra_lightning.rollout.llama_decode import LlamaDecoder
from rgra_lightning.rollout.sampling import SamplingConfig, next_tokens


class HFEngine(RolloutEngine):
    """Samples from the bound policy with a KV-cache decoding loop; it needs no weight updates, since
    it reads the policy's own parameters."""

    def generate(self, prompts: list[str], sampling: SamplingConfig, greedy: bool = False) -> Rollout:
        """``sampling.num_generations`` completions for each prompt (one when ``greedy``).

        Sampling runs in eval mode without autograd; the returned tensors are built after it, as ordinary
        tensors that the update's forward pass may save for backward.
        """
        policy, tokenizer = self.policy, self.tokenizer
        prompt_ids, prompt_mask, truncated = tokenize_prompts(tokenizer, prompts, sampling, policy)
        repeats = 1 if greedy else sampling.num_generations
        stop_ids = torch.as_tensor(self.stop_ids, dtype=torch.long, device=prompt_ids.device)
        was_training = policy.training
        policy.eval()
        # Inference mode skips autograd's bookkeeping, a tenth of each decoding step here; FSDP2 would
        # unshard parameters into inference tensors that it later updates in place, so a sharded policy
        # uses no_grad.
        inference = torch.inference_mode(not is_sharded(policy))
        with gathered_for_generation(policy), torch.no_grad(), inference:
            completion_ids = _decode(
                policy, prompt_ids, prompt_mask, repeats, sampling, greedy, stop_ids, tokenizer.pad_token_id
            )
        policy.train(was_training)
        return assemble_rollout(
            tokenizer, prompt_ids, prompt_mask, completion_ids, repeats, truncated, self.stop_ids
        )


def _decode(
    policy: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    repeats: int,
    config: SamplingConfig,
    greedy: bool,
    stop_ids: Tensor,
    pad_id: int,
) -> Tensor:
    """Completion tokens ``[B * repeats, T]`` (``T <= max_new_tokens``) for left-padded prompts ``[B, P]``.

    A row that has produced one of the stop tokens ``stop_ids`` ``[S]`` gets ``pad_id`` from then on, and
    decoding stops once every row has one.
    """
    logits, cache = prefill(policy, prompt_ids, prompt_mask, repeats)
    rows, prompt_length = logits.shape[0], prompt_ids.shape[1]
    # Generated tokens are all attended to, as in ``generate``: a row's tokens after its EOS are ignored.
    attention_mask = torch.ones(
        rows, prompt_length + config.max_new_tokens, dtype=prompt_mask.dtype, device=prompt_mask.device
    )
    attention_mask[:, :prompt_length] = prompt_mask.repeat_interleave(repeats, dim=0)
    positions = prompt_mask.sum(dim=1, keepdim=True).repeat_interleave(repeats, dim=0)  # [N, 1]
    decoder = None
    if not is_sharded(policy) and LlamaDecoder.supports(policy, cache):
        padded = not bool(prompt_mask.all())
        decoder = LlamaDecoder(
            policy, cache, positions, attention_mask if padded else None, config.max_new_tokens
        )
    finished = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    tokens = []
    for step in range(config.max_new_tokens):
        token = next_tokens(logits, None if greedy else config, stop_ids, step).masked_fill(finished, pad_id)
        tokens.append(token)
        finished |= torch.isin(token, stop_ids)
        if step + 1 == config.max_new_tokens or bool(finished.all()):
            break
        if decoder is not None:
            logits = decoder.step(token, step)
        else:
            logits = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask[:, : prompt_length + step + 1],
                position_ids=positions + step,
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
    return torch.stack(tokens, dim=1)
