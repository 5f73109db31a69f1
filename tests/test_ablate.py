"""The ablation runner: config composition, study-config errors, and a tiny real study that resumes."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from rgra_lightning import ablate
from rgra_lightning.ablation_summary import event_files, read_curve, summarise
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from tests.conftest import ROOT


@pytest.fixture
def study_file(tmp_path, small_config, monkeypatch):
    """Write a study config over a few-step base config; ``make(**fields)`` returns its path."""
    monkeypatch.chdir(ROOT)  # presets are looked up under configs/loss/

    def make(**fields: object):
        study = {
            "name": "tiny",
            "base_config": str(small_config("rgra")),
            "presets": ["rgra", "raft"],
            "seeds": [0, 1],
            "results_dir": str(tmp_path / "results"),
            "overrides": {
                "trainer": {"max_steps": 4, "val_check_interval": 2},  # 2 rollout batches, then validation
                "model": {"init_args": {"num_iterations": 2}},
            },
        } | fields
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        return path

    return make


def composed(study: ablate.Study, preset: str, seed: int) -> dict:
    """The configuration a run's ``rgra fit`` command composes, as ``--print_config`` prints it."""
    run_dir = study.run_dir(preset, seed)
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(ablate.run_config(study, preset, seed)))
    command = ablate.run_command(study, preset, seed)
    bases = [f"--config={base}" for base in study.base_configs]
    assert command[: 4 + len(bases)] == [sys.executable, "-m", "rgra_lightning", "fit", *bases]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*command[3:], "--print_config"])
    return yaml.safe_load(out.getvalue())


def test_a_run_composes_the_base_the_preset_and_the_study_overrides(study_file):
    study = ablate.load_study(study_file())
    config = composed(study, "raft", 1)
    base = yaml.safe_load(study.base_configs[0].read_text())
    raft = yaml.safe_load((ROOT / "configs" / "loss" / "raft.yaml").read_text())["model"]["init_args"]["loss"]
    loss = config["model"]["init_args"]["loss"]
    assert {key: loss[key] for key in raft if key != "advantage"} == {
        k: v for k, v in raft.items() if k != "advantage"
    }
    assert {key: loss["advantage"][key] for key in raft["advantage"]} == raft["advantage"]
    assert config["model"]["init_args"]["model_path"] == base["model"]["init_args"]["model_path"]
    assert config["model"]["init_args"]["num_iterations"] == 2  # study override, after the preset
    assert config["model"]["init_args"]["sampling"]["max_new_tokens"] == 28  # the base's, kept
    assert config["trainer"]["max_steps"] == 4 and config["seed_everything"] == 1
    run_dir = study.results_dir / "tiny" / "runs" / "raft" / "seed1"
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(run_dir)
    dirpaths = [c["init_args"].get("dirpath") for c in config["trainer"]["callbacks"]]
    assert str(run_dir / "checkpoints") in dirpaths


def test_study_overrides_apply_on_top_of_the_preset_loss(study_file):
    overrides = {"model": {"init_args": {"loss": {"beta": 0.005}}}}
    config = composed(ablate.load_study(study_file(overrides=overrides)), "grpo", 0)
    loss = config["model"]["init_args"]["loss"]
    assert loss["beta"] == 0.005 and loss["policy_term"] == "clipped_ratio"


def test_a_presets_own_callbacks_are_kept_with_the_runs_directories(study_file, tmp_path):
    """A preset file that sets ``trainer.callbacks`` (checkpoints every update, no sample logger): the
    run's ``run.yaml``, composed last, gave the base's list, which replaced the preset's."""
    base = yaml.safe_load((ROOT / "configs" / "rgra.yaml").read_text())["trainer"]["callbacks"]
    callbacks = [
        {
            "class_path": "rgra_lightning.checkpointing.PeriodicModelCheckpoint",
            "init_args": {"save_last": True},
        },
        *(callback for callback in base if callback["class_path"].endswith(("ExactResume", "HuggingFace"))),
    ]
    preset = tmp_path / "every-update.yaml"
    preset.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    study = ablate.load_study(study_file(presets=[str(preset)]))
    config = composed(study, str(preset), 0)
    run_dir = study.run_dir(str(preset), 0)
    assert [callback["class_path"] for callback in config["trainer"]["callbacks"]] == [
        "rgra_lightning.checkpointing.PeriodicModelCheckpoint",
        "rgra_lightning.checkpointing.ExactResume",
        "rgra_lightning.callbacks.ExportHuggingFace",
    ]
    checkpoint, _, export = config["trainer"]["callbacks"]
    assert checkpoint["init_args"]["dirpath"] == str(run_dir / "checkpoints")
    assert checkpoint["init_args"]["every_n_train_steps"] is None  # the base's 2 is not merged in
    assert export["init_args"]["output_dir"] == str(run_dir / "hf_model")


def test_a_base_of_several_configs_is_composed_in_order(study_file, small_config, tmp_path):
    """``base_config`` as a list (a paper config and a model preset over it): each run's command gives the
    files in order, and what the later one sets wins, in the run's config and in its checkpoint callbacks."""
    preset = tmp_path / "longer.yaml"
    preset.write_text(yaml.safe_dump({"model": {"init_args": {"sampling": {"max_new_tokens": 12}}}}))
    study = ablate.load_study(study_file(base_config=[str(small_config("rgra")), str(preset)]))
    assert study.base_configs == [small_config("rgra"), preset]
    config = composed(study, "rgra", 0)
    assert config["model"]["init_args"]["sampling"]["max_new_tokens"] == 12
    assert config["model"]["init_args"]["sampling"]["num_generations"] == 4  # the first base's, kept


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"presets": ["no-such-preset"]}, "preset 'no-such-preset' does not exist"),
        # the reference defaults to the first preset: the typo is named, not the reference
        (
            {"presets": ["rgar"]},
            "preset 'rgar' does not exist (configs/loss/rgar.yaml): did you mean 'rgra'? presets: dr-grpo, "
            "grpo, grpo-noclip,",
        ),
        ({"presets": ["rgra", "mine.yaml"]}, "preset 'mine.yaml' does not exist"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": 3}, "seeds must be a non-empty list of integers, got 3"),
        ({"seeds": [True]}, "seeds must be a non-empty list of integers, got [True]"),  # YAML's true
        ({"seeds": [0, "1"]}, "seeds must be a non-empty list of integers, got [0, '1']"),
        # seed_everything's range: every fit would fail after the study's checks passed
        ({"seeds": [0, 2**32]}, "seed 4294967296 is out of range: seeds must be from 0 to 4294967295"),
        ({"seeds": [-1]}, "seed -1 is out of range: seeds must be from 0 to 4294967295 (2**32 - 1)"),
        (
            {"seeds": [0, 1, 0]},
            "seed 0 is listed twice: remove one (its run would count twice in the summary)",
        ),
        (
            {"overrides": ["trainer", 1]},
            "overrides must be a mapping of config keys, as in a fit config (trainer: {max_steps: 80}), "
            "got a list",
        ),
        ({"base_config": "missing.yaml"}, "base_config missing.yaml does not exist"),
        ({"base_config": []}, "base_config must be a config path or a non-empty list"),
        ({"sedes": [0]}, "unknown keys ['sedes']"),
        ({"results_dir": ["results"]}, "results_dir must be a directory's path"),
        ({"reference": "grpo"}, "reference 'grpo' is not one of the presets"),
        ({"presets": ["rgra", "raft", "rgra"]}, "preset 'rgra' is listed twice: remove one"),
    ],
)
def test_bad_study_configs_fail_with_a_clear_message(study_file, fields, message, capsys):
    """One line naming the study file and the field, not a traceback."""
    path = study_file(**fields)
    with pytest.raises(ConfigError, match=re.escape(message)):
        ablate.load_study(path)
    assert ablate.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and len(err.splitlines()) == 1


def test_presets_whose_files_share_a_name_are_refused(study_file, tmp_path, capsys):
    """``rgra`` and ``alt/rgra.yaml`` would share ``runs/rgra/``: the second's runs would be skipped as done
    and the summary would give it the first one's results."""
    alt = tmp_path / "alt" / "rgra.yaml"
    alt.parent.mkdir()
    alt.write_text(yaml.safe_dump({"model": {"init_args": {"learning_rate": 3e-5}}}))
    path = study_file(presets=["rgra", str(alt)])
    assert ablate.main(["--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: presets 'rgra' and '{alt}' would share the run directory runs/rgra/ (named after "
        "the preset file's name, without its folder): rename one of the files\n"
    )


def test_a_study_file_that_is_not_yaml_is_named_at_its_line(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text("name: tiny\npresets: [rgra, grpo\nseeds: [0]\n")
    assert ablate.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:3:") and "expected ',' or ']'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_results_dir_that_is_a_file_is_refused(study_file, tmp_path, capsys, below):
    """``results_dir`` an existing file, or a folder below one: one line, not NotADirectoryError."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    path = study_file(results_dir=str(tmp_path / "notes.txt" / below))
    assert ablate.main(["--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: results_dir {tmp_path / 'notes.txt' / below}: {tmp_path / 'notes.txt'} is a file, "
        "not a directory; set results_dir to a directory (it is created if missing)\n"
    )


@pytest.fixture
def fake_fits(monkeypatch):
    """Runs whose fit returns at once with exit status 0: the commands, in order."""
    commands = []
    monkeypatch.setattr(ablate, "fit_reporting", lambda command, *_: commands.append(command) or 0)
    return commands


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("overrides", "trainer.max_steps 4 -> 5"),
        ("base_config", "model.init_args.sampling.max_new_tokens 28 -> 20"),
        ("preset", "model.init_args.loss.beta 0.0 -> 0.01"),
    ],
)
def test_finished_runs_of_other_settings_stop_the_study(
    study_file, tmp_path, fake_fits, capsys, change, expected
):
    """A study changed after its runs finished (its overrides, its base config or a preset file), rerun
    with the same name: nothing is run or summarised with the old runs, and each preset with such runs is
    one line naming the run directories and the changed keys. Unchanged, the runs are skipped."""
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump({"model": {"init_args": {"loss": {"beta": 0.0}}}}))
    path = study_file(presets=[str(preset)], seeds=[0, 1])
    assert ablate.main(["--config", str(path)]) == 0 and len(fake_fits) == 2
    study = ablate.load_study(path)
    runs = [study.run_dir(str(preset), seed) for seed in (0, 1)]
    config = json.loads((runs[1] / "done.json").read_text())["config"]  # what the run was run with
    assert config["trainer"]["max_steps"] == 4 and config["seed_everything"] == 1
    assert config["model"]["init_args"]["loss"]["beta"] == 0.0
    assert config["model"]["init_args"]["model_path"] == str(ROOT / "models" / "arith-tiny")
    assert ablate.main(["--config", str(path)]) == 0 and len(fake_fits) == 2
    assert capsys.readouterr().out.count("done already, skipped") == 2

    if change == "overrides":
        overrides = {
            "trainer": {"max_steps": 5, "val_check_interval": 2},
            "model": {"init_args": {"num_iterations": 2}},
        }
        path = study_file(presets=[str(preset)], seeds=[0, 1], overrides=overrides)
    elif change == "base_config":
        base = yaml.safe_load(study.base_configs[0].read_text())
        base["model"]["init_args"]["sampling"]["max_new_tokens"] = 20
        study.base_configs[0].write_text(yaml.safe_dump(base))
    else:
        preset.write_text(yaml.safe_dump({"model": {"init_args": {"loss": {"beta": 0.01}}}}))
    summary = (study.root / "summary.md").read_text()
    for argv in (["--config", str(path)], ["--config", str(path), "--summary_only"]):
        assert ablate.main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: {runs[0]} was run with other settings than the study gives it now: {expected} "
            f"(so were {runs[1]}); use a new study name, or delete {runs[0]} {runs[1]} to run them again"
        ]
    assert len(fake_fits) == 2 and (study.root / "summary.md").read_text() == summary
    for run in runs:
        shutil.rmtree(run)
    assert ablate.main(["--config", str(path)]) == 0 and len(fake_fits) == 4


def test_an_unfinished_run_to_resume_is_compared_by_its_run_yaml(study_file, fake_fits, capsys):
    """A run with a checkpoint to resume from, started with other overrides: refused, its run.yaml kept as
    it was. One that stopped before its first checkpoint starts afresh with the study's settings."""
    path = study_file(presets=["rgra"], seeds=[0, 1])
    study = ablate.load_study(path)
    for seed in (0, 1):
        study.run_dir("rgra", seed).mkdir(parents=True)
        run_yaml = yaml.safe_dump(ablate.run_config(study, "rgra", seed))
        (study.run_dir("rgra", seed) / "run.yaml").write_text(run_yaml)
    (study.run_dir("rgra", 0) / "checkpoints").mkdir()
    (study.run_dir("rgra", 0) / "checkpoints" / "last.ckpt").write_bytes(b"")
    overrides = {
        "trainer": {"max_steps": 4, "val_check_interval": 2},
        "model": {"init_args": {"num_iterations": 1}},
    }
    path = study_file(presets=["rgra"], seeds=[0, 1], overrides=overrides)
    assert ablate.main(["--config", str(path)]) == 2
    run = study.run_dir("rgra", 0)
    assert capsys.readouterr().err.splitlines() == [
        f"error: {run} was started with other settings than the study gives it now: "
        f"model.init_args.num_iterations 2 -> 1; use a new study name, or delete {run} to run it again"
    ]
    assert yaml.safe_load((run / "run.yaml").read_text()) == ablate.run_config(study, "rgra", 0)
    assert not fake_fits
    (run / "checkpoints" / "last.ckpt").unlink()
    assert ablate.main(["--config", str(path)]) == 0 and len(fake_fits) == 2


def test_an_unfinished_run_is_compared_by_the_config_its_fit_started_with(study_file, fake_fits, capsys):
    """A change to the base config after a run started, before it finished: its run.yaml composed over
    today's base would agree with the study, so the resume would train on under the new settings; the
    config the fit was started with (``started.json``) shows the change."""
    path = study_file(presets=["rgra"], seeds=[0])
    study = ablate.load_study(path)
    run = study.run_dir("rgra", 0)
    assert ablate.run_one(study, "rgra", 0)["returncode"] == 0 and len(fake_fits) == 1
    (run / "done.json").unlink()  # as if it had been stopped after a checkpoint
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    base = yaml.safe_load(study.base_configs[0].read_text())
    base["model"]["init_args"]["sampling"]["max_new_tokens"] = 20
    study.base_configs[0].write_text(yaml.safe_dump(base))
    assert ablate.main(["--config", str(path)]) == 2 and len(fake_fits) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {run} was started with other settings than the study gives it now: ")
    assert "model.init_args.sampling.max_new_tokens" in line and "-> 20" in line


def test_finished_runs_that_record_no_config_are_compared_by_their_run_yaml(study_file, fake_fits, capsys):
    """``done.json`` written before the config was recorded: one warning line for the preset, and its
    run.yaml, where there is one, compared with the study's overrides."""
    path = study_file(presets=["rgra"], seeds=[0, 1])
    study = ablate.load_study(path)
    for seed in (0, 1):
        study.run_dir("rgra", seed).mkdir(parents=True)
        (study.run_dir("rgra", seed) / "done.json").write_text(json.dumps({"returncode": 0, "steps": 4}))
    run_yaml = yaml.safe_dump(ablate.run_config(study, "rgra", 0))
    (study.run_dir("rgra", 0) / "run.yaml").write_text(run_yaml)
    warning = (
        f"warning: {study.run_dir('rgra', 0)} (and 1 more of rgra): done.json records no config (written "
        "before rgra ablate recorded them), so only its run.yaml (the overrides then), if any, was compared "
        "with the study, not the base config or the preset; delete the run directory to run it again"
    )
    assert ablate.main(["--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [warning] and out.count("done already, skipped") == 2 and not fake_fits
    overrides = {
        "trainer": {"max_steps": 5, "val_check_interval": 2},
        "model": {"init_args": {"num_iterations": 2}},
    }
    assert (
        ablate.main(["--config", str(study_file(presets=["rgra"], seeds=[0, 1], overrides=overrides))]) == 2
    )
    run = study.run_dir("rgra", 0)
    assert capsys.readouterr().err.splitlines() == [
        warning,
        f"error: {run} was run with other settings than the study gives it now: trainer.max_steps 4 -> 5; "
        f"use a new study name, or delete {run} to run it again",
    ]


def check_finished(study: ablate.Study, preset: str, seed: int) -> None:
    record = json.loads((study.run_dir(preset, seed) / "done.json").read_text())
    assert record["returncode"] == 0 and record["steps"] == 4 and record["steps_per_s"] > 0
    curve = read_curve(study.run_dir(preset, seed))
    assert [step for step, _ in curve] == [0, 4]  # the initial policy; after 2 batches of 2 updates
    assert record["final_val_accuracy"] == curve[-1][1]


def test_one_run_study_finishes_then_is_skipped(study_file, capsys, monkeypatch):
    monkeypatch.setattr(ablate, "PROGRESS_EVERY_S", 0.5)
    path = study_file(presets=["rgra"], seeds=[3])
    assert ablate.main(["--config", str(path)]) == 0
    study = ablate.load_study(path)
    out = capsys.readouterr().out
    assert "[1/1] rgra seed 3: running" in out
    # the running fit's progress, every half second here: nothing logged yet, or the latest update
    assert re.search(r"\[1/1\] rgra seed 3: (no update logged yet|update [1-4]/4, train/reward \d)", out), out
    check_finished(study, "rgra", 3)
    summary = (study.root / "summary.md").read_text()
    assert "| rgra | 1/1 |" in summary and "![validation accuracy](val_accuracy.png)" in summary
    assert (study.root / "val_accuracy.png").stat().st_size > 0
    assert ablate.main(["--config", str(path)]) == 0  # the config done.json records is the study's
    assert "[1/1] rgra seed 3: done already, skipped" in capsys.readouterr().out
    overrides = {
        "trainer": {"max_steps": 4, "val_check_interval": 4},
        "model": {"init_args": {"num_iterations": 2}},
    }
    assert ablate.main(["--config", str(study_file(presets=["rgra"], seeds=[3], overrides=overrides))]) == 2
    assert "trainer.val_check_interval 2 -> 4; use a new study name" in capsys.readouterr().err


@pytest.mark.slow
def test_two_presets_two_seeds_resume_after_a_lost_run(study_file, capsys):
    path = study_file()
    assert ablate.main(["--config", str(path)]) == 0
    study = ablate.load_study(path)
    out = capsys.readouterr().out
    assert "[1/4] rgra seed 0: running" in out and "[4/4] raft seed 1: running" in out
    for preset in ("rgra", "raft"):
        for seed in (0, 1):
            check_finished(study, preset, seed)
    summary = (study.root / "summary.md").read_text()
    assert "| rgra | 2/2 |" in summary and "| raft | 2/2 |" in summary
    assert "Difference to `rgra`" in summary

    (study.run_dir("raft", 1) / "done.json").unlink()
    assert ablate.main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("done already, skipped") == 3
    assert "[4/4] raft seed 1: resuming from update 4" in out  # its last checkpoint, at the end


def test_failed_run_is_reported_and_not_marked_done(study_file, capsys):
    """A refused config fails its first run with the reason; the preset's other seeds are not run."""
    overrides = {"model": {"init_args": {"learning_rate": 0}}}
    path = study_file(presets=["rgra"], seeds=[0, 1], overrides=overrides)
    assert ablate.main(["--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[1/2] rgra seed 0: FAILED (exit 2: config refused)" in out
    assert "model.learning_rate must be > 0, got 0" in out
    assert "[2/2] rgra seed 1: not run, as rgra's config was refused above" in out
    assert "(2 run(s) failed; rerun to retry them)" in out
    study = ablate.load_study(path)
    assert not (study.run_dir("rgra", 0) / "done.json").exists()
    assert not study.run_dir("rgra", 1).exists()


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (3, "training diverged"),  # NaN/inf training depends on the seed
        (4, "this run's directory or checkpoint refused"),  # that run's own state: it was exit 2
        (-9, "killed by SIGKILL"),  # subprocess's status of a fit the out-of-memory killer ended
    ],
)
def test_a_failure_of_one_run_alone_does_not_skip_the_presets_other_seeds(
    study_file, monkeypatch, capsys, status, meaning
):
    """Unlike a refused config (2), which every seed would meet, a diverged run (3) or one refused for its
    own directory or checkpoint (4: another process holds it) says nothing of the other seeds."""
    statuses, commands = iter([status, 0]), []
    monkeypatch.setattr(
        ablate, "fit_reporting", lambda command, *_: commands.append(command) or next(statuses)
    )
    path = study_file(presets=["rgra"], seeds=[0, 1])
    assert ablate.main(["--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"[1/2] rgra seed 0: FAILED (exit {status}: {meaning})" in out
    assert "[2/2] rgra seed 1: running" in out and len(commands) == 2
    assert "(1 run(s) failed; rerun to retry them)" in out


def test_a_missing_required_option_stops_the_study_before_any_run_in_one_line(study_file, tmp_path, capsys):
    """A preset switching to a class with a required option it does not give: ``--print_config`` printed the
    config before checking required options, so the run failed when its turn came, hours in. The parser's
    report spans many lines: the study's line holds all of them (not ``error: Parser key "model":``)."""
    preset = tmp_path / "weighted.yaml"
    verifier = {
        "class_path": "rewards.WeightedSum",
        "init_args": {"verifiers": [{"class_path": "rewards.MathVerifier"}]},
    }
    preset.write_text(yaml.safe_dump({"model": {"init_args": {"verifier": verifier}}}))
    path = study_file(presets=["rgra", str(preset)])
    assert ablate.main(["--config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith('error: Parser key "model": ')
    assert "'rewards.WeightedSum': the following arguments are required: weights" in lines[0]
    assert "Given value" not in lines[0] and lines[0].endswith(f"(preset {preset})")
    assert lines[1] == "nothing was run: fix the configs above and run the study again"
    assert not list(ablate.load_study(path).root.rglob("log.txt"))


def test_an_option_value_the_model_refuses_stops_the_study_before_any_run(study_file, tmp_path, capsys):
    """The parser checks types only: a preset giving RAFT's selection over GRPO's baseline, a negative beta
    or top_p 0 passed the study's check and failed when its turn came, after loading its models. The
    model's option dataclasses are now built in that check."""
    preset = tmp_path / "raft-with-baseline.yaml"
    loss = {"advantage": {"selection": "best_of_group"}, "beta": 0.0}
    preset.write_text(yaml.safe_dump({"model": {"init_args": {"loss": loss}}}))
    path = study_file(presets=["rgra", str(preset)])
    assert ablate.main(["--config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        "error: model.loss.advantage.selection='best_of_group' weighs the best completion 1 whatever the "
        "rewards' baseline and scale: set baseline='group_mean', scale='group_std' back to baseline='none', "
        f"scale='none', sign_filter='all' (preset {preset})"
    )
    assert lines[1] == "nothing was run: fix the configs above and run the study again"
    assert not list(ablate.load_study(path).root.rglob("log.txt"))


def test_configs_the_parser_refuses_stop_the_study_before_any_run_naming_the_study_file_line(
    study_file, tmp_path, capsys
):
    """A misspelled override fails every preset's config the same way: one line, at the study file's line
    (not in the run.yaml written from it); a preset file's mistake at that file's line."""
    preset = tmp_path / "mine.yaml"
    preset.write_text("model:\n  init_args:\n    loss:\n      bta: 0.1\n")
    overrides = {"model": {"init_args": {"learning_rat": 0.1}}}
    path = study_file(presets=["rgra", "raft", str(preset)], overrides=overrides)
    study = ablate.load_study(path)
    earlier = study.run_dir("raft", study.seeds[0]) / "run.yaml"  # an earlier study's, kept as it was
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"earlier: study\r\n")  # kept byte for byte, its line ends too
    assert ablate.main(["--config", str(path)]) == 2
    assert [p for p in study.root.rglob("*") if p.is_file()] == [earlier]
    assert (
        earlier.read_bytes() == b"earlier: study\r\n" and not study.run_dir("rgra", study.seeds[0]).exists()
    )
    lines = capsys.readouterr().err.splitlines()
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "learning_rat:" in text)
    assert lines[0].startswith(f"error: {path}:{line}: unknown option 'learning_rat' of model")
    assert lines[0].endswith("(presets rgra, raft)")
    assert lines[1].startswith(f"error: {preset}:4: unknown option 'loss.bta' of model")
    assert lines[1].endswith(f"(preset {preset})")
    assert lines[2:] == ["nothing was run: fix the configs above and run the study again"]
    assert not list(ablate.load_study(path).root.rglob("log.txt"))


def test_a_runs_recorded_steps_are_those_of_its_composed_config(study_file, tmp_path, monkeypatch):
    """A preset's ``max_steps`` counts in the record (and its steps per second), as in the run's fit."""
    preset = tmp_path / "long.yaml"
    preset.write_text(yaml.safe_dump({"trainer": {"max_steps": 7}}))
    study = ablate.load_study(study_file(presets=[str(preset)], overrides={}))
    fits = []
    monkeypatch.setattr(ablate, "fit_reporting", lambda command, *_: fits.append(command) or 0)
    record = ablate.run_one(study, str(preset), 0)
    assert len(fits) == 1 and record["steps"] == 7 and record["steps_per_s"] > 0


def write_validations(run_dir, accuracies: dict[int, float]) -> None:
    """A TensorBoard event file in the run's ``tensorboard/``, as a fit or a validate writes one."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(run_dir / "tensorboard") as writer:
        for step, accuracy in accuracies.items():
            writer.add_scalar("val/accuracy", accuracy, step)


def test_the_summary_reads_only_the_event_files_of_the_runs_fit(study_file, monkeypatch):
    """``rgra validate`` of a finished run with its run.yaml writes another event file beside the fit's (the
    logger's version is fixed): its value at the fit's last step must not replace the fit's. The untrained
    step-0 validation is no "best", in done.json as in the summary."""
    study = ablate.load_study(study_file(presets=["rgra"], seeds=[0]))
    run_dir = study.run_dir("rgra", 0)

    def fit(*_: object) -> int:
        write_validations(run_dir, {0: 0.9, 2: 0.5, 4: 0.75})
        return 0

    monkeypatch.setattr(ablate, "fit_reporting", fit)
    record = ablate.run_one(study, "rgra", 0)
    assert (record["final_val_accuracy"], record["best_val_accuracy"]) == (0.75, 0.75)
    assert json.loads((run_dir / "done.json").read_text())["event_files"] == record["event_files"]
    time.sleep(0.01)  # a later wall time: the later write would win
    write_validations(run_dir, {4: 0.25})  # the validate
    # initial (step 0), final, best and mean; a single run's values without a std
    row = "| rgra | 1/1 | 0.900 | {} | {} | {} |"
    assert row.format("0.750", "0.750", "0.625") in summarise(study).read_text()

    done = json.loads((run_dir / "done.json").read_text())
    del done["event_files"]  # written before they were recorded: every file is read, as before
    (run_dir / "done.json").write_text(json.dumps(done))
    assert row.format("0.250", "0.500", "0.375") in summarise(study).read_text()


def test_a_run_started_afresh_sets_an_earlier_attempts_event_files_aside(study_file, monkeypatch, capsys):
    """An attempt that failed before its first checkpoint, with another config, logged a validation at a
    step the rerun does not reach again: done.json recorded its event file with the rerun's, and its point
    counted in the rerun's curve, mean and best. A resumed run keeps its files."""
    study = ablate.load_study(study_file(presets=["rgra"], seeds=[0]))
    run_dir = study.run_dir("rgra", 0)
    write_validations(run_dir, {0: 0.9, 2: 1.0})  # the failed attempt
    [old] = event_files(run_dir)
    monkeypatch.setattr(ablate, "fit_reporting", lambda *_: write_validations(run_dir, {0: 0.9, 4: 0.5}) or 0)
    record = ablate.run_one(study, "rgra", 0, "[1/1] rgra seed 0")
    [stale] = run_dir.glob("tensorboard.stale-*")
    assert [path.name for path in stale.iterdir()] == [old] and old not in record["event_files"]
    assert (record["final_val_accuracy"], record["best_val_accuracy"]) == (0.5, 0.5)
    assert capsys.readouterr().out == (
        f"[1/1] rgra seed 0: moved {run_dir / 'tensorboard'} to {stale}: an earlier attempt's, which saved "
        "no checkpoint to resume from; its points would count in this run's curve\n"
    )
    assert "| rgra | 1/1 | 0.900 | 0.500 | 0.500 | 0.500 |" in summarise(study).read_text()

    (run_dir / "done.json").unlink()
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "global_step": 4}, run_dir / "checkpoints" / "last.ckpt")
    files = event_files(run_dir)
    assert set(files) < set(ablate.run_one(study, "rgra", 0)["event_files"])  # resumed: the fit's, kept
    assert len(list(run_dir.glob("tensorboard.stale-*"))) == 1


def test_an_event_file_done_json_names_that_is_gone_is_left_out_with_a_warning(study_file, fake_fits, capsys):
    """A recorded event file deleted by hand: the summary, after the whole study or with --summary_only,
    ended in TensorBoard's NotFoundError traceback. Its run's other files still count."""
    path = study_file(presets=["rgra"], seeds=[0])
    study = ablate.load_study(path)
    run_dir = study.run_dir("rgra", 0)
    write_validations(run_dir, {0: 0.25})
    [kept] = event_files(run_dir)
    write_validations(run_dir, {4: 0.75})
    [gone] = set(event_files(run_dir)) - {kept}
    config = ablate.run_settings(study, "rgra", ablate.run_config(study, "rgra", 0))  # as the study's
    ablate.write_done(run_dir, {"event_files": [kept, gone], "config": config})
    (run_dir / "tensorboard" / gone).unlink()
    assert ablate.main(["--config", str(path), "--summary_only"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {run_dir / 'done.json'} names event files that no longer exist, left out of the run's "
        f"curve: {run_dir / 'tensorboard' / gone}"
    ]
    assert "| rgra | 1/1 | 0.250 | n/a | n/a | n/a |" in (study.root / "summary.md").read_text()


def test_the_steps_per_second_say_how_many_runs_they_are_of(study_file):
    """A resumed run has no steps/s (its wall time is its last attempt's): the mean over the others says
    how many it is of, as the other cells do, rather than read as every seed's."""
    study = ablate.load_study(study_file(presets=["rgra", "raft"], seeds=[0, 1, 2]))
    for preset, speeds in (("rgra", [1.0, None, 2.0]), ("raft", [1.0, 1.5, 2.0])):
        for seed, speed in enumerate(speeds):
            run_dir = study.run_dir(preset, seed)
            write_validations(run_dir, {0: 0.25, 4: 0.5})
            ablate.write_done(run_dir, {"event_files": event_files(run_dir), "steps_per_s": speed})
    summary = summarise(study).read_text()
    cells = "| 3/3 | 0.250 +- 0.000 | 0.500 +- 0.000 | 0.500 +- 0.000 | 0.500 +- 0.000 |"
    assert f"| rgra {cells} 1.50 (n=2) |" in summary and f"| raft {cells} 1.50 |" in summary
    assert "the mean over the runs not resumed" in summary


@pytest.mark.parametrize("summary_only", [False, True])
def test_a_ctrl_c_before_any_run_exits_130_without_a_traceback(study_file, monkeypatch, capsys, summary_only):
    """Ctrl-C during the checks before the first run (the parser's, seconds per preset) or while
    --summary_only reads the event files: exit status 130, as a Ctrl-C while a fit runs, not a traceback."""

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate, "summarise" if summary_only else "parser_refusals", interrupted)
    argv = ["--config", str(study_file(presets=["rgra"], seeds=[0]))]
    try:
        status = ablate.main(argv + ["--summary_only"] * summary_only)
    except KeyboardInterrupt:  # else it would stop the whole test session, not fail this test
        pytest.fail("the Ctrl-C came out of rgra ablate as a KeyboardInterrupt (a traceback)")
    assert status == 130 and capsys.readouterr() == ("", "")


def test_the_summary_says_how_many_runs_a_cell_has_and_what_best_is(study_file):
    """Presets with fewer finished runs than the study's seeds say so in each cell (a single run's
    ``+- 0.000`` read as three identical runs); a run whose done.json holds no record is not counted."""
    study = ablate.load_study(study_file(presets=["rgra", "raft", "grpo"], seeds=[0, 1, 2]))

    def finish(preset: str, seed: int, final: float) -> None:
        run_dir = study.run_dir(preset, seed)
        write_validations(run_dir, {0: 0.25, 4: final})
        ablate.write_done(run_dir, {"event_files": event_files(run_dir)})

    for seed, final in enumerate([0.5, 0.75, 1.0]):
        finish("rgra", seed, final)
        finish("raft", seed, final)
    finish("grpo", 0, 0.5)
    (study.run_dir("raft", 2) / "done.json").write_text('{"preset": "raft", "se')  # cut short
    summary = summarise(study).read_text()
    assert (
        "| rgra | 3/3 | 0.250 +- 0.000 | 0.750 +- 0.250 | 0.750 +- 0.250 | 0.750 +- 0.250 | n/a |" in summary
    )
    raft = "0.625 +- 0.177 (n=2)"  # 0.5 and 0.75
    assert f"| raft | 2/3 | 0.250 +- 0.000 (n=2) | {raft} | {raft} | {raft} | n/a |" in summary
    assert "| grpo | 1/3 | 0.250 (n=1) | 0.500 (n=1) | 0.500 (n=1) | 0.500 (n=1) | n/a |" in summary
    # SE = sqrt(0.0625 / 3 + 0.03125 / 2) = 0.191; grpo's one run has no spread to test against
    assert "| raft | -0.125 (0.191) | -0.125 (0.191) | -0.125 (0.191) |" in summary
    assert "| grpo | n/a | n/a | n/a |" in summary
    assert "best = max over validations (selected on the evaluation set: optimistic)" in summary
    assert "(n=k): only k of the 3 seeds' runs have it" in summary


def test_done_json_is_written_whole_or_not_at_all(study_file, fake_fits, monkeypatch):
    """done.json appears only by renaming a completely written file beside it: a study killed while writing
    it leaves no cut-short done.json that would mark the run finished."""
    study = ablate.load_study(study_file(presets=["rgra"], seeds=[0]))
    run_dir = study.run_dir("rgra", 0)
    renamed = []

    def killed_before_the_rename(source, target):
        renamed.append((source, target, json.loads(source.read_text())))
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(ablate.os, "replace", killed_before_the_rename)
        ablate.run_one(study, "rgra", 0)
    [(source, target, record)] = renamed
    assert (source, target) == (run_dir / "done.json.partial", run_dir / "done.json")
    assert record["returncode"] == 0 and record["config"]["seed_everything"] == 0  # written whole
    assert not (run_dir / "done.json").exists()

    record = ablate.run_one(study, "rgra", 0)
    assert json.loads((run_dir / "done.json").read_text()) == record
    assert not (run_dir / "done.json.partial").exists()


@pytest.mark.parametrize("content", ["", '{"preset": "rgra", "seed": 1, "retur', "[]"])
def test_a_done_json_without_a_record_is_warned_of_and_its_run_run_again(
    study_file, fake_fits, capsys, content
):
    """A done.json cut short (written in place before it was written atomically) or edited: one warning
    line, the run counts as not finished (not a JSONDecodeError traceback), and runs again."""
    path = study_file(presets=["rgra"], seeds=[0, 1])
    assert ablate.main(["--config", str(path)]) == 0 and len(fake_fits) == 2
    done = ablate.load_study(path).run_dir("rgra", 1) / "done.json"
    done.write_text(content)
    capsys.readouterr()
    warning = (
        f"warning: {done} holds no JSON record (cut short while written?): the run counts as not finished, "
        "is left out of the summary and is run again"
    )
    assert ablate.main(["--config", str(path), "--summary_only"]) == 0
    assert capsys.readouterr().err.splitlines() == [warning]
    assert ablate.main(["--config", str(path)]) == 0 and len(fake_fits) == 3
    out, err = capsys.readouterr()
    assert err.splitlines() == [warning]
    assert "[1/2] rgra seed 0: done already, skipped" in out and "[2/2] rgra seed 1: running" in out
    assert json.loads(done.read_text())["returncode"] == 0
    assert ablate.main(["--config", str(path)]) == 0 and capsys.readouterr().err == ""


def test_progress_reads_the_latest_update_reward_and_accuracy(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    assert ablate.progress(tmp_path, 4) == "no update logged yet"
    with SummaryWriter(tmp_path / "tensorboard") as writer:
        writer.add_scalar("val/accuracy", 0.25, 0)
        writer.add_scalar("train/reward", 0.125, 1)
        writer.add_scalar("train/reward", 0.5, 2)
    assert ablate.progress(tmp_path, 4) == "update 2/4, train/reward 0.500, val/accuracy 0.250 at update 0"


STAND_IN_FIT = """
import os, signal, sys, time
def save_and_exit(*_):
    print("SIGTERM received: saved", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, save_and_exit if sys.argv[1] == "saves" else signal.SIG_IGN)
print(os.getpid(), os.getpgid(0), flush=True)
time.sleep(60)
"""


def stand_in_fit(tmp_path, behaviour: str, stop_timeout_s: float = 30.0, what: str = "fit") -> list[str]:
    """Run a stand-in for ``rgra fit`` (``saves``: exits 143 on SIGTERM, as rgra fit does once saved;
    ``hangs``: ignores it) under ``fit_reporting``, interrupted by Ctrl-C once it has started: once the
    line it prints after installing its SIGTERM handler is in its log (however long a loaded machine takes
    to start it). Returns the lines it wrote to its log, which start with its pid and process group."""
    log_path = tmp_path / "log.txt"
    deadline = time.monotonic() + 120

    def interrupt() -> None:
        if log_path.read_text().endswith("\n"):  # its first line, printed with its handler in place
            raise KeyboardInterrupt
        assert time.monotonic() < deadline, f"the stand-in printed no line in 120 s: {log_path.read_text()!r}"

    with open(log_path, "w") as log, pytest.raises(KeyboardInterrupt):
        command = [sys.executable, "-c", STAND_IN_FIT, behaviour]
        ablate.fit_reporting(command, log, interrupt, 0.05, stop_timeout_s, what)
    lines = log_path.read_text().splitlines()
    pid, group = map(int, lines[0].split())
    assert group != os.getpgid(0)  # its own: a Ctrl-C in the terminal reaches the study only
    with pytest.raises(ProcessLookupError):  # exited and reaped
        os.kill(pid, 0)
    return lines[1:]


def test_an_interrupted_study_stops_the_running_fit_with_sigterm_and_waits_for_it(tmp_path):
    """Ctrl-C or a killed study (SystemExit from its SIGTERM handler) while a fit runs: the fit gets SIGTERM,
    on which rgra fit saves its state and exits, not SIGKILL, which would lose its updates since the last
    checkpoint."""
    assert stand_in_fit(tmp_path, "saves") == ["SIGTERM received: saved"]


def test_a_fit_that_does_not_exit_after_sigterm_is_killed_after_the_timeout(tmp_path, capsys):
    assert stand_in_fit(tmp_path, "hangs", stop_timeout_s=1.0) == []
    assert capsys.readouterr().out.splitlines() == [
        "stopping the running fit: waiting up to 1 s for it to save its state (Ctrl-C again to kill it)",
        "the fit had not exited 1 s after SIGTERM: killed",
    ]


def test_a_test_that_does_not_exit_after_sigterm_is_named_as_a_test(tmp_path, capsys):
    assert stand_in_fit(tmp_path, "hangs", stop_timeout_s=1.0, what="test") == []
    assert capsys.readouterr().out.splitlines() == [
        "stopping the running test: waiting up to 1 s for it to exit (Ctrl-C again to kill it)",
        "the test had not exited 1 s after SIGTERM: killed",
    ]


def test_an_interrupted_run_with_an_unreadable_or_sharded_checkpoint_is_resumed(tmp_path):
    """A sharded ``last.ckpt`` (a directory; here without its metadata) was "no checkpoint": the line told
    the user the run would start again, though the rerun resumes it."""
    (tmp_path / "checkpoints" / "last.ckpt").mkdir(parents=True)
    assert ablate.saved_update(tmp_path) is None
    assert ablate.interrupted(tmp_path) == (
        f"interrupted; this run has a last checkpoint ({tmp_path / 'checkpoints' / 'last.ckpt'}): run the "
        "same command again to resume it there and go on"
    )
    assert ablate.interrupted(tmp_path / "none").startswith("interrupted before this run saved a checkpoint")


def test_a_study_stopped_by_sigterm_stops_its_fit_which_saves_and_resumes(study_file, fake_fits, tmp_path):
    """A real study, SIGTERM'd while its fit trains: the fit saves the update it is at and exits 143, the
    study says where and how to resume and exits 143; the same command resumes the run from there."""
    overrides = {  # long enough to be stopped: a checkpoint every 2 updates, of 400
        "trainer": {"max_steps": 400, "val_check_interval": 200},
        "model": {"init_args": {"num_iterations": 2, "validate_before_training": False}},
    }
    path = study_file(presets=["rgra"], seeds=[0], overrides=overrides)
    study = ablate.load_study(path)
    last = study.run_dir("rgra", 0) / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "rgra_lightning", "ablate", "--config", str(path)]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    # Stopped once it has saved its first checkpoint (update 2, renamed into place whole), however long a
    # loaded machine takes to get there; a study that ends or stalls before it fails the test
    start = time.monotonic()
    while not last.is_file():
        if process.poll() is not None or time.monotonic() - start > 600:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the study stops its fit
            out, _ = process.communicate(timeout=600)
            pytest.fail(f"no checkpoint {time.monotonic() - start:.0f} s into the study: {out}")
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 143, out
    update = torch.load(last, weights_only=True, mmap=True)["global_step"]
    assert 2 <= update < 400
    assert (
        f"stopped by SIGTERM after update {update}, saved to {last}"
        in (last.parents[1] / "log.txt").read_text()
    )
    assert out.splitlines()[-1] == (
        f"[1/1] rgra seed 0: interrupted; this run's last checkpoint holds update {update} ({last}): run the "
        "same command again to resume it there and go on"
    )
    assert not (study.run_dir("rgra", 0) / "done.json").exists()

    assert ablate.main(["--config", str(path)]) == 0
    assert fake_fits[0][-2:] == ["--ckpt_path", str(last)]


def test_a_resumed_run_says_from_which_update(study_file, fake_fits, capsys):
    path = study_file(presets=["rgra"], seeds=[0])
    run_dir = ablate.load_study(path).run_dir("rgra", 0)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 6}, run_dir / "checkpoints" / "last.ckpt")
    assert ablate.main(["--config", str(path)]) == 0
    assert (
        f"[1/1] rgra seed 0: resuming from update 6 (log: {run_dir / 'log.txt'})" in capsys.readouterr().out
    )


def test_a_sharded_checkpoints_directory_is_resumed_and_tested(study_file, fake_fits, capsys):
    """Under FSDP2 with ``save_distributed_checkpoint: true`` ``last.ckpt`` is a directory of shards: the run
    was started afresh (its earlier updates lost) and its benchmark test reported no checkpoint."""
    path = study_file(presets=["rgra"], seeds=[0], benchmarks={"val12": {}})
    last = ablate.load_study(path).run_dir("rgra", 0) / "checkpoints" / "last.ckpt"
    last.mkdir(parents=True)
    assert ablate.main(["--config", str(path)]) == 1  # the stand-in test logs no metric
    out = capsys.readouterr().out
    assert f"[1/1] rgra seed 0: resuming from {ablate.LAST_CHECKPOINT}" in out
    assert fake_fits[0][-2:] == ["--ckpt_path", str(last)]
    assert fake_fits[1][3] == "test" and fake_fits[1][-1] == f"--ckpt_path={last}"


VAL12 = {"data": {"init_args": {"val_size": 12}}}  # a second "benchmark": 12 held-out problems, not 8


def test_a_finished_run_is_tested_on_each_benchmark_and_tabulated(study_file, monkeypatch, capsys):
    """The paper's Table 1 in one command: each run, once fit, is tested (``rgra test`` of its last
    checkpoint); the test's record holds what its event files logged, the summary tabulates it; a rerun
    tests nothing made with the same settings, and tests again a benchmark whose keys changed."""
    path = study_file(presets=["rgra"], seeds=[0], benchmarks={"val12": VAL12})
    assert ablate.main(["--config", str(path)]) == 0
    study = ablate.load_study(path)
    run_dir = study.run_dir("rgra", 0)
    out = capsys.readouterr().out
    record = json.loads((run_dir / "benchmarks" / "val12" / "done.json").read_text())
    samples = [
        json.loads(line)
        for line in (run_dir / "benchmarks" / "val12" / "tensorboard" / "test_samples.jsonl")
        .read_text()
        .splitlines()
    ]
    accuracy = record["metrics"]["test/accuracy"]
    assert len(samples) == 12 and accuracy == pytest.approx(sum(s["correct"] for s in samples) / 12, abs=1e-6)
    assert record["returncode"] == 0 and record["config"]["data"]["init_args"]["val_size"] == 12
    assert f"[1/1] rgra seed 0: val12: test/accuracy {accuracy:.3f} (" in out
    assert event_files(run_dir) == json.loads((run_dir / "done.json").read_text())["event_files"]  # fit's own
    summary = (study.root / "summary.md").read_text()
    assert "| preset | val12 |" in summary and f"| rgra | {accuracy:.3f} |" in summary

    commands = []
    monkeypatch.setattr(ablate, "fit_reporting", lambda command, *_: commands.append(command) or 0)
    assert ablate.main(["--config", str(path)]) == 0 and commands == []  # fit and test done already
    assert (
        ablate.main(["--config", str(study_file(presets=["rgra"], seeds=[0], benchmarks={"val12": {}}))]) == 1
    )
    out, err = capsys.readouterr()
    assert (
        "[1/1] rgra seed 0: val12: tested before with other settings (data.init_args.val_size 12 -> 8)" in out
    )
    assert [command[3] for command in commands] == ["test"]  # the run itself is not fit again
    assert "FAILED (exit 0: it logged no test/* metric)" in out  # the stand-in test logs nothing
    assert "tested with other settings than the study gives it now" in err  # its old record left out
    assert f"| rgra | {accuracy:.3f} |" not in (study.root / "summary.md").read_text()


def test_a_failed_or_untestable_test_is_reported_and_not_recorded(study_file, monkeypatch, capsys):
    statuses = iter([0, 0, 3])  # seed 0's fit, seed 1's fit, seed 1's test
    monkeypatch.setattr(ablate, "fit_reporting", lambda *_: next(statuses))
    path = study_file(presets=["rgra"], seeds=[0, 1], benchmarks={"val12": VAL12})
    study = ablate.load_study(path)
    checkpoint = study.run_dir("rgra", 1) / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()  # seed 0's stand-in fit leaves no checkpoint; seed 1's has one
    assert ablate.main(["--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert (
        f"[1/2] rgra seed 0: val12: FAILED: {study.run_dir('rgra', 0) / 'checkpoints' / 'last.ckpt'}" in out
    )
    assert "[2/2] rgra seed 1: val12: FAILED (exit 3: training diverged); last lines:" in out
    assert "(2 benchmark test(s) failed; rerun to retry them)" in out
    assert not list(study.root.rglob("benchmarks/*/done.json"))


def test_a_benchmarks_mistake_stops_the_study_before_any_run_at_its_line(study_file, fake_fits, capsys):
    path = study_file(
        presets=["rgra", "raft"], benchmarks={"val12": {"data": {"init_args": {"val_sizee": 12}}}}
    )
    assert ablate.main(["--config", str(path)]) == 2 and fake_fits == []
    lines = capsys.readouterr().err.splitlines()
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "val_sizee:" in text)
    assert lines[0].startswith(f"error: {path}:{line}: unknown option 'val_sizee' of data")
    assert lines[0].endswith("(presets rgra, raft)")
    assert not ablate.load_study(path).root.exists()  # no run.yaml or test.yaml left behind


def test_benchmarks_over_runs_that_keep_no_last_checkpoint_are_refused(study_file, fake_fits, capsys):
    callbacks = [{"class_path": "rgra_lightning.checkpointing.ExactResume"}]
    overrides = {"trainer": {"max_steps": 4, "callbacks": callbacks}}
    path = study_file(presets=["rgra"], overrides=overrides, benchmarks={"val12": VAL12})
    assert ablate.main(["--config", str(path)]) == 2 and fake_fits == []
    assert (
        "benchmarks test each run's checkpoints/last.ckpt, and preset rgra leaves none: its config has no "
        in (capsys.readouterr().err)
    )
    assert ablate.main(["--config", str(study_file(presets=["rgra"], overrides=overrides))]) == 0  # no tests


def test_a_study_interrupted_during_a_test_says_the_test_reruns(study_file, monkeypatch, capsys):
    def fit_then_interrupt(command, *_):
        if command[3] == "test":
            raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(ablate, "fit_reporting", fit_then_interrupt)
    path = study_file(presets=["rgra"], seeds=[0], benchmarks={"val12": VAL12})
    checkpoint = ablate.load_study(path).run_dir("rgra", 0) / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()
    assert ablate.main(["--config", str(path)]) == 130
    assert (
        "[1/1] rgra seed 0: val12: interrupted: run the same command again to test it"
        in capsys.readouterr().out
    )


def test_a_fit_without_a_training_split_is_refused_before_any_run_but_tested_on(
    study_file, small_config, tmp_path, fake_fits, capsys
):
    """The pre-flight check parsed every config without its subcommand, so a study fitting MATH-500 (test
    only) was refused by its first run, after the model loaded; a benchmark of it is a test, and passes."""
    math500 = {"data": {"init_args": {"preset": "math500", "source": "no-such-dir"}}}
    base = small_config("rgra", data_module="DatasetDataModule").rename(tmp_path / "dataset.yaml")
    path = study_file(base_config=str(base), presets=["rgra"], seeds=[0], overrides=math500)
    assert ablate.main(["--config", str(path)]) == 2 and fake_fits == []
    assert "(data.preset=math500) has no training split to fit on" in capsys.readouterr().err
    path = study_file(base_config=str(base), presets=["rgra"], seeds=[0], benchmarks={"math500": math500})
    assert ablate.main(["--config", str(path)]) == 1  # run (stand-in fit), then the test: no checkpoint
    assert [command[3] for command in fake_fits] == ["fit"]
    assert "rgra seed 0: math500: FAILED: " in capsys.readouterr().out


def test_a_benchmark_whose_test_is_refused_is_not_tried_on_later_runs(study_file, monkeypatch, capsys):
    """Exit 2 (the benchmark's data unreachable, say) meets every run's test the same way, each after
    loading the model: the benchmark is not tried again; the other benchmark is."""
    path = study_file(presets=["rgra", "raft"], seeds=[0], benchmarks={"val12": VAL12, "whole": {}})
    study = ablate.load_study(path)
    for preset in ("rgra", "raft"):
        (study.run_dir(preset, 0) / "checkpoints").mkdir(parents=True)
        (study.run_dir(preset, 0) / "checkpoints" / "last.ckpt").touch()
    statuses, commands = (
        iter([0, 2, 0, 0, 0]),
        [],
    )  # rgra: fit, val12 test (refused), all test; raft: fit, all
    monkeypatch.setattr(
        ablate, "fit_reporting", lambda command, *_: commands.append(command) or next(statuses)
    )
    assert ablate.main(["--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[1/2] rgra seed 0: val12: FAILED (exit 2: config refused)" in out
    assert "[2/2] raft seed 0: val12: not tested, as its test was refused above" in out
    tested = [command[-2].removeprefix("--config=") for command in commands if command[3] == "test"]
    assert [os.path.basename(os.path.dirname(test_yaml)) for test_yaml in tested] == [
        "val12",
        "whole",
        "whole",
    ]


def test_a_run_another_study_process_holds_is_skipped_untouched(study_file, fake_fits, capsys):
    """One ``rgra ablate`` per GPU on one study: each run is claimed before anything of it is touched. The
    second process started the first one's run too (its fit refused, exit 4) after moving the running
    fit's event files aside as an earlier attempt's."""
    path = study_file(presets=["rgra", "raft"], seeds=[0])
    study = ablate.load_study(path)
    running = study.run_dir("rgra", 0)
    (running / "tensorboard").mkdir(parents=True)
    (running / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")  # the other fit's, so far
    (running / "run.yaml").write_bytes(b"the other process's: kept as it is\r\n")  # the checks write none
    held = ablate.take_lock(f"{running}.lock")
    try:
        assert ablate.main(["--config", str(path)]) == 0
    finally:
        os.close(held)
    out = capsys.readouterr().out
    assert f"[1/2] rgra seed 0: held by another rgra ablate (process {os.getpid()} on " in out
    assert [command[-1] for command in fake_fits] == [f"--config={study.run_dir('raft', 0) / 'run.yaml'}"]
    assert event_files(running) == ["events.out.tfevents.1.host"] and not (running / "started.json").exists()
    assert (running / "run.yaml").read_bytes() == b"the other process's: kept as it is\r\n"
    assert "(1 run(s) held by another process: --summary_only adds them once done)" in out


def test_a_preset_switching_the_module_is_tested_by_the_base_configs_module(study_file, tmp_path, capsys):
    """The paper's ft row: an SFT run (``SFTModule``, which tests its loss only) is tested by the base
    config's ``RLModule`` (greedy accuracy), its preset left out of the test's configs; its fit keeps it."""
    sft = tmp_path / "sft.yaml"
    sft.write_text(yaml.safe_dump({"model": {"class_path": "rgra_lightning.SFTModule"}}))
    path = study_file(presets=["rgra", str(sft)], seeds=[0], overrides={}, benchmarks={"val12": VAL12})
    study = ablate.load_study(path)
    assert ablate.parser_refusals(study, path) == []  # the SFT run's test parses as the RL module's
    for preset in ("rgra", str(sft)):
        tested = ablate.tested_configs(study, preset, 0)
        assert (ablate.preset_path(preset) in tested) == (preset == "rgra")
        assert tested[-1] == study.run_dir(preset, 0) / "run.yaml"
        assert (
            ablate.test_settings(study, preset, 0, "val12")["model"]["class_path"]
            == "rgra_lightning.RLModule"
        )
    assert ablate.run_command(study, str(sft), 0)[-2] == f"--config={sft}"  # its fit is the SFT one


def test_a_finished_run_without_a_validation_curve_counts_as_done(study_file):
    path = study_file(presets=["rgra"], seeds=[0, 1])
    study = ablate.load_study(path)
    study.run_dir("rgra", 0).mkdir(parents=True)
    (study.run_dir("rgra", 0) / "done.json").write_text('{"returncode": 0, "event_files": []}')
    assert "| rgra | 1/2 | n/a |" in summarise(study).read_text()


CLAIMED_FIT = """
import signal, sys, time
from pathlib import Path
from rgra_lightning import ablate
run_dir, log = Path(sys.argv[1]), open(sys.argv[2], "w")
child = "import signal, sys, time\\n"
child += "def save(*_):\\n    time.sleep(1); print('saved', flush=True); sys.exit(143)\\n"
child += "signal.signal(signal.SIGTERM, save); print('started', flush=True); time.sleep(60)"
with ablate.claimed(run_dir) as claim:
    ablate.fit_reporting([sys.executable, "-c", child], log, lambda: None, 0.05, 30.0, "fit", (claim,))
"""


def test_a_fit_outlives_a_killed_study_holding_its_claim_and_is_told_to_stop(tmp_path):
    """A study killed with SIGKILL (or by the out-of-memory killer) left its fit running unclaimed on its
    GPU: another study process took the run and moved the running fit's event files aside. The fit now
    holds the claim too, and is sent SIGTERM (on which rgra fit saves and exits) when the study dies."""
    run_dir, log = tmp_path / "runs" / "rgra" / "seed0", tmp_path / "log.txt"
    study = subprocess.Popen([sys.executable, "-c", CLAIMED_FIT, str(run_dir), str(log)])
    deadline = time.monotonic() + 120
    while "started" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and study.poll() is None
        time.sleep(0.05)
    study.kill()
    study.wait()
    assert isinstance(ablate.take_lock(f"{run_dir}.lock"), str)  # the fit holds it while it saves
    while "saved" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    while isinstance(held := ablate.take_lock(f"{run_dir}.lock"), str):  # free once the fit has exited
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.close(held)


def test_a_preset_of_the_base_module_written_another_way_is_tested_with_its_preset(study_file, tmp_path):
    alias = tmp_path / "alias.yaml"
    alias.write_text(yaml.safe_dump({"model": {"class_path": "rgra_lightning.module.RLModule"}}))
    study = ablate.load_study(study_file(presets=[str(alias)], seeds=[0], benchmarks={"val12": VAL12}))
    assert alias in ablate.tested_configs(study, str(alias), 0)


def test_a_finished_run_without_a_curve_keeps_its_speed(study_file):
    path = study_file(presets=["rgra"], seeds=[0])
    study = ablate.load_study(path)
    study.run_dir("rgra", 0).mkdir(parents=True)
    (study.run_dir("rgra", 0) / "done.json").write_text('{"steps_per_s": 0.64, "event_files": []}')
    assert "| rgra | 1/1 | n/a | n/a | n/a | n/a | 0.64 |" in summarise(study).read_text()


def test_a_benchmark_of_a_local_copy_that_is_not_there_stops_the_study_before_any_run(
    study_file, small_config, tmp_path, fake_fits, capsys
):
    base = small_config("rgra", data_module="DatasetDataModule").rename(tmp_path / "dataset.yaml")
    amc23 = {"data": {"init_args": {"preset": "amc23", "source": str(tmp_path / "no-such-copy")}}}
    overrides = {"data": {"init_args": {"preset": "gsm8k", "source": "openai/gsm8k"}}}
    path = study_file(
        base_config=str(base), presets=["rgra"], seeds=[0], overrides=overrides, benchmarks={"amc23": amc23}
    )
    assert ablate.main(["--config", str(path)]) == 2 and fake_fits == []
    assert (
        f"data.source '{tmp_path / 'no-such-copy'}': no such file or directory (preset rgra)"
        in capsys.readouterr().err
    )
