"""The RL LightningModule: sample, score, compute advantages, optimise. It orchestrates; the math lives in
``advantages.py`` and ``losses.py``, sampling in ``rollout.py``, rewards in the ``rewards`` package.

One training step = one rollout batch of B prompts x G completions, followed by
``num_iterations`` (mu) passes over it, each split into ``num_minibatches`` optimizer updates.
``trainer.max_steps`` therefore counts optimizer updates: mu x num_minibatches per rollout batch.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from jsonargparse import lazy_instance
from lightning import LightningModule
from lightning.pytorch.strategies import ParallelStrategy, Strategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.distributed.tensor import DTensor

from rewards import MathVerifier, Score, Verifier, WeightedSum
from rgra_lightning.advantages import group_advantages, zero_std_group_fraction
from rgra_lightning.checkpointing import require_same_run
from rgra_lightning.errors import ConfigError
from rgra_lightning.evaluation import EvaluationConfig, MajorityAtK, PassAtK
from rgra_lightning.losses import LossConfig, policy_loss
from rgra_lightning.models import LoraConfig, add_lora, freeze, load_causal_lm, load_tokenizer
from rgra_lightning.parallel import ShardingConfig, is_sharded, shard_model
from rgra_lightning.reward_model import learned_reward_models
from rgra_lightning.rollout import Rollout, SamplingConfig, sample_rollout, token_logprobs

# Frozen submodules reloaded from their model paths, so left out of checkpoints.
FROZEN_PREFIXES = ("reference.", "reward_models.")

# Scores completions while the main thread runs the reference pass; the verifier's Python and its worker
# processes then overlap with tensor work (which releases the GIL) instead of adding to the step.
_VERIFIER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier")

OUT_OF_MEMORY_ADVICE = (
    "out of memory during a training step. Options that reduce memory: a smaller "
    "model.micro_batch_size (completions per forward/backward pass; the update stays the same), a "
    "smaller data.batch_size (prompts per step), a smaller "
    "model.sampling.max_new_tokens or model.sampling.num_generations, model.dtype=bfloat16, "
    "model.loss.beta=0 (no reference model), or model.sharding (activation checkpointing, FSDP)."
)


class NonFiniteTrainingError(ConfigError):
    """Too many consecutive updates had a NaN/inf loss or gradient; the last good state was saved."""


class RLModule(LightningModule):
    """Trains a causal LM policy with a group-relative policy-gradient loss (GRPO, RGRA, ablations).

    Args:
        model_path: local Hugging Face model directory (or a hub name when online) of the policy; the
            reference model is a second, frozen copy of the same weights, loaded for ``fit`` only.
        gguf_file: optional GGUF file inside ``model_path`` to load instead of safetensors weights.
        dtype: parameter dtype, ``float32`` | ``bfloat16`` | ``float16``.
        verifier: scores each completion against the reference answer (``rewards.Verifier``); learned
            reward models in it (``RewardModelScorer``) become frozen submodules, like the reference.
        loss: the loss options (policy term, KL, aggregation, advantage).
        sampling: G, temperature, top_p, max_new_tokens for training rollouts.
        num_iterations: mu, passes over each rollout batch (>= 1). With mu > 1 the ratio terms differ
            from REINFORCE; old log-probs are stored only then (or with several mini-batches).
        num_minibatches: optimizer updates per pass; B x G must be divisible by it.
        micro_batch_size: completions per forward/backward pass (None: a whole mini-batch). Gradients are
            accumulated over the micro-batches of a mini-batch and the loss is normalised by the
            mini-batch's size, so the update is the same whatever this is; only peak memory and speed
            change. The no-gradient passes (reference, old log-probs) use it too. A multiple of G keeps
            each prompt encoded once per group.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, in optimizer updates.
        max_grad_norm: gradient-norm clipping threshold (> 0).
        num_logged_samples: completions kept from each step for the sample logger.
        validate_before_training: log greedy ``val/*`` metrics of the initial policy at step 0.
        max_consecutive_nonfinite: an update whose loss or gradient is NaN/inf is skipped (counted in
            ``train/nonfinite_updates``); after this many in a row, the last good state is saved and
            training stops with ``NonFiniteTrainingError``.
        sharding: FSDP2 options (mixed precision, activation checkpointing), used under
            ``ModelParallelStrategy``; see ``rgra_lightning.parallel``.
        lora: LoRA adapters (``peft``) instead of full fine-tuning: only the adapters train, and the
            reference log-probs come from the same weights with the adapters disabled (no second copy).
        evaluation: what ``validate``/``test`` measure (greedy pass@1, sampled pass@k and maj@k) and
            whether they write every completion to a JSONL file; see ``rgra_lightning.evaluation``.
    """

    def __init__(
        self,
        model_path: str = "models/arith-tiny",
        gguf_file: str | None = None,
        dtype: str = "float32",
        verifier: Verifier = lazy_instance(MathVerifier),
        loss: LossConfig = LossConfig(),
        sampling: SamplingConfig = SamplingConfig(),
        num_iterations: int = 1,
        num_minibatches: int = 1,
        micro_batch_size: int | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_grad_norm: float = 1.0,
        num_logged_samples: int = 4,
        validate_before_training: bool = True,
        max_consecutive_nonfinite: int = 5,
        sharding: ShardingConfig = ShardingConfig(),
        lora: LoraConfig | None = None,
        evaluation: EvaluationConfig = EvaluationConfig(),
    ) -> None:
        super().__init__()
        for name, value, valid, allowed in (
            ("num_iterations", num_iterations, num_iterations >= 1, ">= 1"),
            ("num_minibatches", num_minibatches, num_minibatches >= 1, ">= 1"),
            ("micro_batch_size", micro_batch_size, micro_batch_size is None or micro_batch_size >= 1, ">= 1"),
            ("learning_rate", learning_rate, learning_rate > 0, "> 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
            ("max_grad_norm", max_grad_norm, max_grad_norm > 0, "> 0"),
            ("max_consecutive_nonfinite", max_consecutive_nonfinite, max_consecutive_nonfinite >= 1, ">= 1"),
        ):
            if not valid:
                raise ConfigError(f"model.{name} must be {allowed}, got {value}")
        self.save_hyperparameters(ignore=["verifier"])
        self.automatic_optimization = False
        self.verifier = verifier
        if loss.aggregation == "constant_sum" and loss.aggregation_constant is None:
            loss = replace(loss, aggregation_constant=sampling.max_new_tokens)
        self.loss_config = loss
        self.sampling = sampling
        self.sharding = sharding
        self.tokenizer = load_tokenizer(model_path, gguf_file)
        self.policy = load_causal_lm(model_path, gguf_file, dtype)
        if lora is not None:
            self.policy = add_lora(self.policy, lora)
        self.reference: torch.nn.Module | None = None  # loaded by ``setup("fit")``, when the loss needs it
        self.reward_models = torch.nn.ModuleList(learned_reward_models(verifier))
        self.evaluation = evaluation
        self.benchmark_metrics = torch.nn.ModuleDict(
            {"accuracy": PassAtK(1)}
            | {f"pass@{k}": PassAtK(k) for k in evaluation.k if evaluation.num_samples}
            | {f"maj@{k}": MajorityAtK(k) for k in evaluation.k if evaluation.num_samples}
        )
        self._samples_file: Any = None
        self.latest_samples: list[dict[str, Any]] = []
        self.consecutive_nonfinite = 0

    # ----------------------------------------------------------------- set-up

    @property
    def hf_model(self) -> torch.nn.Module:
        """The model ``ExportHuggingFace`` saves: the policy."""
        return self.policy

    def setup(self, stage: str) -> None:
        """Load the frozen reference copy for ``fit`` only: evaluation and prediction never need it. It is
        here before Lightning moves the module to its device, shards it and restores a checkpoint."""
        hp = self.hparams
        if stage == "fit" and self.reference is None and self.loss_config.needs_reference and hp.lora is None:
            self.reference = freeze(load_causal_lm(hp.model_path, hp.gguf_file, hp.dtype))

    def train(self, mode: bool = True) -> RLModule:
        """Keep the reference and reward models in eval mode whatever Lightning asks of the module."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        self.reward_models.eval()
        return self

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard the policy, the reference and the reward models over the
        data-parallel mesh."""
        mesh = self.device_mesh
        if mesh is None or is_sharded(self.policy):
            return  # one device or DDP, or already sharded (configure_model runs once per fit/validate)
        if mesh["tensor_parallel"].size() != 1:
            raise ConfigError("tensor parallelism is not supported: set strategy.tensor_parallel_size=1")
        if self.hparams.lora is not None:
            # Sharded, the adapters could not be merged for export, and checkpoints would hold the base too
            raise ConfigError("model.lora is not supported with FSDP2 (ModelParallelStrategy): use DDP")
        data_mesh = mesh["data_parallel"]
        shard_model(self.policy, data_mesh, self.sharding, trainable=True)
        for frozen in [self.reference, *self.reward_models]:
            if frozen is not None:
                shard_model(frozen, data_mesh, self.sharding, trainable=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],  # LoRA: the adapters only
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            fused=True,  # one kernel for all parameters: 0.4 instead of 1.8 ms a step on the tiny CPU policy
        )
        warmup = max(hp.warmup_steps, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(getattr(datamodule, "hparams", {}), "batch_size", None)
        if (
            batch_size is not None
            and (batch_size * self.sampling.num_generations) % self.hparams.num_minibatches
        ):
            raise ConfigError(
                f"data.batch_size x model.sampling.num_generations = {batch_size} x "
                f"{self.sampling.num_generations} completions is not divisible by "
                f"model.num_minibatches={self.hparams.num_minibatches}"
            )

    def reloaded_state_keys(self) -> set[str]:
        """State-dict keys that checkpoints leave out because they are reloaded from model paths: the
        reference and reward models and, with LoRA, the policy's frozen base weights (only adapters train)."""
        state = self.state_dict(keep_vars=True)
        keys = {key for key in state if key.startswith(FROZEN_PREFIXES)}
        if self.hparams.lora is not None:
            keys |= {
                key
                for key, value in state.items()
                if key.startswith("policy.")
                and isinstance(value, torch.nn.Parameter)
                and not value.requires_grad
            }
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if is_sharded(self.policy):
            return  # FSDP2 restores every key of the module state (torch.distributed.checkpoint): keep them
        state = checkpoint["state_dict"]
        for key in self.reloaded_state_keys() & set(state):
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            require_same_run(checkpoint, self.trainer, self)
        if "state_dict" in checkpoint:  # FSDP2: loaded already, in place
            current = self.state_dict()
            checkpoint["state_dict"].update({key: current[key] for key in self.reloaded_state_keys()})

    # --------------------------------------------------------------- training

    @property
    def stores_old_logprobs(self) -> bool:
        """pi_old is needed only when a ratio is used *and* the policy changes before the last update."""
        several_updates = self.hparams.num_iterations > 1 or self.hparams.num_minibatches > 1
        return self.loss_config.needs_old_logprobs and several_updates

    def micro_batches(self, rows: slice) -> list[slice]:
        """``rows`` (a step-1 slice of the rollout) cut into slices of at most ``micro_batch_size`` rows."""
        size = self.hparams.micro_batch_size or rows.stop - rows.start
        return [slice(first, min(first + size, rows.stop)) for first in range(rows.start, rows.stop, size)]

    def logprobs_without_grad(self, model: torch.nn.Module, rollout: Rollout) -> Tensor:
        """Token log-probs ``[N, T]`` of ``model``, one micro-batch of rows per forward pass (call it under
        ``torch.no_grad``)."""
        rows = slice(0, len(rollout.completions))
        return torch.cat(
            [
                token_logprobs(model, rollout.select(part), self.sampling.temperature, with_entropy=False)[0]
                for part in self.micro_batches(rows)
            ]
        )

    def reference_logprobs(self, rollout: Rollout) -> Tensor | None:
        """Token log-probs ``[N, T]`` of the reference policy, or None when the loss has no KL term: the
        frozen copy, or with LoRA the same base weights with the adapters disabled."""
        if self.reference is not None:
            return self.logprobs_without_grad(self.reference, rollout)
        if self.hparams.lora is not None and self.loss_config.needs_reference:
            with self.policy.disable_adapter():
                return self.logprobs_without_grad(self.policy, rollout)
        return None

    def score(self, rollout: Rollout, batch: dict[str, list[str]]) -> tuple[Tensor, Tensor, list]:
        """Rewards and correctness ``[N]`` (float, on the module's device) and the verifier's scores of the
        completions of ``batch``'s prompts and references."""
        repeats = len(rollout.completions) // len(batch["prompt"])
        prompts, references = (
            [item for item in batch[key] for _ in range(repeats)] for key in ("prompt", "reference")
        )
        scores = robust_score_batch(self.verifier, rollout.completions, references, prompts)
        scores = [checked_score(s) for s in scores]
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32, device=self.device)
        correct = torch.tensor([s.correct for s in scores], dtype=torch.float32, device=self.device)
        return rewards, correct, scores

    def _start_scoring(self, rollout: Rollout, batch: dict[str, list[str]]) -> Future:
        """``timed(self.score, ...)`` in the verifier thread, to overlap the reference pass. A sharded reward
        model runs collectives, whose order must match on every rank, so it scores here and now instead."""
        if not any(is_sharded(model) for model in self.reward_models):
            return _VERIFIER_THREAD.submit(timed, self.score, rollout, batch)
        done: Future = Future()
        done.set_result(timed(self.score, rollout, batch))
        return done

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        try:
            self._rollout_and_update(batch)
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(OUT_OF_MEMORY_ADVICE) from error

    def _skip_nonfinite_update(self, loss: Tensor, grad_norm: Tensor) -> bool:
        """Whether this update must be skipped because its loss or gradient norm is NaN/inf (on any rank).

        Skipped updates do not advance ``trainer.global_step`` or the learning-rate schedule. After
        ``max_consecutive_nonfinite`` in a row the unchanged (last good) state is checkpointed and training
        stops with an error.
        """
        finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))  # one host sync, not two
        if self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.consecutive_nonfinite = 0
            return False
        self.consecutive_nonfinite += 1
        limit = self.hparams.max_consecutive_nonfinite
        warnings.warn(
            f"non-finite loss ({loss.item()}) or gradient norm ({grad_norm.item()}) after update "
            f"{self.trainer.global_step}: update skipped "
            f"({self.consecutive_nonfinite} in a row, limit {limit})",
            stacklevel=2,
        )
        if self.consecutive_nonfinite >= limit:
            callback = self.trainer.checkpoint_callback
            directory = (
                getattr(callback, "dirpath", None) or self.trainer.log_dir or self.trainer.default_root_dir
            )
            path = Path(directory) / f"nonfinite-stop-step={self.trainer.global_step}.ckpt"
            self.trainer.save_checkpoint(path)
            raise NonFiniteTrainingError(
                f"{limit} consecutive updates had a NaN/inf loss or gradient; the last good state is "
                f"saved in {path}. Lower model.learning_rate or model.max_grad_norm, use "
                f"model.dtype=float32 or bfloat16 instead of float16, or check the verifier's rewards, "
                f"then resume with --ckpt_path {path}"
            )
        return True

    def _rollout_and_update(self, batch: dict[str, list[str]]) -> None:
        hp, group = self.hparams, self.sampling.num_generations
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()

        start = time.perf_counter()
        rollout = sample_rollout(self.policy, self.tokenizer, batch["prompt"], self.sampling)
        generated = time.perf_counter()
        scoring = self._start_scoring(rollout, batch)
        temperature = self.sampling.temperature
        with torch.no_grad():
            ref_logp = self.reference_logprobs(rollout)
            old_logp = self.logprobs_without_grad(self.policy, rollout) if self.stores_old_logprobs else None
        (rewards, correct, scores), verification_s = scoring.result()

        all_rewards = self.all_gather(rewards).flatten()  # every rank's: batch_std and reward_std
        advantage = self.loss_config.advantage
        advantages = group_advantages(rewards.view(-1, group), advantage, all_rewards).view(-1)

        rows = len(rollout.completions)
        minibatch = rows // hp.num_minibatches
        history: dict[str, list[Tensor]] = {}
        skipped = 0
        for _ in range(hp.num_iterations):
            for first in range(0, rows, minibatch):
                part = slice(first, first + minibatch)
                tokens = rollout.completion_mask[part].sum()  # the mini-batch's, for every micro-batch
                parts = self.micro_batches(part)
                optimizer.zero_grad()
                sums: dict[str, Tensor] = {}  # each diagnostic adds up over the micro-batches
                for index, micro in enumerate(parts):
                    mini = rollout.select(micro)
                    logp, entropy = token_logprobs(self.policy, mini, temperature)
                    out = policy_loss(
                        logp,
                        advantages[micro],
                        mini.completion_mask,
                        self.loss_config,
                        old_logp=logp.detach() if old_logp is None else old_logp[micro],
                        ref_logp=None if ref_logp is None else ref_logp[micro],
                        batch_rows=minibatch,
                        batch_tokens=tokens,
                    )
                    # DDP all-reduces the accumulated gradients in the last micro-batch's backward only
                    last = index == len(parts) - 1
                    with nullcontext() if last else no_gradient_sync(self.trainer.strategy):
                        self.manual_backward(out.loss)
                    for name, value in (
                        ("loss", out.loss.detach()),
                        ("policy_loss", out.policy_loss),
                        ("kl", out.kl),
                        ("clip_fraction", out.clip_fraction),
                        ("ratio_mean", out.ratio_mean),
                        ("entropy", (entropy * mini.completion_mask).sum() / tokens.clamp(min=1)),
                    ):
                        sums[name] = sums.get(name, 0) + value
                learning_rate = torch.tensor(scheduler.get_last_lr()[0])  # this update's
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), hp.max_grad_norm)
                if isinstance(grad_norm, DTensor):  # FSDP2: the global norm, replicated on every rank
                    grad_norm = grad_norm.full_tensor()
                if self._skip_nonfinite_update(sums["loss"], grad_norm):
                    optimizer.zero_grad()
                    skipped += 1
                else:
                    optimizer.step()
                    scheduler.step()
                for name, value in [
                    *sums.items(),
                    ("grad_norm", grad_norm.detach()),
                    ("learning_rate", learning_rate),
                ]:
                    history.setdefault(name, []).append(value)
        updated = time.perf_counter()

        lengths = rollout.completion_mask.sum(dim=1).float()
        metrics = {f"train/{name}": torch.stack(values).mean() for name, values in history.items()}
        metrics |= {
            "train/reward": rewards.mean(),
            "train/reward_std": all_rewards.std(),
            "train/accuracy": correct.mean(),
            "train/advantage_abs_mean": advantages.abs().mean(),
            "train/zero_std_group_fraction": zero_std_group_fraction(rewards.view(-1, group)),
            "train/completion_length_mean": lengths.mean(),
            "train/completion_length_max": lengths.max(),
            "train/verifier_errors": torch.tensor(float(sum(s.error is not None for s in scores))),
            "train/nonfinite_updates": torch.tensor(float(skipped)),
            "train/truncated_prompts": torch.tensor(float(rollout.truncated_prompts)),
            "time/generation_s": torch.tensor(generated - start),
            "time/verification_s": torch.tensor(verification_s),  # overlaps the reference pass
            "time/update_s": torch.tensor(updated - generated),  # includes any wait for the verifier
            "time/step_s": torch.tensor(updated - start),
            "train/completion_tokens_per_s": lengths.sum().cpu() / max(generated - start, 1e-9),
        }
        metrics |= {
            f"train/rewards/{name}": value for name, value in reward_components(self.verifier, scores).items()
        }
        # Across ranks: means of per-rank means (every rank holds B x G rows), except these. The loss
        # terms stay plain means, as DDP averages the ranks' gradients whatever the aggregation.
        reductions = {"train/completion_length_max": "max", "train/verifier_errors": "sum"}
        reductions |= {"train/completion_tokens_per_s": "sum"} | {n: "max" for n in metrics if "time/" in n}
        reductions |= {f"train/{n}": "token_mean" for n in ("entropy", "clip_fraction", "ratio_mean")}
        metrics = self.reduce_across_ranks(metrics, reductions, tokens=lengths.sum())
        # Lightning takes a logged ``step`` as the x value of the other metrics; without it, the x axis
        # would count rollout batches while checkpoints, samples and ``max_steps`` count updates.
        metrics["step"] = torch.tensor(float(self.global_step))
        progress = ("train/reward", "train/accuracy")  # also shown on the progress bar
        for prog_bar in (False, True):
            self.log_dict(
                {name: value for name, value in metrics.items() if (name in progress) == prog_bar},
                prog_bar=prog_bar,
                on_step=True,
                on_epoch=False,
                batch_size=len(batch["prompt"]),
            )
        self.latest_samples = [
            {
                "prompt": batch["prompt"][i // group],
                "completion": rollout.completions[i],
                "reference": batch["reference"][i // group],
                "reward": scores[i].reward,
                "details": scores[i].details,
            }
            for i in range(min(hp.num_logged_samples, rows))
        ]

    def reduce_across_ranks(
        self, metrics: dict[str, Tensor], reductions: dict[str, str], tokens: Tensor
    ) -> dict[str, Tensor]:
        """Scalar ``metrics`` reduced over all ranks, each by its entry in ``reductions`` (``mean`` when it
        has none; see ``reduce_gathered``; ``tokens``, this rank's completion tokens, weighs the
        ``token_mean`` ones), with one all-gather of them all: Lightning's ``sync_dist`` would run a
        barrier and an all-reduce per metric. The values are stacked on the module's device, as NCCL needs
        CUDA tensors (timings and counts are made on the CPU)."""
        names = list(metrics)
        values = [metrics[name] for name in names] + [tokens]  # the token means' weights last
        stacked = torch.stack([value.to(self.device, torch.float32) for value in values])
        gathered = self.all_gather(stacked).view(-1, len(values))  # [ranks, K + 1]; one device: 1 row
        kinds = [reductions.get(name, "mean") for name in names]
        reduced = reduce_gathered(gathered[:, :-1], kinds, weights=gathered[:, -1])
        return dict(zip(names, reduced, strict=True))

    # ------------------------------------------------------------- evaluation

    def evaluate(self, batch: dict[str, list[str]]) -> dict[str, Tensor]:
        """Greedy accuracy, mean reward and mean completion length (tokens) on one batch of prompts."""
        rollout = sample_rollout(self.policy, self.tokenizer, batch["prompt"], self.sampling, greedy=True)
        rewards, correct, _ = self.score(rollout, batch)
        length = rollout.completion_mask.sum(dim=1).float().mean()
        return {"accuracy": correct.mean(), "reward": rewards.mean(), "completion_length_mean": length}

    def _log_evaluation(self, batch: dict[str, list[str]], prefix: str) -> None:
        for name, value in self.evaluate(batch).items():
            self.log(
                f"{prefix}/{name}",
                value,
                prog_bar=name == "accuracy",
                batch_size=len(batch["prompt"]),
                sync_dist=True,
            )

    def on_train_start(self) -> None:
        """Log ``val/accuracy`` of the initial policy at step 0, so every curve starts at its baseline."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.trainer.global_step > 0 or datamodule is None or not self.hparams.validate_before_training:
            return
        totals: dict[str, float] = {}
        count = 0
        for batch in datamodule.val_dataloader():
            size = len(batch["prompt"])
            for name, value in self.evaluate(batch).items():
                totals[name] = totals.get(name, 0.0) + value.item() * size
            count += size
        if count:
            metrics = {
                f"val/{name}": self.trainer.strategy.reduce(
                    torch.tensor(total / count, device=self.device), reduce_op="mean"
                )
                for name, total in totals.items()
            }
            for logger in self.loggers:
                logger.log_metrics({name: value.item() for name, value in metrics.items()}, step=0)

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        if self.trainer.state.fn == TrainerFn.VALIDATING:  # the ``validate`` command: a full benchmark run
            self.benchmark_step(batch, "val")
        else:
            self._log_evaluation(batch, "val")

    def test_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        self.benchmark_step(batch, "test")

    def benchmark_step(self, batch: dict[str, list[str]], prefix: str) -> None:
        """Greedy pass@1 (``accuracy``), and with ``evaluation.num_samples`` = n the sampled pass@k and
        maj@k, as metric objects that aggregate over batches and processes; each completion is written
        to the samples JSONL."""
        prompts, references = batch["prompt"], batch["reference"]
        size = len(prompts)
        greedy = sample_rollout(self.policy, self.tokenizer, prompts, self.sampling, greedy=True)
        rewards, correct, scores = self.score(greedy, batch)
        self.benchmark_metrics["accuracy"].update(correct.view(size, 1))
        self._write_samples(prompts, references, greedy.completions, scores, "greedy")
        length = greedy.completion_mask.sum(dim=1).float().mean()
        self.log_dict(
            {f"{prefix}/reward": rewards.mean(), f"{prefix}/completion_length_mean": length},
            batch_size=size,
            sync_dist=True,
        )
        n = self.evaluation.num_samples
        if n:
            evaluation = self.evaluation
            config = replace(
                self.sampling, num_generations=n, temperature=evaluation.temperature, top_p=evaluation.top_p
            )
            sampled = sample_rollout(self.policy, self.tokenizer, prompts, config)
            _, correct, scores = self.score(sampled, batch)
            answers = [[s.extracted for s in scores[i * n : (i + 1) * n]] for i in range(size)]
            for name, metric in self.benchmark_metrics.items():
                if name.startswith("pass@"):
                    metric.update(correct.view(size, n))
                elif name.startswith("maj@"):
                    metric.update(answers, correct.view(size, n))
            self._write_samples(prompts, references, sampled.completions, scores, "sampled")
        for name, metric in self.benchmark_metrics.items():
            self.log(f"{prefix}/{name}", metric, prog_bar=name == "accuracy", batch_size=size)

    def _write_samples(
        self, prompts: list[str], references: list[str], completions: list[str], scores: list, decoding: str
    ) -> None:
        """Append one JSON line per completion to ``<log dir>/<stage>_samples[_rank<r>].jsonl``."""
        if not self.evaluation.write_samples:
            return
        if self._samples_file is None:
            stages = {TrainerFn.TESTING: "test", TrainerFn.PREDICTING: "predict"}
            stage = stages.get(self.trainer.state.fn, "val")
            rank = self.trainer.global_rank
            directory = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{stage}_samples{f'_rank{rank}' if rank else ''}.jsonl"
            self._samples_file = path.open("w", encoding="utf-8")
        repeats = len(completions) // len(prompts)
        for i, (completion, score) in enumerate(zip(completions, scores, strict=True)):
            record = {
                "prompt": prompts[i // repeats],
                "completion": completion,
                "extracted": score.extracted,
                "reference": references[i // repeats],
                "reward": score.reward,
                "correct": bool(score.correct),
                "decoding": decoding,
            }
            self._samples_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._samples_file.flush()

    def _close_samples(self) -> None:
        if self._samples_file is not None:
            self._samples_file.close()
            self._samples_file = None

    def on_test_epoch_end(self) -> None:
        self._close_samples()
        self.log("step", float(self.global_step), sync_dist=True)  # the x axis, as in training

    def on_predict_epoch_end(self) -> None:
        self._close_samples()

    def on_validation_epoch_end(self) -> None:
        self._close_samples()
        self.log("step", float(self.global_step), sync_dist=True)

    def predict_step(self, batch: dict[str, list[str]], batch_idx: int) -> list[dict[str, Any]]:
        """Greedy completions of the prompts, scored, also written to ``<log dir>/predict_samples.jsonl``."""
        rollout = sample_rollout(self.policy, self.tokenizer, batch["prompt"], self.sampling, greedy=True)
        _, correct, scores = self.score(rollout, batch)
        self._write_samples(batch["prompt"], batch["reference"], rollout.completions, scores, "greedy")
        return [
            {"prompt": p, "completion": c, "reference": r, "extracted": s.extracted, "correct": bool(ok)}
            for p, c, r, s, ok in zip(
                batch["prompt"], rollout.completions, batch["reference"], scores, correct, strict=True
            )
        ]


def robust_score_batch(
    verifier: Verifier, completions: list[str], references: list[str], prompts: list[str] | None = None
) -> list[Score]:
    """``verifier.score_batch``, never raising: if the batch call fails, each completion is scored alone
    (a batch of one, with its prompt, which learned rewards need) and one that still raises gets reward 0
    with the error recorded (a buggy verifier must not end a run)."""
    try:
        return verifier.score_batch(completions, references, prompts)
    except Exception as batch_error:
        warnings.warn(
            f"{type(verifier).__name__}.score_batch raised {batch_error!r}; scoring one at a time",
            stacklevel=2,
        )
    scores = []
    for index, (completion, reference) in enumerate(zip(completions, references, strict=True)):
        prompt = None if prompts is None else [prompts[index]]  # learned rewards score (prompt, completion)
        try:
            scores.append(verifier.score_batch([completion], [reference], prompt)[0])
        except Exception as error:
            scores.append(Score(0.0, False, None, "verifier raised", error=repr(error)))
    return scores


def reward_components(verifier: Verifier, scores: list[Score]) -> dict[str, Tensor]:
    """Mean unweighted reward ``[]`` of each named component of a combined verifier (``WeightedSum``); none
    for a single verifier. A row whose scoring failed (no components) counts 0, as its reward does. The
    names come from the verifier, so every rank logs the same metrics whatever its rows."""
    names = verifier.names if isinstance(verifier, WeightedSum) else []
    return {name: torch.tensor([s.components.get(name, 0.0) for s in scores]).mean() for name in names}


def checked_score(score: Score) -> Score:
    """The score, or reward 0 with an error when the verifier returned a NaN/inf reward."""
    if math.isfinite(score.reward):
        return score
    return replace(score, reward=0.0, correct=False, error=f"non-finite reward {score.reward}")


def reduce_gathered(gathered: Tensor, kinds: list[str], weights: Tensor) -> Tensor:
    """Column k of ``gathered`` ``[ranks, K]`` reduced over the ranks by ``kinds[k]``: ``mean``, ``max``,
    ``sum``, or ``token_mean``, the mean weighted by ``weights`` ``[ranks]`` (each rank's completion
    tokens: a per-token mean of every rank becomes the per-token mean of all); ``[K]``."""
    by_kind = {
        "mean": gathered.mean(dim=0),
        "max": gathered.amax(dim=0),
        "sum": gathered.sum(dim=0),
        "token_mean": (gathered * weights.unsqueeze(1)).sum(dim=0) / weights.sum().clamp(min=1),
    }
    return torch.stack([by_kind[kind][column] for column, kind in enumerate(kinds)])


def no_gradient_sync(strategy: Strategy) -> AbstractContextManager:
    """A context in which backward passes accumulate gradients without all-reducing them (DDP's
    ``no_sync``); a no-op for one device and for FSDP2, which reduce-scatters at every backward."""
    if isinstance(strategy, ParallelStrategy):
        return strategy.block_backward_sync()
    return nullcontext()


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``function(*args)`` and its wall time in seconds."""
    start = time.perf_counter()
    return function(*args), time.perf_counter() - start
