"""Generated equivalence tests (``tests/rewards/generated_cases.py``): every family in every notation and
near miss, checked in both directions, so a family is covered by construction rather than by the cases
someone wrote down. The default size runs in seconds; the slow test runs a larger draw."""

import pytest

from rewards.equivalence import equivalent
from tests.rewards.generated_cases import FAMILIES, generate


def verdict(pred: str, gold: str) -> bool:
    """The verifier's verdict: an answer the parser rejects is judged different (reward 0)."""
    try:
        return equivalent(pred, gold)
    except Exception:
        return False


def wrong_pairs(per_family: int, seed: int) -> list[tuple[str, str, str, bool]]:
    """The generated pairs judged wrongly in either direction, as (family, pred, gold, label)."""
    return [
        (family, pred, gold, label)
        for pred, gold, label, family in generate(per_family, seed)
        if verdict(pred, gold) is not label or verdict(gold, pred) is not label
    ]


def test_the_generator_is_seeded_and_covers_every_family():
    pairs = generate(2, seed=7)
    assert pairs == generate(2, seed=7) and pairs != generate(2, seed=8)
    assert {family for *_, family in pairs} == set(FAMILIES)
    assert {label for _, _, label, _ in pairs} == {True, False}


def test_generated_pairs_are_judged_right_both_ways():
    assert wrong_pairs(per_family=4, seed=0) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_generated_pairs_are_judged_right_both_ways_at_scale(seed):
    assert wrong_pairs(per_family=40, seed=seed) == []
