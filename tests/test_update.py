"""The policy update: non-finite steps skipped and counted, and a stop after too many."""

import copy
import dataclasses
import math
import shutil
import types

import pytest
import torch

import rgra_lightning.logprobs as logprobs_module
import rgra_lightning.update
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError, NonFiniteTrainingError
from rgra_lightning.logprobs import token_logprobs, trim_padding
from rgra_lightning.losses import LossConfig, rl_loss
from rgra_lightning.rollout import HFEngine
from rgra_lightning.update import PolicyUpdate, loss_mask
from tests.conftest import (
    FAST,
    assert_close_normwise,
    one_line_error,
    rounding_rtol,
    scalars_by_step,
)


def nan_loss_on_updates(monkeypatch, bad_updates: set[int]) -> list[int]:
    """Make ``rl_loss`` return NaN on the given (0-based) update indices; returns the call log."""
    calls: list[int] = []

    def loss(*args, **kwargs):
        out = rl_loss(*args, **kwargs)
        calls.append(len(calls))
        if len(calls) - 1 in bad_updates:
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(rgra_lightning.update, "rl_loss", loss)
    return calls


def test_nonfinite_update_is_skipped_counted_and_training_continues(small_config, tmp_path, monkeypatch):
    calls = nan_loss_on_updates(monkeypatch, {1})
    config = small_config("rgra", **FAST)
    with pytest.warns(UserWarning, match="non-finite loss .* update skipped"):
        cli = main(["fit", "--config", str(config), "--trainer.max_steps=3"])
    assert cli.trainer.global_step == 3  # max_steps counts applied updates: one more rollout was needed
    assert len(calls) == 4
    skipped = scalars_by_step(tmp_path / "runs", "train/nonfinite_updates")
    assert sorted(v for values in skipped.values() for v in values) == [0.0, 0.0, 0.0, 1.0]
    assert all(torch.isfinite(p).all() for p in cli.model.policy.parameters())


def test_a_skipped_update_does_not_make_the_run_overshoot_max_steps(small_config, tmp_path, monkeypatch):
    """2 updates per rollout batch, max_steps=6, the third update skipped: the fourth batch started at
    update 5 and ran both its updates, ending at 7. The run now stops at max_steps, inside that batch."""
    calls = nan_loss_on_updates(monkeypatch, {2})
    config = small_config("rgra", **FAST, **{"model.init_args.num_minibatches": 2})
    with pytest.warns(UserWarning, match="update skipped"):
        cli = main(["fit", "--config", str(config), "--trainer.max_steps=6"])
    assert cli.trainer.global_step == 6
    assert len(calls) == 7  # 2 + (1 skipped + 1) + 2 + 1
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert sorted(scalars_by_step(tmp_path / "runs", "train/reward")) == [2, 3, 5, 6]
    # The batch of the skipped update logs its applied update's diagnostics, not a mean with a NaN in it
    losses = scalars_by_step(tmp_path / "runs", "train/loss")
    assert sorted(losses) == [2, 3, 5, 6] and all(math.isfinite(v) for vs in losses.values() for v in vs)


def test_too_many_nonfinite_updates_stop_with_the_last_finite_checkpoint(
    small_config, tmp_path, monkeypatch, capsys
):
    nan_loss_on_updates(monkeypatch, set(range(2, 100)))
    config = small_config("rgra", **FAST, **{"model.init_args.max_consecutive_nonfinite": 3})
    # exit 3, not a refused config's 2: rgra ablate skips a preset's other seeds for a refused config only
    error = one_line_error(["fit", "--config", str(config)], capsys, status=3)
    assert "3 consecutive updates had a NaN/inf loss or gradient" in error
    assert "model.learning_rate" in error
    assert error.endswith("trained again), or from an earlier checkpoint if it stops again at once")
    saved = tmp_path / "checkpoints" / "nonfinite-stop-step=2.ckpt"
    assert str(saved) in error
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == 2
    good = torch.load(tmp_path / "checkpoints" / "epoch=0-step=2.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(state["state_dict"][name], good[name]) for name in good)
    assert not issubclass(NonFiniteTrainingError, ConfigError)  # divergence, not a config mistake


def test_micro_batches_accumulate_the_gradient_of_one_pass_over_the_mini_batch(small_config, monkeypatch):
    """Same rollouts (same seed), so the updates must not depend on the micro-batch split: micro_batch_size
    None, 8 (whole groups of G = 4), 3 (not), or a budget of 100 tokens over rows sorted by length. Every
    forward pass holds at most that many of the 16 rows or tokens: the reference's, the stored pi_old's
    (GRPO with mu = 2) and the policy's in both updates; and each runs at its own width (its longest
    prompt and completion: nothing left to trim)."""
    gradients: list[dict[str, torch.Tensor]] = []
    passes: list[tuple[int, int]] = []  # rows, width of each forward pass
    clip, features = torch.nn.utils.clip_grad_norm_, logprobs_module.completion_features

    def recording_clip(parameters, *args, **kwargs):
        parameters = list(parameters)
        gradients.append({str(i): p.grad.clone() for i, p in enumerate(parameters) if p.grad is not None})
        return clip(parameters, *args, **kwargs)

    def recording_features(model, rollout):
        assert trim_padding(rollout) is rollout
        passes.append(tuple(rollout.input_ids.shape))
        return features(model, rollout)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(logprobs_module, "completion_features", recording_features)
    fast = {"trainer.limit_val_batches": 0, "model.init_args.validate_before_training": False}
    results = {}
    for micro, budget in ((None, None), (8, None), (3, None), (None, 100)):
        gradients.clear(), passes.clear()
        overrides = {
            "model.init_args.micro_batch_size": micro,
            "model.init_args.micro_batch_tokens": budget,
            "model.init_args.num_iterations": 2,
        }
        config = small_config("grpo", **fast, **overrides)
        shutil.rmtree(config.parent / "checkpoints", ignore_errors=True)  # a new run each time, not a resume
        main(["fit", "--config", str(config), "--trainer.max_steps=2"])
        assert len(gradients) == 2 and sum(rows for rows, _ in passes) == 4 * 16  # ref, pi_old, 2 x policy
        if budget is None:
            assert max(rows for rows, _ in passes) == (micro or 16)
        else:
            assert all(rows * width <= budget or rows == 1 for rows, width in passes) and len(passes) > 4
        results[micro, budget] = list(gradients)
    # fp32 gradients summed over 16 rows x up to 40 positions x 128 features in other orders
    rtol = rounding_rtol(torch.float32, 16 * 40 * 128)
    for split in ((8, None), (3, None), (None, 100)):
        for update, reference in enumerate(results[None, None]):
            assert results[split][update].keys() == reference.keys()
            for name, gradient in reference.items():
                assert_close_normwise(results[split][update][name], gradient, rtol, f"{split=} {name}")


@pytest.mark.parametrize("budget", [None, 100])
def test_pi_old_and_the_reference_run_in_the_updates_forward_passes(small_config, monkeypatch, budget):
    """GRPO, one pass over two mini-batches of 8 (pi_old stored): the reference's and pi_old's forward
    passes hold the rows the updates' do, so the first update's ratio is exactly 1 and its KL exactly 0.
    Over the whole batch's micro-batches (all 16 rows in one pass) they rounded differently."""
    passes: list[int] = []  # the rows of each forward pass, in order
    losses: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # logp, old_logp, ref_logp
    splits: list[list] = []  # the micro-batches of each call of PolicyUpdate.minibatches
    first_update: list[int] = []  # how many micro-batches the first mini-batch has
    features, minibatches = logprobs_module.completion_features, PolicyUpdate.minibatches

    def recording_features(model, rollout):
        passes.append(rollout.completion_mask.shape[0])
        return features(model, rollout)

    def recording_loss(logp, advantages, mask, config, **kwargs):
        losses.append((logp.detach(), kwargs["old_logp"], kwargs["ref_logp"]))
        return rl_loss(logp, advantages, mask, config, **kwargs)

    def recording_minibatches(self, model, rollout):
        split = minibatches(self, model, rollout)
        splits.append([part for _, parts in split for part in parts])
        first_update.append(len(split[0][1]))
        return split

    monkeypatch.setattr(logprobs_module, "completion_features", recording_features)
    monkeypatch.setattr(rgra_lightning.update, "rl_loss", recording_loss)
    monkeypatch.setattr(PolicyUpdate, "minibatches", recording_minibatches)
    overrides = {
        "trainer.limit_val_batches": 0,
        "model.init_args.validate_before_training": False,
        "model.init_args.num_minibatches": 2,
        "model.init_args.micro_batch_tokens": budget,
    }
    cli = main(["fit", "--config", str(small_config("grpo", **overrides)), "--trainer.max_steps=2"])
    assert cli.model.updater.stores_old_logprobs and cli.trainer.global_step == 2
    rows = [
        [list(range(16)[part]) if isinstance(part, slice) else part.tolist() for part in parts]
        for parts in splits
    ]
    assert len(rows) == 2 and rows[0] == rows[1]  # one partition for the fixed passes and the updates
    sizes = [len(part) for part in rows[0]]
    assert passes == sizes * 3 and sum(sizes) == 16  # the reference's, pi_old's, then the two updates'
    assert len(sizes) > 2 if budget else sizes == [8, 8]
    for logp, old_logp, ref_logp in losses[: first_update[0]]:  # the first update's micro-batches
        assert torch.equal(old_logp, logp) and torch.equal(ref_logp, logp)


def test_the_gradients_are_freed_after_each_update(small_config, monkeypatch):
    """Kept, they would take memory of the trained weights' size through the next rollout, where a
    colocated vLLM engine wakes up into the GPU memory the update left."""
    held: list[bool] = []  # at each rollout: whether any trained parameter holds a gradient
    generate = HFEngine.generate

    def recording(self, *args, **kwargs):
        held.append(any(p.grad is not None for p in self.policy.parameters()))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(HFEngine, "generate", recording)
    main(["fit", "--config", str(small_config("rgra", **FAST)), "--trainer.max_steps=3"])
    assert held == [False, False, False]


def test_token_mean_weights_each_ranks_token_mean_by_its_share_of_the_ranks_mean_count():
    """Rank 0 trains 3 tokens (sum of its per-token terms S0), rank 1 one (S1): their token means S0/3 and
    S1/1 times the shares 3/2 and 1/2 average (as DDP averages gradients) to (S0 + S1) / 4, the token mean
    of the 4 tokens. Other aggregations, and one process, leave the loss alone; no tokens anywhere: 0."""

    def shares(aggregation: str, counts: list[float]) -> list[float]:
        update = PolicyUpdate(LossConfig(aggregation=aggregation), 1.0, 1, 1, None, 1.0, 5)
        ranks_mean = {
            "mean": torch.tensor(counts, dtype=torch.float32).mean()
        }  # what strategy.reduce returns on every rank
        strategy = types.SimpleNamespace(reduce=lambda tensor, reduce_op: ranks_mean[reduce_op])
        trainer = types.SimpleNamespace(world_size=len(counts), strategy=strategy)
        return [float(update._token_share(trainer, torch.tensor(count))) for count in counts]

    assert shares("token_mean", [3, 1]) == [1.5, 0.5]
    assert shares("token_mean", [0, 1]) == [0.0, 2.0]  # S1 / 1 x 2, averaged: S1 / 1
    assert shares("token_mean", [0, 0]) == [0.0, 0.0]
    assert shares("token_mean", [5]) == [1.0]
    assert shares("sequence_mean", [3, 1]) == shares("constant_sum", [3, 1]) == [1.0, 1.0]


def test_a_token_budget_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"model.micro_batch_tokens must be >= 1, got 0"):
        PolicyUpdate(LossConfig(), 1.0, 1, 1, None, 1.0, 5, token_budget=0)


def test_a_rollout_that_does_not_split_into_the_minibatches_is_refused():
    """What a data loader without a ``batch_size`` hyperparameter gets (no check at the start): 16 rows in 3
    mini-batches were 4 updates, the last of one row at a fifth of its weight."""
    rollout, model = types.SimpleNamespace(completions=[""] * 16), torch.nn.Linear(1, 1)
    with pytest.raises(ConfigError, match=r"16 completions does not split into model.num_minibatches=3"):
        PolicyUpdate(LossConfig(), 1.0, 1, 3, None, 1.0, 5).minibatches(model, rollout)
    split = PolicyUpdate(LossConfig(), 1.0, 1, 4, None, 1.0, 5).minibatches(model, rollout)
    assert [part for part, _ in split] == [slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 16)]


def test_batch_not_divisible_into_minibatches_fails_at_start(small_config, tmp_path, capsys):
    """Refused before Lightning makes the run a log directory (it left one behind)."""
    config = small_config("rgra", **{"model.init_args.num_minibatches": 3})
    error = one_line_error(["fit", "--config", str(config)], capsys)
    assert "not divisible by model.num_minibatches=3" in error
    assert not (tmp_path / "runs").exists()


def test_max_steps_between_rollout_batches_is_refused(small_config, tmp_path, capsys):
    """Lightning stops between rollout batches only: 10 updates at 4 per batch ran 12 without a word."""
    options = {"model.init_args.num_iterations": 2, "model.init_args.num_minibatches": 2}
    config = small_config("rgra", **options, **{"trainer.max_steps": 10})
    assert one_line_error(["fit", "--config", str(config)], capsys) == (
        "error: trainer.max_steps=10 counts optimizer updates, 4 per rollout batch (model.num_iterations x "
        "model.num_minibatches), and training stops between batches only: use a multiple of 4 (8 or 12)"
    )
    assert not (tmp_path / "runs").exists()
    updater = PolicyUpdate(LossConfig(), 1.0, 3, 1, None, 1.0, 5)
    updater.check_max_steps(-1)  # no limit
    updater.check_max_steps(6)
    with pytest.raises(ConfigError, match=r"use a multiple of 3 \(3\)$"):
        updater.check_max_steps(2)


def test_loss_mask_drops_the_rows_of_truncated_completions_only_when_asked():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    rollout = types.SimpleNamespace(completion_mask=mask, truncated=torch.tensor([True, False, False]))
    assert torch.equal(loss_mask(rollout, True), torch.tensor([[0, 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert loss_mask(rollout, False) is mask
    assert loss_mask(types.SimpleNamespace(completion_mask=mask, truncated=None), True) is mask


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_truncated_completions_are_counted_and_left_out_of_the_loss_when_asked(
    small_config, tmp_path, monkeypatch, mask_truncated
):
    """At 14 new tokens some completions of the tiny policy are cut: ``train/truncated_fraction`` counts
    them, and with ``mask_truncated_completions`` every loss term sees their rows as all padding."""
    rollouts, masks, stats = [], [], []
    run, loss = PolicyUpdate.run, rgra_lightning.update.rl_loss

    def recording_run(self, module, experience):
        rollouts.append(experience.rollout)
        stats.append(run(self, module, experience))
        return stats[-1]

    def recording_loss(logp, advantages, completion_mask, *args, **kwargs):
        masks.append(completion_mask)
        return loss(logp, advantages, completion_mask, *args, **kwargs)

    monkeypatch.setattr(PolicyUpdate, "run", recording_run)
    monkeypatch.setattr(rgra_lightning.update, "rl_loss", recording_loss)
    overrides = {
        "model.init_args.sampling.max_new_tokens": 14,
        "model.init_args.loss.mask_truncated_completions": mask_truncated,
    }
    main(["fit", "--config", str(small_config("rgra", **FAST, **overrides)), "--trainer.max_steps=1"])
    (rollout,), (trained,) = rollouts, masks  # one update of one micro-batch
    truncated = rollout.truncated
    assert 0 < int(truncated.sum()) < len(truncated)
    expected = (
        rollout.completion_mask * (~truncated if mask_truncated else torch.ones_like(truncated))[:, None]
    )
    assert torch.equal(trained, expected)
    assert stats[0].trained_tokens == expected.sum()  # the weight of the per-token diagnostics across ranks
    (fraction,) = scalars_by_step(tmp_path / "runs", "train/truncated_fraction").values()
    assert fraction == [pytest.approx(truncated.float().mean().item())]


@pytest.mark.parametrize("aggregation", ["token_mean", "constant_sum"])
def test_each_update_has_the_gradient_and_diagnostics_of_its_whole_mini_batch(
    small_config, tmp_path, monkeypatch, aggregation
):
    """Two mini-batches of 8 rows, each accumulated over micro-batches of 3, 3 and 2 rows, with truncated
    completions left out of the loss: each update's gradient, loss and entropy must be those of one pass over
    its whole mini-batch, computed here directly with the weights the update started from: ``rl_loss`` on
    the mini-batch's rows and trained tokens (no batch sizes passed), ``backward``. The second update's
    gradient is its own mini-batch's only, nothing of the first's."""
    updates: list[dict] = []  # per update: the policy before its step, the gradient it applied
    runs: list[tuple] = []  # per rollout batch: its experience, the updater and the returned stats
    run, clip = PolicyUpdate.run, torch.nn.utils.clip_grad_norm_

    def recording_run(self, module, experience):
        runs.append((experience, self))
        updates.clear()
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip(module))
        stats = run(self, module, experience)
        runs[-1] += (stats,)
        return stats

    def recording_clip(module):
        def record(parameters, *args, **kwargs):
            parameters = list(parameters)  # before the step: the weights that made this gradient
            weights = copy.deepcopy(module.policy)
            updates.append({"policy": weights, "gradient": [p.grad.clone() for p in parameters]})
            return clip(parameters, *args, **kwargs)

        return record

    monkeypatch.setattr(PolicyUpdate, "run", recording_run)
    overrides = {
        "model.init_args.num_minibatches": 2,
        "model.init_args.micro_batch_size": 3,
        "model.init_args.warmup_steps": 0,  # the first update changes the weights the second starts from
        "model.init_args.sampling.max_new_tokens": 14,  # some completions cut: their rows are not trained
        "model.init_args.loss.mask_truncated_completions": True,
        "model.init_args.loss.aggregation": aggregation,
        "seed_everything": 6,  # rollouts with trained rows of non-zero advantage in both mini-batches
    }
    main(["fit", "--config", str(small_config("rgra", **FAST, **overrides)), "--trainer.max_steps=2"])
    ((experience, updater, stats),) = runs
    rollout, config = experience.rollout, updater.loss
    trained = rollout.completion_mask * (~rollout.truncated)[:, None]
    assert len(updates) == stats.applied == 2 and len(rollout.completions) == 16
    # fp32 gradients summed over 8 rows x up to 40 positions x 128 features in other orders
    rtol = rounding_rtol(torch.float32, 8 * 40 * 128)
    entropies = []
    for index, (part, update) in enumerate(zip((slice(0, 8), slice(8, 16)), updates, strict=True)):
        truncated = rollout.truncated[part]
        assert 0 < int(truncated.sum()) < 8, "each mini-batch needs trained and untrained rows"
        assert experience.advantages[part][~truncated].abs().sum() > 0, "and a policy term to train"
        policy, mini = update["policy"], rollout.select(part)
        policy.zero_grad(set_to_none=True)
        logp, entropy = token_logprobs(policy, mini, updater.temperature)
        ref = None if experience.ref_logprobs is None else experience.ref_logprobs[part]
        out = rl_loss(
            logp, experience.advantages[part], trained[part], config, old_logp=logp.detach(), ref_logp=ref
        )
        out.loss.backward()
        expected = [p.grad for p in policy.parameters()]
        assert len(expected) == len(update["gradient"]) and all(g is not None for g in expected)
        actual = torch.cat([g.flatten() for g in update["gradient"]])
        reference = torch.cat([g.flatten() for g in expected])
        assert_close_normwise(actual, reference, rtol, f"update {index} gradient")
        assert_close_normwise(stats.history["loss"][index], out.loss.detach(), rtol, f"update {index} loss")
        # the entropy diagnostic: the token mean over every completion token of the mini-batch
        entropies.append((entropy * mini.completion_mask).sum() / mini.completion_mask.sum())
        assert_close_normwise(stats.history["entropy"][index], entropies[-1], rtol, f"update {index} entropy")
    (logged,) = scalars_by_step(tmp_path / "runs", "train/entropy").values()  # the mean of the updates'
    assert logged == [pytest.approx(torch.stack(entropies).mean().item(), rel=rtol)]


def test_at_one_update_per_rollout_batch_grpo_takes_rgras_gradient(small_config, monkeypatch):
    """With one update per rollout batch no pi_old is stored: the update passes the policy's own detached
    log-probs, so GRPO's ratio is 1 with the gradient of log pi and its first update is RGRA's (docs/
    ablations.md). Not detached, the ratio would be exp(0) with no gradient at all: GRPO would not learn,
    and the loss-level test (tests/test_losses.py), which passes pi_old itself, would not see it."""
    gradients: dict[str, list[torch.Tensor]] = {}
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, *args, **kwargs):
        parameters = list(parameters)
        gradients[preset] = [p.grad.clone() for p in parameters if p.grad is not None]
        return clip(parameters, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    for preset in ("grpo", "rgra"):  # the same rollouts: the same seed, sampled before any update
        config = small_config(preset, **FAST, **{"model.init_args.num_iterations": 1})
        shutil.rmtree(config.parent / "checkpoints", ignore_errors=True)  # a new run, not a resume
        main(["fit", "--config", str(config), "--trainer.max_steps=1"])
    assert len(gradients["grpo"]) == len(gradients["rgra"]) > 0
    assert any(gradient.abs().sum() > 0 for gradient in gradients["grpo"])
    # The same sums, the ratio's exp(0) = 1 exact: a few float32 roundings of 16 rows x 40 positions
    rtol = rounding_rtol(torch.float32, 16 * 40)
    for grpo, rgra in zip(gradients["grpo"], gradients["rgra"], strict=True):
        assert_close_normwise(grpo, rgra, rtol, "GRPO's first gradient against RGRA's")


def test_each_update_applies_the_learning_rate_it_logs_and_the_warm_up_gives(
    small_config, applied_learning_rates
):
    """The scheduler steps after the optimizer: stepped before, each update would apply the next update's
    rate (the warm-up one step ahead); and ``train/learning_rate`` is the rate applied, not the peak."""
    applied = applied_learning_rates
    peak, warmup = 1e-4, 4
    overrides = {"model.init_args.learning_rate": peak, "model.init_args.warmup_steps": warmup}
    config = small_config("rgra", **FAST, **overrides)
    main(["fit", "--config", str(config), "--trainer.max_steps=3"])
    expected = [peak * (update + 1) / warmup for update in range(3)]  # optim.lr_factor's warm-up
    assert applied == pytest.approx(expected, rel=1e-12)
    logged = scalars_by_step(config.parent / "runs", "train/learning_rate")
    assert [logged[update] for update in (1, 2, 3)] == [[pytest.approx(lr, rel=1e-6)] for lr in expected]
