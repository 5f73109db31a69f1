"""Training log-probs: agreement with the distribution the sampler drew from, with a straightforward
full-vocabulary computation (chunked log-softmax, trimmed padding) and its memory bound."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import (
    GenerationConfig,
    GraniteConfig,
    GraniteForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import rgra_lightning.logprobs as logprobs_module
from rgra_lightning.errors import ConfigError
from rgra_lightning.logprobs import (
    fusable_head,
    micro_batches,
    output_head,
    row_slices,
    token_logprobs,
    trim_padding,
)
from rgra_lightning.models import enable_activation_checkpointing, load_causal_lm, load_tokenizer
from rgra_lightning.rollout import Rollout, SamplingConfig
from rgra_lightning.rollout.base import Stops, assemble_rollout
from tests.conftest import LOGPROB_RTOL, TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.conftest import sample as sample_rollout
from tests.test_prompt_cache import full_vocabulary_logprobs, shared_prompt_models
from tests.tiny_models import PROMPTS, tiny_dimensions, tiny_policy

# fp32 gradients: sums over 128 features, 40 positions and 12 rows x 12 tokens, in other orders.
GRADIENT_RTOL = rounding_rtol(torch.float32, 128 * 40 * 12 * 12)


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
    prompt_ids, prompt_mask = encoded["input_ids"], encoded["attention_mask"]
    stops = Stops((tokenizer.eos_token_id,))
    rollout = assemble_rollout(tokenizer, prompt_ids, prompt_mask, generated, 1, 0, stops)
    mask = rollout.completion_mask
    logp, entropy = token_logprobs(policy, rollout, temperature=0.7)
    real = mask.bool()
    assert_close_normwise(logp[real], expected[real], LOGPROB_RTOL, "log-probs")
    assert (entropy[real] >= 0).all()
    logp_only, no_entropy = token_logprobs(policy, rollout, temperature=0.7, with_entropy=False)
    assert no_entropy is None and torch.equal(logp_only, logp)


def models_under_test(tokenizer) -> dict[str, torch.nn.Module]:
    """The prompt-cache models (Llama, Qwen2, LoRA, sliding window, a convolution hybrid); Granite, whose
    logits are scaled after the head, so its head must not be applied outside the forward; and Llama with a
    forward hook on its head, which is then applied outside the forward but through its own forward, each
    chunk checkpointed, not fused (``fusable_head``)."""
    granite = GraniteConfig(**tiny_dimensions(tokenizer), num_attention_heads=4, logits_scaling=4.0)
    torch.manual_seed(0)
    hooked = tiny_policy("llama", tokenizer)
    hooked.lm_head.register_forward_hook(lambda module, args, output: output)
    return shared_prompt_models(tokenizer) | {"granite": GraniteForCausalLM(granite), "hooked-head": hooked}


def varied_rollout(policy, tokenizer) -> Rollout:
    """12 sampled completions (3 left-padded prompts x G = 4) of different lengths, some ending in EOS."""
    torch.manual_seed(0)
    config = SamplingConfig(num_generations=4, max_new_tokens=16, temperature=1.5)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config)
    lengths = rollout.completion_mask.sum(dim=1)
    assert lengths.unique().numel() > 2 and rollout.attention_mask[:, : rollout.prompt_length].eq(0).any()
    return rollout


def logprobs_and_gradients(
    policy, compute, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``compute()``'s log-probs and entropy, and every parameter's gradient of a weighted sum of the
    log-probs of the real tokens (``mask``; weights of both signs, so that no gradient is a plain sum), as
    the loss takes it."""
    policy.zero_grad()
    logp, entropy = compute()
    (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp) * mask).sum().backward()
    gradients = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, gradients


@pytest.mark.parametrize(
    "kind", ["llama", "qwen2", "llama-lora", "sliding-window", "hybrid", "granite", "hooked-head"]
)
def test_chunked_logprobs_and_gradients_equal_the_full_vocabulary_computation(kind):
    """Chunks of 5 tokens (about 30 per rollout, each checkpointed), the head applied outside the forward
    where the family allows it, each prompt encoded once per group, padding trimmed: the log-probs, the
    entropy and every parameter's gradient equal the straightforward computation, and positions past a
    completion's end are 0."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = models_under_test(tokenizer)[kind]
    assert (output_head(policy) is None) == (kind == "granite")
    assert fusable_head(policy, output_head(policy)) == (kind not in ("granite", "hooked-head"))
    rollout = varied_rollout(policy, tokenizer)
    policy.train()
    real = rollout.completion_mask.bool()
    expected_logp, expected_entropy, expected_gradients = logprobs_and_gradients(
        policy, lambda: full_vocabulary_logprobs(policy, rollout, 0.9), real
    )
    logp, entropy, gradients = logprobs_and_gradients(
        policy, lambda: token_logprobs(policy, rollout, temperature=0.9, chunk_tokens=5), real
    )
    assert_close_normwise(logp[real], expected_logp[real], LOGPROB_RTOL, "log-probs")
    assert_close_normwise(entropy[real], expected_entropy[real], LOGPROB_RTOL, "entropy")
    assert (logp[~real] == 0).all() and (entropy[~real] == 0).all()
    assert gradients.keys() == expected_gradients.keys() and gradients
    for name, gradient in gradients.items():
        assert_close_normwise(gradient, expected_gradients[name], GRADIENT_RTOL, name)
    with torch.no_grad():  # a micro-batch of one whole group, without gradient
        group, _ = token_logprobs(policy, rollout.select(slice(4, 8)), temperature=0.9, chunk_tokens=5)
    assert_close_normwise(group[real[4:8]], expected_logp[4:8][real[4:8]], LOGPROB_RTOL, "one group")


def test_trim_padding_drops_only_columns_that_every_row_has_as_padding():
    """Prompts of 2 and 3 real tokens in 4 columns, completions of 3 and 1 real tokens in 5 columns: the
    first prompt column and the last 2 completion columns go; a micro-batch with no real completion token
    keeps one column."""
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 1, 0, 0], [0, 4, 5, 6, 9, 0, 0, 0, 0]])
    completion = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    attention = torch.cat([torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]), completion], dim=1)
    rollout = Rollout(ids, attention, completion, 4, ["a", "b"])
    trimmed = trim_padding(rollout)
    assert trimmed.prompt_length == 3
    assert torch.equal(trimmed.input_ids, ids[:, 1:7]) and torch.equal(
        trimmed.attention_mask, attention[:, 1:7]
    )
    assert torch.equal(trimmed.completion_mask, completion[:, :3])
    assert torch.equal(trimmed.completion_ids, torch.tensor([[7, 8, 1], [9, 0, 0]]))
    empty = Rollout(ids, attention * 0, completion * 0, 4, ["a", "b"])
    assert trim_padding(empty).completion_mask.shape == (2, 1) and trim_padding(empty).prompt_length == 4
    assert trim_padding(trimmed) is trimmed  # nothing left to drop


def test_trimmed_micro_batches_give_the_log_probs_and_gradients_of_full_width_passes():
    """Micro-batches of 3 rows (not whole groups) run at their own widths give the full-width passes'
    log-probs and gradients; some run narrower than the rollout."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = models_under_test(tokenizer)["qwen2"].train()
    rollout = varied_rollout(policy, tokenizer)
    parts = row_slices(slice(0, 12), 3)
    widths = [trim_padding(rollout.select(part)).input_ids.shape[1] for part in parts]
    assert min(widths) < rollout.input_ids.shape[1]
    results = {}
    for trim in (True, False):
        results[trim] = logprobs_and_gradients(
            policy,
            lambda trim=trim: [
                torch.cat(parts)
                for parts in zip(
                    *(token_logprobs(policy, rollout.select(part), 0.9, trim=trim) for part in parts),
                    strict=True,
                )
            ],
            rollout.completion_mask,
        )
    (logp, entropy, gradients), (full_logp, full_entropy, full_gradients) = results[True], results[False]
    real = rollout.completion_mask.bool()
    assert_close_normwise(logp[real], full_logp[real], LOGPROB_RTOL, "log-probs")
    assert_close_normwise(entropy[real], full_entropy[real], LOGPROB_RTOL, "entropy")
    for name, gradient in gradients.items():
        assert_close_normwise(gradient, full_gradients[name], GRADIENT_RTOL, name)


def test_the_whole_sequence_pass_builds_no_key_value_cache():
    """The one pass over prompt + completion (activation checkpointing here) left ``use_cache`` to the
    config's True: a cache nobody reads, and under checkpointing transformers' warning that it is
    incompatible, at every micro-batch."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = load_causal_lm(str(TINY_POLICY))
    rollout = sample_rollout(
        policy, tokenizer, PROMPTS[:2], SamplingConfig(num_generations=2, max_new_tokens=6)
    )
    enable_activation_checkpointing(policy).train()
    passes = []
    forward = policy.forward

    def recording(*args, **kwargs):
        passes.append(kwargs.get("use_cache"))
        return forward(*args, **kwargs)

    policy.forward = recording
    token_logprobs(policy, rollout, 1.0)
    assert passes == [False]


class VocabularyTensors(TorchDispatchMode):
    """Records the largest fp32 tensor of vocabulary width (last dimension) that any operation allocates
    (views allocate nothing), and every one saved for the backward pass (parameters and their views, such
    as the head's transposed weight, are not counted)."""

    def __init__(self, vocabulary: int, model: torch.nn.Module) -> None:
        super().__init__()
        self.vocabulary, self.largest, self.saved = vocabulary, 0, []
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def counts(self, tensor: object) -> bool:
        return (
            isinstance(tensor, torch.Tensor)
            and tensor.dtype == torch.float32
            and tensor.dim() >= 1
            and tensor.shape[-1] == self.vocabulary
            and tensor.untyped_storage().data_ptr() not in self.parameters
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() for x in tree_leaves((args, kwargs)) if torch.is_tensor(x)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if self.counts(tensor) and tensor.untyped_storage().data_ptr() not in inputs:  # not a view
                self.largest = max(self.largest, tensor.numel())
        return out

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.counts(tensor):
            self.saved.append(tensor.shape)
        return tensor


@pytest.mark.parametrize("chunk_from", ["argument", "cpu_default"])
@pytest.mark.parametrize("head_outside", [True, False])
def test_no_fp32_vocabulary_tensor_exceeds_one_chunk_and_none_is_kept_for_backward(
    head_outside, chunk_from, monkeypatch
):
    """A 4,096-entry vocabulary, 8 rows x 48 tokens, chunks of 16 tokens: in the forward and backward
    passes no fp32 tensor of vocabulary width is larger than one chunk ``[16, V]`` and none is saved for
    the backward pass (each chunk is recomputed there); the straightforward computation creates and keeps
    ``[8, 48, V]`` ones. Without the head outside the forward (a family not known to allow it), the
    model's own logits are the one vocabulary-wide tensor kept whole, in its dtype (bf16 here). The chunk
    is given as ``chunk_tokens``, or left to the CPU default (one token more than ``CPU_LOGIT_CHUNK_ELEMENTS``
    entries, set to 15 tokens' worth; the accelerators' ``LOGIT_CHUNK_ELEMENTS`` would hold every token at
    once)."""
    vocabulary, rows, tokens, chunk = 4096, 8, 48, 16
    if chunk_from == "cpu_default":
        monkeypatch.setattr(logprobs_module, "CPU_LOGIT_CHUNK_ELEMENTS", (chunk - 1) * vocabulary)
        assert rows * tokens * vocabulary <= logprobs_module.LOGIT_CHUNK_ELEMENTS
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocabulary, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    if not head_outside:
        model.config.model_type = "not-known-to-have-a-plain-head"
        model.to(torch.bfloat16)
    assert (output_head(model) is not None) == head_outside
    ids = torch.randint(2, vocabulary, (rows, 4 + tokens))
    mask = torch.ones_like(ids)
    rollout = Rollout(ids, mask, mask[:, 4:], 4, [""] * rows)
    for name, compute in (
        (
            "chunked",
            lambda: token_logprobs(
                model, rollout, chunk_tokens=None if chunk_from == "cpu_default" else chunk
            ),
        ),
        ("straightforward", lambda: full_vocabulary_logprobs(model, rollout, 1.0)),
    ):
        recorder = VocabularyTensors(vocabulary, model)
        with recorder, torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda tensor: tensor):
            logp, _ = compute()
            logp.sum().backward()
        if name == "chunked":
            assert 0 < recorder.largest <= chunk * vocabulary and not recorder.saved
        else:
            assert recorder.largest >= rows * tokens * vocabulary and recorder.saved


def test_adapters_on_the_head_alone_keep_no_vocabulary_wide_tensor_for_backward():
    """LoRA on ``lm_head`` only: the hidden states need no gradient, yet the head's adapters do, so the
    chunks are still recomputed in the backward pass rather than each chunk's logits kept (2.25 times the
    fp32 logits of every token were kept)."""
    vocabulary, rows, tokens, chunk = 4096, 8, 48, 16
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocabulary, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
    )  # fmt: skip
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules=["lm_head"]))
    ids = torch.randint(2, vocabulary, (rows, 4 + tokens))
    mask = torch.ones_like(ids)
    rollout = Rollout(ids, mask, mask[:, 4:], 4, [""] * rows)
    recorder = VocabularyTensors(vocabulary, model)
    with recorder, torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda tensor: tensor):
        logp, _ = token_logprobs(model, rollout, chunk_tokens=chunk)
        logp.sum().backward()
    assert 0 < recorder.largest <= chunk * vocabulary and not recorder.saved
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_token_budget_micro_batches_sort_rows_by_length_and_fit_the_budget():
    """Five rows of prompt + completion lengths 2 + 6, 3 + 1, 2 + 2, 3 + 5 and 2 + 3: sorted by length
    (rows 0 and 3: 8 tokens, row 4: 5, rows 1 and 2: 4) and cut where rows x (longest prompt + longest
    completion) would exceed the budget, or the rows ``size``; a row over the budget runs alone."""
    prompt = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    completion = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]
    )
    ids = torch.zeros(5, 9, dtype=torch.long)
    rollout = Rollout(ids, torch.cat([prompt, completion], dim=1), completion, 3, [""] * 5)

    def cut(size: int | None, budget: int | None) -> list[list[int]]:
        return [part.tolist() for part in micro_batches(rollout, slice(0, 5), size, budget)]

    # Rows 0 + 3: 2 x (3 + 6) = 18 > 16; rows 3 + 4: 2 x (3 + 5) = 16; + row 1: 3 x 8 = 24 > 16;
    # rows 1 + 2: 2 x (3 + 2) = 10.
    assert cut(None, 16) == [[0], [3, 4], [1, 2]]
    assert cut(None, 100) == [[0, 1, 2, 3, 4]]  # 5 x 9 = 45
    assert cut(2, 100) == [[0, 3], [1, 4], [2]]
    assert cut(None, 1) == [[0], [3], [4], [1], [2]]
    assert micro_batches(rollout, slice(0, 5), 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]  # no budget
    assert [part.tolist() for part in micro_batches(rollout, slice(2, 5), None, 16)] == [[3, 4], [2]]


def test_a_token_budget_is_refused_for_a_sharded_model(monkeypatch):
    monkeypatch.setattr(logprobs_module, "is_sharded", lambda model: True)
    with pytest.raises(ConfigError, match="model.micro_batch_tokens does not work with FSDP2"):
        logprobs_module.check_token_budget(torch.nn.Linear(1, 1), 512)
    logprobs_module.check_token_budget(torch.nn.Linear(1, 1), None)
