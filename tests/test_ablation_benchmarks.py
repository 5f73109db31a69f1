"""An ablation study's benchmark tests: the study field, each test's config layer and command, its record and
the metrics read back from its event files."""

import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from rgra_lightning import ablation_benchmarks
from rgra_lightning.ablate import Study
from rgra_lightning.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["gsm8k"], "benchmarks must be a mapping of names to config keys"),
        ({"gsm 8k": {}}, "benchmark name 'gsm 8k' must be letters, digits"),
        ({"../up": {}}, "benchmark name '../up' must be letters, digits"),
        ({"gsm8k": "limit: null"}, "benchmarks.gsm8k must be a mapping of config keys"),
    ],
)
def test_a_bad_benchmarks_field_is_one_line_naming_the_study_file(raw, message):
    with pytest.raises(ConfigError, match=f"^study.yaml: {message}"):
        ablation_benchmarks.parse_benchmarks(raw, Path("study.yaml"))


def test_benchmarks_left_out_or_empty_are_none_and_an_empty_entry_is_no_keys():
    assert ablation_benchmarks.parse_benchmarks(None, Path("s.yaml")) == {}
    assert ablation_benchmarks.parse_benchmarks({"gsm8k": None}, Path("s.yaml")) == {"gsm8k": {}}


def test_a_tests_layer_is_the_benchmarks_keys_with_a_logger_in_its_own_directory(tmp_path):
    data = {"data": {"init_args": {"preset": "math500", "limit": None}}}
    study = Study("s", [Path("base.yaml")], ["rgra"], [3], results_dir=tmp_path, benchmarks={"math": data})
    layer = ablation_benchmarks.benchmark_layer(study, "rgra", 3, "math")
    directory = tmp_path / "s" / "runs" / "rgra" / "seed3" / "benchmarks" / "math"
    assert layer["data"] == data["data"]
    assert layer["trainer"]["logger"]["init_args"] == {
        "save_dir": str(directory),
        "name": "tensorboard",
        "version": "",
    }
    assert study.benchmarks["math"] == data  # the study's entry is not changed by it
    run_dir = study.run_dir("rgra", 3)
    command = ablation_benchmarks.benchmark_command(
        [Path("base.yaml"), Path("run.yaml")], Path("t.yaml"), run_dir
    )
    assert command == [
        sys.executable,
        "-m",
        "rgra_lightning",
        "test",
        "--config=base.yaml",
        "--config=run.yaml",
        "--config=t.yaml",
        f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
    ]


def test_the_metrics_are_the_latest_test_scalars_of_the_given_event_files(tmp_path):
    def write(folder: str, scalars: dict[str, float]) -> Path:
        with SummaryWriter(tmp_path / folder) as writer:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=4)
        return next((tmp_path / folder).glob("events.out.tfevents.*"))

    first = write("a", {"test/accuracy": 0.25, "val/accuracy": 0.5, "test/pass@4": 0.5})
    second = write("b", {"test/accuracy": 0.75})
    assert ablation_benchmarks.logged_test_metrics([first]) == {"test/accuracy": 0.25, "test/pass@4": 0.5}
    assert ablation_benchmarks.logged_test_metrics([first, second]) == {
        "test/accuracy": 0.75,
        "test/pass@4": 0.5,
    }
    assert ablation_benchmarks.logged_test_metrics([]) == {}


def test_a_test_counts_only_when_made_with_the_settings_given(tmp_path):
    directory = ablation_benchmarks.benchmark_dir(tmp_path, "gsm8k")
    assert ablation_benchmarks.current_test(tmp_path, "gsm8k", {"a": 1}) == (None, "")  # not tested
    directory.mkdir(parents=True)
    (directory / "done.json").write_text('{"metrics": {"test/accuracy": 0.5}, "config": {"a": 1}}')
    record, changed = ablation_benchmarks.current_test(tmp_path, "gsm8k", {"a": 1})
    assert record["metrics"] == {"test/accuracy": 0.5} and changed == ""
    assert ablation_benchmarks.current_test(tmp_path, "gsm8k", {"a": 2}) == (None, "a 1 -> 2")
    (directory / "done.json").write_text('{"metrics": {"test/acc')  # cut short: not a finished test
    assert ablation_benchmarks.current_test(tmp_path, "gsm8k", {"a": 1}) == (None, "")


@pytest.mark.parametrize(
    ("callbacks", "why"),
    [
        (None, "no ModelCheckpoint callback"),
        ([{"class_path": "rgra_lightning.callbacks.ExportHuggingFace"}], "no ModelCheckpoint callback"),
        ([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}], "does not set save_last: true"),
        ([{"class_path": "x.PeriodicModelCheckpoint", "init_args": {"save_last": False}}], "save_last: true"),
        ([{"class_path": "x.PeriodicModelCheckpoint", "init_args": {"save_last": True}}], None),
        ([{"class_path": "x.ModelCheckpoint", "init_args": {"save_last": "link"}}], None),  # Lightning's link
    ],
)
def test_a_config_whose_runs_leave_no_last_checkpoint_is_named(callbacks, why):
    found = ablation_benchmarks.without_last_checkpoint({"trainer": {"callbacks": callbacks}})
    assert found == why if why is None else why in found
