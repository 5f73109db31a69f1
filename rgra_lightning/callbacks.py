"""Callbacks: sample completions to TensorBoard, export of the trained model as a HF directory, and
progress as plain lines for logs that are not a terminal."""

from __future__ import annotations

import html
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader

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


PROGRESS_EVERY_S = 30.0  # LineProgressBar's default interval
PROGRESS_EVERY_ENV = "RGRA_PROGRESS_EVERY_S"  # sets it for the bar the CLI adds


def _duration(seconds: float) -> str:
    """``45 s`` or ``12 min``, as ``rgra ablate`` prints its runs' progress."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class LineProgressBar(ProgressBar):
    """Progress as one plain line on stderr at most every ``every_s`` seconds and at the end of each stage,
    for logs read line by line (sbatch, nohup, ``| ts``), where a TQDM or Rich bar's ``\\r`` updates show
    nothing until the run ends::

        fit: update 40/150, train/reward 0.412, train/accuracy 0.375; 6 min, ETA 17 min
        validate: batch 21/21, val/accuracy 0.356; 3 min

    ``rgra`` uses it instead of Lightning's default bar when stderr is not a terminal (the environment
    variable ``RGRA_PROGRESS_EVERY_S`` sets its interval there); listed in ``trainer.callbacks`` it is used
    always. Fit counts optimizer updates (of ``max_steps``, or of those ``max_epochs`` make), the other
    stages batches. The metrics are the progress bar's of the stage (``train/``, ``val/``, ``test/``), an
    evaluation's at its end only (until then they are the previous evaluation's). Rank 0 prints
    (``ProgressBar.setup`` disables the others).

    Args:
        every_s: seconds between lines within a stage; default: ``$RGRA_PROGRESS_EVERY_S``, else 30.
    """

    def __init__(self, every_s: float | None = None) -> None:
        super().__init__()
        if every_s is None:
            value = os.environ.get(PROGRESS_EVERY_ENV, str(PROGRESS_EVERY_S))
            try:
                every_s = float(value)
            except ValueError as error:
                raise ConfigError(
                    f"{PROGRESS_EVERY_ENV}={value}: give the seconds between progress lines"
                ) from error
        if every_s < 0:
            raise ConfigError(f"LineProgressBar every_s must be >= 0, got {every_s}")
        self.every_s = every_s
        self._enabled = True
        self._last_line = self._fit_start = self._eval_start = 0.0
        self._first_step = 0  # the update a resumed fit starts from: the rate counts this run's only
        self._total_steps: int | float = -1
        self._eval_batches = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._last_line = time.monotonic()  # the first line comes ``every_s`` after the start

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start, self._first_step = time.monotonic(), trainer.global_step
        # The updates to make: max_steps, or with automatic optimization Lightning's count from max_epochs
        # (with manual optimization, RLModule's, a batch may make several updates).
        automatic = pl_module.automatic_optimization
        self._total_steps = trainer.estimated_stepping_batches if automatic else trainer.max_steps

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if self._due():
            self._fit_line(trainer, final=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_line(trainer, final=True)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_start, self._eval_batches = time.monotonic(), 0

    on_test_start = on_predict_start = on_validation_start

    def on_validation_batch_end(self, trainer: Trainer, *args: object) -> None:
        if not trainer.sanity_checking:
            self._eval_batch_end("validate", trainer.num_val_batches)

    def on_test_batch_end(self, trainer: Trainer, *args: object) -> None:
        self._eval_batch_end("test", trainer.num_test_batches)

    def on_predict_batch_end(self, trainer: Trainer, *args: object) -> None:
        self._eval_batch_end("predict", trainer.num_predict_batches)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_line("validate", trainer.num_val_batches, final=True)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_line("test", trainer.num_test_batches, final=True)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_line("predict", trainer.num_predict_batches, final=True)

    def track(self, batches: DataLoader, stage: str) -> Iterator[Any]:
        """``batches`` one by one, with this bar's lines as for a Lightning stage: for a loop Lightning does
        not run (``evaluation.log_initial_validation``, the step-0 validation, which for a real model takes
        minutes before the first update)."""
        self._eval_start, self._eval_batches = time.monotonic(), 0
        for batch in batches:
            yield batch
            self._eval_batch_end(stage, [len(batches)])
        self._eval_line(stage, [len(batches)], final=True)

    def _eval_batch_end(self, stage: str, totals: list[int | float]) -> None:
        self._eval_batches += 1
        if self._due():
            self._eval_line(stage, totals, final=False)

    def _due(self) -> bool:
        return time.monotonic() - self._last_line >= self.every_s

    def _fit_line(self, trainer: Trainer, final: bool) -> None:
        """``fit: update 40/150, <train/ metrics>; 6 min, ETA 17 min``."""
        step, total = trainer.global_step, self._total_steps
        known = 0 < total < float("inf")
        elapsed, eta = time.monotonic() - self._fit_start, None
        if not final and known and step > self._first_step:
            eta = elapsed / (step - self._first_step) * (total - step)
        self._line("fit", f"update {step}/{int(total) if known else '?'}", "train/", elapsed, eta)

    def _eval_line(self, stage: str, totals: list[int | float], final: bool) -> None:
        """``test: batch 3/21; 1 min, ETA 6 min``; at the end, with the stage's metrics."""
        done, total = self._eval_batches, sum(totals)
        elapsed, eta = time.monotonic() - self._eval_start, None
        if not final and done and total != float("inf"):
            eta = elapsed / done * (total - done)
        prefix = {"validate": "val/", "test": "test/"}.get(stage) if final else None
        self._line(stage, f"batch {done}/{total if total != float('inf') else '?'}", prefix, elapsed, eta)

    def _line(self, stage: str, count: str, prefix: str | None, elapsed: float, eta: float | None) -> None:
        """Print ``stage: count, <progress-bar metrics named prefix...>; elapsed, ETA eta``."""
        if not self._enabled:
            return
        self._last_line = time.monotonic()
        metrics = self.trainer.progress_bar_metrics if prefix else {}
        parts = [count] + [
            f"{name} {value:.3f}" for name, value in metrics.items() if name.startswith(prefix)
        ]
        timing = _duration(elapsed) + (f", ETA {_duration(eta)}" if eta is not None else "")
        print(f"{stage}: {', '.join(parts)}; {timing}", file=sys.stderr, flush=True)
