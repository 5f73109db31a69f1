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
