"""pass@k / maj@k metrics (hand-computed values, cross-process aggregation) and the test command."""

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from rgra_lightning.cli import main
from rgra_lightning.distributed import counted_on_rank
from rgra_lightning.errors import ConfigError
from rgra_lightning.evaluation import (
    EvaluationConfig,
    MajorityAtK,
    PassAtK,
    ProblemMean,
    majority_correct,
    pass_at_k,
)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 1, 0.25),
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (8, 3, 8, 1.0),
        (10, 2, 4, 1 - 70 / 210),  # 1 - C(8,4)/C(10,4)
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, torch.tensor([c]), k).item() == pytest.approx(expected)


def test_pass_at_k_metric_averages_over_problems_and_merges_like_a_process_group():
    first, second = PassAtK(2), PassAtK(2)
    first.update(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))  # 0.5, 0
    second.update(torch.tensor([[1, 1, 1, 1]], dtype=torch.bool))  # 1
    first.merge_state(second)  # what the "sum" reduction does across ranks
    assert first.compute().item() == pytest.approx(1.5 / 3)


def test_problem_means_of_two_padded_ranks_merge_into_the_one_process_mean():
    """The audit's case: 41 problems, 8 solved, on 2 ranks; the DistributedSampler repeats problem 0 (not
    solved) on rank 1, which counted gave 8/42 = 0.1905 instead of 8/41 = 0.1951."""
    correct = torch.tensor([float(i % 5 == 1 and i < 40) for i in range(41)])  # [41]
    ranks = []
    for rank in range(2):
        metric = ProblemMean("accuracy")
        sampler = DistributedSampler(range(41), num_replicas=2, rank=rank, shuffle=False)
        for indices in DataLoader(range(41), batch_size=4, sampler=sampler):  # rank 1's last: [0], a repeat
            metric.update(correct[indices], counted_on_rank(indices.tolist(), 2, rank))
        ranks.append(metric)
    ranks[0].merge_state(ranks[1])  # what the "sum" reduction does across ranks
    assert ranks[0].compute().item() == pytest.approx(8 / 41)
    assert ranks[0].count.item() == 41


@pytest.mark.parametrize(
    "answers, correct, expected",
    [
        (["3", "4", "4", None], [True, False, False, False], False),
        (["3", "3", " 4"], [True, True, False], True),
        (["1/2", "0.5", "7"], [True, True, False], True),  # equivalent correct answers form one group
        (["3", "4"], [True, False], True),  # a tie goes to the group seen first
        (["4", "3"], [False, True], False),
        ([None, None], [False, False], False),
        (["x = 4", "x=4", "3"], [False, False, True], False),  # whitespace does not split a wrong group
        # equal wrong values vote together, whatever their notation
        (["3", "1/2", "0.5", "\\frac{1}{2}"], [True, False, False, False], False),
        (["7", "5", "5.0"], [True, False, False], False),
        (["7", "\\$5", "5"], [True, False, False], False),
        (["7", "-\\frac{3}{4}", "-0.75"], [True, False, False], False),
        (["42", "x=5", "5"], [True, False, False], False),  # a bare-name left side is dropped
        (["42", "\\frac{-1}{2}", "-0.5"], [True, False, False], False),
        (["7", "1/0", "1/0"], [True, False, False], False),  # no value: grouped by its text
        (["7", "5", "6"], [True, False, False], True),  # different wrong values stay apart
    ],
)
def test_majority_vote(answers, correct, expected):
    assert majority_correct(answers, correct) is expected


def test_maj_at_k_votes_over_the_first_k_samples():
    metric = MajorityAtK(3)
    answers = [["5", "5", "6", "6", "6"], ["1", "2", "2", "1", "1"]]
    correct = torch.tensor([[True, True, False, False, False], [True, False, False, True, True]])
    metric.update(answers, correct)
    assert metric.compute().item() == pytest.approx(0.5)  # first: 5 wins 2-1; second: 2 wins 2-1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_samples": 1}, "0 or >= 2"),
        ({"num_samples": 4, "k": [8]}, "[1, num_samples=4]"),
        ({"k": [1, 8]}, "needs sampled completions"),
        ({"num_samples": 4, "temperature": 0.0}, "model.evaluation.temperature must be > 0"),
        ({"num_samples": 4, "top_p": 0.0}, "model.evaluation.top_p must be in (0, 1]"),
    ],
)
def test_evaluation_options_are_validated(options, message):
    """Each names its model.evaluation field (top_p was reported as model.sampling.top_p)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        EvaluationConfig(**options)


def test_test_command_logs_pass_at_k_and_maj_at_k_and_writes_every_completion(small_config, tmp_path):
    config = small_config(
        "rgra",
        **{"model.init_args.evaluation": {"num_samples": 4, "k": [1, 4]}, "data.init_args.val_batch_size": 4},
    )
    cli = main(["test", "--config", str(config)])
    metrics = {name: value.item() for name, value in cli.trainer.callback_metrics.items()}
    assert {"test/accuracy", "test/pass@1", "test/pass@4", "test/maj@1", "test/maj@4"} <= set(metrics)
    assert 0 <= metrics["test/pass@1"] <= metrics["test/pass@4"] <= 1
    assert metrics["test/accuracy"] > 0  # the shipped tiny policy solves part of the embedded task greedily
    samples = [json.loads(line) for line in (Path(cli.trainer.log_dir) / "test_samples.jsonl").open()]
    assert len(samples) == 8 * (1 + 4)  # 8 problems: one greedy and 4 sampled completions each
    assert set(samples[0]) == {  # Experience.records(), and how the completion was decoded
        "prompt",
        "completion",
        "reference",
        "reward",
        "correct",
        "extracted",
        "details",
        "error",
        "group",
        "decoding",
    }
    greedy = [s for s in samples if s["decoding"] == "greedy"]
    assert sum(s["correct"] for s in greedy) / 8 == pytest.approx(metrics["test/accuracy"])
    sampled = [s["correct"] for s in samples if s["decoding"] == "sampled"]
    assert sum(sampled) / 32 == pytest.approx(metrics["test/pass@1"])
    # one group per problem across the 2 batches of 4, shared by its greedy and sampled rows: pass@4
    # (n = k = 4: any sampled completion correct) recomputed from the file
    problems: dict[int, list[dict]] = {}
    for sample in samples:
        problems.setdefault(sample["group"], []).append(sample)
    assert sorted(problems) == list(range(8))
    assert all(len({row["prompt"] for row in rows}) == 1 and len(rows) == 5 for rows in problems.values())
    solved = [
        any(row["correct"] for row in rows if row["decoding"] == "sampled") for rows in problems.values()
    ]
    assert sum(solved) / 8 == pytest.approx(metrics["test/pass@4"])


def test_validate_command_runs_the_benchmark_evaluation_on_the_validation_split(small_config, caplog):
    with caplog.at_level(logging.INFO):
        cli = main(["validate", "--config", str(small_config("rgra"))])
    assert "val/accuracy" in cli.trainer.callback_metrics
    written = Path(cli.trainer.log_dir) / "val_samples.jsonl"
    assert f"completions written to {written}" in caplog.text  # where, said once the command ends
    lines = written.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["decoding"] == "greedy" for line in lines)
