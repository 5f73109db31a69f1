"""The ablation runner: config composition, study-config errors, and a tiny real study that resumes."""

import contextlib
import io
import json
import os
import re
import shutil
import sys

import pytest
import yaml

from rgra_lightning import ablate
from rgra_lightning.ablation_summary import read_curve
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
        ({"base_config": "missing.yaml"}, "base_config missing.yaml does not exist"),
        ({"base_config": []}, "base_config must be a config path or a non-empty list"),
        ({"sedes": [0]}, "unknown keys ['sedes']"),
        ({"results_dir": ["results"]}, "results_dir must be a directory's path"),
        ({"reference": "grpo"}, "reference 'grpo' is not one of the presets"),
    ],
)
def test_bad_study_configs_fail_with_a_clear_message(study_file, fields, message, capsys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ablate.load_study(study_file(**fields))
    assert ablate.main(["--config", str(study_file(**fields))]) == 2
    assert message in capsys.readouterr().err


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


def test_changes_name_the_first_differing_keys_and_count_the_rest():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    new = {"a": {"b": 2, "c": [1]}, "d": "x", "f": True, "g": 0}
    assert ablate.changes(old, new) == "a.b 1 -> 2, a.c [1, 2] -> [1], f null -> true (and 1 more)"
    assert ablate.changes(old, old) == ""


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
    assert "[4/4] raft seed 1: running" in out


def test_failed_run_is_reported_and_not_marked_done(study_file, capsys):
    """A refused config fails its first run with the reason; the preset's other seeds are not run."""
    overrides = {"model": {"init_args": {"learning_rate": 0}}}
    path = study_file(presets=["rgra"], seeds=[0, 1], overrides=overrides)
    assert ablate.main(["--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[1/2] rgra seed 0: FAILED (exit 2)" in out and "model.learning_rate must be > 0, got 0" in out
    assert "[2/2] rgra seed 1: not run, as rgra's config was refused above" in out
    assert "(2 run(s) failed; rerun to retry them)" in out
    study = ablate.load_study(path)
    assert not (study.run_dir("rgra", 0) / "done.json").exists()
    assert not study.run_dir("rgra", 1).exists()


def test_configs_the_parser_refuses_stop_the_study_before_any_run_naming_the_study_file_line(
    study_file, tmp_path, capsys
):
    """A misspelled override fails every preset's config the same way: one line, at the study file's line
    (not in the run.yaml written from it); a preset file's mistake at that file's line."""
    preset = tmp_path / "mine.yaml"
    preset.write_text("model:\n  init_args:\n    loss:\n      bta: 0.1\n")
    overrides = {"model": {"init_args": {"learning_rat": 0.1}}}
    path = study_file(presets=["rgra", "raft", str(preset)], overrides=overrides)
    assert ablate.main(["--config", str(path)]) == 2
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


def test_progress_reads_the_latest_update_reward_and_accuracy(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    assert ablate.progress(tmp_path, 4) == "no update logged yet"
    with SummaryWriter(tmp_path / "tensorboard") as writer:
        writer.add_scalar("val/accuracy", 0.25, 0)
        writer.add_scalar("train/reward", 0.125, 1)
        writer.add_scalar("train/reward", 0.5, 2)
    assert ablate.progress(tmp_path, 4) == "update 2/4, train/reward 0.500, val/accuracy 0.250 at update 0"


def test_an_interrupted_study_kills_the_running_fit(tmp_path):
    """Ctrl-C or a killed study (SystemExit from its SIGTERM handler) while a fit runs: the fit goes too."""
    log_path = tmp_path / "log.txt"
    script = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(60)"

    def interrupt() -> None:
        raise KeyboardInterrupt

    with open(log_path, "w") as log, pytest.raises(KeyboardInterrupt):
        ablate.fit_reporting([sys.executable, "-c", script], log, interrupt, every_s=1.0)
    pid = int(log_path.read_text().split()[0])
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
