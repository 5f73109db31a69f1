"""Scoring completions: verifier crashes give reward 0 and are counted; training goes on."""

import math
import warnings

import pytest

from rewards import MathVerifier, Score, Verifier, WeightedSum
from rgra_lightning.cli import main
from rgra_lightning.scoring import checked_score, robust_score_batch
from tests.conftest import FAST, scalars_by_step


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


def test_verifier_crashes_give_reward_zero_and_are_counted():
    completions, references = ["#### 7", "1", "2", "3"], ["7"] * 4
    for verifier in (FlakyVerifier(), BrokenBatchVerifier()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = robust_score_batch(verifier, completions, references)
        assert len(caught) == 1 and "scoring one at a time" in str(caught[0].message)
        checked = [checked_score(score) for score in scores]
        assert [score.reward for score in checked] == [1.0, 0.0, 0.0, 0.0]
        assert [score.error is not None for score in checked] == [False, True, True, True]
        assert "verifier crashed" in checked[1].error and "non-finite" in checked[3].error


def test_a_failing_learned_reward_keeps_the_verifiers_reward_when_scored_one_at_a_time():
    verifier = WeightedSum([MathVerifier(), LearnedReward()], [1.0, 0.2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = robust_score_batch(verifier, ["\\boxed{2}", "\\boxed{3}"], ["2", "2"], ["1+1=", "1+1="])
    assert "out of memory" in str(caught[0].message)
    assert [score.reward for score in scores] == pytest.approx([1.1, 0.1])  # 1.0 x verifier + 0.2 x 0.5
    assert [score.error for score in scores] == [None, None]


def test_training_survives_a_crashing_verifier_and_logs_the_errors(small_config, tmp_path):
    verifier = {"class_path": "tests.test_scoring.BrokenBatchVerifier"}
    config = small_config("rgra", **FAST, **{"model.init_args.verifier": verifier})
    cli = main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    assert cli.trainer.global_step == 2
    errors = scalars_by_step(tmp_path / "runs", "train/verifier_errors")
    assert len(errors) == 2 and all(v > 0 for values in errors.values() for v in values)
    rewards = scalars_by_step(tmp_path / "runs", "train/reward")
    assert all(math.isfinite(v) for values in rewards.values() for v in values)
