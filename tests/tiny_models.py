"""Random tiny policies of several families over the shipped tokenizer, the prompts they decode, and what
``generate`` samples from them: shared by the rollout, decoding and prompt-cache tests."""

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from rgra_lightning.models import LoraConfig, add_lora, load_causal_lm
from rgra_lightning.rollout import SamplingConfig
from tests.conftest import TINY_POLICY

PROMPTS = ["6*(-2)=", "1/8+5/8=", "-3-(-4)="]  # different lengths, so the batch is left-padded


def tiny_dimensions(tokenizer) -> dict[str, int]:
    """Sizes of the random test models: the tiny vocabulary, 2 layers, 64 wide, 2 key-value heads."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
    }


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

