"""Verifier options and ``rgra score`` arguments: each mistake is refused at once in one line naming the
option and what is allowed, never a traceback or a run whose rewards are silently 0."""

import json
import pickle
import sys

import pytest
from jsonargparse import lazy_instance

from rewards import FormatReward, MathVerifier, MathVerifyAdapter, NumericVerifier, WeightedSum
from rewards.__main__ import main
from rewards.errors import ConfigError
from rewards.verifiers import Score, Verifier
from tests.conftest import one_line_error

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0.0}, "MathVerifier timeout must be > 0 (seconds) and finite, got 0.0"),
        ({"timeout": INF}, "MathVerifier timeout must be > 0 (seconds) and finite, got inf"),
        ({"workers": 0}, "MathVerifier workers must be >= 1, got 0"),
        ({"memory_mb": -1}, "MathVerifier memory_mb must be >= 0 (MiB; 0: no limit), got -1"),
        ({"cache_size": -1}, "MathVerifier cache_size must be >= 0 (0: no cache), got -1"),
        ({"correct_reward": NAN}, "MathVerifier correct_reward must be a finite number, got nan"),
        (
            {"extractors": ["boxed", "nope"]},
            "MathVerifier extractors must be among boxed, answer_tag, gsm8k, final_answer, answer_is, "
            "answer_line; got nope",
        ),
    ],
)
def test_math_verifier_refuses_each_bad_option_by_name(options, message):
    with pytest.raises(ConfigError) as raised:
        MathVerifier(warm_start=False, **options)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NumericVerifier(INF), "NumericVerifier correct_reward must be a finite number, got inf"),
        (lambda: FormatReward(reward=NAN), "FormatReward reward must be a finite number, got nan"),
        (
            lambda: FormatReward(pattern="("),
            "FormatReward pattern must be a regular expression; '(': missing ), unterminated subpattern at "
            "position 0",
        ),
        (lambda: WeightedSum([], []), "WeightedSum verifiers must list at least one verifier, got none"),
        (
            lambda: WeightedSum([NumericVerifier()], [1.0, 0.5]),
            "WeightedSum weights must be a finite number per verifier (1), got [1.0, 0.5]",
        ),
        (
            lambda: WeightedSum([NumericVerifier()], [NAN]),
            "WeightedSum weights must be a finite number per verifier (1), got [nan]",
        ),
        (
            lambda: WeightedSum([NumericVerifier(), FormatReward()], [1.0, 1.0], names=["a", "a"]),
            "WeightedSum names must be one distinct name per verifier (2), got ['a', 'a']",
        ),
        (lambda: MathVerifyAdapter(NAN), "MathVerifyAdapter correct_reward must be a finite number, got nan"),
    ],
)
def test_other_verifiers_refuse_bad_options_by_name(make, message):
    with pytest.raises(ConfigError) as raised:
        make()
    assert str(raised.value) == message


def test_math_verify_adapter_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # ``import math_verify`` raises ImportError
    with pytest.raises(ConfigError, match="needs the optional package math-verify: pip install math-verify"):
        MathVerifyAdapter()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "--model.verifier.timeout=0",
            "error: model.verifier.timeout must be > 0 (seconds) and finite, got 0.0",
        ),
        ("--model.verifier.workers=0", "error: model.verifier.workers must be >= 1, got 0"),
        (
            "--model.verifier.cache_size=-1",
            "error: model.verifier.cache_size must be >= 0 (0: no cache), got -1",
        ),
        (
            "--model.verifier.extractors=[nope]",
            "error: model.verifier.extractors must be among boxed, answer_tag, gsm8k, final_answer, "
            "answer_is, answer_line; got nope",
        ),
    ],
)
def test_a_bad_verifier_option_of_a_training_config_is_one_line(small_config, capsys, option, message):
    """The verifier was made inside the config parser, which wraps its error in a union report of many
    lines, and its ``ConfigError`` named the verifier, not the option: the command line checks a config's
    verifier options before making anything (``Verifier.check_options``), naming them in full."""
    assert one_line_error(["--config", str(small_config("rgra")), option], capsys) == message


@pytest.fixture
def cases(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"gold": "2", "pred": "2"}) + "\n")
    return path


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("WeightedSum", "needs arguments score cannot pass (verifiers, weights)"),
        ("Verifier", "is abstract"),
        ("rgra_lightning.RewardModelScorer", "needs arguments score cannot pass (model_path)"),
    ],
)
def test_score_refuses_a_verifier_it_cannot_make_naming_those_it_can(cases, capsys, name, problem):
    assert main(["score", str(cases), "--verifier", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: --verifier {name} {problem}: score works with FormatReward, MathVerifier, "
        "MathVerifyAdapter, NumericVerifier, or a module.Class whose other arguments have defaults\n"
    )


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("..X", "(the 'package' argument is required to perform a relative import for '.')"),
        (
            ".rewards.MathVerifier",
            "(the 'package' argument is required to perform a relative import for '.rewards')",
        ),
        ("MathVerifer", "(module 'rewards' has no attribute 'MathVerifer'); did you mean MathVerifier?"),
    ],
)
def test_score_refuses_a_verifier_name_it_cannot_load_in_one_line(cases, capsys, name, said):
    """A relative module name (``..X``) was a TypeError traceback; a misspelled one got no suggestion."""
    assert main(["score", str(cases), "--verifier", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: --verifier {name}: cannot load it {said}\n"


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_score_refuses_a_file_without_rows(tmp_path, capsys, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    assert main(["score", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: {path}: no rows to score (one JSON object with 'gold' and 'pred' per line)\n"
    )


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [
        ("/venv/bin/rgra", "rgra score"),
        ("/src/rewards/__main__.py", "python -m rewards score"),
        ("/src/rgra_lightning/__main__.py", "python -m rgra_lightning score"),
    ],
)
def test_score_names_itself_as_it_was_started(cases, capsys, monkeypatch, argv0, prog):
    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit):
        main(["score", str(cases), "--timeout", "0"])
    assert capsys.readouterr().err == (
        f"error: argument --timeout: must be greater than 0, got 0 ({prog} --help)\n"
    )


def test_a_verifiers_settings_are_the_arguments_it_was_made_with():
    """However it is made (keywords, positions, jsonargparse's lazy default, a pickle round trip), a
    verifier's settings are its class and init arguments with defaults, components as their own settings;
    arguments that change speed only (``runtime_options``) are left out, so a resume may change them."""

    class Threshold(Verifier):
        def __init__(self, limit: float, reward: float = 1.0) -> None:
            self.limit, self.reward = limit, reward

        def score(self, completion, reference):
            return Score(self.reward if len(completion) < self.limit else 0.0, False, None, "length")

    path = f"{__name__}.test_a_verifiers_settings_are_the_arguments_it_was_made_with.<locals>.Threshold"
    assert Threshold(5).settings() == {"class_path": path, "init_args": {"limit": 5, "reward": 1.0}}
    math_verifier = {
        "class_path": "rewards.verifiers.MathVerifier",
        "init_args": {
            "correct_reward": 1.0,
            "timeout": 2.0,
            "memory_mb": 2048,
            "extractors": ["boxed"],
            "last_number_fallback": True,
        },
    }
    made = MathVerifier(timeout=2.0, workers=1, extractors=("boxed",), warm_start=False)
    assert made.settings() == math_verifier
    assert lazy_instance(MathVerifier, timeout=2.0, extractors=["boxed"]).settings() == math_verifier
    combined = WeightedSum([made, FormatReward(reward=0.5)], [1.0, 0.1])
    assert pickle.loads(pickle.dumps(FormatReward(reward=0.5))).settings() == {
        "class_path": "rewards.verifiers.FormatReward",
        "init_args": {"pattern": "\\\\boxed\\{", "reward": 0.5},
    }
    objects = Threshold(5, reward=object()).settings()["init_args"]
    assert objects == {"limit": 5, "reward": "builtins.object"}  # not its repr: an address per process
    assert combined.settings()["init_args"] == {
        "verifiers": [math_verifier, FormatReward(reward=0.5).settings()],
        "weights": [1.0, 0.1],
        "names": None,
    }


def test_score_refuses_a_shortened_option(cases, capsys, monkeypatch):
    """argparse took ``--work`` for ``--workers`` and scored the file."""
    monkeypatch.setattr(sys, "argv", ["/src/rewards/__main__.py"])
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(cases), "--work", "1"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: unrecognized arguments: --work 1 (python -m rewards score --help)\n"


def test_a_missing_command_is_named_with_the_choices(capsys, monkeypatch):
    """argparse said ``the following arguments are required: command``, naming none."""
    monkeypatch.setattr(sys, "argv", ["/src/rewards/__main__.py"])
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: choose a command: score (python -m rewards --help)\n"


def test_score_help_shows_the_defaults(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/src/rewards/__main__.py"])
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    for option, default in (
        ("--verifier NAME", "MathVerifier"),
        ("--timeout SECONDS", "3.0"),
        ("--workers N", "2"),
    ):
        assert option in printed and f"(default: {default})" in printed
    assert "(default: False)" not in printed  # --warm-start: a flag's default says nothing


def test_score_refuses_a_row_with_an_unknown_mode(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"gold": "1", "pred": "1"}\n{"gold": "1", "pred": "1", "mode": "bare"}\n')
    assert main(["score", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {path}: line 2: 'mode' must be 'answer' or 'completion'\n"


def test_the_summary_counts_each_kind_of_mistake():
    """Accuracy over the rows with a true/false label only; a false positive is a wrong answer scored correct,
    a false negative a correct one scored wrong; a timeout is not also an error."""
    from rewards.__main__ import summary_line

    labels = [True, True, False, False, None]  # the fifth row's label is no label; the sixth has none
    rows = [{"equivalent": label} for label in labels] + [{}]
    verdicts = [True, False, True, True, False, True]
    errors = [None, "timeout", None, "crash: ValueError: x", None, None]
    records = [{"equivalent": v, "error": e} for v, e in zip(verdicts, errors, strict=True)]
    assert summary_line(rows, records, 2.0) == (
        "summary: n=6 accuracy=0.2500 false_positives=2 false_negatives=1 timeouts=1 errors=1 cases_per_s=3.0"
    )


def test_tool_help_shows_a_default_only_where_it_says_something():
    from rewards.errors import ToolParser

    parser = ToolParser(prog="tool")
    parser.add_argument("--count", type=int, default=0, help="how many")
    parser.add_argument("--names", nargs="*", default=[], help="which ones")
    parser.add_argument("--label", default="", help="a label")
    parser.add_argument("--mode", default="fast", help="how to run (default: fast unless --slow)")
    printed = " ".join(parser.format_help().split())
    assert "how many (default: 0)" in printed  # 0 is a value worth showing
    assert "which ones --label" in printed and "a label --mode" in printed  # an empty default says nothing
    assert printed.count("default:") == 2  # the help that names its default is not given a second one


def test_a_help_paragraph_with_an_indented_line_keeps_its_line_breaks():
    from rewards.errors import ToolParser

    description = "Scores the rows of a file, one verdict per row.\n\nExamples:\n  tool a.jsonl\n  tool b"
    printed = ToolParser(prog="tool", description=description).format_help()
    assert "Examples:\n  tool a.jsonl\n  tool b\n" in printed


def test_an_option_outside_its_literal_is_named_with_the_choices():
    from typing import Literal

    from rewards.errors import require_one_of

    require_one_of("model.", ("loss", "grpo", Literal["grpo", "dr_grpo"]))  # allowed: nothing raised
    with pytest.raises(ConfigError) as error:
        require_one_of("model.", ("loss", "ppo", Literal["grpo", "dr_grpo"]))
    assert str(error.value) == "model.loss='ppo' is not one of ['grpo', 'dr_grpo']"


def test_a_misspelt_option_is_named_before_a_required_one_it_leaves_out(capsys):
    """argparse said ``the following arguments are required: --config`` for ``--conf X``, not naming the
    misspelt option."""
    from rewards.errors import ToolParser

    parser = ToolParser(prog="tool")
    parser.add_argument("--config", required=True)
    parser.add_argument("--summary_only", action="store_true")
    parser.add_argument("--seed", type=int)
    for args, named in [(["--conf", "x"], "--conf"), (["--config=x", "--summary=1"], "--summary")]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(args)
        assert exit_info.value.code == 2
        close = "--config" if named == "--conf" else "--summary_only"
        assert (
            capsys.readouterr().err
            == f"error: unrecognized arguments: {named}: did you mean {close}? (tool --help)\n"
        )
    assert parser.parse_args(["--config", "x", "--seed", "-3"]).seed == -3  # a negative number is a value
    assert parser.parse_args(["--config", "-a b"]).config == "-a b"  # a value argparse reads as one
    parser.add_argument("-v", action="count", default=0)
    assert parser.parse_args(["--config=x", "-vv"]).v == 2  # short options are argparse's to read
