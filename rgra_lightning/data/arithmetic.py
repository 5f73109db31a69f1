"""The embedded arithmetic task as a data module: problems generated in code, nothing to download."""

from __future__ import annotations

from typing import Any

from rgra_lightning.arithmetic.problems import split_problems
from rgra_lightning.data.base import Example, PromptDataModule, check_val_size
from rgra_lightning.data.records import Record
from rgra_lightning.errors import ConfigError


class ArithmeticDataModule(PromptDataModule):
    """The embedded task (``rgra_lightning.arithmetic``): 1,287 signed-integer and fraction problems, of
    which ``val_size`` are held out for validation (and test). Its prompts must stay those of the warm-up
    that made the shipped policy, so it has no chat, instruction or few-shot options.

    Args:
        prompt_template: Python format string with ``{question}``; the warm-up's is ``{question}=``.
        val_size: problems held out for validation, at least 1 and fewer than all of them.
        **kwargs: ``PromptDataModule``'s options (batch sizes, ``train_size``, ``limit``, ``seed``).
    """

    def __init__(self, prompt_template: str = "{question}=", val_size: int = 128, **kwargs: Any) -> None:
        if "{question}" not in prompt_template:
            raise ConfigError(f"data.prompt_template must contain '{{question}}', got {prompt_template!r}")
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}")
        super().__init__(**kwargs)

    @property
    def held_out_val_size(self) -> int:
        return self.hparams.val_size

    def load_splits(self) -> dict[str, list[Record]]:
        hp = self.hparams
        splits = split_problems(val_size=hp.val_size, seed=hp.seed)
        check_val_size(
            hp.val_size, len(splits["train"]) + len(splits["val"]), "problems of the synthetic task"
        )
        records = {
            split: [{"question": p.question, "answer": p.answer, "reference": p.answer} for p in problems]
            for split, problems in splits.items()
        }
        return {**records, "test": records["val"]}

    def render(self, record: Record, shots: list[Record]) -> Example:
        return {
            "prompt": self.hparams.prompt_template.format(question=record["question"]),
            "reference": record["reference"],
        }
