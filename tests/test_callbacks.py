"""LineProgressBar: progress as plain lines where stderr is no terminal, Lightning's bar where it is one."""

import re
import sys
from types import SimpleNamespace

import pytest
import transformers
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from rgra_lightning import callbacks
from rgra_lightning.callbacks import LineProgressBar
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from tests.conftest import FAST, one_line_error


def test_a_fit_logging_to_a_file_prints_progress_lines(small_config, monkeypatch, capsys):
    """Lightning's bar writes ``\\r`` updates, so a log read line by line (sbatch, nohup) showed nothing
    until the run ended; here stderr is pytest's capture, no terminal. transformers' bars for loading and
    saving weights, all on one line there, are off."""
    monkeypatch.setenv("RGRA_PROGRESS_EVERY_S", "0")  # a line after every batch
    transformers.utils.logging.enable_progress_bar()  # as in a new process
    settings = {"trainer.enable_progress_bar": True, "trainer.max_steps": 2}
    config = small_config("rgra", **settings, **{"model.init_args.validate_before_training": True})
    main(["fit", "--config", str(config)])
    stages = ("fit:", "validate")
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    lines = [line for line in err.splitlines() if line.startswith(stages)]
    number, duration = r"\d\.\d{3}", r"\d+ s"
    metrics = f"train/reward {number}, train/accuracy {number}"
    patterns = [
        rf"validate \(update 0\): batch 1/1; {duration}, ETA 0 s",  # step 0, outside Lightning's loops
        rf"validate \(update 0\): batch 1/1, val/accuracy {number}; {duration}",  # its end, as in fit
        f"fit: update 1/2, {metrics}; {duration}, ETA {duration}",  # after the first batch
        f"fit: update 2/2, {metrics}; {duration}, ETA 0 s",
        rf"validate \(update 2\): batch 1/1; {duration}, ETA 0 s",
        rf"validate \(update 2\): batch 1/1, val/accuracy {number}; {duration}",  # its end
        f"fit: update 2/2, {metrics}; {duration}",  # the fit's end
    ]
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), line


def test_a_fit_bounded_by_max_epochs_counts_the_updates_they_make(small_config, monkeypatch, capsys):
    """RLModule makes num_iterations x num_minibatches updates per batch (manual optimization, which
    Lightning counts as one): a fit of max_epochs alone showed ``update 2/?`` and no ETA."""
    monkeypatch.setenv("RGRA_PROGRESS_EVERY_S", "0")
    settings = {"trainer.enable_progress_bar": True, "trainer.max_steps": -1, "trainer.max_epochs": 1}
    data = {"data.init_args.train_size": 8, "model.init_args.num_minibatches": 2}  # 2 batches, 4 updates
    main(["fit", "--config", str(small_config("rgra", **FAST, **settings, **data))])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fit:")]
    assert [line.split(",")[0] for line in lines] == ["fit: update 2/4", "fit: update 4/4", "fit: update 4/4"]
    assert [re.search(r"ETA \d+ s$", line) is not None for line in lines] == [True, True, False]  # end: none


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_a_progress_interval_from_the_environment_that_is_no_finite_number_is_refused(monkeypatch, value):
    """``nan`` was taken: no interval ever passed, and no line came but each stage's last."""
    monkeypatch.setenv("RGRA_PROGRESS_EVERY_S", value)
    with pytest.raises(ConfigError) as error:
        LineProgressBar()
    assert str(error.value) == (
        f"RGRA_PROGRESS_EVERY_S={value}: give the seconds between progress lines (finite, >= 0)"
    )


@pytest.mark.parametrize(
    "terminal, settings, expected",
    [
        (True, {}, (TQDMProgressBar, RichProgressBar)),  # Lightning's default, whichever it picks
        (False, {}, LineProgressBar),
        (
            False,
            {"callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}]},
            TQDMProgressBar,
        ),
        (False, {"enable_progress_bar": False}, type(None)),
    ],
    ids=["terminal", "log-file", "configured-bar", "disabled"],
)
def test_the_line_bar_replaces_only_lightnings_default_where_stderr_is_no_terminal(
    small_config, monkeypatch, terminal, settings, expected
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    overrides = {"trainer.enable_progress_bar": True} | {f"trainer.{k}": v for k, v in settings.items()}
    cli = main(["--config", str(small_config("rgra", **overrides))], run=False)
    assert isinstance(cli.trainer.progress_bar_callback, expected)


@pytest.mark.parametrize("every_s", [-1.0, float("nan"), float("inf")])
def test_the_interval_is_checked(every_s):
    with pytest.raises(ConfigError, match=f"every_s must be finite and >= 0, got {every_s}"):
        LineProgressBar(every_s=every_s)


class Clock:
    """``time.monotonic`` for ``LineProgressBar``, moved on by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def bar_in(
    monkeypatch, fn: TrainerFn = TrainerFn.FITTING, every_s: float = 30
) -> tuple[LineProgressBar, Clock]:
    """A ``LineProgressBar`` set up in a stand-in trainer at ``fn`` (``global_step`` 0, of ``max_steps``
    8, one validation batch, ``val/accuracy`` 0.5 on the progress bar), on a clock ``Clock`` moves."""
    clock = Clock()
    monkeypatch.setattr(callbacks, "time", clock)
    trainer = SimpleNamespace(
        is_global_zero=True,
        global_step=0,
        max_steps=8,
        max_epochs=-1,  # as Lightning sets it for max_steps alone
        num_training_batches=4,
        state=SimpleNamespace(fn=fn),
        sanity_checking=False,
        num_val_batches=[1],
        progress_bar_metrics={"train/reward": 0.25, "val/accuracy": 0.5},
    )
    bar = LineProgressBar(every_s=every_s)
    bar.setup(trainer, SimpleNamespace(), "fit")
    return bar, clock


def validate(bar: LineProgressBar, clock: Clock, seconds: float = 1) -> None:
    """A one-batch validation of ``seconds`` as Lightning's loop calls the bar's hooks."""
    trainer = bar.trainer
    bar.on_validation_start(trainer, None)
    clock.now += seconds
    bar.on_validation_batch_end(trainer)
    bar.on_validation_end(trainer, None)


def test_validations_do_not_hold_back_the_fit_lines(monkeypatch, capsys):
    """A validation's lines once restarted the one interval: with a validation every 20 s, no ``fit``
    line came in 30 s intervals at all."""
    bar, clock = bar_in(monkeypatch)
    trainer = bar.trainer
    updater = SimpleNamespace(updates_per_batch=1)
    bar.on_train_start(trainer, SimpleNamespace(automatic_optimization=False, updater=updater))
    for update in range(1, 9):  # 10 s an update, a 1 s validation after every second
        clock.now += 10
        trainer.global_step = update
        bar.on_train_batch_end(trainer)
        if update % 2 == 0:
            validate(bar, clock)
    lines = capsys.readouterr().err.splitlines()
    fit = [line.split(",")[0] for line in lines if line.startswith("fit:")]
    assert fit == ["fit: update 3/8", "fit: update 6/8"], lines  # at 31 s and 62 s
    assert sum(line.startswith("validate") for line in lines) == 4, lines  # their end lines


def test_an_evaluation_has_its_own_interval(monkeypatch, capsys):
    """Its first line comes ``every_s`` after its start, whenever the last ``fit`` line came."""
    bar, clock = bar_in(monkeypatch)
    bar.trainer.num_val_batches = [4]
    clock.now = 100  # 100 s since the last line, but the validation only starts
    bar.on_validation_start(bar.trainer, None)
    clock.now += 29
    bar.on_validation_batch_end(bar.trainer)
    assert capsys.readouterr().err == ""
    clock.now += 1
    bar.on_validation_batch_end(bar.trainer)
    assert capsys.readouterr().err == "validate (update 0): batch 2/4; 30 s, ETA 30 s\n"


@pytest.mark.parametrize(
    "fn, stage",
    [(TrainerFn.FITTING, "validate (update 6)"), (TrainerFn.VALIDATING, "validate")],
    ids=["fit", "rgra-validate"],
)
def test_a_validation_in_fit_names_the_update(monkeypatch, capsys, fn, stage):
    bar, clock = bar_in(monkeypatch, fn)
    bar.trainer.global_step = 6
    validate(bar, clock, seconds=3)
    assert capsys.readouterr().err == f"{stage}: batch 1/1, val/accuracy 0.500; 3 s\n"


def test_the_step_0_validation_ends_with_its_metrics(monkeypatch, capsys):
    """``log_initial_validation``'s loop, outside Lightning's: its metrics are not on the progress bar
    (that still shows none, or another run's), so ``track_end`` is given them."""
    bar, clock = bar_in(monkeypatch, every_s=0)
    bar.trainer.progress_bar_metrics = {}
    for _ in bar.track(["batch 1", "batch 2"], "validate"):
        clock.now += 2
    bar.track_end({"val/accuracy": 0.241})
    assert capsys.readouterr().err.splitlines() == [
        "validate (update 0): batch 1/2; 2 s, ETA 2 s",
        "validate (update 0): batch 2/2; 4 s, ETA 0 s",
        "validate (update 0): batch 2/2, val/accuracy 0.241; 4 s",
    ]


def test_the_samples_table_shows_each_sample_in_one_row_as_written():
    """Rendered as TensorBoard renders text (its own Markdown-to-HTML): a chat prompt's and a completion's
    line breaks ended the row (2 samples became 4 rows, the reference in another column), and ``*``/``_``
    became italics."""
    from tensorboard.plugin_util import markdown_to_safe_html

    completion = "6*(-2)= then 3*4\n**bold** a_b_c `x` \\frac{1}{2} | pipe"
    samples = [
        {"prompt": "<|im_start|>user\nWhat is 6*(-2)?\n", "completion": completion, "reference": "-12",
         "reward": 1.0, "details": "equivalent"},
        {"prompt": "p2", "completion": "c2", "reference": "r2", "reward": 0.0, "details": "d"},
    ]  # fmt: skip
    rendered = markdown_to_safe_html(callbacks.samples_table(samples))
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, re.DOTALL)[1:]
    cells = [re.findall(r"<td>(.*?)</td>", row, re.DOTALL) for row in rows]
    assert cells == [
        [
            "&lt;&#124;im_start&#124;&gt;user<br>What is 6*(-2)?<br>",
            "6*(-2)= then 3*4<br>**bold** a_b_c `x` \\frac{1}{2} &#124; pipe",
            "-12",
            "1.0",
            "equivalent",
        ],
        ["p2", "c2", "r2", "0.0", "d"],
    ]


def test_an_export_folder_of_other_files_is_refused_before_the_fit_trains(small_config, tmp_path, capsys):
    """The export replaces its folder whole and refuses one holding files it did not write: checked at the
    end of fit, the run trained for nothing (its export refused); now before it starts."""
    folder = tmp_path / "hf_model"  # small_config's ExportHuggingFace output_dir
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    line = one_line_error(["fit", "--config", str(small_config("rgra", **FAST))], capsys)
    assert line == (
        f"error: export directory {folder} holds files but no exported model (no config.json or "
        "adapter_config.json), and an export replaces it whole: give a new or empty directory"
    )
    assert not (tmp_path / "checkpoints").exists() and (folder / "notes.txt").read_text() == "mine"


def test_a_loop_outside_lightning_prints_plain_lines_where_stderr_is_no_terminal(monkeypatch, capsys):
    """``rgra label`` showed a TQDM bar in a log file: its ``\\r`` updates piled up on one line."""
    clock = Clock()
    monkeypatch.setattr(callbacks, "time", clock)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("RGRA_PROGRESS_EVERY_S", "30")
    with callbacks.counted_progress(128, "labelling", "prompt") as advance:
        for seconds in (20, 20, 20, 20):  # a line once 30 s have passed since the last
            clock.now += seconds
            advance(32)
    assert capsys.readouterr().err.splitlines() == [
        "labelling: 64/128 prompts; 40 s, ETA 40 s",
        "labelling: 128/128 prompts; 80 s",
    ]


def test_a_loop_outside_lightning_shows_a_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with callbacks.counted_progress(4, "labelling", "prompt") as advance:
        advance(4)
    err = capsys.readouterr().err
    assert "labelling: 100%" in err and "4/4" in err and "\r" in err


def test_a_resumed_fits_eta_is_reckoned_from_the_updates_it_made_itself(monkeypatch, capsys):
    """A fit resumed at update 10 of 20 that made 2 updates in 20 s has 8 to go: ETA 80 s (counting the
    checkpoint's 10 as made in those 20 s too would say 13 s)."""
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    trainer = SimpleNamespace(
        global_step=10, max_steps=20, max_epochs=None, num_training_batches=4, progress_bar_metrics={}
    )
    module = SimpleNamespace(automatic_optimization=False, updater=SimpleNamespace(updates_per_batch=1))
    bar = LineProgressBar(every_s=0)
    bar._trainer = trainer
    bar.on_train_start(trainer, module)
    clock[0], trainer.global_step = 120.0, 12
    bar.on_train_batch_end(trainer)
    assert capsys.readouterr().err == "fit: update 12/20; 20 s, ETA 80 s\n"
