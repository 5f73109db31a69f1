"""Problems from local JSON / JSON Lines files, one file per split."""

from __future__ import annotations

from typing import Any

from rgra_lightning.data.records import Record, local_file_rows
from rgra_lightning.data.text import TextDataModule


class JsonFilesDataModule(TextDataModule):
    """Problems from local ``.json`` (an array of objects) or ``.jsonl`` files; every row is checked, and a
    bad one is an error naming its file, line and field. Each file option names an existing local file
    (``.json``, ``.jsonl``, ``.parquet``, ``.csv``): a directory or a missing path is an error naming the
    option.

    Args:
        train_file: the training problems.
        val_file: the validation problems.
        test_file: the test problems; default: ``val_file``.
        **kwargs: ``TextDataModule``'s row and prompt options and ``PromptDataModule``'s (batch sizes,
            ``train_size``, ``limit``, ``seed``).
    """

    def __init__(self, train_file: str, val_file: str, test_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def load_splits(self) -> dict[str, list[Record]]:
        hp = self.hparams
        test = "test_file" if hp.test_file else "val_file"
        options = {"train": "train_file", "val": "val_file", "test": test}
        return {
            split: self.read_records(split, local_file_rows(hp[option], f"data.{option}"))
            for split, option in options.items()
        }
