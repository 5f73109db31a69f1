"""Supervised fine-tuning (SFT) of the policy on worked solutions: the paper's "ft" baseline (arXiv
2603.18756, Table 1), trained on the problems the RL runs train on and evaluated as they are.

One training step = one batch of B problems and one optimizer update. Each row is the problem's prompt,
rendered and tokenized exactly as a rollout renders and tokenizes it (the data module's chat template and
instruction; ``rollout.base.prompt_token_ids``), followed by its ``target`` (``PromptDataModule.target``:
the worked solution, its final answer in the boxed form the RL instruction asks for) and the tokenizer's
EOS token, so that the policy learns to stop where a chat turn ends. The loss is the cross-entropy of the
target tokens (EOS included) given everything before them; prompt and padding tokens carry none.

Averaging: the loss is the mean over all target tokens of the batch (a long solution weighs more than a
short one), as Hugging Face's Trainer and TRL's ``SFTTrainer`` average by default. The alternative, the
mean over rows of each row's mean (``RLModule``'s ``sequence_mean`` aggregation), weighs every problem
alike. Validation and test log the same token mean over all their problems' targets (``val/loss``,
``test/loss``), also the step-0 validation of the initial policy (``validate_before_training``).

Accuracy is ``RLModule``'s to measure: ``rgra test`` with the RL config (without the SFT preset) and this
module's checkpoint evaluates the trained policy exactly as the RL runs' policies are evaluated, over the same
base weights with the float32 adapters unmerged (``checkpointing.EVALUATED_KINDS``; docs/real-models.md).

The log-probs come from ``logprobs.token_logprobs``, the RL update's: the output head and log-softmax run
chunk by chunk on the target tokens only (never the full ``[B, L, V]`` logits), in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from rgra_lightning.checkpointing import (
    check_resumed_fit,
    record_trainer_settings,
    reloaded_state_keys,
    warn_unless_resumable,
)
from rgra_lightning.distributed import token_share, with_distributed_sampler
from rgra_lightning.errors import ConfigError, require_valid
from rgra_lightning.logprobs import token_logprobs
from rgra_lightning.models import LoraConfig, load_policy
from rgra_lightning.optim import LRSchedule, warmup_schedule
from rgra_lightning.precision import check_trainable_precision
from rgra_lightning.rollout import Rollout
from rgra_lightning.rollout.base import prompt_token_ids

Batch = dict[str, list[Any]]  # PromptDataModule's, with "target": one str per problem


class SFTModule(LightningModule):
    """Trains a causal LM policy with token cross-entropy on each problem's target completion.

    Args:
        model_path: local Hugging Face model directory (or a hub name when online) of the policy; its
            dropout is switched off (``models.without_dropout``), as ``RLModule``'s.
        gguf_file: optional GGUF file inside ``model_path`` to load instead of safetensors weights.
        dtype: the dtype the weights are stored in, ``float32`` | ``bfloat16`` | ``float16``. Trained weights
            must be float32 (a fit refuses others: ``rgra_lightning.precision``); ``bfloat16`` suits a LoRA
            base, whose adapters stay float32. Compute in bf16 with ``trainer.precision=bf16-mixed``.
        lora: LoRA adapters (``peft``) instead of full fine-tuning: only the adapters train; the export
            (``ExportHuggingFace``) merges them into the base in float32.
        gradient_checkpointing: recompute each decoder layer in the backward pass instead of keeping its
            activations: the same gradients for less memory and about one more forward of compute.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay, on every trainable parameter alike (as ``RLModule``).
        warmup_steps: linear learning-rate warm-up, in optimizer updates (one per batch).
        lr_schedule: after warm-up, ``constant``, or ``linear`` / ``cosine`` decay to 0 at the fit's last
            update (``trainer.max_steps``, or the updates of ``trainer.max_epochs`` epochs).
        max_grad_norm: gradient-norm clipping threshold (> 0), applied before every update.
        max_length: tokens per row, prompt + target + EOS (None: the model's context window). A longer row
            keeps its whole prompt and the start of its target (without the EOS); the number of such rows is
            logged as ``train/truncated``. A prompt that leaves no room for a target token is an error.
        validate_before_training: log ``val/loss`` of the initial policy at step 0, before the first update
            (as ``RLModule``'s ``val/*``), so that the curve starts at its baseline.
    """

    trains_on_targets = True  # PromptDataModule's loaders then add each problem's "target" to its batch

    def __init__(
        self,
        model_path: str = "models/arith-tiny",
        gguf_file: str | None = None,
        dtype: str = "float32",
        lora: LoraConfig | None = None,
        gradient_checkpointing: bool = False,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        max_grad_norm: float = 1.0,
        max_length: int | None = None,
        validate_before_training: bool = True,
    ) -> None:
        super().__init__()
        require_valid(
            "model.",
            ("learning_rate", learning_rate, learning_rate > 0, "> 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
            ("max_grad_norm", max_grad_norm, max_grad_norm > 0, "> 0"),
            ("max_length", max_length, max_length is None or max_length >= 2, ">= 2 or null"),
        )
        self.save_hyperparameters(ignore=["gradient_checkpointing"])
        self.tokenizer, self.policy = load_policy(model_path, gguf_file, dtype, lora, gradient_checkpointing)
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(
                f"model.model_path {model_path!r}: the tokenizer has no EOS token to end targets"
            )

    @property
    def hf_model(self) -> torch.nn.Module:
        """The model ``ExportHuggingFace`` saves: the policy."""
        return self.policy

    # ------------------------------------------------------------------- the loss

    def encode(self, prompts: list[str], targets: list[str]) -> tuple[Rollout, int]:
        """The rows as a ``Rollout`` ``[B, P + T]`` (prompts left-padded, each target + EOS right-padded;
        ``completion_mask`` ``[B, T]`` 1 on the target tokens), on the policy's device, and how many rows
        ``max_length`` cut."""
        tokenizer = self.tokenizer
        prompt_ids = prompt_token_ids(tokenizer, prompts)  # as the rollout encodes them
        target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
        limit = self.hparams.max_length or getattr(self.policy.config, "max_position_embeddings", None)
        cut = 0
        rows = []
        for prompt, target in zip(prompt_ids, target_ids, strict=True):
            target = [*target, tokenizer.eos_token_id]
            if limit is not None and len(prompt) + len(target) > limit:
                if len(prompt) >= limit:
                    raise ConfigError(
                        f"model.max_length={limit}: a prompt of {len(prompt)} tokens leaves no room for its "
                        "target; raise model.max_length"
                    )
                target, cut = target[: limit - len(prompt)], cut + 1
            rows.append((prompt, target))
        width_p = max(len(p) for p, _ in rows)
        width_t = max(len(t) for _, t in rows)
        input_ids = torch.full((len(rows), width_p + width_t), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, (prompt, target) in enumerate(rows):
            start, end = width_p - len(prompt), width_p + len(target)
            input_ids[i, start:end] = torch.tensor(prompt + target)
            attention_mask[i, start:end] = 1
        rollout = Rollout(
            input_ids.to(self.device),
            attention_mask.to(self.device),
            attention_mask[:, width_p:].to(self.device),
            width_p,
            list(targets),
        )
        return rollout, cut

    def target_loss(self, batch: Batch) -> tuple[Tensor, Tensor, int]:
        """The mean cross-entropy ``[]`` over all target tokens of ``batch`` (nats, float32), their number
        ``[]`` and the rows cut by ``max_length``."""
        if "target" not in batch:
            raise ConfigError(
                "SFTModule trains on the data module's targets, and its batches carry none: use a prompt "
                "data module (ArithmeticDataModule, DatasetDataModule, JsonFilesDataModule)"
            )
        rollout, cut = self.encode(batch["prompt"], batch["target"])
        logp, _ = token_logprobs(self.policy, rollout, with_entropy=False)  # [B, T], 0 off the targets
        tokens = rollout.completion_mask.sum()
        return -logp.sum() / tokens, tokens, cut

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, tokens, cut = self.target_loss(batch)
        loss = loss * token_share(self.trainer, tokens)  # several processes: the global batch's token mean
        size = len(batch["prompt"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/target_tokens", tokens.float(), batch_size=size)
        self.log("train/truncated", float(cut), batch_size=size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, tokens, _ = self.target_loss(batch)  # weighted by tokens: the epoch's value is a token mean
        self.log("val/loss", loss, prog_bar=True, batch_size=int(tokens), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, tokens, _ = self.target_loss(batch)
        self.log("test/loss", loss, batch_size=int(tokens), sync_dist=True)

    # ------------------------------------------------------------- optimization

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trainable = [p for p in self.policy.parameters() if p.requires_grad]  # LoRA: the adapters only
        # not fused: Lightning refuses to clip a fused optimizer's gradients under mixed precision
        optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        updates = self.trainer.estimated_stepping_batches  # max_steps, or the updates of max_epochs
        schedule = warmup_schedule(optimizer, hp.warmup_steps, hp.lr_schedule, int(updates))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any
    ) -> None:
        """Clip the gradient norm to ``max_grad_norm`` (after Lightning unscaled it, under 16-mixed) and log
        the norm before clipping as ``train/grad_norm`` (``rgra rehearse`` tells a gradient from weight decay
        by it)."""
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, self.hparams.max_grad_norm)
        self.log("train/grad_norm", norm, batch_size=1)

    # ------------------------------------------------------------------- checks

    def check_fit_settings(self, trainer: Trainer, datamodule: LightningDataModule | None) -> None:
        """Raise a ``ConfigError`` for a fit that cannot train as configured: under FSDP2, which this
        module does not shard for, or with trained weights stored in half precision
        (``check_trainable_precision``). The CLI calls it before Lightning starts; ``on_fit_start`` again,
        after a precision plugin's cast."""
        if isinstance(trainer.strategy, ModelParallelStrategy):
            raise ConfigError("SFTModule trains on one device or with DDP, not FSDP2 (ModelParallelStrategy)")
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        hp = self.hparams
        check_trainable_precision(trainable, str(trainer.precision), hp.dtype, hp.learning_rate)

    def on_fit_start(self) -> None:
        self.check_fit_settings(self.trainer, getattr(self.trainer, "datamodule", None))
        warn_unless_resumable(self.trainer)

    def on_train_start(self) -> None:
        """Log ``val/loss`` of the initial policy at step 0 (``validate_before_training``): the token mean
        over the targets of the whole validation loader, each process evaluating its share as Lightning's
        validation splits it, computed as a validation step computes it (no gradients, the precision
        plugin's autocast). Not in a fit resumed after its first update."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if trainer.global_step > 0 or datamodule is None or not self.hparams.validate_before_training:
            return
        loader = datamodule.val_dataloader()
        if trainer.world_size > 1:
            loader = with_distributed_sampler(loader, trainer.strategy.distributed_sampler_kwargs)
        summed = torch.zeros(2, dtype=torch.float64, device=self.device)  # [nats, target tokens]
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for batch in loader:
                loss, tokens, _ = self.target_loss(batch)
                summed += torch.stack([loss.double() * tokens, tokens.double()])
        summed = trainer.strategy.reduce(summed, reduce_op="sum")
        if summed[1] > 0:
            for logger in self.loggers:
                logger.log_metrics({"val/loss": float(summed[0] / summed[1])}, step=0)

    # -------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With LoRA, leave the frozen base out: it is reloaded from ``model_path`` (as ``RLModule``'s)."""
        record_trainer_settings(checkpoint, self)
        reloaded = reloaded_state_keys(self, lora=self.hparams.lora is not None)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in reloaded}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put back what ``on_save_checkpoint`` left out, from the weights loaded from ``model_path``."""
        check_resumed_fit(checkpoint, self)
        current = self.state_dict()
        reloaded = reloaded_state_keys(self, lora=self.hparams.lora is not None)
        checkpoint["state_dict"].update({key: current[key] for key in reloaded})
