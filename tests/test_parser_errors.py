"""Which source of a command line a config mistake is reported in: the first, in the parser's order, that
sets the option (to the refused value, where the parser names one)."""

import pytest

from rgra_lightning.parser_errors import Mistake, given_options, where_set
from tests.conftest import ROOT


def test_the_first_source_that_sets_the_refused_value_is_named(tmp_path):
    base, preset = tmp_path / "base.yaml", tmp_path / "preset.yaml"
    base.write_text("model:\n  init_args:\n    lora:\n      rank: 8\n")
    preset.write_text("model:\n  init_args:\n    lora:\n      rank: eight\n")
    rank = Mistake("model.lora.rank", "...", "eight")
    assert where_set(rank, ["fit", "--config", str(base), "--config", str(preset)]).where == f"{preset}:4"
    # the base sets the option too, to a value the parser took
    assert where_set(rank, ["--config", str(preset), "--config", str(base)]).where == f"{preset}:4"
    assert where_set(rank, ["--model.lora.rank=eight", "--config", str(preset)]) is None  # the command line
    assert where_set(rank, ["--model.lora", "{rank: eight}", "--config", str(preset)]) is None
    assert where_set(rank, ["--config", str(base)]) is None  # named nowhere


def test_an_unknown_key_is_named_where_it_is_first_set(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("trainer:\n  max_steps: 3\n  max_step: 4\n")
    mistake = Mistake("trainer.max_step", "...")
    assert where_set(mistake, ["--config", str(config), "--trainer.max_step=5"]).where == f"{config}:3"
    assert where_set(mistake, ["--trainer.max_step", "5", f"--config={config}"]) is None
    # an option appended to on the command line (``+=``) is the option itself
    callbacks = Mistake("trainer.callbacks", "...", "Foo")
    assert where_set(callbacks, ["--config", str(config), "--trainer.callbacks+=Foo"]) is None


def test_a_value_refused_after_parsing_is_named_where_it_is_last_set(tmp_path):
    """The last source that sets it gave the value refused (a ``WeightedSum`` component's, in its item)."""
    base, preset = tmp_path / "base.yaml", tmp_path / "preset.yaml"
    base.write_text("model:\n  init_args:\n    verifier:\n      init_args: {timeout: 0}\n")
    preset.write_text("model:\n  init_args:\n    verifier:\n      init_args:\n        timeout: 0\n")
    timeout = Mistake("model.verifier.timeout", "...")
    assert where_set(timeout, ["--config", str(base), "--config", str(preset)], last=True) == (
        f"{preset}:5",
        "model.verifier.timeout",
    )
    assert where_set(timeout, ["--config", str(base), "--config", str(preset)]).where == f"{base}:4"
    assert where_set(timeout, ["--config", str(base), "--model.verifier.timeout=0"], last=True) is None
    preset.write_text(
        "model:\n  init_args:\n    verifier:\n      init_args:\n        verifiers:\n"
        "          - class_path: rewards.MathVerifier\n          - init_args: {timeout: 0}\n"
    )
    component = Mistake("model.verifier.verifiers[1].timeout", "...")
    assert where_set(component, ["--config", str(base), "--config", str(preset)], last=True) == (
        f"{preset}:7",
        "model.verifier.verifiers[1].timeout",
    )


def rgra_error(args: list[str], capsys) -> str:
    """The one line ``rgra ARGS`` reports for a command line the parser refuses."""
    from rgra_lightning.commands import run

    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("print_config", [[], ["--print_config"]])
def test_a_misspelled_top_level_yaml_key_names_the_file_line_and_the_closest_key(
    print_config, tmp_path, capsys
):
    """A nested misspelled key was reported at its file and line; one at the top level (``modle:``) was the
    parser's ``Option 'modle.init_args.learning_rate' is not accepted``, naming neither."""
    preset = tmp_path / "preset.yaml"
    preset.write_text("# a preset\nmodle:\n  init_args:\n    learning_rate: 0.001\n")
    args = ["fit", "--config", str(ROOT / "configs/rgra.yaml"), "--config", str(preset), *print_config]
    assert rgra_error(args, capsys) == (
        f"error: {preset}:2: unknown top-level option 'modle' of rgra fit: did you mean 'model'? valid keys: "
        "seed_everything, trainer, model, data, ckpt_path, weights_only"
    )


FIT_OPTIONS = (
    "valid options: --config, --print_config, --help, --seed_everything, --trainer, --model, --data, "
    "--ckpt_path, --weights_only"
)


def test_a_misspelled_top_level_option_on_the_command_line_names_the_closest(capsys):
    args = ["validate", "--config", str(ROOT / "configs/rgra.yaml"), "--trainr.max_steps=3"]
    assert rgra_error(args, capsys) == (
        "error: unknown option --trainr.max_steps of rgra validate: did you mean --trainer.max_steps? valid "
        "options: --config, --print_config, --help, --seed_everything, --trainer, --model, --data, "
        "--ckpt_path, --verbose, --weights_only"
    )
    args = ["fit", "--config", str(ROOT / "configs/rgra.yaml"), "--ckpt-path", "x.ckpt"]
    assert rgra_error(args, capsys) == (
        f"error: unknown option --ckpt-path of rgra fit: did you mean --ckpt_path? {FIT_OPTIONS}"
    )


@pytest.mark.parametrize(
    ("args", "misspelled", "closest"),
    [
        (["--conf", "configs/rgra.yaml"], "--conf", "--config"),
        (["--confg=configs/rgra.yaml"], "--confg", "--config"),
        (["--config", "configs/rgra.yaml", "--print-config"], "--print-config", "--print_config"),
        (["--config", "configs/rgra.yaml", "--hlep"], "--hlep", "--help"),
    ],
)
def test_a_misspelled_option_of_the_parser_itself_is_named_as_the_closest(args, misspelled, closest, capsys):
    """The parser's own options were no candidates: ``--conf`` got no suggestion, and the list of valid keys
    read as if ``--config`` were none."""
    assert rgra_error(["fit", *args], capsys) == (
        f"error: unknown option {misspelled} of rgra fit: did you mean {closest}? {FIT_OPTIONS}"
    )


def test_a_misspelled_top_level_yaml_key_lists_no_command_line_options(tmp_path, capsys):
    """In a file the parser's own options are no keys: ``config:`` is not suggested for ``conf:``."""
    config = tmp_path / "config.yaml"
    config.write_text("conf: 1\n")
    assert rgra_error(["fit", "--config", str(config)], capsys) == (
        f"error: {config}:1: unknown top-level option 'conf' of rgra fit: valid keys: seed_everything, "
        "trainer, model, data, ckpt_path, weights_only"
    )


def test_c_is_the_short_name_of_config():
    assert list(given_options(["fit", "-c", "a.yaml", "-c=b.yaml", "--trainer.max_steps", "3"])) == [
        ("--config", "a.yaml"),
        ("--config", "b.yaml"),
        ("--trainer.max_steps", "3"),
    ]


def test_a_class_named_without_its_package_for_help_names_the_option_and_the_class_path(capsys):
    """The parser finds a short name only among the classes imported so far (``RLModul`` is none), and its
    report named no option (``error: : expected a class path ...``)."""
    assert rgra_error(["fit", "--model.help", "RLModul"], capsys) == (
        "error: --model.help: expected a full class path (package.module.Class), got 'RLModul': did you mean "
        "'rgra_lightning.RLModule'?"
    )
    assert rgra_error(["fit", "--data.help", "JsonFileDataModule"], capsys).endswith(
        "did you mean 'rgra_lightning.JsonFilesDataModule'?"
    )


def test_a_mistake_in_a_list_item_names_the_file_line_and_the_item(tmp_path, capsys):
    """The parser names a list, not its item: a misspelled callback option or ``WeightedSum`` component
    option had no file and line, and a class_path that names no class in ``trainer.plugins`` the line of
    ``plugins:``; each is now at its own line, naming the item."""
    base = str(ROOT / "configs/rgra.yaml")
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
        "    - class_path: rgra_lightning.callbacks.CompletionSampleLogger\n"
        "      init_args: {every_n_step: 3}\n"
    )
    assert rgra_error(["fit", "--config", base, "--config", str(callbacks)], capsys) == (
        f"error: {callbacks}:5: unknown option 'every_n_step' of trainer.callbacks[1] "
        "(rgra_lightning.callbacks.CompletionSampleLogger): did you mean 'every_n_steps'? valid keys: "
        "every_n_steps"
    )
    components = tmp_path / "weighted-sum.yaml"
    components.write_text(
        "model:\n  init_args:\n    verifier:\n      class_path: rewards.WeightedSum\n      init_args:\n"
        "        verifiers:\n          - class_path: rewards.FormatReward\n"
        "          - class_path: rewards.MathVerifier\n            init_args: {timout: 2}\n"
        "        weights: [0.1, 1.0]\n"
    )
    assert rgra_error(["fit", "--config", base, "--config", str(components)], capsys).startswith(
        f"error: {components}:9: unknown option 'timout' of model.verifier.verifiers[1] "
        "(rewards.MathVerifier): did you mean 'timeout'?"
    )
    plugins = tmp_path / "plugins.yaml"
    plugins.write_text("trainer:\n  plugins:\n    - class_path: lightning.pytorch.plugins.Foo\n")
    assert rgra_error(["fit", "--config", base, "--config", str(plugins)], capsys) == (
        f"error: {plugins}:3: trainer.plugins[0]: no class lightning.pytorch.plugins.Foo (module "
        "'lightning.pytorch.plugins' has no attribute 'Foo')"
    )
    values = tmp_path / "values.yaml"
    values.write_text(callbacks.read_text().replace("every_n_step:", "every_n_steps:").replace("3", "x"))
    assert rgra_error(["fit", "--config", base, "--config", str(values)], capsys) == (
        f"error: {values}:5: trainer.callbacks[1].every_n_steps: expected an int, got 'x'"
    )
