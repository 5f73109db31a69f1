"""HFEngine: sampling agrees with what ``generate`` draws; greedy determinism, min_new_tokens, recurrent
caches; the same tokens whichever the interval between checks for finished rows."""

from dataclasses import replace

import pytest
import torch
from transformers import DynamicCache, Lfm2Config, Lfm2ForCausalLM, LlamaForCausalLM

from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout import HFEngine, SamplingConfig
from rgra_lightning.rollout.llama_decode import LlamaDecoder
from tests.conftest import TINY_POLICY
from tests.conftest import sample as sample_rollout
from tests.tiny_models import PROMPTS, generate_reference, tiny_dimensions, tiny_policy


def test_greedy_rollout_is_deterministic():
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    first = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=28), greedy=True)
    second = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=28), greedy=True)
    assert len(first.completions) == 3 and first.completions == second.completions


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
        (SamplingConfig(num_generations=4, max_new_tokens=28, temperature=2.0, top_k=3), False),
        (SamplingConfig(num_generations=4, max_new_tokens=28, temperature=2.0, min_p=0.2), False),
        (  # each of the three filters changes these draws (checked by turning it off)
            SamplingConfig(
                num_generations=4, max_new_tokens=28, temperature=2.5, top_k=12, top_p=0.9, min_p=0.02
            ),
            False,
        ),
    ],
)
def test_sampling_draws_what_generate_draws_from_the_same_seed(config, greedy):
    """Token for token equal to ``generate`` (same RNG stream): the same temperature, top-k, nucleus, min-p
    (in ``generate``'s order) and EOS suppression, prompt-major rows, pad after EOS, and the same number of
    decoding steps."""
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    for seed in range(3):
        torch.manual_seed(seed)
        expected = generate_reference(policy, tokenizer, config, greedy)
        torch.manual_seed(seed)
        rollout = sample_rollout(policy, tokenizer, PROMPTS, config, greedy=greedy)
        assert torch.equal(rollout.input_ids, expected)


def test_the_fast_decoder_never_builds_the_repeated_prompt_cache(monkeypatch):
    """G completions per prompt: the decoder broadcasts each prompt's keys and values into its G rows'
    buffers, so the G-times repeated cache (as large as the prompts' part of those buffers) is never held
    beside them; the samples are ``generate``'s."""
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    config = SamplingConfig(num_generations=4, max_new_tokens=12, temperature=1.3)

    def refuse(*args, **kwargs):
        raise AssertionError("the prompt cache was repeated")

    torch.manual_seed(5)
    expected = generate_reference(policy, tokenizer, config, greedy=False)
    monkeypatch.setattr(DynamicCache, "batch_repeat_interleave", refuse)
    torch.manual_seed(5)
    assert torch.equal(sample_rollout(policy, tokenizer, PROMPTS, config).input_ids, expected)


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


def stop_set_policy(kind: str, tokenizer, extra_stops: str):
    """A tiny policy (``tiny_policy(kind)``) whose generation_config lists, besides the tokenizer's EOS,
    the characters ``extra_stops`` as EOS tokens, as Qwen2.5-Instruct's lists two ids and Llama 3.x's
    three."""
    policy = tiny_policy(kind, tokenizer)
    extra = tokenizer.convert_tokens_to_ids(list(extra_stops))
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, *extra]
    return policy


@pytest.mark.parametrize(
    ("kind", "extra_stops", "greedy"),
    [("llama", "(=", False), ("llama", "(=", True), ("qwen2", "=", False)],
)
def test_every_eos_of_the_generation_config_stops_a_completion(kind, extra_stops, greedy):
    """With three stop tokens (Llama-3-like) or two (Qwen2.5-like): the draws equal ``generate``'s with the
    same EOS list; each row stops at its first stop token, which ends the mask; pad follows; the text is what
    precedes it."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = stop_set_policy(kind, tokenizer, extra_stops)
    stops = policy.generation_config.eos_token_id
    config = SamplingConfig(num_generations=8, max_new_tokens=28, temperature=1.5)
    torch.manual_seed(0)
    expected = generate_reference(policy, tokenizer, config, greedy, eos_token_id=stops)
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config, greedy=greedy)
    assert torch.equal(rollout.input_ids, expected)
    ids, mask = rollout.completion_ids, rollout.completion_mask
    ended_by = []
    for row in range(ids.shape[0]):
        tokens = ids[row].tolist()
        first = next((i for i, t in enumerate(tokens) if t in stops), None)
        length = len(tokens) if first is None else first + 1
        assert mask[row].tolist() == [1] * length + [0] * (len(tokens) - length)
        assert tokens[length:] == [tokenizer.pad_token_id] * (len(tokens) - length)
        text = tokenizer.decode(tokens[: length if first is None else first], skip_special_tokens=True)
        assert rollout.completions[row] == text
        ended_by.append(None if first is None else tokens[first])
    if not greedy:  # sampled at temperature 1.5, every stop token ends some completion
        assert set(stops) <= set(ended_by), ended_by


def test_min_new_tokens_suppresses_every_stop_token():
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = stop_set_policy("llama", tokenizer, "(=")
    stops = policy.generation_config.eos_token_id
    config = SamplingConfig(num_generations=8, max_new_tokens=20, min_new_tokens=6, temperature=1.5)
    torch.manual_seed(0)
    expected = generate_reference(policy, tokenizer, config, greedy=False, eos_token_id=stops)
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config)
    assert torch.equal(rollout.input_ids, expected)
    assert not torch.isin(rollout.completion_ids[:, :6], torch.tensor(stops)).any()
    assert (rollout.completion_mask.sum(dim=1) < rollout.completion_ids.shape[1]).any()  # some stop later


def test_a_model_the_fast_decoder_refuses_is_sampled_through_its_forward_with_the_reason_warned():
    """Eager attention (another mask format than the decoder builds): the rollout still has its tokens,
    and a warning says why it took the slower path, which on a GPU costs about 2.5 times the time."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = LlamaForCausalLM.from_pretrained(TINY_POLICY, attn_implementation="eager")
    config = SamplingConfig(num_generations=2, max_new_tokens=4, min_new_tokens=4)
    engine = HFEngine().bind(policy, tokenizer)
    with pytest.warns(
        UserWarning, match="forward, not the fast decoder: its attention is 'eager', not 'sdpa'"
    ):
        rollout = engine.generate(PROMPTS, config)
    assert rollout.completion_ids.shape == (2 * len(PROMPTS), 4)


@pytest.mark.filterwarnings("ignore:HFEngine decodes through the policy's forward")
@pytest.mark.parametrize("seed", [0, 1])
def test_the_forward_path_gives_each_prompts_rows_its_own_first_token_logits(seed, monkeypatch):
    """Eager attention: the decoder refuses the policy, so the prompts' cache (keys and values only) and
    their next-token logits are repeated G times each. Each row's first token must be drawn from its own
    prompt's logits (prompt-major, as the cache is): the draws equal ``generate``'s for 3 distinct prompts,
    4 rows each."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = LlamaForCausalLM.from_pretrained(TINY_POLICY, attn_implementation="eager")
    config = SamplingConfig(num_generations=4, max_new_tokens=12, temperature=0.7)
    repeated, repeat = [], DynamicCache.batch_repeat_interleave

    def spy(cache, repeats):
        repeated.append(repeats)
        return repeat(cache, repeats)

    torch.manual_seed(seed)
    expected = generate_reference(policy, tokenizer, config, greedy=False)
    monkeypatch.setattr(DynamicCache, "batch_repeat_interleave", spy)
    torch.manual_seed(seed)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, config)
    assert repeated == [4]  # the cache was repeated, not rebuilt from the repeated prompts
    assert torch.equal(rollout.input_ids, expected)


@pytest.mark.parametrize("path", ["decoder", "forward"])
@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("interval", [2, 5, 8, 64])
def test_checking_for_finished_rows_every_k_steps_changes_no_token_and_no_later_draw(
    path, greedy, interval, monkeypatch
):
    """With three stop tokens every row stops well before max_new_tokens. Checking every k steps decodes
    up to k - 1 steps more, yet the completions are those of a check after every step (no trailing
    pad-only columns), and the random generator is where it was: the next draws are the same too."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = stop_set_policy("llama", tokenizer, "(=")
    if path == "forward":
        monkeypatch.setattr(LlamaDecoder, "unsupported", staticmethod(lambda model, cache: "forced"))
    config = SamplingConfig(num_generations=4, max_new_tokens=40, temperature=1.5)
    steps, forward = [0], policy.forward

    def counted(*args, **kwargs):  # the prompt's forward, then one per step on the forward path
        steps[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(policy, "forward", counted)
    for seed in range(3):
        runs = {}
        for k in (1, interval):
            steps[0] = 0
            torch.manual_seed(seed)
            engine = HFEngine(finished_check_interval=k).bind(policy, tokenizer)
            rollout = engine.generate(PROMPTS, config, greedy=greedy)
            runs[k] = (rollout.input_ids, torch.rand(4), steps[0])
        (ids, after, forwards), (ids_k, after_k, forwards_k) = runs[1], runs[interval]
        length = rollout.completion_ids.shape[1]
        assert length < config.max_new_tokens  # every row stopped early
        assert torch.equal(ids_k, ids) and torch.equal(after_k, after)
        if path == "forward":  # decoded up to the first check after the last row's stop token
            checked = min(-(-length // interval) * interval, config.max_new_tokens)
            assert forwards_k - forwards == checked - length


def test_the_check_interval_is_at_least_one_and_every_step_on_the_cpu_by_default():
    with pytest.raises(ConfigError) as error:  # named as the command line sets it
        HFEngine(finished_check_interval=0)
    assert str(error.value) == "model.rollout.finished_check_interval must be >= 1, got 0"
    assert HFEngine().finished_check_interval is None
    tokenizer = load_tokenizer(str(TINY_POLICY))
    engine = HFEngine().bind(stop_set_policy("llama", tokenizer, "(="), tokenizer)
    assert engine.finished_check_interval is None


def test_the_check_interval_is_set_in_yaml(small_config):
    engine = {"class_path": "rgra_lightning.rollout.HFEngine", "init_args": {"finished_check_interval": 4}}
    config = small_config("rgra", **{"model.init_args.rollout": engine})
    rollout = main(["--config", str(config)], run=False).model.rollout
    assert type(rollout) is HFEngine and rollout.finished_check_interval == 4


@pytest.mark.parametrize("path", ["decoder", "forward"])
@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("interval", [1, 3, 64])
def test_stop_strings_end_rows_as_the_same_stop_tokens_do_and_leave_the_generator_alike(
    path, greedy, interval, monkeypatch
):
    """The tiny policy's tokens are characters: stop strings "(" and "=" end each row where the stop
    tokens "(" and "=" do (seen at the checks every k steps, in the latest tokens' text), with the same
    tokens, masks, texts and the random generator where it is after a check every step."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    if path == "forward":
        monkeypatch.setattr(LlamaDecoder, "unsupported", staticmethod(lambda model, cache: "forced"))
    by_tokens = HFEngine().bind(stop_set_policy("llama", tokenizer, "(="), tokenizer)
    by_strings = HFEngine(finished_check_interval=interval).bind(tiny_policy("llama", tokenizer), tokenizer)
    config = SamplingConfig(num_generations=4, max_new_tokens=40, temperature=1.5)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = by_tokens.generate(PROMPTS, config, greedy=greedy)
        after_expected = torch.rand(4)
        torch.manual_seed(seed)
        rollout = by_strings.generate(PROMPTS, replace(config, stop_strings=("(", "=")), greedy=greedy)
        assert rollout.completion_ids.shape[1] < config.max_new_tokens  # every row stopped early
        assert torch.equal(rollout.input_ids, expected.input_ids)
        assert torch.equal(rollout.completion_mask, expected.completion_mask)
        assert rollout.completions == expected.completions
        assert torch.equal(rollout.truncated, expected.truncated)
        assert torch.equal(torch.rand(4), after_expected)
