"""JsonFilesDataModule: train/val/test files named one by one; a bad file is a one-line error naming the
file and row."""

from pathlib import Path

import pytest

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
