"""LineProgressBar: progress as plain lines where stderr is no terminal, Lightning's bar where it is one."""

import re
import sys

import pytest
import transformers
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from rgra_lightning.callbacks import LineProgressBar
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError


def test_a_fit_logging_to_a_file_prints_progress_lines(small_config, monkeypatch, capsys):
    """Lightning's bar writes ``\\r`` updates, so a log read line by line (sbatch, nohup) showed nothing
    until the run ended; here stderr is pytest's capture, no terminal. transformers' bars for loading and
    saving weights, all on one line there, are off."""
    monkeypatch.setenv("RGRA_PROGRESS_EVERY_S", "0")  # a line after every batch
    transformers.utils.logging.enable_progress_bar()  # as in a new process
    settings = {"trainer.enable_progress_bar": True, "trainer.max_steps": 2}
    config = small_config("rgra", **settings, **{"model.init_args.validate_before_training": True})
    main(["fit", "--config", str(config)])
    stages = ("fit:", "validate:", "validate (step 0):")
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    lines = [line for line in err.splitlines() if line.startswith(stages)]
    number, duration = r"\d\.\d{3}", r"\d+ s"
    metrics = f"train/reward {number}, train/accuracy {number}"
    patterns = [
        rf"validate \(step 0\): batch 1/1; {duration}, ETA 0 s",  # outside Lightning's loops
        rf"validate \(step 0\): batch 1/1; {duration}",
        f"fit: update 1/2, {metrics}; {duration}, ETA {duration}",  # after the first batch
        f"fit: update 2/2, {metrics}; {duration}, ETA 0 s",
        f"validate: batch 1/1; {duration}, ETA 0 s",
        f"validate: batch 1/1, val/accuracy {number}; {duration}",  # its end
        f"fit: update 2/2, {metrics}; {duration}",  # the fit's end
    ]
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), line


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


def test_the_interval_is_checked():
    with pytest.raises(ConfigError, match="every_s must be >= 0"):
        LineProgressBar(every_s=-1)
