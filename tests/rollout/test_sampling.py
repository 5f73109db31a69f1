"""Sampling options and token choice: top-k and min-p filtering against hand-computed results, the order
of the filters (also against ``generate``'s own logits processors), and their validation."""

import math

import pytest
import torch
from transformers import GenerationConfig

from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_causal_lm
from rgra_lightning.rollout import SamplingConfig
from rgra_lightning.rollout.sampling import filter_min_p, filter_top_k, filter_top_p, next_tokens
from tests.conftest import TINY_POLICY

INF = float("inf")
NO_STOPS = torch.tensor([], dtype=torch.long)


def test_top_k_keeps_the_k_highest_scores_and_their_ties():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 2.0, 5.0]])
    expected = torch.tensor([[3.0, -INF, 2.0, -INF], [-INF, 2.0, 2.0, 5.0]])  # row 1: a tie at the 2nd
    assert torch.equal(filter_top_k(scores, 2), expected)
    assert torch.equal(filter_top_k(scores, 4), scores) and torch.equal(filter_top_k(scores, 9), scores)


def test_min_p_drops_tokens_below_a_fraction_of_the_most_probable():
    # Probabilities 4/7, 2/7, 1/7: relative to the most probable 1, 1/2, 1/4.
    scores = torch.log(torch.tensor([[4.0, 2.0, 1.0]]))
    assert torch.equal(filter_min_p(scores, 0.3), torch.cat([scores[:, :2], torch.tensor([[-INF]])], dim=1))
    assert torch.equal(filter_min_p(scores, 0.25), scores)  # 1/4 is not below 0.25 * 1
    assert torch.equal(filter_min_p(scores, 1.0)[0, 1:], torch.tensor([-INF, -INF]))  # only the top stays


def drawn(logits: list[float], config: SamplingConfig, draws: int = 4000) -> set[int]:
    torch.manual_seed(0)
    return set(next_tokens(torch.tensor([logits]).repeat(draws, 1), config, NO_STOPS, step=0).tolist())


def test_the_filters_apply_in_generates_order():
    """Temperature, then top-k, then top-p on what top-k kept, then min-p on the temperature-scaled
    probabilities; 4000 draws would miss a token of probability >= 0.1 with probability < 1e-180."""
    probabilities = [math.log(p) for p in (0.5, 0.3, 0.2)]
    # top-p 0.6 alone keeps 0.5 + 0.3; after top-k 2 the kept are 0.625, 0.375 and 0.625 >= 0.6 alone.
    assert drawn(probabilities, SamplingConfig(top_p=0.6)) == {0, 1}
    assert drawn(probabilities, SamplingConfig(top_k=2, top_p=0.6)) == {0}
    # min-p 0.3 at temperature 1: 1/4 of the top is below 0.3. At temperature 2 the relative
    # probabilities are 1, 1/sqrt(2), 1/2, all kept.
    weights = [math.log(p) for p in (4.0, 2.0, 1.0)]
    assert drawn(weights, SamplingConfig(min_p=0.3)) == {0, 1}
    assert drawn(weights, SamplingConfig(min_p=0.3, temperature=2.0)) == {0, 1, 2}
    assert drawn(weights, SamplingConfig(top_k=1, min_p=0.0)) == {0}


@pytest.mark.parametrize(
    "options",
    [
        # top-p 0.6 keeps 0.45 + 0.27 and min-p 0.5 then keeps both (0.27 >= 0.5 * 0.45); min-p first
        # would leave 0.625, 0.375, of which top-p 0.6 keeps the first alone
        {"top_p": 0.6, "min_p": 0.5},
        {"top_p": 0.6, "min_p": 0.5, "temperature": 0.9},
        {"top_k": 3, "top_p": 0.6, "min_p": 0.5},  # top-k 3 leaves 0.5, 0.3, 0.2: the same again
    ],
)
def test_the_kept_tokens_are_those_generates_own_logits_processors_keep(options):
    """Guards the order top-p then min-p against ``generate``'s processors themselves, as its
    ``_get_logits_processor`` builds them for the same options (``top_k`` 0 disables its default of 50),
    on scores where min-p first keeps other tokens."""
    scores = [math.log(p) for p in (0.45, 0.27, 0.18, 0.10)]
    generation = GenerationConfig(do_sample=True, **{"top_k": 0} | options)
    processors = load_causal_lm(str(TINY_POLICY))._get_logits_processor(generation)
    processed = processors(torch.zeros(1, 1, dtype=torch.long), torch.tensor([scores]))
    kept = set(processed[0].isfinite().nonzero().flatten().tolist())
    config = SamplingConfig(**options)
    scaled = filter_top_k(torch.tensor([scores]) / config.temperature, config.top_k or 4)
    swapped = filter_top_p(filter_min_p(scaled, config.min_p), config.top_p)  # min-p first
    assert set(swapped[0].isfinite().nonzero().flatten().tolist()) != kept  # the order matters here
    assert drawn(scores, config) == kept


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": -1}, r"model.sampling.top_k must be >= 0 \(0: off\), got -1"),
        ({"min_p": -0.1}, r"model.sampling.min_p must be in \[0, 1\] \(0: off\), got -0.1"),
        ({"min_p": 1.5}, r"model.sampling.min_p must be in \[0, 1\] \(0: off\), got 1.5"),
    ],
)
def test_sampling_options_are_validated_in_one_line(options, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        SamplingConfig(**options)


def test_filters_names_the_options_that_change_the_sampled_distribution():
    assert SamplingConfig().filters == [] and SamplingConfig(top_p=1.0, temperature=0.7).filters == []
    every = SamplingConfig(top_k=5, top_p=0.9, min_p=0.1, min_new_tokens=2, max_new_tokens=4)
    assert every.filters == ["top_k", "top_p", "min_p", "min_new_tokens"]
