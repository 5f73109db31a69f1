"""The values of the ``train/*`` and ``time/*`` metrics of a training step, on tiny hand-made batches, and
their reduction over ranks (``TRAIN_REDUCTIONS`` with ``metric_weights``)."""

import math
import types

import pytest
import torch

from rewards import Score
from rgra_lightning.distributed import reduce_across_ranks, reduce_gathered
from rgra_lightning.experience import Experience
from rgra_lightning.metrics import TRAIN_REDUCTIONS, metric_weights, training_metrics
from rgra_lightning.rollout import Rollout
from rgra_lightning.update import UpdateStats

VERIFIER = types.SimpleNamespace(judges_correctness=True)  # a single verifier: no reward components
EPS = torch.finfo(torch.float32).eps


def score(reward: float, error: str | None = None) -> Score:
    return Score(reward=reward, correct=reward == 1.0, extracted=None, details="", error=error)


def experience(lengths, rewards, advantages, all_rewards, truncated, errors=0, **times) -> Experience:
    """B = len(rewards) / 2 prompts of G = 2 completions of ``lengths`` tokens (right-padded to 4), rewards
    0 or 1 (1: correct), a verifier error on the last ``errors`` completions (their reward 0)."""
    completion_mask = torch.tensor([[1] * n + [0] * (4 - n) for n in lengths])
    rows = len(lengths)
    rollout = Rollout(
        input_ids=torch.zeros(rows, 5, dtype=torch.long),
        attention_mask=torch.ones(rows, 5, dtype=torch.long),
        completion_mask=completion_mask,
        prompt_length=1,
        completions=[""] * rows,
        truncated_prompts=1,
        truncated=torch.tensor(truncated),
    )
    scores = [score(r, error="timed out" if i >= rows - errors else None) for i, r in enumerate(rewards)]
    return Experience(
        rollout,
        prompts=[""] * (rows // 2),
        references=[""] * (rows // 2),
        scores=scores,
        rewards=torch.tensor(rewards),
        correct=torch.tensor([float(r == 1.0) for r in rewards]),
        advantages=torch.tensor(advantages),
        all_rewards=torch.tensor(all_rewards),
        **times,
    )


def rank_0() -> tuple[Experience, UpdateStats]:
    """B = 3 prompts x G = 2 (B != G, so groups of rows differ from groups of columns): 12 completion tokens,
    the first completion (4 tokens) truncated and left out of the loss (8 trained tokens); the other rank's
    6 rewards were all 1. The last completion's verification failed."""
    rewards = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    batch = experience(
        lengths=[4, 2, 1, 3, 0, 2],
        rewards=rewards,
        advantages=[1.0, -1.0, 0.5, -0.5, 0.0, 0.0],
        all_rewards=rewards + [1.0] * 6,
        truncated=[True, False, False, False, False, False],
        errors=1,
        generation_s=2.0,
        verification_s=1.0,
    )
    history = {
        "entropy": [torch.tensor(0.5), torch.tensor(1.5)],
        "clip_fraction": [torch.tensor(0.25), torch.tensor(0.25)],
        "learning_rate": [torch.tensor(1e-5), torch.tensor(2e-5)],
    }
    return batch, UpdateStats(history, applied=2, skipped=1, trained_tokens=torch.tensor(8.0))


def rank_1() -> tuple[Experience, UpdateStats]:
    """Another rank's batch of B x G = 6 rows: 4 completion tokens, all trained, none truncated."""
    batch = experience(
        lengths=[1, 1, 1, 1, 0, 0],
        rewards=[1.0] * 6,
        advantages=[0.0] * 6,
        all_rewards=[1.0, 1.0, 0.0, 1.0, 0.0, 0.0] + [1.0] * 6,
        truncated=[False] * 6,
        generation_s=1.0,
        verification_s=3.0,
    )
    history = {
        "entropy": [torch.tensor(4.0)],
        "clip_fraction": [torch.tensor(0.625)],
        "learning_rate": [torch.tensor(1e-5)],
    }
    return batch, UpdateStats(history, applied=1, skipped=0, trained_tokens=torch.tensor(4.0))


def test_training_metrics_of_one_rank_have_their_hand_computed_values():
    """Every metric of a hand-made batch. Guards the reward std (every rank's 12 rewards, unbiased, not this
    rank's 6), the mean *absolute* advantage (the plain mean of GRPO's advantages is 0 by construction),
    zero-std groups taken as G consecutive completions, and the counts and times."""
    batch, stats = rank_0()
    metrics = {name: value.item() for name, value in training_metrics(batch, stats, 5.0, VERIFIER).items()}
    # all_rewards: 9 ones, 3 zeros; mean 0.75; squared deviations 9 x 1/16 + 3 x 9/16 = 36/16 = 2.25
    reward_std = math.sqrt(2.25 / 11)  # unbiased: / (12 - 1)
    # the sums are exact in fp32; the division by 11 and the square root round: within a few eps
    assert metrics.pop("train/reward_std") == pytest.approx(reward_std, rel=4 * EPS)
    expected = {
        "train/entropy": 1.0,  # (0.5 + 1.5) / 2 updates
        "train/clip_fraction": 0.25,
        "train/learning_rate": pytest.approx(1.5e-5, rel=2 * EPS),  # (1e-5 + 2e-5) / 2, neither exact in fp32
        "train/reward": 0.5,  # 3 ones of 6
        "train/accuracy": 0.5,
        "train/advantage_abs_mean": 0.5,  # (1 + 1 + 0.5 + 0.5) / 6; the signed mean is 0
        # groups (1, 1), (0, 1), (0, 0): two of three have one reward only
        "train/zero_std_group_fraction": pytest.approx(2 / 3, rel=EPS),
        "train/completion_length_mean": 2.0,  # 12 tokens / 6
        "train/completion_length_max": 4.0,
        "train/verifier_errors": 1.0,
        "train/nonfinite_updates": 1.0,
        "train/truncated_prompts": 1.0,
        "train/truncated_fraction": pytest.approx(1 / 6, rel=EPS),
        "time/generation_s": 2.0,
        "time/verification_s": 1.0,
        "time/update_s": 3.0,  # 5 - 2
        "time/step_s": 5.0,
        "train/completion_tokens_per_s": 6.0,  # 12 tokens / 2 s of generation
    }
    assert metrics == expected


def test_metric_weights_are_the_completion_tokens_and_the_trained_tokens():
    """``token_mean`` metrics (entropy, over every completion token) weigh a rank by its 12 completion
    tokens; ``trained_token_mean`` ones (the loss's clip fraction, ratio...) by the 8 the loss trains on,
    the truncated completion's 4 left out."""
    batch, stats = rank_0()
    weights = {kind: weight.item() for kind, weight in metric_weights(batch, stats).items()}
    assert weights == {"token_mean": 12.0, "trained_token_mean": 8.0}


def test_each_train_reduction_of_two_ranks_gathered_values():
    """``reduce_gathered`` over two ranks with the kinds of ``TRAIN_REDUCTIONS``: the longest completion is
    the longest of any rank (not the mean of the ranks' longest), the entropy a mean over all completion
    tokens (not over ranks), counts and throughputs add up, wall times are the slowest rank's."""
    names = [
        "train/completion_length_max",
        "train/entropy",
        "train/clip_fraction",
        "train/verifier_errors",
        "train/completion_tokens_per_s",
        "time/step_s",
        "train/reward",
    ]
    gathered = torch.tensor(
        [
            [4.0, 1.0, 0.25, 1.0, 6.0, 5.0, 0.5],  # rank 0: 12 completion tokens, 8 trained
            [1.0, 4.0, 0.625, 0.0, 4.0, 7.0, 1.0],  # rank 1: 4 completion tokens, 4 trained
        ]
    )
    weights = {"token_mean": torch.tensor([12.0, 4.0]), "trained_token_mean": torch.tensor([8.0, 4.0])}
    reduced = reduce_gathered(gathered, [TRAIN_REDUCTIONS.get(name, "mean") for name in names], weights)
    expected = [
        4.0,  # max(4, 1)
        1.75,  # (12 x 1 + 4 x 4) / 16 = 28 / 16; over ranks it would be 2.5
        0.375,  # (8 x 0.25 + 4 x 0.625) / 12 = 4.5 / 12; by completion tokens (3 + 2.5) / 16 = 0.34375
        1.0,  # 1 + 0
        10.0,  # 6 + 4
        7.0,  # max(5, 7)
        0.75,  # (0.5 + 1) / 2: equal rows per rank
    ]
    assert reduced.tolist() == expected  # small integers and binary fractions: exact in float32


def test_two_ranks_metrics_reduce_to_the_hand_computed_values_of_both_batches():
    """End to end: each rank's ``training_metrics`` and ``metric_weights`` through ``reduce_across_ranks``
    (one all-gather, simulated) with ``TRAIN_REDUCTIONS``. The weights must be those of each rank's own
    batch: rank 0 trains on 8 of its 12 tokens, rank 1 on all 4 of its 4."""
    (batch_0, stats_0), (batch_1, stats_1) = rank_0(), rank_1()
    mine = training_metrics(batch_0, stats_0, 5.0, VERIFIER)
    theirs = training_metrics(batch_1, stats_1, 7.0, VERIFIER)
    their_weights = metric_weights(batch_1, stats_1)
    their_row = torch.stack([*theirs.values(), *their_weights.values()]).float()

    def all_gather(stacked):  # rank 0's values, then rank 1's in the same order
        assert len(stacked) == len(their_row)
        return torch.stack([stacked, their_row])

    reduced = reduce_across_ranks(
        mine, TRAIN_REDUCTIONS, metric_weights(batch_0, stats_0), all_gather, torch.device("cpu")
    )
    values = {name: value.item() for name, value in reduced.items()}
    assert values["train/completion_length_max"] == 4.0  # max(4, 1)
    assert values["train/entropy"] == 1.75  # (12 x 1 + 4 x 4) / 16 completion tokens
    assert values["train/clip_fraction"] == 0.375  # (8 x 0.25 + 4 x 0.625) / 12 trained tokens
    assert values["train/verifier_errors"] == 1.0  # rank 0's one
    assert values["train/truncated_prompts"] == 2.0
    assert values["train/completion_tokens_per_s"] == 10.0  # 12 / 2 + 4 / 1
    assert values["time/generation_s"] == 2.0  # max(2, 1)
    assert values["time/verification_s"] == 3.0  # max(1, 3)
    assert values["time/update_s"] == 6.0  # max(5 - 2, 7 - 1)
    assert values["time/step_s"] == 7.0
    assert values["train/reward"] == 0.75  # (3 + 6) / 12 rewards
    assert values["train/advantage_abs_mean"] == 0.25  # (0.5 + 0) / 2
    assert values["train/nonfinite_updates"] == 0.5  # (1 + 0) / 2: a mean, as every rank skips together
    # means of two per-rank values with thirds in them: within a few fp32 roundings of the magnitude
    assert values["train/zero_std_group_fraction"] == pytest.approx((2 / 3 + 1) / 2, rel=4 * EPS)
    assert values["train/completion_length_mean"] == pytest.approx((2 + 4 / 6) / 2, rel=4 * EPS)
