"""The ``rgra`` console script: LightningCLI's subcommands and the tools, each one subcommand."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from rgra_lightning.commands import TOOLS, exit_on_termination, run
from tests.conftest import ROOT


def test_rgra_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", *TOOLS):
        assert f"\n  {command} " in printed


def test_rgra_help_says_how_to_list_the_model_and_data_options(capsys):
    """``rgra fit --help`` lists the trainer's options, not the model's or the data module's (LightningCLI's
    subclass mode shows ``--model CONFIG | CLASS_PATH_OR_NAME`` only): ``rgra --help`` says so, and the
    commands it gives for those list them."""
    with pytest.raises(SystemExit):
        run(["--help"])
    printed = capsys.readouterr().out
    assert "lists every option" not in printed
    shown = [
        line.split("(")[0].split()[1:] for line in printed.splitlines() if line.startswith("  rgra fit --")
    ]
    assert [args[1:] for args in shown] == [
        ["--model.help", "rgra_lightning.RLModule"],
        ["--data.help", "rgra_lightning.ArithmeticDataModule"],
    ]
    for args, option in zip(shown, ("--model.learning_rate", "--data.batch_size"), strict=True):
        with pytest.raises(SystemExit) as exit_info:
            run(args)
        assert exit_info.value.code == 0 and option in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "suggestion"),
    [("rehears", ": did you mean 'rehearse'?"), ("fitt", ": did you mean 'fit'?"), ("xyz", ":")],
)
def test_an_unknown_command_is_one_line_naming_the_closest_and_every_command(command, suggestion, capsys):
    """The parser's own error would list LightningCLI's four subcommands only, not the tools."""
    with pytest.raises(SystemExit) as exit_info:
        run([command, "--config", "x.yaml"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: unknown command '{command}'{suggestion} commands are fit, validate, test, predict, label, "
        "export, ablate, score, rehearse (rgra --help)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ablate"], "the following arguments are required: --config (rgra ablate --help)"),
        (
            ["label", "--config", "x.yaml"],
            "the following arguments are required: --output (rgra label --help)",
        ),
        (
            ["export", "checkpoint"],
            "required: --config, --ckpt-path/--ckpt_path, --output (rgra export checkpoint --help)",
        ),
        (["rehearse", "--nope"], "unrecognized arguments: --nope (rgra rehearse --help)"),
        (
            ["score", "cases.jsonl", "--workers", "0"],
            "argument --workers: must be greater than 0, got 0 (rgra score --help)",
        ),
    ],
)
def test_a_tools_usage_mistake_is_one_line(args, message, capsys, monkeypatch):
    """argparse would print the usage block (4-7 lines) above the mistake."""
    monkeypatch.setattr(sys, "argv", ["/venv/bin/rgra"])  # how ``rgra score`` names itself
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.endswith(f"{message}\n") and err.count("\n") == 1, err


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_answers_help_under_its_rgra_name(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run([tool, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_rgra_score_scores_a_file_like_python_m_rewards(tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    rows = [{"gold": "1/2", "pred": "0.5", "mode": "answer"}, {"gold": "3", "pred": "4", "mode": "answer"}]
    cases.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SystemExit) as exit_info:
        run(["score", str(cases), "--workers", "1"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["equivalent"] for line in printed[:2]] == [True, False]


def test_the_console_script_starts_without_torch():
    """``rgra score`` is the verifier's CLI: importing the dispatcher must not pull in torch or Lightning."""
    code = "import sys, rgra_lightning.commands; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_python_m_rgra_lightning_dispatches_like_rgra():
    done = subprocess.run(
        [sys.executable, "-m", "rgra_lightning", "ablate", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "usage: rgra ablate" in done.stdout


def test_rgra_fit_from_the_command_line_raises_no_lightning_warning(monkeypatch, capsys):
    """``rgra fit ...`` hands LightningCLI no ``args`` of its own: given both those and ``sys.argv``,
    Lightning warns on every command that the two should not be mixed."""
    monkeypatch.setattr(
        sys, "argv", ["rgra", "fit", "--config", str(ROOT / "configs/rgra.yaml"), "--print_config"]
    )
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("always")
        run()
    assert exit_info.value.code == 0
    assert "model_path: models/arith-tiny" in capsys.readouterr().out
    assert not [str(w.message) for w in caught if "args" in str(w.message)]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_tool_ends_through_its_finally_blocks_on_sigterm_and_sighup(signum, status):
    """A closed terminal (SIGHUP) ended ``rgra ablate`` at once, leaving its fit, which runs in a session
    of its own, to train on unsupervised; now it exits as for SIGTERM, stopping the fit on the way."""
    exit_on_termination()
    assert callable(signal.getsignal(signum))  # else the default action would end pytest itself
    cleaned = []
    with pytest.raises(SystemExit) as exit_info:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises at the next bytecode, well before this ends
        finally:
            cleaned.append(True)
    assert exit_info.value.code == status and cleaned == [True]
