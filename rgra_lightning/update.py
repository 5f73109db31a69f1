"""The update stage: optimizer steps on one rollout batch's ``Experience``.

The batch is passed over ``num_iterations`` (mu) times, each pass split into ``num_minibatches`` optimizer
updates, each update's gradient accumulated over micro-batches of at most ``micro_batch_size`` completions
(or, with ``token_budget``, of rows sorted by length within a token budget; see ``logprobs.micro_batches``).
Each micro-batch runs at its own padded width (``logprobs.trim_padding``). The loss of a micro-batch is
normalised by its mini-batch's size, so the update does not depend on the micro-batch split. An update
whose loss or gradient is NaN/inf on any rank is skipped; after ``max_consecutive_nonfinite`` in a row
the last finite state is saved and training stops. A skipped update does not count towards
``trainer.max_steps``: the batch that reaches it leaves the updates it has left undone.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning import LightningModule, Trainer
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LRScheduler

from rgra_lightning.distributed import no_gradient_sync, token_share
from rgra_lightning.errors import ConfigError, NonFiniteTrainingError, require_valid
from rgra_lightning.experience import Experience
from rgra_lightning.logprobs import MicroBatch, check_token_budget, micro_batches, token_logprobs
from rgra_lightning.losses import LossConfig, rl_loss
from rgra_lightning.rollout import Rollout


@dataclass
class UpdateStats:
    """Per-update diagnostics of one rollout batch (each list has one value per applied optimizer update;
    a skipped update's, NaN or inf, are left out), the numbers of updates applied and skipped as
    non-finite, and the tokens the loss trains on ``[]`` (the weight of its per-token diagnostics across
    ranks)."""

    history: dict[str, list[Tensor]] = field(default_factory=dict)
    applied: int = 0
    skipped: int = 0
    trained_tokens: Tensor = field(default_factory=lambda: torch.tensor(0.0))

    def add(self, name: str, value: Tensor) -> None:
        self.history.setdefault(name, []).append(value)

    def means(self) -> dict[str, Tensor]:
        """The mean over the batch's updates of each diagnostic, as ``train/<name>``."""
        return {f"train/{name}": torch.stack(values).mean() for name, values in self.history.items()}


def follow_learning_rate(scheduler: LRScheduler, learning_rate: float) -> None:
    """Make ``scheduler`` and its optimizer schedule from ``learning_rate`` (``model.learning_rate``) with
    the schedule as configured now, at the point of it they are at. A resumed fit restores the learning
    rates of the checkpoint's optimizer and scheduler states: the old peak where the resume changed
    ``model.learning_rate``, and the old schedule's value where it changed the schedule (``max_steps``,
    ``warmup_steps``, ``lr_schedule``), which the first update would otherwise run at (0 at the end of a
    linear decay that a longer ``max_steps`` extends). Without a change the rates are those already set."""
    factors = getattr(scheduler, "lr_lambdas", None)  # a LambdaLR's: the schedule as configured now
    for index, group in enumerate(scheduler.optimizer.param_groups):
        if factors is None:  # another scheduler: only a changed peak can be followed
            group["lr"] = learning_rate * (group["lr"] / scheduler.base_lrs[index])
        else:
            group["lr"] = learning_rate * factors[index](scheduler.last_epoch)  # as LambdaLR sets it
        group["initial_lr"] = learning_rate
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # get_last_lr's


def loss_mask(rollout: Rollout, mask_truncated: bool) -> Tensor:
    """The completion tokens the loss trains on ``[N, T]``: ``rollout.completion_mask``, without the rows
    of truncated completions when ``mask_truncated`` (``LossConfig.mask_truncated_completions``)."""
    if not mask_truncated or rollout.truncated is None:
        return rollout.completion_mask
    return rollout.completion_mask * (~rollout.truncated).unsqueeze(1).to(rollout.completion_mask.dtype)


class PolicyUpdate:
    """mu passes x mini-batches x micro-batches of optimizer updates over an ``Experience``.

    Args:
        loss: the loss options.
        temperature: the sampling temperature, at which the policy's log-probs are taken.
        num_iterations, num_minibatches, micro_batch_size, max_grad_norm, max_consecutive_nonfinite: as the
            ``RLModule`` arguments of the same names.
        token_budget: None (the default): micro-batches of ``micro_batch_size`` consecutive rows. Else each
            mini-batch's rows are sorted by length and cut into micro-batches of at most this many tokens
            (rows x the micro-batch's longest prompt + longest completion), so short completions share a
            pass instead of being padded to the longest (a group's rows may then be split, each part
            encoding the prompt once). Not with FSDP2 (ranks would run different numbers of passes).
    """

    def __init__(
        self,
        loss: LossConfig,
        temperature: float,
        num_iterations: int,
        num_minibatches: int,
        micro_batch_size: int | None,
        max_grad_norm: float,
        max_consecutive_nonfinite: int,
        token_budget: int | None = None,
    ) -> None:
        require_valid(
            "model.",
            ("num_iterations", num_iterations, num_iterations >= 1, ">= 1"),
            ("num_minibatches", num_minibatches, num_minibatches >= 1, ">= 1"),
            ("micro_batch_size", micro_batch_size, micro_batch_size is None or micro_batch_size >= 1, ">= 1"),
            ("max_grad_norm", max_grad_norm, max_grad_norm > 0, "> 0"),
            ("max_consecutive_nonfinite", max_consecutive_nonfinite, max_consecutive_nonfinite >= 1, ">= 1"),
            ("micro_batch_tokens", token_budget, token_budget is None or token_budget >= 1, ">= 1"),
        )
        self.loss = loss
        self.temperature = temperature
        self.num_iterations = num_iterations
        self.num_minibatches = num_minibatches
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.token_budget = token_budget
        self.consecutive_nonfinite = 0

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates per rollout batch: mu x mini-batches (``trainer.max_steps`` counts updates)."""
        return self.num_iterations * self.num_minibatches

    @property
    def stores_old_logprobs(self) -> bool:
        """pi_old is needed only when a ratio (or the sampler correction) is used *and* the policy changes
        before the last update; otherwise the detached current log-probs are pi_old's."""
        return self.loss.needs_old_logprobs and self.updates_per_batch > 1

    def minibatches(self, model: torch.nn.Module, rollout: Rollout) -> list[tuple[slice, list[MicroBatch]]]:
        """Each mini-batch's rows and micro-batches, in the order every pass over the batch runs them.

        The reference and pi_old log-probs run in these forward passes too: at another split (the whole
        batch's micro-batches) they would round differently from the policy's in the update, so the first
        update's ratio would be 1 and its KL 0 only to rounding.
        """
        check_token_budget(model, self.token_budget)
        rows = len(rollout.completions)
        # checked at the start of a fit too, where the data module has a batch size
        if rows % self.num_minibatches:
            raise ConfigError(
                f"a rollout batch of {rows} completions does not split into model.num_minibatches="
                f"{self.num_minibatches} equal mini-batches"
            )
        size = rows // self.num_minibatches
        parts = []
        for first in range(0, rows, size):
            part = slice(first, first + size)
            parts.append((part, micro_batches(rollout, part, self.micro_batch_size, self.token_budget)))
        return parts

    def check_rollout_size(self, batch_size: int, num_generations: int) -> None:
        """Raise a ``ConfigError`` unless a rollout batch splits into ``num_minibatches`` equal parts."""
        if (batch_size * num_generations) % self.num_minibatches:
            raise ConfigError(
                f"data.batch_size x model.sampling.num_generations = {batch_size} x {num_generations} "
                f"completions is not divisible by model.num_minibatches={self.num_minibatches}"
            )

    def check_max_steps(self, max_steps: int) -> None:
        """Raise a ``ConfigError`` unless ``max_steps`` (optimizer updates; -1: no limit) is a whole number
        of rollout batches: Lightning stops between batches only, so it would run past it."""
        updates = self.updates_per_batch
        if max_steps > 0 and max_steps % updates:
            below, above = max_steps // updates * updates, -(-max_steps // updates) * updates
            raise ConfigError(
                f"trainer.max_steps={max_steps} counts optimizer updates, {updates} per rollout batch "
                "(model.num_iterations x model.num_minibatches), and training stops between batches only: "
                f"use a multiple of {updates} ({' or '.join(str(n) for n in (below, above) if n > 0)})"
            )

    def run(self, module: LightningModule, experience: Experience) -> UpdateStats:
        """Train ``module.policy`` on ``experience`` with the module's optimizer and scheduler."""
        optimizer, scheduler = module.optimizers(), module.lr_schedulers()
        follow_learning_rate(scheduler, module.hparams.learning_rate)
        trainer = module.trainer
        rollout, advantages = experience.rollout, experience.advantages
        trained = loss_mask(rollout, self.loss.mask_truncated_completions)
        minibatches = self.minibatches(module.policy, rollout)
        stats = UpdateStats(trained_tokens=trained.sum())
        for _ in range(self.num_iterations):
            for part, parts in minibatches:
                if 0 <= trainer.max_steps <= trainer.global_step:
                    break  # reached in a batch with skipped updates: the updates left would run past it
                rows = part.stop - part.start
                tokens = trained[part].sum()  # the mini-batch's trained tokens, for every micro-batch
                share = self._token_share(trainer, tokens)
                real_tokens = rollout.completion_mask[part].sum()
                optimizer.zero_grad()
                sums: dict[str, Tensor] = {}  # each diagnostic adds up over the micro-batches
                for index, micro in enumerate(parts):
                    mini = rollout.select(micro)
                    logp, entropy = token_logprobs(module.policy, mini, self.temperature)
                    old, ref = experience.old_logprobs, experience.ref_logprobs
                    sampler = rollout.sampler_logprobs
                    out = rl_loss(
                        logp,
                        advantages[micro],
                        trained[micro],
                        self.loss,
                        old_logp=logp.detach() if old is None else old[micro],
                        ref_logp=None if ref is None else ref[micro],
                        batch_rows=rows,
                        batch_tokens=tokens,
                        sampler_logp=None if sampler is None else sampler[micro],
                    )
                    # DDP all-reduces the accumulated gradients in the last micro-batch's backward only
                    last = index == len(parts) - 1
                    loss = out.loss * share
                    with nullcontext() if last else no_gradient_sync(trainer.strategy):
                        module.manual_backward(loss)
                    for name, value in (
                        ("loss", loss.detach()),
                        ("policy_loss", out.policy_loss * share),
                        ("kl", out.kl * share),
                        ("clip_fraction", out.clip_fraction),
                        ("ratio_mean", out.ratio_mean),
                        ("entropy", (entropy * mini.completion_mask).sum() / real_tokens.clamp(min=1)),
                        ("sampler_logprob_diff", out.sampler_logprob_diff),
                        ("sampler_is_clipped_fraction", out.sampler_is_clipped_fraction),
                    ):
                        if value is not None:  # the sampler's only with loss.sampler_correction_cap
                            sums[name] = sums.get(name, 0) + value
                learning_rate = torch.tensor(scheduler.get_last_lr()[0])  # this update's
                grad_norm = torch.nn.utils.clip_grad_norm_(module.policy.parameters(), self.max_grad_norm)
                if isinstance(grad_norm, DTensor):  # FSDP2: the global norm, replicated on every rank
                    grad_norm = grad_norm.full_tensor()
                if self._skip_nonfinite(module, sums["loss"], grad_norm):
                    optimizer.zero_grad()
                    stats.skipped += 1
                    continue
                optimizer.step()
                scheduler.step()
                stats.applied += 1
                for name, value in [
                    *sums.items(),
                    ("grad_norm", grad_norm.detach()),
                    ("learning_rate", learning_rate),
                ]:
                    stats.add(name, value)
        # Freed (None), not zeroed: the next rollout has their memory (a colocated vLLM engine's wake-up).
        optimizer.zero_grad()
        return stats

    def _token_share(self, trainer: Trainer, tokens: Tensor) -> Tensor | float:
        """``distributed.token_share`` with ``token_mean`` (TRL's ``"dapo"`` divides by the global count
        too); 1 otherwise: the ranks hold equal numbers of rows, which the other aggregations divide by."""
        return token_share(trainer, tokens) if self.loss.aggregation == "token_mean" else 1.0

    def _skip_nonfinite(self, module: LightningModule, loss: Tensor, grad_norm: Tensor) -> bool:
        """Whether this update must be skipped because its loss or gradient norm is NaN/inf (on any rank).

        Skipped updates do not advance ``trainer.global_step`` or the learning-rate schedule. After
        ``max_consecutive_nonfinite`` in a row the unchanged state (after the last finite update) is
        checkpointed and training stops with ``NonFiniteTrainingError``.
        """
        trainer = module.trainer
        finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))  # one host sync, not two
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.consecutive_nonfinite = 0
            return False
        self.consecutive_nonfinite += 1
        limit = self.max_consecutive_nonfinite
        warnings.warn(
            f"non-finite loss ({loss.item()}) or gradient norm ({grad_norm.item()}) after update "
            f"{trainer.global_step}: update skipped ({self.consecutive_nonfinite} in a row, limit {limit})",
            stacklevel=2,
        )
        if self.consecutive_nonfinite >= limit:
            callback = trainer.checkpoint_callback
            directory = getattr(callback, "dirpath", None) or trainer.log_dir or trainer.default_root_dir
            path = Path(directory) / f"nonfinite-stop-step={trainer.global_step}.ckpt"
            trainer.save_checkpoint(path)
            raise NonFiniteTrainingError(
                f"{limit} consecutive updates had a NaN/inf loss or gradient; the state they started from "
                f"is saved in {path}. Lower model.learning_rate or model.max_grad_norm, use "
                f"model.dtype=float32 or bfloat16 instead of float16, or check the verifier's rewards, "
                f"then resume with --ckpt_path {path} (the rollout batch it stopped in is sampled and "
                "trained again), or from an earlier checkpoint if it stops again at once"
            )
        return True
