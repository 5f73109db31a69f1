"""pass@k / maj@k metrics (hand-computed values, cross-process aggregation), the sampling options of the
evaluation, the step-0 validation's progress, the samples file and the test command."""

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, DistributedSampler

from rgra_lightning import evaluation
from rgra_lightning.cli import main
from rgra_lightning.distributed import counted_on_rank
from rgra_lightning.errors import ConfigError
from rgra_lightning.evaluation import (
    EvaluationConfig,
    MajorityAtK,
    PassAtK,
    ProblemMean,
    SamplesWriter,
    counted_records,
    log_initial_validation,
    majority_correct,
    pass_at_k,
)
from rgra_lightning.rollout import SamplingConfig


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


def test_a_problem_mean_leaves_out_the_value_of_an_uncounted_repeat():
    """A repeat the DistributedSampler pads with (``counted`` False) adds neither to the count nor to the
    total, even when its value is not 0 (a solved problem repeated would raise val/accuracy)."""
    metric = ProblemMean("accuracy")
    metric.update(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([True, True, False]))
    assert metric.total.item() == 1.0 and metric.count.item() == 2
    assert metric.compute().item() == 0.5  # 1/2, exact in float32; counted, the repeat gave 2/2


@pytest.mark.parametrize(
    "answers, correct, expected",
    [
        (["3", "4", "4", None], [True, False, False, False], 0.0),
        (["3", "3", " 4"], [True, True, False], 1.0),
        (["1/2", "0.5", "7"], [True, True, False], 1.0),  # equal values form one group, correct or not
        ([None, None], [False, False], 0.0),
        # samples without an answer abstain: they form no group that could outvote a single answer
        ([None, None, "5"], [False, False, True], 1.0),
        ([None, "7", None, "5", "5"], [False, False, False, True, True], 1.0),  # nor tie with one
        (["x = 4", "x=4", "3"], [False, False, True], 0.0),  # whitespace does not split a group
        # equal wrong values vote together, whatever their notation
        (["3", "1/2", "0.5", "\\frac{1}{2}"], [True, False, False, False], 0.0),
        (["7", "5", "5.0"], [True, False, False], 0.0),
        (["7", "\\$5", "5"], [True, False, False], 0.0),
        (["7", "-\\frac{3}{4}", "-0.75"], [True, False, False], 0.0),
        (["42", "x=5", "5"], [True, False, False], 0.0),  # a bare-name left side is dropped
        (["42", "\\frac{-1}{2}", "-0.5"], [True, False, False], 0.0),
        (["7", "1/0", "1/0"], [True, False, False], 0.0),  # no value: grouped by its text
        # the audit's case: the same wrong pair written three ways outvotes the right one written two ways
        (
            ["(1,2)", "(1, 2)", "(2, 3)", "(2,3)", "\\left(2,3\\right)"],
            [True, True, False, False, False],
            0.0,
        ),
        (  # so does a wrong interval written three ways
            ["\\left[0, 1\\right)", "[0,1)", "[0,2]", "[0, 2]", "[0,1 )"],
            [False, False, True, True, False],
            0.0,
        ),
        # correct answers are grouped without the reference too: two notations are two groups, 3 ties
        (["2\\sqrt{2}", "\\sqrt{8}", "3"], [True, True, False], 2 / 3),
        # a tie counts the fraction of the tied groups that are correct, whatever the order
        (["3", "4"], [True, False], 0.5),
        (["4", "3"], [False, True], 0.5),
        (["7", "5", "6"], [True, False, False], 1 / 3),  # different values stay apart
        (["7", "7", "5", "5", "6"], [True, True, False, False, True], 0.5),  # 6 is not among the tied
        # a group whose samples the verifier judged differently takes its first sample's verdict
        (["5.0", "5", "7"], [True, False, False], 1.0),
        (["5", "5.0", "7"], [False, True, False], 0.0),
    ],
)
def test_majority_vote(answers, correct, expected):
    assert majority_correct(answers, correct) == pytest.approx(expected)


def test_maj_at_k_averages_over_the_disjoint_blocks_of_k_samples():
    """n = 7, k = 3: samples 0-2 and 3-5 vote; the 7th is left out."""
    metric = MajorityAtK(3)
    answers = [["6", "6", "5", "5", "5", "6", "6"], ["1", "2", "2", "2", "2", "1", "1"]]
    correct = torch.tensor(
        [[False, False, True, True, True, False, False], [True, False, False, False, False, True, True]]
    )
    metric.update(answers, correct)
    # first problem: 6 (wrong) wins, then 5 (right): 0.5; second: 2 (wrong) wins in both blocks: 0
    assert metric.compute().item() == pytest.approx(0.25)


def test_maj_at_1_is_the_fraction_of_samples_correct_like_pass_at_1():
    maj, passed = MajorityAtK(1), PassAtK(1)
    correct = torch.tensor([[True, False, True, False], [False, False, False, True]])
    maj.update([["5", "6", "5", "7"], ["1", None, "3", "4"]], correct)
    passed.update(correct)
    assert maj.compute().item() == pytest.approx(3 / 8)
    assert passed.compute().item() == pytest.approx(3 / 8)


def test_maj_at_k_ties_and_left_over_samples_within_blocks():
    metric = MajorityAtK(2)
    # n = 5, k = 2: a tie (0.5), then 5 twice (1); the 5th sample is left out
    metric.update([["5", "6", "5", "5", "7"]], torch.tensor([[True, False, True, True, False]]))
    other = MajorityAtK(2)
    other.update([["8", "8", "8", "8", "7"]], torch.tensor([[False, False, False, False, True]]))  # 0
    metric.merge_state(other)  # what the "sum" reduction does across ranks
    assert metric.compute().item() == pytest.approx((0.75 + 0.0) / 2)


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


def test_evaluation_samples_with_the_training_sampling_unless_told_otherwise():
    """Not at temperature 1.0 while training samples at 0.7 with the training top_k and min_p."""
    training = SamplingConfig(num_generations=8, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)
    assert EvaluationConfig(num_samples=4).sampling(training) == replace(training, num_generations=4)
    chosen = EvaluationConfig(num_samples=4, temperature=1.2, top_p=0.95).sampling(training)
    assert chosen == replace(training, num_generations=4, temperature=1.2, top_p=0.95)


def initial_validation_module(bar, is_global_zero=True):
    """What ``log_initial_validation`` reads of an ``RLModule`` and its trainer, with ``bar`` as the
    trainer's progress bar and a verifier judging correctness."""
    trainer = SimpleNamespace(
        world_size=1,
        is_global_zero=is_global_zero,
        progress_bar_callback=bar,
        distributed_sampler_kwargs=None,
    )
    return SimpleNamespace(
        trainer=trainer,
        verifier=SimpleNamespace(judges_correctness=True),
        device=torch.device("cpu"),
        make_experience=lambda batch: batch,
        rollout=SimpleNamespace(release=lambda: None),
        loggers=[],
    )


def disabled_bar():
    bar = TQDMProgressBar()
    bar.disable()  # as ``ProgressBar.setup`` does on the ranks after 0
    return bar


@pytest.mark.parametrize(
    "bar, is_global_zero, shown",
    [
        (TQDMProgressBar, True, True),
        (TQDMProgressBar, False, False),  # rank 0 only
        (disabled_bar, True, False),
        (lambda: None, True, False),  # --trainer.enable_progress_bar=false
    ],
)
def test_the_step_0_validation_shows_a_tqdm_bar_beside_lightnings(
    monkeypatch, capsys, bar, is_global_zero, shown
):
    """Lightning's TQDM bar shows its own loops only: the step-0 validation, minutes for a real model, had
    none."""
    evaluated = []
    monkeypatch.setattr(
        evaluation, "update_greedy_metrics", lambda metrics, batch, *_: evaluated.append(batch)
    )
    batches = [{"prompt": ["1+1="]}, {"prompt": ["2+2="]}]
    log_initial_validation(initial_validation_module(bar(), is_global_zero), batches)
    assert evaluated == batches
    out = capsys.readouterr().out
    if shown:  # tqdm's first refresh (the bar is cleared at the end: leave=False)
        assert "validate (step 0):   0%" in out and "0/2" in out
    else:
        assert out == ""


def test_counted_records_carry_each_problems_index_in_the_split():
    records = [{"completion": str(i), "group": i // 2} for i in range(6)]  # 3 problems, 2 completions each
    experience = SimpleNamespace(records=lambda: [dict(record) for record in records])
    counted = torch.tensor([True, False, True])
    assert counted_records(experience, counted, [40, 3, 7]) == [
        {"completion": "0", "group": 0, "index": 40},
        {"completion": "1", "group": 0, "index": 40},
        {"completion": "4", "group": 2, "index": 7},
        {"completion": "5", "group": 2, "index": 7},
    ]
    assert counted_records(experience, counted) == [records[0], records[1], records[4], records[5]]


def test_an_interrupted_evaluation_leaves_the_earlier_samples_file_in_place(tmp_path):
    written = tmp_path / "test_samples.jsonl"
    written.write_text('{"earlier": "complete run"}\n')
    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.TESTING),
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
        global_rank=0,
        world_size=1,
    )
    writer = SamplesWriter()
    writer.write([{"completion": "4", "group": 1}], "greedy", trainer)
    # killed here: the earlier file is whole, this run's batches are in the partial one
    assert written.read_text() == '{"earlier": "complete run"}\n'
    partial = tmp_path / "test_samples.jsonl.partial"
    assert [json.loads(line) for line in partial.read_text().splitlines()] == [
        {"completion": "4", "group": 0, "decoding": "greedy"}
    ]
    writer.write([{"completion": "6", "group": 0}], "greedy", trainer)
    writer.close()
    assert not partial.exists()
    assert [json.loads(line) for line in written.read_text().splitlines()] == [
        {"completion": "4", "group": 0, "decoding": "greedy"},
        {"completion": "6", "group": 1, "decoding": "greedy"},
    ]


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
        "index",
    }
    assert all(s["index"] == s["group"] for s in samples)  # one process: the file holds the split in order
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
    assert not written.with_name("val_samples.jsonl.partial").exists()  # renamed once complete
