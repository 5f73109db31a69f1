"""The contract every rollout engine keeps, run against each engine:

- ``hf``: ``HFEngine`` on the CPU;
- ``hf-cuda-graphs``: ``HFEngine`` replaying its decoding steps as CUDA graphs, where CUDA is present;
- ``vllm-standin``: ``VLLMEngine`` driving the CPU stand-in of ``tests/rollout/vllm_standin.py`` (the
  engine's own code, vLLM's behaviour as the stand-in imitates it);
- ``vllm``: ``VLLMEngine`` with vLLM, where CUDA and vllm are present (skipped with the reason otherwise).

Shapes and masks, the first of several stop ids ends a completion, a stop string ends it at the token
completing it, G completions per prompt in prompt-major
order with the prompts' own token ids, greedy determinism, reproducible seeded sampling, the truncated flag,
the sampler's log-probs, and a weight update visible in the next rollout.
"""

import importlib.util
from dataclasses import replace

import pytest
import torch

from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import load_tokenizer
from rgra_lightning.rollout import HFEngine, SamplingConfig, VLLMEngine
from rgra_lightning.rollout import vllm as vllm_engine
from rgra_lightning.rollout.base import prompt_token_ids
from tests.conftest import LOGPROB_RTOL, TINY_POLICY, assert_close_normwise
from tests.rollout.vllm_standin import standin_vllm
from tests.tiny_models import PROMPTS, tiny_policy

ENGINES = ["hf", "hf-cuda-graphs", "vllm-standin", "vllm"]
CLOSING_BRACE = 94  # "}": the tiny policy closes \boxed{...} with it, then writes its EOS
SAMPLED = SamplingConfig(num_generations=4, max_new_tokens=12, temperature=1.5)
GREEDY = SamplingConfig(max_new_tokens=12)  # \boxed{answer} and EOS fit in 12 tokens
# How close the sampler's log-probs are to the trainer's (largest difference) for the engines that are not
# bounded by CPU rounding: hf's are the trainer's own forward; vllm's come from its fp32 GPU kernels.
LOGPROB_ATOL = {"hf": 0.0, "vllm": 1e-2}
VLLM_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class SharedVLLMEngine(VLLMEngine):
    """One vLLM engine for the whole test process: starting one takes tens of seconds and a process does
    not get its memory back. Each bound copy pushes its policy's weights before its first rollout."""

    shared = None

    def _start(self):
        if SharedVLLMEngine.shared is None:
            SharedVLLMEngine.shared = super()._start()
        else:  # the previous test's engine left it asleep
            self._asleep = self.sleep_level is not None
        return SharedVLLMEngine.shared


@pytest.fixture(params=ENGINES)
def engine_kind(request):
    return request.param


@pytest.fixture
def make_engine(engine_kind, monkeypatch):
    """``make(policy, tokenizer)``: the engine under test bound to ``policy`` (moved to its device)."""
    device = "cpu"
    if engine_kind == "hf-cuda-graphs":
        if not torch.cuda.is_available():
            pytest.skip("CUDA graphs need a CUDA GPU, and this machine has none")
        device = "cuda"

        def build():
            return HFEngine(cuda_graphs=True)

    elif engine_kind == "vllm":
        if not torch.cuda.is_available():
            pytest.skip("VLLMEngine runs on a CUDA GPU, and this machine has none")
        if importlib.util.find_spec("vllm") is None:
            pytest.skip("VLLMEngine needs vllm: pip install -e '.[vllm]'")
        device = "cuda"

        def build():
            return SharedVLLMEngine(gpu_memory_utilization=0.1, dtype="float32", enforce_eager=True)

    elif engine_kind == "vllm-standin":
        module, _ = standin_vllm()
        monkeypatch.setattr(vllm_engine, "_load_vllm", lambda: module)
        for name in VLLM_ENV:  # restored after the test: the engine sets them for vLLM
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)
        build = VLLMEngine
    else:
        build = HFEngine

    def make(policy, tokenizer):
        return build().bind(policy.to(device), tokenizer)

    return make


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY_POLICY))


def two_stop_policy(tokenizer, kind: str = "llama"):
    """The tiny policy with a second EOS id, "}", which it writes before its own EOS."""
    policy = tiny_policy(kind, tokenizer)
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, CLOSING_BRACE]
    return policy


def test_shapes_masks_and_prompt_major_groups_of_the_prompts_own_token_ids(make_engine, tokenizer):
    engine = make_engine(tiny_policy("llama", tokenizer), tokenizer)
    torch.manual_seed(0)
    rollout = engine.generate(PROMPTS, SAMPLED)
    group, rows = SAMPLED.num_generations, len(PROMPTS) * SAMPLED.num_generations
    prompt, width = rollout.prompt_length, rollout.completion_mask.shape[1]
    assert rollout.input_ids.shape == rollout.attention_mask.shape == (rows, prompt + width)
    assert rollout.completion_mask.shape == (rows, width) and 1 <= width <= SAMPLED.max_new_tokens
    assert len(rollout.completions) == rows
    expected = prompt_token_ids(tokenizer, PROMPTS)
    for row in range(rows):
        real = rollout.attention_mask[row, :prompt].bool()
        assert rollout.input_ids[row, :prompt][real].tolist() == expected[row // group]
        assert real.tolist() == sorted(real.tolist())  # left padding
    mask = rollout.completion_mask
    assert torch.equal(rollout.attention_mask[:, prompt:], mask)
    assert (rollout.completion_ids[mask == 0] == tokenizer.pad_token_id).all()
    assert any(len(set(rollout.completions[i : i + group])) > 1 for i in range(0, rows, group))
    if engine.returns_sampler_logprobs:
        logprobs = rollout.sampler_logprobs
        assert logprobs.shape == (rows, width) and (logprobs[mask == 0] == 0).all()
        assert (logprobs[mask == 1] <= 0).all() and logprobs[mask == 1].isfinite().all()
    else:
        assert rollout.sampler_logprobs is None


@pytest.mark.parametrize("greedy", [True, False])
def test_a_completion_ends_at_the_first_of_several_stop_ids_and_nothing_after_it_counts(
    make_engine, tokenizer, greedy
):
    engine = make_engine(two_stop_policy(tokenizer), tokenizer)
    stops = (tokenizer.eos_token_id, CLOSING_BRACE)
    assert engine.stop_ids == stops
    torch.manual_seed(0)
    rollout = engine.generate(PROMPTS, SAMPLED, greedy=greedy)
    ids, mask = rollout.completion_ids, rollout.completion_mask
    ended_by = []
    for row, tokens in enumerate(ids.tolist()):
        first = next((i for i, token in enumerate(tokens) if token in stops), None)
        length = len(tokens) if first is None else first + 1
        assert mask[row].tolist() == [1] * length + [0] * (len(tokens) - length)
        assert tokens[length:] == [tokenizer.pad_token_id] * (len(tokens) - length)
        text = tokens[: length if first is None else first]
        assert rollout.completions[row] == tokenizer.decode(text, skip_special_tokens=True)
        assert bool(rollout.truncated[row]) == (first is None)
        ended_by.append(None if first is None else tokens[first])
    assert CLOSING_BRACE in ended_by  # the second stop id ends completions (greedy: all of them)
    assert torch.equal(rollout.attention_mask[:, rollout.prompt_length :], mask)


@pytest.mark.parametrize("greedy", [True, False])
def test_a_completion_ends_at_the_token_that_completes_a_stop_string(make_engine, tokenizer, greedy):
    """ "ed{" spans three of the tiny policy's tokens in "\\boxed{": a completion holding it ends with
    them (masked in, pad after) and its text ends before it; one without it ends as before."""
    engine = make_engine(tiny_policy("llama", tokenizer), tokenizer)
    torch.manual_seed(0)
    rollout = engine.generate(PROMPTS, replace(SAMPLED, stop_strings=("ed{",)), greedy=greedy)
    ids, mask = rollout.completion_ids, rollout.completion_mask
    stopped = 0
    for row, tokens in enumerate(ids.tolist()):
        length = int(mask[row].sum())
        assert mask[row].tolist() == [1] * length + [0] * (len(tokens) - length)
        assert tokens[length:] == [tokenizer.pad_token_id] * (len(tokens) - length)
        text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
        if "ed{" in text:
            stopped += 1
            assert text.index("ed{") == len(text) - 3  # the first "ed{" ends at the last token
            assert rollout.completions[row] == text[:-3] and not rollout.truncated[row]
        else:
            ended = tokens[length - 1] == tokenizer.eos_token_id
            assert bool(rollout.truncated[row]) == (not ended)
    assert stopped == len(PROMPTS) if greedy else stopped > 0
    if rollout.sampler_logprobs is not None:
        assert (rollout.sampler_logprobs[mask == 0] == 0).all()


def test_the_truncated_flag_marks_completions_cut_at_max_new_tokens(make_engine, tokenizer):
    engine = make_engine(tiny_policy("llama", tokenizer), tokenizer)
    cut = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=6), greedy=True)
    assert cut.truncated.tolist() == [True] * 3  # \boxed{ is 6 tokens already
    assert cut.completion_mask.shape[1] == 6 and bool(cut.completion_mask.all())
    finished = engine.generate(PROMPTS, GREEDY, greedy=True)
    assert finished.truncated.tolist() == [False] * 3
    lengths = finished.completion_mask.sum(dim=1)
    last = finished.completion_ids[torch.arange(3), lengths - 1]
    assert (last == tokenizer.eos_token_id).all()


def test_greedy_decoding_is_deterministic_and_the_policys_own(make_engine, tokenizer):
    policy = tiny_policy("llama", tokenizer)
    engine = make_engine(policy, tokenizer)
    first, second = (engine.generate(PROMPTS, GREEDY, greedy=True) for _ in range(2))
    assert torch.equal(first.input_ids, second.input_ids) and first.completions == second.completions
    assert len(first.completions) == len(PROMPTS)
    own = HFEngine().bind(policy, tokenizer).generate(PROMPTS, GREEDY, greedy=True)
    assert torch.equal(first.input_ids, own.input_ids)


def test_seeded_sampling_is_reproducible(make_engine, tokenizer):
    engine = make_engine(tiny_policy("llama", tokenizer), tokenizer)
    draws = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        draws.append(engine.generate(PROMPTS, SAMPLED))
    assert torch.equal(draws[0].input_ids, draws[1].input_ids)
    assert not torch.equal(draws[0].input_ids, draws[2].input_ids)
    if draws[0].sampler_logprobs is not None:
        assert torch.equal(draws[0].sampler_logprobs, draws[1].sampler_logprobs)


def test_the_sampler_log_probs_are_the_sampled_tokens_log_probs(make_engine, engine_kind, tokenizer):
    """Without filters the sampler's distribution is the tempered softmax the trainer scores tokens with."""
    policy = tiny_policy("llama", tokenizer)
    engine = make_engine(policy, tokenizer)
    torch.manual_seed(0)
    rollout = engine.generate(PROMPTS, SAMPLED)
    if rollout.sampler_logprobs is None:
        assert not engine.returns_sampler_logprobs
        return
    with torch.no_grad():
        trainer, _ = token_logprobs(policy, rollout, SAMPLED.temperature)
    real = rollout.completion_mask.bool()
    if engine_kind == "vllm-standin":
        # One forward per row and token, without a cache, against the trainer's padded batch: the same
        # float32 sums in another order (``LOGPROB_RTOL``), norm-wise over the completions' tokens.
        assert_close_normwise(rollout.sampler_logprobs[real], trainer[real], LOGPROB_RTOL, engine_kind)
        return
    error = (rollout.sampler_logprobs - trainer)[real].abs().max().item()
    assert error <= LOGPROB_ATOL[engine_kind], error


@pytest.mark.parametrize("kind", ["llama", "llama-lora"])
def test_a_weight_update_is_visible_in_the_next_rollout(make_engine, tokenizer, kind):
    """Change the trained weights (all of them, or a LoRA policy's adapters), call ``update_weights``: the
    next greedy rollout is the changed policy's own greedy decode, which differs from before."""
    policy = tiny_policy(kind, tokenizer)
    engine = make_engine(policy, tokenizer)
    before = engine.generate(PROMPTS, GREEDY, greedy=True)
    own_before = HFEngine().bind(policy, tokenizer).generate(PROMPTS, GREEDY, greedy=True)
    assert torch.equal(before.input_ids, own_before.input_ids)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in policy.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * parameter.std().clamp(min=0.05))
    engine.update_weights()
    after = engine.generate(PROMPTS, GREEDY, greedy=True)
    own_after = HFEngine().bind(policy, tokenizer).generate(PROMPTS, GREEDY, greedy=True)
    assert not torch.equal(own_after.input_ids, own_before.input_ids)
    assert torch.equal(after.input_ids, own_after.input_ids)
