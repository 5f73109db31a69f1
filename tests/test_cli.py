"""The command line: misspelled keys and invalid values are one-line errors naming the field."""

import json
import logging
import shutil
import sys
import warnings

import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.strategies import ModelParallelStrategy

import rewards.verifiers
from rgra_lightning import cli
from rgra_lightning import module as module_file
from rgra_lightning.cli import check_option_values, main
from rgra_lightning.data import base
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_causal_lm
from tests.conftest import ROOT, TINY_POLICY, one_line_error

LOSS_KEYS = (
    "policy_term, eps_low, eps_high, beta, kl_estimator, aggregation, aggregation_constant, "
    "mask_truncated_completions, advantage, sampler_correction_cap"
)


def parser_error(args: list[str], capsys) -> str:
    """The one line a misspelled key or a mistyped value prints (jsonargparse's many lines replaced)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args, run=False)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_misspelled_command_line_key_is_one_line_with_the_closest_and_the_valid_keys(small_config, capsys):
    error = parser_error(["--config", str(small_config("rgra")), "--model.loss.bta=0.1"], capsys)
    assert error == (
        "error: unknown option 'loss.bta' of model (rgra_lightning.RLModule): did you mean 'loss.beta'? "
        f"valid keys under loss: {LOSS_KEYS}"
    )


def line_of(path, text: str) -> int:
    """The line (from 1) of ``path`` that holds ``text``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_misspelled_yaml_key_is_one_line_naming_the_file_line_the_closest_and_the_valid_keys(
    small_config, capsys
):
    config = small_config("rgra")
    config.write_text(config.read_text().replace("beta:", "bta:"))
    error = parser_error(["--config", str(config)], capsys)
    assert error == (
        f"error: {config}:{line_of(config, 'bta:')}: unknown option 'loss.bta' of model "
        f"(rgra_lightning.RLModule): did you mean 'loss.beta'? valid keys under loss: {LOSS_KEYS}"
    )


def test_a_mistake_in_a_later_config_names_that_file_and_one_on_the_command_line_names_none(
    small_config, tmp_path, capsys
):
    """The parser reads the sources in order and refuses the first that sets a bad value, even where a
    later one would replace it."""
    base, preset = small_config("rgra"), tmp_path / "preset.yaml"
    preset.write_text("# a preset\nmodel:\n  init_args:\n    lora:\n      rank: eight\n")
    error = parser_error(["--config", str(base), "--config", str(preset)], capsys)
    assert error == f"error: {preset}:5: model.lora.rank: expected an int, got 'eight'"
    error = parser_error(["--config", str(base), "--config", str(preset), "--model.lora.rank=4"], capsys)
    assert error == f"error: {preset}:5: model.lora.rank: expected an int, got 'eight'"
    error = parser_error(["--config", str(base), "--model.lora.alpha=x", "--config", str(preset)], capsys)
    assert error == "error: model.lora.alpha: expected a float, got 'x'"


@pytest.mark.parametrize(("preset", "option"), [("loss/grpo.yaml", "loss"), ("reward/orm.yaml", "verifier")])
def test_a_preset_given_alone_says_to_compose_it_over_a_base_config(preset, option, capsys):
    """Read alone, a preset's model has no class_path, and the report listed its valid keys: none."""
    config = ROOT / "configs" / preset
    assert parser_error(["--config", str(config)], capsys) == (
        f"error: {config}:{line_of(config, f'  {option}:')}: option '{option}' of model, which has no "
        "class_path here: a preset sets options of a base config's model; compose them in order, its base "
        "first (rgra fit --config BASE --config PRESET: configs/rgra.yaml for the loss and reward presets; a "
        "preset's header names its base)"
    )


def test_an_abbreviated_option_is_refused_as_in_a_yaml_file(small_config, capsys):
    """argparse would take a unique prefix of an option name for the option, at every level."""
    error = parser_error(["--config", str(small_config("rgra")), "--model.loss.advantage.scal=none"], capsys)
    assert "unknown option 'loss.advantage.scal' of model" in error
    error = parser_error(["--config", str(small_config("rgra")), "--trainer.max_step=3"], capsys)
    assert error.startswith(
        "error: unknown option 'max_step' of trainer (lightning.pytorch.Trainer): did you mean 'max_steps'? "
        "valid keys: accelerator, strategy, devices,"
    )


def test_a_class_path_that_names_no_class_is_one_line_with_the_closest_class(small_config, tmp_path, capsys):
    config = small_config("rgra")
    error = parser_error(["--config", str(config), "--model.rollout=rgra_lightning.rollout.HFEngin"], capsys)
    assert error == (
        "error: model.rollout: no class rgra_lightning.rollout.HFEngin (module 'rgra_lightning.rollout' has "
        "no attribute 'HFEngin'): did you mean 'rgra_lightning.rollout.HFEngine'?"
    )
    preset = tmp_path / "preset.yaml"
    preset.write_text("model:\n  init_args:\n    verifier:\n      class_path: no_such_module.Verifier\n")
    error = parser_error(["--config", str(config), "--config", str(preset)], capsys)
    assert error == (
        f"error: {preset}:3: model.verifier: no class no_such_module.Verifier (No module named "
        "'no_such_module')"
    )
    # a callback appended on the command line, not the config's own callbacks
    error = parser_error(["--config", str(config), "--trainer.callbacks+=Foo"], capsys)
    assert error == "error: trainer.callbacks: expected a class path (package.module.Class), got 'Foo'"


def test_a_config_file_that_does_not_parse_or_exist_is_one_line_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    learning_rate: [1e-5\n")
    assert parser_error(["--config", str(bad)], capsys) == (
        f"error: {bad}:4:1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at "
        "line 3, column 20)"
    )
    missing = tmp_path / "missing.yaml"
    assert parser_error(["--config", str(missing)], capsys) == f"error: --config {missing}: no such file"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--model.lora=true",
            "model.lora: expected LoraConfig's options (rank, alpha, target_modules) as a mapping, e.g. "
            "--model.lora.rank=..., or null; got 'true'",
        ),
        (
            "--model.evaluation=1",
            "model.evaluation: expected EvaluationConfig's options (num_samples, k, temperature, top_p, "
            "write_samples) as a mapping, e.g. --model.evaluation.num_samples=...; got '1'",
        ),
    ],
)
def test_a_plain_value_for_a_group_of_options_names_the_options(small_config, capsys, override, message):
    assert parser_error(["--config", str(small_config("rgra")), override], capsys) == f"error: {message}"


@pytest.mark.parametrize("args", [["--model.loss=grpo"], ["--model.loss", "rgra-nokl"]])
def test_a_loss_presets_name_as_model_loss_says_to_compose_its_file(small_config, capsys, monkeypatch, args):
    monkeypatch.chdir(ROOT)  # the presets are configs/loss/<name>.yaml, as the docs run them
    preset = args[-1].removeprefix("--model.loss=")
    assert one_line_error(["--config", str(small_config("rgra")), *args], capsys) == (
        f"error: --model.loss={preset}: a loss preset is a config file: write --config "
        f"configs/loss/{preset}.yaml (model.loss takes the loss options, e.g. --model.loss.beta=0.04)"
    )


def test_a_union_of_literals_lists_every_value_allowed(small_config, capsys):
    error = parser_error(["--config", str(small_config("rgra")), "--trainer.precision=fp8"], capsys)
    assert error.startswith("error: trainer.precision: expected one of 64, 32, 16, 'transformer-engine', ")
    assert error.endswith(", 'bf16-mixed', '32-true', '64-true', '64', '32', '16', 'bf16' or None, got 'fp8'")


def test_misspelled_nested_and_top_level_keys_list_their_level(small_config, capsys):
    config = small_config("rgra")
    config.write_text(
        config.read_text().replace("policy_term:", "advantage: {scal: none}\n      policy_term:")
    )
    error = parser_error(["--config", str(config)], capsys)
    assert (
        "'loss.advantage.scal' of model (rgra_lightning.RLModule): did you mean 'loss.advantage.scale'?"
        in error
    )
    assert "valid keys under loss.advantage: baseline, scale," in error
    error = parser_error(["--config", str(small_config("rgra")), "--model.learnin_rate=3"], capsys)
    assert (
        "'learnin_rate' of model (rgra_lightning.RLModule): did you mean 'learning_rate'? valid keys: "
        in error
    )
    assert "valid keys: model_path, gguf_file," in error
    error = parser_error(["--config", str(small_config("rgra")), "--data.bach_size=3"], capsys)
    assert "'bach_size' of data (rgra_lightning.ArithmeticDataModule): did you mean 'batch_size'?" in error
    # a class whose base takes the options it passes on (TensorBoardLogger): each key listed once
    error = parser_error(["--config", str(small_config("rgra")), "--trainer.logger.init_args.nme=x"], capsys)
    assert error.endswith(
        "did you mean 'name'? valid keys: save_dir, name, version, log_graph, default_hp_metric, prefix, "
        "sub_dir, root_dir"
    )
    # a class given inside another (LoraConfig inside RLModule): the inner one's keys; nothing close to 'r'
    error = parser_error(["--config", str(small_config("rgra")), "--model.lora={r: 4}"], capsys)
    assert error == (
        "error: unknown option 'r' of model.lora (rgra_lightning.models.LoraConfig): valid keys: rank, "
        "alpha, target_modules"
    )
    error = parser_error(
        ["--config", str(small_config("rgra")), "--model.verifier.init_args.workrs=2"], capsys
    )
    assert error.startswith(
        "error: unknown option 'workrs' of model.verifier (rewards.MathVerifier): did you mean 'workers'?"
    )


SAMPLING_KEYS = (
    "num_generations, temperature, top_k, top_p, min_p, max_new_tokens, min_new_tokens, "
    "stop_strings, prompt_overflow"
)


@pytest.mark.parametrize(
    "override, message",
    [
        (  # an unknown name with more names below it: the first unknown one is named
            "--model.optimizer.lr=1",
            "error: unknown option 'optimizer' of model (rgra_lightning.RLModule): valid keys: model_path,",
        ),
        (
            "--model.sampling.temprature.min=1",
            "error: unknown option 'sampling.temprature' of model (rgra_lightning.RLModule): did you mean "
            f"'sampling.temperature'? valid keys under sampling: {SAMPLING_KEYS}",
        ),
        (
            "--data.init_args.foo.bar=2",
            "error: unknown option 'foo' of data (rgra_lightning.ArithmeticDataModule)",
        ),
        (  # a name below an option that takes one value
            "--model.learning_rate.x=1",
            "error: unknown option 'model.learning_rate.x': model.learning_rate takes a float, with no "
            "options below it",
        ),
        (
            "--model.lora.rank.x=1",
            "error: unknown option 'model.lora.rank.x': model.lora.rank takes an int, with no options "
            "below it",
        ),
    ],
)
def test_an_option_below_an_unknown_or_single_value_option_is_one_line(
    small_config, capsys, override, message
):
    """The parser's report (10 lines) shows such an option as ``NestedArg(key=..., val=...)``."""
    error = parser_error(["--config", str(small_config("rgra")), override], capsys)
    assert error.startswith(message), error


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.num_minibatches=0", "model.num_minibatches must be >= 1, got 0"),
        ("--model.max_consecutive_nonfinite=0", "model.max_consecutive_nonfinite must be >= 1, got 0"),
        ("--model.sampling.top_p=0", "model.sampling.top_p must be in (0, 1], got 0"),
        ("--model.loss.eps_high=-0.1", "model.loss.eps_low and model.loss.eps_high must be > 0"),
        ("--data.batch_size=0", "data.batch_size and data.val_batch_size must be >= 1"),
    ],
)
def test_more_invalid_values_name_the_field_and_range(small_config, capsys, override, message):
    error = one_line_error(["--config", str(small_config("rgra")), override], capsys)
    assert error.startswith(f"error: {message}"), error


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_missing_checkpoint_is_a_one_line_error(command, small_config, tmp_path, capsys):
    config, missing = small_config("rgra"), tmp_path / "no-such.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(config), "--ckpt_path", str(missing)])
    assert exit_info.value.code == 2
    assert f"error: --ckpt_path '{missing}' does not exist" in capsys.readouterr().err


def cli_error(args: list[str], capsys) -> str:
    """The one ``error: ...`` line (exit status 2) of running ``args``, a subcommand with its options."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_evaluating_a_checkpoint_of_other_settings_or_no_checkpoint_is_one_line(
    small_config, tmp_path, capsys
):
    """A LoRA run's checkpoint evaluated with the full-model config names the setting (Lightning: a
    traceback about missing state-dict keys); a file or directory that is no checkpoint and a ``last``
    that names none are one line too (Lightning: a traceback, or evaluating the untrained policy)."""
    lora = {"rank": 2, "alpha": 4.0, "target_modules": ["q_proj"]}
    one_step = {"trainer.max_steps": 1, "model.init_args.validate_before_training": False}
    main(["fit", "--config", str(small_config("rgra", **one_step, **{"model.init_args.lora": lora}))])
    config, last = str(small_config("rgra", **one_step)), tmp_path / "checkpoints" / "last.ckpt"
    for command in ("validate", "test", "predict"):  # a setting that changes no weight is not named
        evaluate = [command, "--config", config, "--model.learning_rate=0.5", "--ckpt_path", str(last)]
        assert cli_error(evaluate, capsys) == (
            f"error: checkpoint {last} was trained with other settings than this run's (model.lora: "
            f"{lora} in the checkpoint, None now): give the config it was trained with (saved as config.yaml "
            "in its log directory)"
        )
    # Its adapters over another base model of the same shapes (a copy here: a local copy of the same model
    # is as likely): said in a warning naming both, not refused
    copy = shutil.copytree(TINY_POLICY, tmp_path / "copy")
    lora_config = str(small_config("rgra", **one_step, **{"model.init_args.lora": lora}))
    other_base = ["validate", "--config", lora_config, f"--model.model_path={copy}", "--ckpt_path", str(last)]
    with pytest.warns(UserWarning) as warned:
        main(other_base)
    expected = (
        f"checkpoint {last} was trained with other settings than this run's (model.model_path: "
        f"'{TINY_POLICY}' in the checkpoint, '{copy}' now): evaluating its LoRA adapters over the model as "
        "this config loads it; give the config it was trained with (saved as config.yaml in its log "
        "directory) if that is not the model it was trained on"
    )
    assert expected in [str(warning.message) for warning in warned]
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"prompt": "1+1="}\n')
    for path in (samples, tmp_path):
        assert cli_error(["validate", "--config", config, "--ckpt_path", str(path)], capsys) == (
            f"error: --ckpt_path {path} is not a Lightning checkpoint (.ckpt file or sharded checkpoint "
            "directory)"
        )
    hf_model = tmp_path / "hf_model"  # the run's export
    assert cli_error(["test", "--config", config, "--ckpt_path", str(hf_model)], capsys) == (
        f"error: --ckpt_path {hf_model} is a Hugging Face model directory: give it as model.model_path"
    )
    last.unlink()
    assert cli_error(["validate", "--config", config, "--ckpt_path", "last"], capsys) == (
        f"error: --ckpt_path last: there is no last checkpoint (last.ckpt) in {tmp_path / 'checkpoints'}: "
        "train the run first (rgra fit), or give the checkpoint's path"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_config_on_a_cpu_machine_is_a_one_line_error_before_any_model_loads(small_config, capsys):
    """Before the model: a hub name that cannot be downloaded here is not what the error is about."""
    for accelerator in ("gpu", "cuda"):
        args = ["fit", "--config", str(small_config("rgra")), f"--trainer.accelerator={accelerator}"]
        args.append("--model.model_path=no-such-owner/no-such-model")
        assert one_line_error(args, capsys) == (
            f"error: trainer.accelerator is {accelerator}, and this machine has no GPU torch can use: run it "
            "on a GPU machine, or check the config on this CPU with rgra rehearse --config CONFIG..."
        )


def test_fitting_a_preset_without_a_training_split_is_refused_before_any_model_loads(small_config, capsys):
    """MATH-500 has only a test split: fit said so once the model had loaded (minutes for a real one);
    here a hub model name that cannot load shows the refusal comes first. A train_split given fits."""
    config = str(small_config("rgra", data_module="DatasetDataModule"))
    args = ["fit", "--config", config, "--data.preset=math500", "--data.source=no-such-dir"]
    args.append("--model.model_path=no-such-owner/no-such-model")
    assert one_line_error(args, capsys) == (
        "error: data.source 'no-such-dir' (data.preset=math500) has no training split to fit on: set "
        "data.train_split, or evaluate with validate or test"
    )
    assert "no-such-owner" in one_line_error([*args, "--data.train_split=test"], capsys)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.sampling.num_generations=1", "model.sampling.num_generations (G) must be >= 2"),
        ("--model.sampling.temperature=0", "model.sampling.temperature must be > 0"),
        ("--model.sampling.max_new_tokens=0", "model.sampling.max_new_tokens must be >= 1"),
        ("--model.loss.eps_low=0", "model.loss.eps_low and model.loss.eps_high must be > 0"),
        ("--model.loss.beta=-1", "model.loss.beta must be >= 0"),
        ("--model.num_iterations=0", "model.num_iterations must be >= 1"),
        ("--model.num_logged_samples=-1", "model.num_logged_samples must be >= 0, got -1"),
    ],
)
def test_invalid_values_name_the_field_and_range(small_config, capsys, override, message):
    """Each names the option as the command line does (``model.sampling.top_p``, not ``sampling.top_p``)."""
    error = one_line_error(["--config", str(small_config("rgra")), override], capsys)
    assert error.startswith(f"error: {message}"), error


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.learning_rate=abc", "model.learning_rate: expected a float, got 'abc'"),
        ("--model.loss.beta=abc", "model.loss.beta: expected a float, got 'abc'"),
        (
            "--model.loss.policy_term=foo",
            "model.loss.policy_term: expected one of 'reinforce', 'ratio', 'clipped_ratio', got 'foo'",
        ),
        ("--data.batch_size=x", "data.batch_size: expected an int, got 'x'"),
        ("--trainer.max_steps=abc", "trainer.max_steps: expected an int, got 'abc'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_field(small_config, capsys, override, message):
    assert parser_error(["--config", str(small_config("rgra")), override], capsys) == f"error: {message}"


def test_a_trainer_setting_lightning_refuses_is_one_line_not_a_traceback(small_config, capsys):
    args = ["--config", str(small_config("rgra")), "--trainer.devices=abc"]
    assert one_line_error(args, capsys) == (
        "error: trainer: `devices` selected with `CPUAccelerator` should be an int > 0."
    )


def test_the_old_fsdp2_only_checkpointing_key_names_the_option_that_replaced_it(small_config, capsys):
    args = ["--config", str(small_config("rgra")), "--model.sharding.activation_checkpointing=true"]
    assert one_line_error(args, capsys) == (
        "error: model.sharding.activation_checkpointing is now model.gradient_checkpointing (one device, "
        "DDP and FSDP2): write gradient_checkpointing: true under model.init_args, not under sharding"
    )
    # false, as old configs and checkpoints' hyperparameters have it, is accepted
    main(
        ["--config", str(small_config("rgra")), "--model.sharding.activation_checkpointing=false"], run=False
    )


def test_a_config_given_as_a_yaml_string_is_read_as_one(small_config):
    """jsonargparse takes ``--config`` as a path or as the YAML itself; a whole config is longer than a
    file name may be, which must not stop the command line from reading it."""
    text = small_config("rgra").read_text()
    assert max(len(part) for part in text.split("/")) > 255  # the longest file name Linux allows
    cli = main(["--config", text, "--model.loss.beta=0.02"], run=False)
    assert cli.model.hparams.loss["beta"] == 0.02


def test_lightnings_cloud_logger_advertisement_is_not_printed(small_config):
    """Lightning logs a tip to install its cloud logger at the start of every run; the other device and
    set-up lines it logs the same way still come through."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        main(["--config", str(small_config("rgra"))], run=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [record.getMessage() for record in records]
    assert any("GPU available" in message for message in messages)
    assert not [message for message in messages if "litlogger" in message]


def test_evaluating_into_the_fits_log_directory_keeps_the_fits_config(small_config, tmp_path):
    """validate, test and predict save their config as ``<subcommand>_config.yaml``: into a log directory of
    fixed version (an ablation run's) ``rgra validate`` overwrote the fit's ``config.yaml`` with its own,
    which ``rgra export checkpoint --config`` then read as the config the run was trained with."""
    import yaml

    fixed = {"trainer.logger.init_args.version": "", "trainer.max_steps": 1}
    config = str(small_config("rgra", **fixed, **{"model.init_args.validate_before_training": False}))
    main(["fit", "--config", config])
    last, log_dir = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "runs" / "rgra"
    main(["validate", "--config", config, "--ckpt_path", str(last), "--data.limit=4"])
    fit_config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert fit_config["ckpt_path"] is None and fit_config["data"]["init_args"]["limit"] is None
    validate_config = yaml.safe_load((log_dir / "validate_config.yaml").read_text())
    assert validate_config["ckpt_path"] == str(last) and validate_config["data"]["init_args"]["limit"] == 4


def test_an_option_that_a_later_config_sets_again_is_refused(small_config, capsys):
    """Options apply in order: ``--trainer.max_steps=3 --config configs/rgra.yaml`` trained the file's 150
    updates without a word, and ``--model.loss.beta=0.0`` before the file was reported as a preset
    mistake. An option that the later files leave alone stays where it is."""
    base, grpo = ROOT / "configs" / "rgra.yaml", ROOT / "configs" / "loss" / "grpo.yaml"
    assert parser_error(["--trainer.max_steps=3", "--config", str(base)], capsys) == (
        f"error: --trainer.max_steps comes before --config {base}, which sets trainer.max_steps again "
        f"({base}:8): options apply in the order given, so put --trainer.max_steps after the config files"
    )
    assert parser_error(["--model.loss.beta=0.0", "--config", str(base)], capsys).startswith(
        f"error: --model.loss.beta comes before --config {base}, which sets model.loss.beta again ({base}:"
    )
    cli = main(["--config", str(base), "--trainer.max_steps=3", "--config", str(grpo)], run=False)
    assert cli.trainer.max_steps == 3 and cli.model.loss_config.policy_term == "clipped_ratio"
    # given again after the file too: the last value wins, as meant
    again = ["--trainer.max_steps=3", "--config", str(base), "--trainer.max_steps=4"]
    assert main(again, run=False).trainer.max_steps == 4


@pytest.mark.parametrize("option", ["--optimizer=torch.optim.SGD", "--lr_scheduler.class_path=x"])
def test_lightnings_optimizer_options_are_refused(small_config, tmp_path, capsys, option):
    """The module builds and steps its own AdamW and schedule: ``--optimizer`` crashed the first update
    (a traceback) and ``--lr_scheduler`` went unused without a word."""
    key = option.removeprefix("--").split(".")[0].split("=")[0]
    advice = (
        "is not an option here: the policy is trained with AdamW, set by model.learning_rate, "
        "model.weight_decay, model.warmup_steps and model.lr_schedule"
    )
    config = str(small_config("rgra"))
    assert parser_error(["--config", config, option], capsys) == f"error: --{key} {advice}"
    in_file = tmp_path / "with-optimizer.yaml"
    in_file.write_text(f"{key}:\n  class_path: torch.optim.SGD\n")
    assert parser_error(["--config", config, "--config", str(in_file)], capsys) == (
        f"error: {in_file}: {key} {advice}"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["fit", "configs/rgra.yaml"],
            "configs/rgra.yaml: a config file is given with --config (rgra fit --config configs/rgra.yaml)",
        ),
        (
            ["validate", "--config", "configs/rgra.yaml", "configs/loss/grpo.yaml", "--data.limit", "4"],
            "configs/loss/grpo.yaml: a config file is given with --config (rgra validate --config "
            "configs/rgra.yaml --config configs/loss/grpo.yaml --data.limit 4)",
        ),
        (
            ["fit", "--print_config", "a.yml", "--seed_everything", "-1", "b.yaml"],
            "a.yml: a config file is given with --config (rgra fit --print_config --config a.yml "
            "--seed_everything -1 --config b.yaml)",
        ),
    ],
)
def test_a_config_file_given_without_config_says_to_give_it_with_config(args, message, capsys):
    """The parser's report was two lines, a ``tip:`` and ``error: unrecognized arguments: FILE``."""
    assert one_line_error(args, capsys) == f"error: {message}"


def test_an_argument_that_is_an_options_value_or_comes_with_help_is_no_bare_config_file():
    from rgra_lightning.cli import refuse_bare_config_files

    refuse_bare_config_files(
        ["fit", "--trainer.logger", "logger.yaml", "--config=a.yaml", "--help", "b.yaml"]
    )
    refuse_bare_config_files(["fit", "--config", "a.yaml", "--data.path", "train.json"])


@pytest.mark.parametrize("given", [["--config"], ["-c"], []])
def test_a_directory_given_as_config_is_one_line(given, tmp_path, capsys):
    """The parser's report was ``Parser key "config": Path is not a file: ...`` under a ``tip:``."""
    args = ["fit", *given, str(tmp_path)] if given else ["fit", f"--config={tmp_path}"]
    assert one_line_error(args, capsys) == f"error: --config {tmp_path} is a directory: give a YAML file"


def test_a_key_given_twice_in_one_mapping_names_the_file_and_both_lines(small_config, tmp_path, capsys):
    """YAML keeps the last value without a word: this config trained 4 updates."""
    preset = tmp_path / "preset.yaml"
    preset.write_text("trainer:\n  max_steps: 3\n  # more steps\n  max_steps: 4\n")
    args = ["fit", "--config", str(small_config("rgra")), "--config", str(preset)]
    assert one_line_error(args, capsys) == (
        f"error: {preset}:4: key 'max_steps' given twice in one mapping (first at line 2)"
    )


class AnnotatedElsewhere:
    """A user's module whose annotation names a type imported under ``TYPE_CHECKING`` only."""

    def __init__(self, helper: "NotImportedHere" = None) -> None:  # noqa: F821
        self.helper = helper


def test_option_values_of_a_class_whose_annotations_do_not_resolve_are_left_to_it():
    """``check_option_values`` builds the model's dataclass options before loading; a class whose type hints
    cannot be resolved must not crash the CLI there (NameError), and RLModule's are still checked."""
    user = Namespace(class_path=f"{__name__}.AnnotatedElsewhere", init_args=Namespace(helper=None))
    check_option_values(user)  # nothing to check, nothing raised
    loss = Namespace(beta=-1.0)
    with pytest.raises(ConfigError, match="model.loss.beta must be >= 0, got -1.0"):
        check_option_values(Namespace(class_path="rgra_lightning.RLModule", init_args=Namespace(loss=loss)))


def test_a_verifiers_option_is_named_in_full_with_the_item_of_a_weighted_sum():
    """A verifier checked its options when made, inside the model's instantiation, naming itself
    (``MathVerifier timeout must be ...``): not the option as a config sets it, nor which component of a
    ``WeightedSum``. They are checked with the model's own options now, before anything is made."""
    components = [
        Namespace(class_path="rewards.FormatReward", init_args=Namespace(pattern="x", reward=0.1)),
        Namespace(class_path="rewards.MathVerifier", init_args=Namespace(timeout=0.0)),
    ]
    verifier = Namespace(
        class_path="rewards.WeightedSum", init_args=Namespace(verifiers=components, weights=[1.0, 1.0])
    )
    model = Namespace(class_path="rgra_lightning.RLModule", init_args=Namespace(verifier=verifier))
    message = "model.verifier.verifiers[1].timeout must be > 0 (seconds) and finite, got 0.0"
    with pytest.raises(ConfigError) as raised:
        check_option_values(model)
    assert str(raised.value) == message
    verifier.init_args.weights = [1.0]
    components[0].init_args.pattern = "("  # the components are checked first, as they are made first
    with pytest.raises(ConfigError, match=r"^model\.verifier\.verifiers\[0\]\.pattern must be a regular"):
        check_option_values(model)
    components[0].init_args.pattern = "x"
    with pytest.raises(ConfigError) as raised:
        check_option_values(model)
    assert str(raised.value) == message
    components[1].init_args.timeout = 1.0
    with pytest.raises(ConfigError) as raised:
        check_option_values(model)
    assert str(raised.value) == "model.verifier.weights must be a finite number per verifier (2), got [1.0]"


def test_a_verifiers_option_set_in_a_file_is_named_at_its_line(small_config, tmp_path, capsys):
    """Where the file sets it, as the parser's reports are; the command line names no file."""
    config, preset = small_config("rgra"), tmp_path / "preset.yaml"
    preset.write_text("model:\n  init_args:\n    verifier:\n      init_args: {timeout: 0}\n")
    assert one_line_error(["--config", str(config), "--config", str(preset)], capsys) == (
        f"error: {preset}:4: model.verifier.timeout must be > 0 (seconds) and finite, got 0.0"
    )
    preset.write_text(
        "model:\n  init_args:\n    verifier:\n      class_path: rewards.WeightedSum\n      init_args:\n"
        "        verifiers:\n          - class_path: rewards.MathVerifier\n"
        "          - class_path: rewards.MathVerifier\n            init_args:\n              workers: 0\n"
        "        weights: [1.0, 1.0]\n"
    )
    assert one_line_error(
        ["fit", "--config", str(config), "--config", str(preset), "--print_config"], capsys
    ) == (f"error: {preset}:10: model.verifier.verifiers[1].workers must be >= 1, got 0")
    assert one_line_error(["--config", str(config), "--model.verifier.timeout=0"], capsys) == (
        "error: model.verifier.timeout must be > 0 (seconds) and finite, got 0.0"
    )
    # A learned reward model's, before it loads
    preset.write_text(
        "model:\n  init_args:\n    verifier:\n      class_path: rewards.WeightedSum\n      init_args:\n"
        "        verifiers:\n          - class_path: rewards.MathVerifier\n"
        "          - class_path: rgra_lightning.RewardModelScorer\n"
        f"            init_args: {{model_path: {TINY_POLICY}, batch_size: 0}}\n"
        "        weights: [1.0, 0.2]\n"
    )
    assert one_line_error(["--config", str(config), "--config", str(preset)], capsys) == (
        f"error: {preset}:9: model.verifier.verifiers[1].batch_size must be >= 1, got 0"
    )


@pytest.mark.parametrize("printing", ["--print_config", "--print_config=skip_null"])
def test_print_config_refuses_what_the_run_would_refuse(printing, capsys):
    """--print_config printed a config with sampling.top_p: 0 as if it would run; the run then stopped on
    it. Now it stops on it too, in the same line, and a good config still prints."""
    config = str(ROOT / "configs" / "rgra.yaml")
    assert one_line_error(["fit", "--config", config, "--model.sampling.top_p=0", printing], capsys) == (
        "error: model.sampling.top_p must be in (0, 1], got 0.0"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, printing])
    assert exit_info.value.code in (0, None) and "top_p: 1.0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv0", "prog"),
    [("/src/rgra_lightning/__main__.py", "python -m rgra_lightning"), ("/venv/bin/rgra", "rgra")],
)
def test_usage_lines_name_the_program_as_it_was_started(argv0, prog, capsys, monkeypatch):
    """``python -m rgra_lightning fit --model.help ...`` printed ``usage: __main__.py ...``."""
    monkeypatch.setattr(sys, "argv", [argv0])
    for args in (["fit", "--help"], ["fit", "--model.help", "rgra_lightning.RLModule"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_testing_on_a_local_copy_that_is_not_there_is_refused_before_any_model_loads(small_config, capsys):
    config = str(small_config("rgra", data_module="DatasetDataModule"))
    args = ["test", "--config", config, "--data.preset=amc23", "--data.source=no-such-dir"]
    args.append("--model.model_path=no-such-owner/no-such-model")
    assert one_line_error(args, capsys) == "error: data.source 'no-such-dir': no such file or directory"


def test_the_projects_warnings_are_one_line_others_keep_their_place(small_config):
    """Ours printed as ``/path/rgra_lightning/data/base.py:249: data.limit=4: ...``: Lightning formats
    every warning from a path holding "lightning" so, and the path read like a crash."""
    main(["--config", str(small_config("rgra"))], run=False)
    assert warnings.formatwarning is cli.format_warning
    for own in (base.__file__, rewards.verifiers.__file__):
        assert warnings.formatwarning("data.limit=4: evaluating", UserWarning, own, 249) == (
            "warning: data.limit=4: evaluating\n"
        )
    other = warnings.formatwarning("deprecated", FutureWarning, torch.__file__, 7)
    assert other.startswith(f"{torch.__file__}:7: FutureWarning: deprecated")


MODEL_PARALLEL = "lightning.pytorch.strategies.ModelParallelStrategy"


STRATEGIES = {"ddp": "ddp", MODEL_PARALLEL: json.dumps({"class_path": MODEL_PARALLEL, "init_args": {}})}


class InstantiateOnly(cli.RLCLI):
    """Parses a subcommand's arguments and builds its classes, then runs nothing."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


@pytest.mark.parametrize(
    "strategy, subcommand",
    [(MODEL_PARALLEL, "fit"), (MODEL_PARALLEL, "validate"), ("ddp", "fit"), (MODEL_PARALLEL, None)],
)
def test_an_rl_module_to_be_sharded_is_built_without_its_weights(
    small_config, strategy, subcommand, tmp_path
):
    """Under FSDP2 rank 0 reads the weights as ``distributed.shard_model`` shards them (tested there), so
    every process of a subcommand builds the policy and the reward models on the meta device, without host
    memory for them; under DDP every process needs them whole, and without a subcommand (``rgra export``
    and ``rgra label`` build the module to load a checkpoint into it) nothing shards them."""
    from tests.reward_models.conftest import save_classifier, verifier_plus_reward_model

    verifier = verifier_plus_reward_model(save_classifier(tmp_path / "reward_model", num_labels=1))
    args = [
        "--config",
        str(small_config("rgra")),
        f"--trainer.strategy={STRATEGIES[strategy]}",
        "--trainer.devices=2",
        f"--model.verifier={json.dumps(verifier)}",
    ]
    if subcommand is None:
        model = main(args, run=False).model
    else:
        model = main([subcommand, *args], cli_class=InstantiateOnly).model
    reward_model = model.reward_models[0].model
    tensors = [*model.policy.parameters(), *model.policy.buffers(), *reward_model.parameters()]
    assert {tensor.is_meta for tensor in tensors} == {strategy == MODEL_PARALLEL and subcommand is not None}
    assert not any(parameter.is_meta for parameter in load_causal_lm(str(TINY_POLICY)).parameters())


def test_only_rl_modules_under_model_parallel_strategy_are_built_empty():
    rl, reward = "rgra_lightning.RLModule", "rgra_lightning.RewardModelModule"
    strategy = Namespace(class_path=MODEL_PARALLEL, init_args=Namespace(data_parallel_size=2))
    cases = [
        (rl, strategy, True),
        (rl, ModelParallelStrategy(), True),  # given from Python, not as a class_path
        (rl, "ddp", False),
        (rl, "auto", False),
        (reward, strategy, False),  # its module shards nothing (and Lightning refuses it unsharded)
    ]
    for model, strategy_value, expected in cases:
        config = Namespace(model=Namespace(class_path=model), trainer=Namespace(strategy=strategy_value))
        assert cli.shards_rl_models(config) is expected, (model, strategy_value)


def test_a_sharded_checkpoint_evaluated_without_fsdp2_says_how_to_read_it(
    small_config, tmp_path, capsys, monkeypatch
):
    """Only ``ModelParallelStrategy`` reads a sharded checkpoint (Lightning's other strategies raised
    IsADirectoryError in a traceback), which is said before the model loads; ``rgra export checkpoint``
    reads one in any process (tested with a real one in tests/test_distributed.py)."""

    def not_before_the_refusal(*args: object) -> None:
        raise AssertionError("the model was loaded before the checkpoint was refused")

    monkeypatch.setattr(module_file, "load_policy", not_before_the_refusal)
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()  # what FSDP2 writes: shards, their index and Lightning's meta.pt
    for name in ("meta.pt", ".metadata", "__0_0.distcp"):
        (sharded / name).write_bytes(b"")
    error = one_line_error(
        ["validate", "--config", str(small_config("rgra")), "--ckpt_path", str(sharded)], capsys
    )
    assert error == (
        f"error: --ckpt_path {sharded} is a sharded (FSDP2) checkpoint directory, which only "
        "ModelParallelStrategy reads: run with the run's FSDP2 strategy, or export its policy (rgra export "
        f"checkpoint --config CONFIG --ckpt-path {sharded} --output DIR) and give that as model.model_path"
    )
