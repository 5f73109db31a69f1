"""Scoring completions: verifier crashes give reward 0 and are counted; training goes on."""

import math
import warnings

import pytest
import torch

from rewards import FormatReward, MathVerifier, Score, Verifier, WeightedSum
from rewards.verifiers import VERIFIER_FAILED
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.scoring import robust_score_batch, start_scoring
from tests.conftest import FAST, scalar_tags, scalars_by_step


class FlakyVerifier(Verifier):
    """Raises on completions containing '1', returns an error Score on '2' and a NaN reward on '3'."""

    def score(self, completion: str, reference: str) -> Score:
        if "1" in completion:
            raise RuntimeError("verifier crashed")
        if "2" in completion:
            return Score(0.0, False, None, "timeout", error="timed out after 1s")
        if "3" in completion:
            return Score(float("nan"), False, None, "bug")
        return MathVerifier().score(completion, reference)


class BrokenBatchVerifier(FlakyVerifier):
    """Fails on any batch of more than one completion, as a verifier running out of memory would."""

    def score_batch(self, completions, references, prompts=None):
        if len(completions) > 1:
            raise RuntimeError("batch scoring service unavailable")
        return super().score_batch(completions, references, prompts)


class LearnedReward(Verifier):
    """Like a learned reward model: scores (prompt, completion) pairs only, and fails on batches of more
    than one (an out-of-memory error)."""

    judges_correctness = False

    def score(self, completion, reference):
        raise ValueError("needs prompts")

    def score_batch(self, completions, references, prompts=None):
        if prompts is None:
            raise ValueError("needs prompts")
        if len(completions) > 1:
            raise RuntimeError("out of memory")
        return [Score(0.5, False, None, "learned")]


class AutocastRecorder(Verifier):
    """Records the autocast state (enabled, dtype) it scores under on the CPU."""

    def __init__(self):
        self.seen: list[tuple[bool, torch.dtype]] = []

    def score(self, completion, reference):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return Score(1.0, True, None, "")


@pytest.mark.parametrize("in_background", [True, False])
def test_a_reward_model_scores_under_the_callers_autocast_in_either_place(in_background):
    """Autocast is per thread: the verifier thread ran a learned reward model in float32 under bf16-mixed,
    while an FSDP2-sharded one (scored inline) ran in bfloat16."""
    verifier, device = AutocastRecorder(), torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        start_scoring(verifier, ["1"], ["p"], ["1"], device, in_background).result()
    start_scoring(verifier, ["1"], ["p"], ["1"], device, in_background).result()
    assert verifier.seen == [(True, torch.bfloat16), (False, torch.get_autocast_dtype("cpu"))]


def test_verifier_crashes_give_reward_zero_and_are_counted():
    completions, references = ["#### 7", "1", "2", "3"], ["7"] * 4
    batch_errors = {
        "FlakyVerifier": "verifier crashed",
        "BrokenBatchVerifier": "batch scoring service unavailable",
    }
    for verifier in (FlakyVerifier(), BrokenBatchVerifier()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = robust_score_batch(verifier, completions, references)
        messages = [str(warning.message) for warning in caught]
        name = type(verifier).__name__
        assert messages == [
            f"{name}.score_batch raised RuntimeError('{batch_errors[name]}'); scoring one at a time",
            f"{name} returned a non-finite reward: scored 0 (train/verifier_errors)",
        ]
        assert [score.reward for score in scores] == [1.0, 0.0, 0.0, 0.0]
        assert [score.error for score in scores] == [
            None,
            f"{name} raised RuntimeError('verifier crashed')",
            "timed out after 1s",
            "non-finite reward nan",
        ]
        assert [score.details == VERIFIER_FAILED for score in scores] == [False, True, False, True]


def test_a_failing_learned_reward_keeps_the_verifiers_reward_when_scored_one_at_a_time():
    verifier = WeightedSum([MathVerifier(), LearnedReward()], [1.0, 0.2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = robust_score_batch(verifier, ["\\boxed{2}", "\\boxed{3}"], ["2", "2"], ["1+1=", "1+1="])
    assert "out of memory" in str(caught[0].message)
    assert [score.reward for score in scores] == pytest.approx([1.1, 0.1])  # 1.0 x verifier + 0.2 x 0.5
    assert [score.error for score in scores] == [None, None]


class LengthPenalty(Verifier):
    """A shaping reward of one's own: -0.001 per character; it raises on completions containing '1' and
    returns NaN on '3'. It judges no correctness."""

    judges_correctness = False

    def score(self, completion, reference):
        if "1" in completion:
            raise RuntimeError("penalty crashed")
        return Score(float("nan") if "3" in completion else -0.001 * len(completion), False, None, "length")


def test_a_failing_component_of_a_weighted_sum_costs_only_its_part():
    """The penalty raises on one row and is NaN on another: those rows keep the verifier's reward and
    correctness, their penalty part is 0 and the error is recorded."""
    verifier = WeightedSum([MathVerifier(), LengthPenalty()], [1.0, 1.0])
    completions = ["\\boxed{7}", "\\boxed{7} 1", "\\boxed{7} 3", "\\boxed{8}"]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        scores = robust_score_batch(verifier, completions, ["7"] * 4)
    assert [score.reward for score in scores] == pytest.approx([1 - 0.009, 1.0, 1.0, -0.009])
    assert [score.correct for score in scores] == [True, True, True, False]
    assert [score.components["length_penalty"] for score in scores] == pytest.approx([-0.009, 0, 0, -0.009])
    assert [score.error for score in scores] == [
        None,
        "LengthPenalty raised RuntimeError('penalty crashed')",
        "non-finite reward nan",
        None,
    ]


class ReturnsFloat(Verifier):
    def score(self, completion, reference):
        return 1.0


class ReturnsTooFew(Verifier):
    def score(self, completion, reference):
        return Score(1.0, True, None, "ok")

    def score_batch(self, completions, references, prompts=None):
        return super().score_batch(completions, references, prompts)[:-1]


@pytest.mark.parametrize(
    ("verifier", "cause"),
    [
        (LengthPenalty(), "LengthPenalty raised RuntimeError('penalty crashed')"),
        (
            ReturnsFloat(),
            "ReturnsFloat raised TypeError('score_batch returned a float where a rewards.Score belongs')",
        ),
        (
            ReturnsTooFew(),
            "ReturnsTooFew raised TypeError('score_batch returned 0 scores for 1 completions')",
        ),
        (
            WeightedSum([MathVerifier(), LengthPenalty()], [1.0, 1.0]),
            "LengthPenalty raised RuntimeError('penalty crashed')",
        ),
    ],
)
def test_a_verifier_that_fails_on_every_completion_of_a_batch_stops_the_run(verifier, cause):
    """A broken verifier (every completion raised, or its result is not one Score per completion) must not
    train on rewards that are all 0; a single completion failing is only recorded."""
    name = cause.split()[0]
    with warnings.catch_warnings(record=True), pytest.raises(ConfigError) as error:
        warnings.simplefilter("always")
        robust_score_batch(verifier, ["1", "\\boxed{1}"], ["1", "1"])
    assert str(error.value) == (
        f"model.verifier: {name} failed on all 2 completions of a batch ({cause}): "
        "score_batch must return one rewards.Score with a finite reward per completion"
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        (alone,) = robust_score_batch(verifier, ["1"], ["2"])
    assert alone.reward == 0.0 and alone.error == cause


class TimesOut(Verifier):
    """A verifier whose own checks fail on the completions holding ``slow`` (as MathVerifier's do on a timeout
    or a worker crash): a Score with ``error`` set, not an exception."""

    def score(self, completion, reference):
        if "slow" in completion:
            return Score(0.0, False, completion, "verification failed", error="timeout")
        return Score(1.0, True, completion, "equivalent")


def test_a_verifier_that_could_check_no_completion_of_a_batch_warns():
    """MathVerifier with a memory_mb too small for its workers scored every completion 0 with an error, and
    training went on without a word (an audit); one completion failing is only counted."""
    with pytest.warns(UserWarning) as caught:
        scores = robust_score_batch(TimesOut(), ["slow 1", "slow 2"], ["1", "2"])
    assert [score.reward for score in scores] == [0.0, 0.0]
    assert [str(w.message) for w in caught] == [
        "TimesOut could not check any of the 2 completions of a batch (timeout); they score 0 "
        "(train/verifier_errors): check its timeout and memory_mb"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.reward for s in robust_score_batch(TimesOut(), ["slow 1", "2"], ["1", "2"])] == [0.0, 1.0]


def test_a_weighted_sum_with_two_judges_of_correctness_warns():
    """A shaping reward that leaves judges_correctness True would turn accuracy into 'every component
    says correct': the audit's custom length penalty set train/accuracy to 0."""

    class Shaping(Verifier):
        def score(self, completion, reference):
            return Score(0.0, False, None, "shaping")

    with pytest.warns(UserWarning, match="math_verifier, shaping all judge correctness"):
        WeightedSum([MathVerifier(), Shaping()], [1.0, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WeightedSum([MathVerifier(), FormatReward(), LengthPenalty()], [1.0, 0.1, 0.1])


def test_training_survives_a_crashing_verifier_and_logs_the_errors(small_config, tmp_path):
    verifier = {"class_path": "tests.test_scoring.BrokenBatchVerifier"}
    config = small_config("rgra", **FAST, **{"model.init_args.verifier": verifier})
    cli = main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    assert cli.trainer.global_step == 2
    errors = scalars_by_step(tmp_path / "runs", "train/verifier_errors")
    assert len(errors) == 2 and all(v > 0 for values in errors.values() for v in values)
    rewards = scalars_by_step(tmp_path / "runs", "train/reward")
    assert all(math.isfinite(v) for values in rewards.values() for v in values)


def test_training_stops_in_one_line_on_a_verifier_that_fails_on_every_completion(small_config, capsys):
    verifier = {"class_path": "tests.test_scoring.ReturnsFloat"}
    config = small_config("rgra", **FAST, **{"model.init_args.verifier": verifier})
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: model.verifier: ReturnsFloat failed on all ")
    assert err[-1].endswith(
        "completions of a batch (ReturnsFloat raised TypeError('score_batch returned a float where a "
        "rewards.Score belongs')): score_batch must return one rewards.Score with a finite reward per "
        "completion"
    )


class Brevity(Verifier):
    """A reward with no verdict on the answer, as a learned reward model alone: shorter is better."""

    judges_correctness = False

    def score(self, completion, reference):
        return Score(-0.01 * len(completion), False, None, "brevity")


def test_without_a_judge_of_correctness_no_accuracy_is_logged(small_config, tmp_path):
    """An audit's reward-model-only run logged train/accuracy and val/accuracy 0.0 (the policy's real
    accuracy: 0.24): with no component judging correctness, accuracy, pass@k and maj@k are not logged.
    Each component's reward is, in validation and test too (the audit could not watch a reward model's
    score on held-out prompts)."""
    assert not WeightedSum([Brevity(), FormatReward()], [1.0, 1.0]).judges_correctness
    assert WeightedSum([Brevity(), MathVerifier()], [1.0, 1.0]).judges_correctness
    verifier = {
        "class_path": "rewards.WeightedSum",
        "init_args": {
            "verifiers": [
                {"class_path": "tests.test_scoring.Brevity"},
                {"class_path": "rewards.FormatReward"},
            ],
            "weights": [1.0, 0.1],
        },
    }
    config = small_config("rgra", **{"model.init_args.verifier": verifier, "trainer.max_steps": 2})
    main(["fit", "--config", str(config)])
    main(["test", "--config", str(config), "--model.evaluation.num_samples=2", "--model.evaluation.k=[2]"])
    tags = scalar_tags(tmp_path / "runs")
    for stage in ("train", "val", "test"):
        names = (f"{stage}/reward", f"{stage}/rewards/brevity", f"{stage}/rewards/format_reward")
        assert set(names) <= tags.keys(), sorted(tags)
    assert len(tags["val/rewards/brevity"]) == 2  # at step 0 and after the last update
    assert not [tag for tag in tags if tag.endswith(("accuracy", "pass@1", "pass@2", "maj@2"))]
