"""Callbacks: sample completions to TensorBoard, and export of the trained model as a HF directory."""

from __future__ import annotations

import html
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from rgra_lightning.distributed import is_sharded
from rgra_lightning.errors import ConfigError
from rgra_lightning.export import export_policy


class CompletionSampleLogger(Callback):
    """Every ``every_n_steps`` optimizer updates, write the module's ``latest_samples`` to TensorBoard
    as a Markdown table (prompt, completion, reference, reward, verifier details)."""

    def __init__(self, every_n_steps: int = 20) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_logged_step = -1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        samples = getattr(pl_module, "latest_samples", None)
        step = trainer.global_step
        due = step // self.every_n_steps > self._last_logged_step // self.every_n_steps
        if not samples or not due or not trainer.is_global_zero:
            return
        self._last_logged_step = step
        header = "| prompt | completion | reference | reward | details |\n|---|---|---|---|---|\n"
        rows = "".join(
            "| "
            + " | ".join(
                html.escape(str(s[k])).replace("|", "&#124;")
                for k in ("prompt", "completion", "reference", "reward", "details")
            )
            + " |\n"
            for s in samples
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples/completions", header + rows, global_step=step)


class ExportHuggingFace(Callback):
    """At the end of fit, save the module's ``hf_model`` (the policy, or a trained reward model) and its
    ``tokenizer`` with ``save_pretrained`` to ``output_dir`` (default: ``<log dir>/hf_model``), so the model
    can be served, evaluated or used as a reward elsewhere. A LoRA policy is saved merged."""

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = pl_module.hf_model
        state_dict = None
        if is_sharded(model):  # FSDP2: every rank takes part in gathering the full weights
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state_dict = get_model_state_dict(model, options=options)
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, or rank 0 waits forever.
        directory = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "hf_model")
        if not trainer.is_global_zero:
            return
        export_policy(model, pl_module.tokenizer, str(directory), state_dict=state_dict)
        print(f"exported the final model to {directory}")
