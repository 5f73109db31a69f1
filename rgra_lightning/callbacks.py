"""Callbacks: sample completions to TensorBoard, export of the trained model as a HF directory, and
progress as plain lines for logs that are not a terminal."""

from __future__ import annotations

import html
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader
from tqdm import tqdm

from rgra_lightning.distributed import is_sharded
from rgra_lightning.errors import ConfigError
from rgra_lightning.export import check_output_directory, export_policy

SAMPLE_COLUMNS = ("prompt", "completion", "reference", "reward", "details")


def markdown_cell(value: object) -> str:
    """``value`` as the text of one Markdown table cell that TensorBoard shows as written: HTML escaped,
    ``|`` kept from ending the cell, line breaks as ``<br>`` (a newline would end the row: a chat prompt or
    a completion of several lines split into rows of other columns), and ``\\``, ``*``, ``_`` and backticks
    escaped (``6*(-2) then 3*4`` rendered as italics)."""
    text = html.escape(str(value)).replace("|", "&#124;")
    for char in "\\*_`":
        text = text.replace(char, "\\" + char)
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def samples_table(samples: list[Mapping[str, Any]]) -> str:
    """A Markdown table of ``samples``, one row each: ``SAMPLE_COLUMNS``."""
    header = f"| {' | '.join(SAMPLE_COLUMNS)} |\n|{'---|' * len(SAMPLE_COLUMNS)}\n"
    rows = "".join(
        f"| {' | '.join(markdown_cell(sample[key]) for key in SAMPLE_COLUMNS)} |\n" for sample in samples
    )
    return header + rows


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
        table = samples_table(samples)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples/completions", table, global_step=step)


class ExportHuggingFace(Callback):
    """At the end of fit, save the module's ``hf_model`` (the policy, or a trained reward model) and its
    ``tokenizer`` with ``save_pretrained`` to ``output_dir`` (default: ``<log dir>/hf_model``), so the model
    can be served, evaluated or used as a reward elsewhere. A LoRA policy is saved merged."""

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse an ``output_dir`` the export would refuse (a file, a folder of other files) before the
        fit trains rather than at its end."""
        if stage == "fit" and self.output_dir is not None:
            check_output_directory(self.output_dir)

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


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$RGRA_PROGRESS_EVERY_S``, else ``PROGRESS_EVERY_S``."""
    value = os.environ.get(PROGRESS_EVERY_ENV, str(PROGRESS_EVERY_S))
    try:
        every_s = float(value)
    except ValueError:
        every_s = math.nan  # refused below, as a number that is not one
    # nan or inf would pass silently: no interval ever ends, only each stage's end line comes
    if not 0 <= every_s < math.inf:
        raise ConfigError(
            f"{PROGRESS_EVERY_ENV}={value}: give the seconds between progress lines (finite, >= 0)"
        )
    return every_s


@contextmanager
def counted_progress(total: int, stage: str, unit: str) -> Iterator[Callable[[int], None]]:
    """Progress of a loop outside Lightning's (``rgra label``), ``total`` ``unit``s in all; yields
    ``advance(done)``. A TQDM bar where stderr is a terminal; elsewhere, for logs read line by line,
    ``LineProgressBar``'s plain lines, one every ``progress_interval()`` seconds and one at the end::

        labelling: 32/128 prompts; 45 s, ETA 2 min
    """
    if sys.stderr.isatty():
        with tqdm(total=total, desc=stage, unit=unit) as bar:
            yield bar.update
        return
    every_s, start, done = progress_interval(), time.monotonic(), 0
    last = start

    def line(final: bool) -> None:
        elapsed = time.monotonic() - start
        eta = f", ETA {_duration(elapsed / done * (total - done))}" if done and not final else ""
        print(f"{stage}: {done}/{total} {unit}s; {_duration(elapsed)}{eta}", file=sys.stderr, flush=True)

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        if time.monotonic() - last >= every_s and done < total:
            last = time.monotonic()
            line(final=False)

    yield advance
    line(final=True)


def _updates_to_make(trainer: Trainer, pl_module: LightningModule) -> int | float:
    """The optimizer updates a fit makes in all: with automatic optimization Lightning's count (of
    ``max_steps`` and ``max_epochs``); with RLModule's manual one, which makes ``num_iterations`` x
    ``num_minibatches`` updates per training batch (Lightning counts one), ``max_steps`` or the updates of
    ``max_epochs`` epochs, whichever are fewer (inf without either)."""
    if pl_module.automatic_optimization:
        return trainer.estimated_stepping_batches
    updater = getattr(pl_module, "updater", None)  # another module's manual optimization: one a batch
    per_batch = 1 if updater is None else updater.updates_per_batch
    epochs = math.inf if trainer.max_epochs in (None, -1) else trainer.max_epochs
    by_epochs = epochs * trainer.num_training_batches * per_batch
    return by_epochs if trainer.max_steps == -1 else min(by_epochs, trainer.max_steps)


class LineProgressBar(ProgressBar):
    """Progress as one plain line on stderr at most every ``every_s`` seconds and at the end of each stage,
    for logs read line by line (sbatch, nohup, ``| ts``), where a TQDM or Rich bar's ``\\r`` updates show
    nothing until the run ends::

        validate (update 0): batch 21/21, val/accuracy 0.241; 3 min
        fit: update 40/150, train/reward 0.412, train/accuracy 0.375; 6 min, ETA 17 min
        validate (update 50): batch 7/21; 1 min, ETA 2 min
        validate (update 50): batch 21/21, val/accuracy 0.356; 3 min

    ``rgra`` uses it instead of Lightning's default bar when stderr is not a terminal (the environment
    variable ``RGRA_PROGRESS_EVERY_S`` sets its interval there); listed in ``trainer.callbacks`` it is used
    always. Fit counts optimizer updates (of ``max_steps``, or of those ``max_epochs`` make), the other
    stages batches; a validation during fit names the updates made before it (``update 0``: the step-0
    validation), one of ``rgra validate`` (like ``test``, ``predict``) only its stage. The metrics are the
    progress bar's of the stage (``train/``, ``val/``, ``test/``), an evaluation's at its end only (until
    then they are the previous evaluation's). Fit and the evaluations keep their own intervals, so
    validations, however frequent, do not hold back the ``fit`` lines. Rank 0 prints
    (``ProgressBar.setup`` disables the others).

    Args:
        every_s: seconds between lines within a stage; default: ``$RGRA_PROGRESS_EVERY_S``, else 30.
    """

    def __init__(self, every_s: float | None = None) -> None:
        super().__init__()
        if every_s is None:
            every_s = progress_interval()
        elif not 0 <= every_s < math.inf:
            raise ConfigError(f"LineProgressBar every_s must be finite and >= 0, got {every_s}")
        self.every_s = every_s
        self._enabled = True
        self._fit_start = self._eval_start = 0.0
        self._last_fit_line = self._last_eval_line = 0.0  # each stage's own interval
        self._first_step = 0  # the update a resumed fit starts from: the rate counts this run's only
        self._total_steps: int | float = -1
        self._eval_batches = 0
        self._tracked: tuple[str, list[int | float]] = ("validate", [0])  # the loop ``track`` went over

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._last_fit_line = time.monotonic()  # the first line comes ``every_s`` after the start

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start, self._first_step = time.monotonic(), trainer.global_step
        self._total_steps = _updates_to_make(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if time.monotonic() - self._last_fit_line >= self.every_s:
            self._fit_line(trainer, final=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_line(trainer, final=True)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_eval()

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
            self._eval_line("validate", trainer.num_val_batches, self._bar_metrics("val/"))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_line("test", trainer.num_test_batches, self._bar_metrics("test/"))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_line("predict", trainer.num_predict_batches, {})

    def track(self, batches: DataLoader, stage: str) -> Iterator[Any]:
        """``batches`` one by one, with this bar's lines as for a Lightning ``stage`` (``validate``, named
        by the update during fit) but for the end line, which ``track_end`` prints: for a loop Lightning
        does not run (``evaluation.log_initial_validation``, the step-0 validation, which for a real model
        takes minutes before the first update, and whose metrics go to the loggers, not to the progress
        bar)."""
        self._start_eval()
        self._tracked = (stage, [len(batches)])
        for batch in batches:
            yield batch
            self._eval_batch_end(*self._tracked)

    def track_end(self, metrics: Mapping[str, float]) -> None:
        """The end line of the loop ``track`` went over, with ``metrics`` (name: value), those the progress
        bar would show: ``validate (update 0): batch 21/21, val/accuracy 0.241; 3 min``."""
        self._eval_line(*self._tracked, metrics)

    def _start_eval(self) -> None:
        self._eval_start = self._last_eval_line = time.monotonic()  # the first line ``every_s`` after
        self._eval_batches = 0

    def _eval_batch_end(self, stage: str, totals: list[int | float]) -> None:
        self._eval_batches += 1
        if time.monotonic() - self._last_eval_line >= self.every_s:
            self._eval_line(stage, totals, None)

    def _bar_metrics(self, prefix: str) -> dict[str, float]:
        """The progress bar's metrics named ``prefix...``."""
        return {
            name: value
            for name, value in self.trainer.progress_bar_metrics.items()
            if name.startswith(prefix)
        }

    def _fit_line(self, trainer: Trainer, final: bool) -> None:
        """``fit: update 40/150, <train/ metrics>; 6 min, ETA 17 min``."""
        step, total = trainer.global_step, self._total_steps
        known = 0 < total < float("inf")
        elapsed, eta = time.monotonic() - self._fit_start, None
        if not final and known and step > self._first_step:
            eta = elapsed / (step - self._first_step) * (total - step)
        self._last_fit_line = time.monotonic()
        count = f"update {step}/{int(total) if known else '?'}"
        self._line("fit", count, self._bar_metrics("train/"), elapsed, eta)

    def _eval_line(self, stage: str, totals: list[int | float], metrics: Mapping[str, float] | None) -> None:
        """``validate (update 40): batch 3/21; 1 min, ETA 6 min`` (``update``: during fit only); at the end
        (``metrics`` not None), with ``metrics`` and no ETA."""
        done, total = self._eval_batches, sum(totals)
        elapsed, eta = time.monotonic() - self._eval_start, None
        if metrics is None and done and total != float("inf"):
            eta = elapsed / done * (total - done)
        self._last_eval_line = time.monotonic()
        if stage == "validate" and self.trainer.state.fn == TrainerFn.FITTING:
            stage = f"validate (update {self.trainer.global_step})"
        count = f"batch {done}/{total if total != float('inf') else '?'}"
        self._line(stage, count, metrics or {}, elapsed, eta)

    def _line(
        self, stage: str, count: str, metrics: Mapping[str, float], elapsed: float, eta: float | None
    ) -> None:
        """Print ``stage: count, <name value for each of metrics>; elapsed, ETA eta``."""
        if not self._enabled:
            return
        parts = [count] + [f"{name} {value:.3f}" for name, value in metrics.items()]
        timing = _duration(elapsed) + (f", ETA {_duration(eta)}" if eta is not None else "")
        print(f"{stage}: {', '.join(parts)}; {timing}", file=sys.stderr, flush=True)
