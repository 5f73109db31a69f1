"""Problems from local JSON / JSON Lines files, one file per split."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.trainer.states import TrainerFn

from rgra_lightning.data.records import Record, local_file_rows
from rgra_lightning.data.text import TextDataModule
from rgra_lightning.errors import ConfigError

# The file options each stage reads (``test`` and ``predict`` read ``test_file``, else ``val_file``).
_STAGE_FILES = {"fit": ("train_file", "val_file"), "validate": ("val_file",)}
_WHAT = {"train_file": "the training problems", "val_file": "the validation problems"}


class JsonFilesDataModule(TextDataModule):
    """Problems from local files; every row is checked, and a bad one is an error naming its file, line and
    field. Each file option names an existing local file (``.json``, an array of objects, ``.jsonl``,
    ``.parquet``, ``.csv``): a directory or a missing path is an error naming the option.

    Each file is optional, so that ``rgra test`` takes only a ``test_file``; a stage missing a file it reads
    is a one-line error naming the option: fit needs ``train_file`` and ``val_file``, validate
    ``val_file``, test and predict ``test_file`` (or ``val_file``); with ``few_shot``, every stage needs
    ``train_file``.

    Args:
        train_file: the training problems (and with ``few_shot``, the examples shown).
        val_file: the validation problems.
        test_file: the test and predict problems; default: ``val_file``.
        **kwargs: ``TextDataModule``'s row and prompt options and ``PromptDataModule``'s (batch sizes,
            ``train_size``, ``limit``, ``seed``).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Check that ``stage`` has its files, before reading any, then read them."""
        hp = self.hparams
        stage = None if stage is None else TrainerFn(stage).value  # Lightning passes the enum
        for option in _STAGE_FILES.get(stage, ()):
            if hp[option] is None:
                raise ConfigError(f"{stage} needs data.{option} ({_WHAT[option]}), and none is given")
        if hp.few_shot and hp.train_file is None:
            raise ConfigError(
                f"data.few_shot={hp.few_shot} needs data.train_file (the problems its examples come from), "
                "and none is given"
            )
        if stage in ("test", "predict") and hp.test_file is None and hp.val_file is None:
            raise ConfigError(f"{stage} needs data.test_file (the problems to {stage} on), and none is given")
        super().setup(stage)

    def load_splits(self) -> dict[str, list[Record]]:
        hp = self.hparams
        test = "test_file" if hp.test_file else "val_file"
        options = {"train": "train_file", "val": "val_file", "test": test}
        records = {
            split: self.read_records(split, local_file_rows(hp[option], f"data.{option}"))
            for split, option in options.items()
            if hp[option] is not None
        }
        records.setdefault("train", [])  # few-shot examples and ``train_size`` look at it in every stage
        return records
