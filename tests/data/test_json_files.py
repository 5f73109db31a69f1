"""JsonFilesDataModule: train/val/test files named one by one; a bad file is a one-line error naming the
file and row."""

import warnings
from pathlib import Path

import pytest

from rgra_lightning.cli import main
from rgra_lightning.data import JsonFilesDataModule
from rgra_lightning.errors import ConfigError
from tests.conftest import one_line_error


def json_files_args(small_config, tmp_path: Path, train: Path) -> list[str]:
    val = tmp_path / "val.jsonl"
    val.write_text('{"question": "1+1", "answer": "2"}\n')
    config = small_config("rgra", data_module="JsonFilesDataModule")
    return ["fit", "--config", str(config), f"--data.train_file={train}", f"--data.val_file={val}"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": \n', "line 2 is not valid JSON"),
        ('{"question": "1+1", "answer": "2"}\n{"answer": "4"}\n', "line 2: field 'question'"),
        ('{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n', "line 2"),
    ],
    ids=["missing", "empty", "invalid-json", "no-question", "no-answer"],
)
def test_bad_dataset_files_name_the_file_and_row(small_config, tmp_path, capsys, content, expected):
    train = tmp_path / "train.jsonl"
    if content is not None:
        train.write_text(content)
    error = one_line_error(json_files_args(small_config, tmp_path, train), capsys)
    assert str(train) in error and expected in error


@pytest.mark.parametrize(
    "train_file, expected",
    [
        # a path without an extension: read as a local file, not looked up on the hub (offline: ~30 s of
        # retries before any error)
        ("no-such-dir/train", "error: data.train_file 'no-such-dir/train' does not exist"),
        # a directory: once read as its train.jsonl, so validation silently ran on the training problems
        (".", "error: data.train_file '.' is a directory: give a file, one of ['.json', '.jsonl',"),
    ],
)
def test_each_file_option_takes_one_local_file_and_names_itself(
    small_config, tmp_path, capsys, monkeypatch, train_file, expected
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    error = one_line_error(json_files_args(small_config, tmp_path, train_file), capsys)
    assert error.startswith(expected), error


@pytest.mark.parametrize(
    "given, stage, message",
    [
        ({"test_file"}, "fit", "fit needs data.train_file (the training problems), and none is given"),
        ({"train_file"}, "fit", "fit needs data.val_file (the validation problems), and none is given"),
        (
            {"test_file"},
            "validate",
            "validate needs data.val_file (the validation problems), and none is given",
        ),
        ({"train_file"}, "test", "test needs data.test_file (the problems to test on), and none is given"),
        (set(), "predict", "predict needs data.test_file (the problems to predict on), and none is given"),
    ],
)
def test_a_stage_missing_a_file_it_reads_names_the_option(tmp_path, given, stage, message):
    file = tmp_path / "problems.jsonl"
    file.write_text('{"question": "1+1", "answer": "2"}\n')
    data = JsonFilesDataModule(**dict.fromkeys(given, str(file)))
    with pytest.raises(ConfigError) as error:
        data.setup(stage)
    assert str(error.value) == message


@pytest.mark.parametrize("stage", ["test", "validate"])
def test_few_shot_without_a_train_file_names_the_train_file(tmp_path, stage):
    """It said "data.few_shot=2 needs more than 2 training problems", with no word of the missing file."""
    file = tmp_path / "problems.jsonl"
    file.write_text('{"question": "1+1", "answer": "2"}\n')
    data = JsonFilesDataModule(val_file=str(file), test_file=str(file), few_shot=2)
    with pytest.raises(ConfigError) as error:
        data.setup(stage)
    assert str(error.value) == (
        "data.few_shot=2 needs data.train_file (the problems its examples come from), and none is given"
    )


def test_test_and_predict_read_only_a_test_file_or_else_the_val_file(tmp_path):
    test, val = tmp_path / "test.jsonl", tmp_path / "val.jsonl"
    test.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n')
    val.write_text('{"question": "3+3", "answer": "6"}\n')
    for stage in ("test", "predict"):
        data = JsonFilesDataModule(test_file=str(test))
        data.setup(stage)
        assert [e["reference"] for e in data.test_examples] == ["2", "4"] and data.train_examples == []
    data = JsonFilesDataModule(val_file=str(val))
    data.setup("test")
    assert [e["reference"] for e in data.test_examples] == ["6"]


def test_rgra_test_on_ones_own_file_needs_only_test_file(small_config, tmp_path, capsys):
    """It needed train_file and val_file too, refused in a 10-line dump of the parser's union errors."""
    test = tmp_path / "mine.jsonl"
    test.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+3", "answer": "5"}\n')
    options = ["--config", str(small_config("rgra")), "--data=rgra_lightning.JsonFilesDataModule"]
    main(["test", *options, f"--data.test_file={test}"])
    samples = next((tmp_path / "runs").rglob("test_samples.jsonl")).read_text().splitlines()
    assert len(samples) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *options, f"--data.test_file={test}"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: validate needs data.val_file (the validation problems), and none is given"]


def test_testing_on_part_of_the_test_split_says_so(tmp_path):
    """A benchmark number from ``data.limit`` of its problems (the paper config's 500 of GSM8K's 1,319)
    was reported without a word."""
    test = tmp_path / "test.jsonl"
    test.write_text("".join(f'{{"question": "{n}+{n}", "answer": "{2 * n}"}}\n' for n in range(5)))
    data = JsonFilesDataModule(test_file=str(test), limit=3)
    data.setup("test")
    with pytest.warns(UserWarning, match=r"data.limit=3: evaluating the first 3 of the 5 test problems"):
        data.test_dataloader()
    whole = JsonFilesDataModule(test_file=str(test), limit=5)
    whole.setup("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(whole.test_dataloader().dataset) == 5


def test_fit_trains_on_the_train_file_validates_on_the_val_file_and_tests_on_the_test_file(tmp_path):
    """Each file is its split's; without a test file, test reads the validation problems."""
    train, val, test = (tmp_path / f"{name}.jsonl" for name in ("train", "val", "test"))
    train.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n')
    val.write_text('{"question": "3+3", "answer": "6"}\n')
    test.write_text('{"question": "4+4", "answer": "8"}\n')
    data = JsonFilesDataModule(train_file=str(train), val_file=str(val), test_file=str(test))
    data.setup("fit")
    assert sorted(e["prompt"] for e in data.train_examples) == ["1+1=", "2+2="]
    assert data.val_examples == [{"prompt": "3+3=", "reference": "6"}]
    assert data.test_examples == [{"prompt": "4+4=", "reference": "8"}]
    data = JsonFilesDataModule(train_file=str(train), val_file=str(val))
    data.setup("fit")
    assert data.val_examples == data.test_examples == [{"prompt": "3+3=", "reference": "6"}]
