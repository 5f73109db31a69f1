"""The engine-independent rollout: prompts fitted to the context, masks, grouping."""

import pytest
import torch

from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout import SamplingConfig
from rgra_lightning.rollout.base import completion_mask
from tests.conftest import TINY_POLICY
from tests.conftest import sample as sample_rollout
from tests.tiny_models import PROMPTS


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(str(TINY_POLICY)), load_tokenizer(str(TINY_POLICY))


def test_overlong_prompt_is_truncated_from_the_left_with_a_warning(tiny):
    policy, tokenizer = tiny  # context window: 64 tokens
    config = SamplingConfig(num_generations=2, max_new_tokens=8)
    long_prompt = "+".join(["1"] * 40) + "="  # 80 tokens
    with pytest.warns(UserWarning, match="1 of 2 prompts are longer than 56 tokens"):
        rollout = sample_rollout(policy, tokenizer, [long_prompt, "2+2="], config)
    assert rollout.truncated_prompts == 1
    assert rollout.prompt_length == 56
    kept = tokenizer.decode(rollout.input_ids[0, :56], skip_special_tokens=True)
    assert long_prompt.endswith(kept) and kept.endswith("1=")


def test_overlong_prompt_is_rejected_when_asked(tiny):
    policy, tokenizer = tiny
    config = SamplingConfig(num_generations=2, max_new_tokens=8, prompt_overflow="error")
    with pytest.raises(ConfigError, match="1 of 1 prompts are longer than 56 tokens .* longest has 80"):
        sample_rollout(policy, tokenizer, ["+".join(["1"] * 40) + "="], config)
    with pytest.raises(ConfigError, match="max_new_tokens=64 leaves no room"):
        sample_rollout(policy, tokenizer, ["1+1="], SamplingConfig(max_new_tokens=64))


def test_prompt_overflow_option_is_validated(small_config, capsys):
    args = ["--config", str(small_config("rgra")), "--model.sampling.prompt_overflow=drop"]
    with pytest.raises(SystemExit):
        main(args, run=False)
    error = capsys.readouterr().err
    assert "prompt_overflow" in error and "truncate" in error and "error" in error


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 1, 7, 0], [1, 0, 0, 0, 0], [5, 5, 5, 5, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(completion_mask(ids, eos_token_id=1), expected)


def test_rollout_groups_samples_prompt_major():
    torch.manual_seed(0)
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    rollout = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(num_generations=4, max_new_tokens=28))
    assert rollout.input_ids.shape[0] == len(rollout.completions) == 12
    prompt_part = rollout.input_ids[:, : rollout.prompt_length]
    for row in range(12):  # rows 4k..4k+3 share prompt k
        assert torch.equal(prompt_part[row], prompt_part[(row // 4) * 4])
    assert all("boxed" in completion for completion in rollout.completions)
    assert policy.training  # sampling restores train mode

