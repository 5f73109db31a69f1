"""The RL LightningModule: it owns the models and orchestrates one training step as
make-experience -> update -> metrics. Each stage lives in its own module: ``rollout`` (sampling),
``scoring`` (rewards), ``advantages``, ``logprobs``, ``experience`` (all of them for one batch), ``losses``
and ``update`` (the optimizer steps), ``evaluation`` (validate/test/predict) and ``distributed``.

One training step = one rollout batch of B prompts x G completions, followed by ``num_iterations`` (mu)
passes over it, each split into ``num_minibatches`` optimizer updates. ``trainer.max_steps`` therefore
counts optimizer updates, mu x num_minibatches per rollout batch, and must be a multiple of that.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from jsonargparse import lazy_instance
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from rewards import MathVerifier, Verifier
from rgra_lightning.checkpointing import (
    FROZEN_PREFIXES,
    check_resumed_fit,
    record_trainer_settings,
    reloaded_state_keys,
    warn_unless_resumable,
)
from rgra_lightning.distributed import (
    ShardingConfig,
    is_sharded,
    reduce_across_ranks,
    separate_rank_streams,
    shard_model,
)
from rgra_lightning.errors import ConfigError, require_valid
from rgra_lightning.evaluation import (
    EvaluationConfig,
    SamplesWriter,
    counted_problems,
    counted_records,
    evaluate_batch,
    greedy_metrics,
    log_initial_validation,
    sampled_metrics,
)
from rgra_lightning.experience import Experience, PromptBatch, make_experience
from rgra_lightning.host_memory import keep_freed_host_memory
from rgra_lightning.logprobs import logprobs_without_grad
from rgra_lightning.losses import LossConfig
from rgra_lightning.metrics import TRAIN_REDUCTIONS, log_training_metrics, metric_weights, training_metrics
from rgra_lightning.models import LoraConfig, built_empty, freeze, load_causal_lm, load_policy
from rgra_lightning.optim import LRSchedule, warmup_schedule
from rgra_lightning.precision import check_trainable_precision, module_out_of_memory_advice
from rgra_lightning.reward_models.scorer import learned_reward_models
from rgra_lightning.rollout import HFEngine, Rollout, RolloutEngine, SamplingConfig
from rgra_lightning.update import PolicyUpdate


def check_options(
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    num_logged_samples: int,
    loss: LossConfig,
    sampling: SamplingConfig,
    rollout: RolloutEngine,
    evaluation: EvaluationConfig,
) -> None:
    """Raise a one-line ``ConfigError`` naming the first ``RLModule`` option it cannot train with (see
    its docstring), before any model is loaded."""
    require_valid(
        "model.",
        ("learning_rate", learning_rate, learning_rate > 0, "> 0"),
        ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
        ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
        ("num_logged_samples", num_logged_samples, num_logged_samples >= 0, ">= 0"),
    )
    corrects = loss.sampler_correction_cap is not None
    if corrects and not rollout.returns_sampler_logprobs:
        raise ConfigError(
            "model.loss.sampler_correction_cap corrects for a sampler whose probabilities differ from "
            f"the trainer's, and model.rollout ({type(rollout).__name__}) returns no sampler log-probs "
            "(HFEngine samples with the trained policy itself): use rgra_lightning.rollout.VLLMEngine "
            "or unset it"
        )
    if corrects and sampling.filters:
        names = " and ".join(f"model.sampling.{name}" for name in sampling.filters)
        rank_zero_warn(
            f"model.loss.sampler_correction_cap with {names}: the sampler's log-probs are those of the "
            "filtered distribution the tokens were drawn from, the trainer's pi_old those of the full "
            "softmax, so every weight is at most 1 and also counts the probability the filters removed, "
            "not only the sampler's mismatch (as in TRL)"
        )
    rollout.check_sampling(sampling)
    if evaluation.num_samples:
        rollout.check_sampling(evaluation.sampling(sampling), "model.evaluation")


# Sharded, the adapters could not be merged for export, and checkpoints would hold the base too
LORA_UNDER_FSDP2 = "model.lora is not supported with FSDP2 (ModelParallelStrategy): use DDP"


class RLModule(LightningModule):
    """Trains a causal LM policy with a group-relative policy-gradient loss (GRPO, RGRA, ablations).

    Args:
        model_path: local Hugging Face model directory (or a hub name when online) of the policy; the
            reference model is a second, frozen copy of the same weights, loaded for ``fit`` only. The
            policy's dropout is switched off (``models.without_dropout``).
        gguf_file: optional GGUF file inside ``model_path`` to load instead of safetensors weights.
        dtype: the dtype the weights are stored in, ``float32`` | ``bfloat16`` | ``float16``. Trained weights
            must be float32 (a fit refuses others; see ``rgra_lightning.precision``): ``bfloat16`` suits a
            LoRA base (the adapters stay float32) and evaluation. Compute in bf16 with
            ``trainer.precision=bf16-mixed`` (or ``sharding.param_dtype`` under FSDP2).
        verifier: scores each completion against the reference answer (``rewards.Verifier``); learned
            reward models in it (``RewardModelScorer``) become frozen submodules, like the reference.
        loss: the loss options (policy term, KL, aggregation, advantage).
        sampling: G, temperature, filters, max_new_tokens and stop strings for training rollouts (and,
            with ``evaluation``'s overrides, for sampled evaluation).
        num_iterations: mu, passes over each rollout batch (>= 1). With mu > 1 the ratio terms differ
            from REINFORCE; old log-probs are stored only then, or with several mini-batches, and only for
            a loss with a ratio term or the sampler correction.
        num_minibatches: optimizer updates per pass; B x G must be divisible by it.
        micro_batch_size: completions per forward/backward pass (None: a whole mini-batch). Gradients are
            accumulated over the micro-batches of a mini-batch and the loss is normalised by the
            mini-batch's size, so the update is the same whatever this is (up to rounding: in bf16 a
            row's log-probs in micro-batches of other rows differ by up to ~1e-2); only peak memory and
            speed change. The no-gradient passes (reference, old log-probs) use it too. A multiple of G keeps
            each prompt encoded once per group.
        micro_batch_tokens: micro-batches by tokens instead: each mini-batch's rows sorted by length and cut
            into micro-batches of at most this many tokens (rows x longest prompt + longest completion; at
            most ``micro_batch_size`` rows, at least one), so short completions share a pass instead of
            being padded to the longest. The same update; refused under FSDP2. None: off.
        gradient_checkpointing: recompute each decoder layer of the policy in the backward pass instead of
            keeping its activations (HF non-reentrant checkpointing; one device, DDP and FSDP2, with or
            without LoRA): the same gradients for less memory and about one more forward of compute.
            Not a setting of the run: a checkpoint resumes with it switched either way.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay (default 0, TRL's), on every trainable parameter alike: biases,
            norm weights and both LoRA matrices too, where Hugging Face's Trainer exempts biases and norms.
        warmup_steps: linear learning-rate warm-up, in optimizer updates.
        lr_schedule: after warm-up, ``constant``, or ``linear`` / ``cosine`` decay to 0 at
            ``trainer.max_steps`` (``linear`` is TRL's default, Hugging Face ``TrainingArguments``'s).
        max_grad_norm: gradient-norm clipping threshold (> 0).
        num_logged_samples: completions kept from each step for the sample logger.
        validate_before_training: log greedy ``val/*`` metrics of the initial policy at step 0.
        max_consecutive_nonfinite: an update whose loss or gradient is NaN/inf is skipped (counted in
            ``train/nonfinite_updates``); after this many in a row, the last finite state is saved and
            training stops with ``NonFiniteTrainingError``.
        sharding: FSDP2 options (mixed precision), used under
            ``ModelParallelStrategy``; see ``rgra_lightning.distributed``.
        lora: LoRA adapters (``peft``) instead of full fine-tuning: only the adapters train, and the
            reference log-probs come from the same weights with the adapters disabled (no second copy).
        rollout: the engine that samples completions (``rgra_lightning.rollout``); the default
            ``HFEngine`` samples from the policy itself, ``VLLMEngine`` with vLLM on a CUDA GPU, its weights
            pushed after the updates (docs/rollout-engines.md).
        evaluation: what ``validate``/``test`` measure (greedy pass@1, sampled pass@k and maj@k) and
            whether they write every completion to a JSONL file; see ``rgra_lightning.evaluation``.
    """

    checkpoint_step: int | None = None  # ``global_step`` of the checkpoint loaded, if any

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
        micro_batch_tokens: int | None = None,
        gradient_checkpointing: bool = False,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        max_grad_norm: float = 1.0,
        num_logged_samples: int = 4,
        validate_before_training: bool = True,
        max_consecutive_nonfinite: int = 5,
        sharding: ShardingConfig = ShardingConfig(),
        lora: LoraConfig | None = None,
        rollout: RolloutEngine = lazy_instance(HFEngine),
        evaluation: EvaluationConfig = EvaluationConfig(),
    ) -> None:
        super().__init__()
        check_options(
            learning_rate, weight_decay, warmup_steps, num_logged_samples, loss, sampling, rollout, evaluation
        )
        if loss.aggregation == "constant_sum" and loss.aggregation_constant is None:
            loss = replace(loss, aggregation_constant=sampling.max_new_tokens)
        update_options = (num_iterations, num_minibatches, micro_batch_size, max_grad_norm)
        self.updater = PolicyUpdate(
            loss, sampling.temperature, *update_options, max_consecutive_nonfinite, micro_batch_tokens
        )
        self.save_hyperparameters(ignore=["verifier", "rollout", "gradient_checkpointing"])
        # The verifier as plain settings: checkpoints record it, and a resume with another one is refused
        self.hparams["verifier"] = verifier.settings()
        self.automatic_optimization = False
        self.verifier = verifier
        self.loss_config = loss
        self.sampling = self.configured_sampling = sampling  # ``setup`` fills in unset stop strings
        self.sharding = sharding
        self.tokenizer, self.policy = load_policy(model_path, gguf_file, dtype, lora, gradient_checkpointing)
        self.rollout = rollout.bind(self.policy, self.tokenizer)
        self.reference: torch.nn.Module | None = None  # loaded by ``setup("fit")``, when the loss needs it
        self.reward_models = torch.nn.ModuleList(learned_reward_models(verifier))
        self.evaluation = evaluation
        self.greedy_metrics = greedy_metrics(verifier)
        self.sampled_metrics = sampled_metrics(evaluation, verifier.judges_correctness)
        self.samples = SamplesWriter(evaluation.write_samples)
        self.latest_samples: list[dict[str, Any]] = []
        self.latest_metrics: dict[str, float] = {}  # the last training step's, logged or not

    # ----------------------------------------------------------------- set-up

    @property
    def hf_model(self) -> torch.nn.Module:
        """The model ``ExportHuggingFace`` saves: the policy."""
        return self.policy

    def setup(self, stage: str) -> None:
        """Load the frozen reference copy for ``fit`` only: evaluation and prediction never need it. It is
        here before Lightning moves the module to its device, shards it and restores a checkpoint. On CPU,
        let the C library reuse freed tensor memory (``host_memory``). Unset stop strings take the data
        module's (``use_stop_strings_of``), and with several processes each gets its own random streams
        (``separate_rank_streams``)."""
        if self._trainer is not None and self.trainer.strategy.root_device.type == "cpu":
            keep_freed_host_memory()
        hp = self.hparams
        if stage == "fit" and self.reference is None and self.loss_config.needs_reference and hp.lora is None:
            sharded = self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy)
            with built_empty(sharded):  # its weights are read on rank 0 only, by ``shard_model``
                self.reference = freeze(load_causal_lm(hp.model_path, hp.gguf_file, hp.dtype))
        self.use_stop_strings_of(getattr(self._trainer, "datamodule", None))
        if self._trainer is not None:  # after every rank-identical draw; a resume restores per-rank states
            separate_rank_streams(self.trainer.world_size, self.trainer.global_rank)

    def use_stop_strings_of(self, datamodule: LightningDataModule | None) -> None:
        """Unset ``sampling.stop_strings`` become ``datamodule``'s (``PromptDataModule.stop_strings``; none
        without one): every rollout of its prompts, in fit, evaluation and labelling, ends at them."""
        if self.configured_sampling.stop_strings is not None:
            return
        stops = tuple(getattr(datamodule, "stop_strings", ()))
        self.sampling = replace(self.configured_sampling, stop_strings=stops)
        if stops:
            rank_zero_info(f"model.sampling.stop_strings: {list(stops)}, the data module's for its prompts")

    def train(self, mode: bool = True) -> RLModule:
        """Keep the reference and reward models in eval mode whatever Lightning asks of the module."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        self.reward_models.eval()
        return self

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard the policy, the reference and the reward models over the
        data-parallel mesh, each with rank 0's weights (``shard_model``): ``RLCLI`` builds them empty on
        every rank, and rank 0 reads their weights only now."""
        mesh = self.device_mesh
        models = [model for model in (self.policy, self.reference, *self.reward_models) if model is not None]
        if mesh is None or all(is_sharded(model) for model in models):
            return  # one device or DDP, or sharded by an earlier fit/validate (configure_model runs in each)
        if mesh["tensor_parallel"].size() != 1:
            ranks = mesh.size()  # Lightning's 'auto' gives each node's devices to tensor parallelism
            raise ConfigError(
                "tensor parallelism is not supported: set strategy.init_args.data_parallel_size to the "
                f"number of processes ({ranks}) and tensor_parallel_size to 1"
            )
        if self.hparams.lora is not None:
            raise ConfigError(LORA_UNDER_FSDP2)
        for model in models:  # after a validate, a fit adds the reference (built empty, like the others)
            if not is_sharded(model):
                shard_model(model, mesh["data_parallel"], self.sharding)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trainable = [p for p in self.policy.parameters() if p.requires_grad]  # LoRA: the adapters only
        optimizer = torch.optim.AdamW(
            trainable,
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            fused=True,  # one kernel for all parameters: 0.4 instead of 1.8 ms a step on the tiny CPU policy
        )
        schedule = warmup_schedule(optimizer, hp.warmup_steps, hp.lr_schedule, self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_fit_start(self) -> None:
        self.check_fit_settings(self.trainer, getattr(self.trainer, "datamodule", None))
        warn_unless_resumable(self.trainer)

    def check_fit_settings(self, trainer: Trainer, datamodule: LightningDataModule | None) -> None:
        """Raise a ``ConfigError`` for a fit that cannot run as configured: a rollout batch that does not
        split into ``num_minibatches`` equal updates, a ``trainer.max_steps`` that is not a whole number
        of rollout batches (Lightning stops only between batches: it would overshoot), LoRA under FSDP2,
        or trained weights stored in half precision (``check_trainable_precision``). The CLI calls it before
        Lightning starts (before the reference model loads); ``on_fit_start`` again, for fits run from
        Python and for what Lightning's set-up changed: a precision plugin's cast (``bf16-true``)."""
        hp = self.hparams
        batch_size = getattr(getattr(datamodule, "hparams", {}), "batch_size", None)
        if batch_size is not None:
            self.updater.check_rollout_size(batch_size, self.sampling.num_generations)
        if hp.lora is not None and isinstance(trainer.strategy, ModelParallelStrategy):
            raise ConfigError(LORA_UNDER_FSDP2)
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        check_trainable_precision(trainable, str(trainer.precision), hp.dtype, hp.learning_rate)
        self.updater.check_max_steps(trainer.max_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record_trainer_settings(checkpoint, self)
        if is_sharded(self.policy):
            return  # FSDP2 restores every key of the module state (torch.distributed.checkpoint): keep them
        state = checkpoint["state_dict"]
        for key in reloaded_state_keys(self, lora=self.hparams.lora is not None) & set(state):
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_step = checkpoint.get("global_step")
        check_resumed_fit(checkpoint, self)
        if "state_dict" in checkpoint:  # FSDP2: loaded already, in place
            saved, current = checkpoint["state_dict"], self.state_dict()
            # An FSDP2 run's checkpoints keep its frozen models (``on_save_checkpoint``): this module, built
            # for evaluation or export, has no reference
            for key in [key for key in saved if key.startswith(FROZEN_PREFIXES) and key not in current]:
                del saved[key]
            reloaded = reloaded_state_keys(self, lora=self.hparams.lora is not None)
            saved.update({key: current[key] for key in reloaded})

    # --------------------------------------------------------------- training

    def make_experience(
        self, batch: PromptBatch, sampling: SamplingConfig | None = None, training: bool = False
    ) -> Experience:
        """Sample and score completions of ``batch``'s prompts: greedy unless ``sampling`` is given; for
        ``training`` also the fixed log-probs and the advantages."""
        # A sharded reward model runs collectives, whose order must match on every rank: score in order
        in_background = not any(is_sharded(model) for model in self.reward_models)
        return make_experience(
            self.rollout,
            batch,
            sampling or self.sampling,
            self.verifier,
            self.device,
            greedy=sampling is None,
            score_in_background=in_background,
            logprob_passes=self.fixed_logprobs if training else None,
            advantage=self.loss_config.advantage if training else None,
            gather=self.all_gather,
        )

    def fixed_logprobs(self, rollout: Rollout) -> tuple[Tensor | None, Tensor | None]:
        """The reference log-probs ``[N, T]`` when the loss has a KL term (the frozen copy, or with LoRA the
        same weights with the adapters disabled), and pi_old's when the updater needs them stored. They
        run in the update's forward passes (``PolicyUpdate.minibatches``), so the first update's ratio is
        exactly 1, and the KL of a policy still equal to its reference exactly 0 where both compute alike."""
        parts = [part for _, micro in self.updater.minibatches(self.policy, rollout) for part in micro]
        options = (self.sampling.temperature, parts)
        ref_logp = None
        if self.reference is not None:
            ref_logp = logprobs_without_grad(self.reference, rollout, *options)
        elif self.hparams.lora is not None and self.loss_config.needs_reference:
            with self.policy.disable_adapter():
                ref_logp = logprobs_without_grad(self.policy, rollout, *options)
        old_logp = None
        if self.updater.stores_old_logprobs:
            old_logp = logprobs_without_grad(self.policy, rollout, *options)
        return ref_logp, old_logp

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        start = time.perf_counter()
        try:
            experience = self.make_experience(batch, self.sampling, training=True)
            stats = self.updater.run(self, experience)
            if stats.applied:
                self.rollout.update_weights()  # an engine with weights of its own samples the new policy
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(module_out_of_memory_advice(self)) from error
        metrics = training_metrics(experience, stats, time.perf_counter() - start, self.verifier)
        weights = metric_weights(experience, stats)
        metrics = reduce_across_ranks(metrics, TRAIN_REDUCTIONS, weights, self.all_gather, self.device)
        self.latest_metrics = log_training_metrics(self, metrics, batch_size=len(batch["prompt"]))
        self.latest_samples = experience.records()[: self.hparams.num_logged_samples]

    # ------------------------------------------------------------- evaluation

    def on_train_start(self) -> None:
        """Log ``val/accuracy`` of the initial policy at step 0, so every curve starts at its baseline."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.trainer.global_step > 0 or datamodule is None or not self.hparams.validate_before_training:
            return
        log_initial_validation(self, datamodule.val_dataloader())

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        # the ``validate`` command runs the full evaluation, a validation in fit the greedy means only
        evaluate_batch(self, batch, "val", full=self.trainer.state.fn == TrainerFn.VALIDATING)

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        evaluate_batch(self, batch, "test")

    def predict_step(self, batch: PromptBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Greedy completions of the prompts, scored, also written to ``<log dir>/predict_samples.jsonl``;
        the ``DistributedSampler``'s repeats are generated but neither written nor returned."""
        experience = self.make_experience(batch)
        counted = counted_problems(batch, self.trainer)
        records = counted_records(experience, counted, batch.get("index"))
        self.samples.write(records, "greedy", self.trainer)
        return records

    def on_validation_epoch_end(self) -> None:
        """Logs ``step``, the x axis as in training: the update the evaluated policy comes from, in
        ``validate`` and ``test`` (which restore no loop state) the ``--ckpt_path`` checkpoint's."""
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        self.rollout.release()  # kept awake through the loop: a separate engine takes the weights once
        self.samples.close(announce=not fitting)
        step = self.global_step if fitting or self.checkpoint_step is None else self.checkpoint_step
        self.log("step", float(step), sync_dist=True)

    on_test_epoch_end = on_validation_epoch_end

    def on_predict_epoch_end(self) -> None:
        self.rollout.release()
        self.samples.close(announce=True)
