"""The base of data modules that read question/answer rows (files, datasets) and render them as plain or
chat prompts, optionally with an instruction and few-shot examples."""

from __future__ import annotations

import random
import warnings
from typing import Any

from rgra_lightning.data.base import Example, check_prompt_template
from rgra_lightning.data.chat import ChatCapableDataModule
from rgra_lightning.data.records import Record, ReferenceFormat, Rows, load_records, shot_solution
from rgra_lightning.errors import ConfigError

# Between a plain prompt and its answer, in a few-shot example and in a supervised target.
PLAIN_ANSWER_SEPARATOR = " "
# The row options' values when neither the option nor a preset sets them.
ROW_DEFAULTS = {
    "question_field": "question",
    "answer_field": "answer",
    "reference_format": "answer",
    "prompt_template": "{question}=",  # the embedded task's, as in the warm-up
}


class TextDataModule(ChatCapableDataModule):
    """Problems read from rows with a question and an answer field, rendered as prompts.

    Args:
        question_field, answer_field: the row fields holding the question and the answer or solution
            (default ``question`` and ``answer``, or a preset's).
        reference_format: ``answer`` (the field is the answer), ``gsm8k_solution`` (the answer follows
            ``####`` at the end of a worked solution) or ``boxed_solution`` (the last ``\\boxed{}``).
        skip_invalid: skip (and count, with a warning) rows without a question or usable reference
            instead of stopping with an error naming the row.
        prompt_template: Python format string with ``{question}`` (``plain``), its only field: write ``{{``
            and ``}}`` for literal braces (``\\boxed{{}}``); default ``{question}=``, or with a preset
            ``Question: {question}\\nAnswer:`` (lm-evaluation-harness's).
        few_shot: solved training problems shown before each question (removed from the training set).
        **kwargs: ``ChatCapableDataModule``'s prompt options (``prompt_format``, ``system_prompt``,
            ``instruction``, the tokenizer) and ``PromptDataModule``'s (batch sizes, ``train_size``,
            ``limit``, ``seed``).
    """

    def __init__(
        self,
        question_field: str | None = None,
        answer_field: str | None = None,
        reference_format: ReferenceFormat | None = None,
        skip_invalid: bool = False,
        prompt_template: str | None = None,
        few_shot: int = 0,
        **kwargs: Any,
    ) -> None:
        if prompt_template is not None:
            check_prompt_template(prompt_template)
        if few_shot < 0:
            raise ConfigError(f"data.few_shot must be >= 0, got {few_shot}")
        super().__init__(**kwargs)
        defaults = self.row_defaults()
        # Each row setting: the option when given, else the preset's (``row_defaults``).
        self.settings = {
            name: self.hparams[name] if self.hparams[name] is not None else defaults[name]
            for name in ROW_DEFAULTS
        }
        self.skipped: dict[str, int] = {}

    @property
    def question_template(self) -> str:
        return self.settings["prompt_template"]

    def row_defaults(self) -> dict[str, str]:
        """The row settings used when an option is not set; sources with presets override it."""
        return ROW_DEFAULTS

    def read_records(self, split: str, rows: Rows) -> list[Record]:
        """The records of one split's rows; invalid rows raise, or with ``skip_invalid`` are counted."""
        s = self.settings
        fields = (s["question_field"], s["answer_field"], s["reference_format"], self.hparams.skip_invalid)
        records, skipped = load_records(rows, *fields)
        if skipped:
            self.skipped[split] = skipped
            warnings.warn(
                f"{rows.where}: skipped {skipped} rows without a usable question or answer", stacklevel=2
            )
        return records

    def take_shots(self, records: dict[str, list[Record]], rng: random.Random) -> list[Record]:
        """``few_shot`` random training records, removed from the training set."""
        count = self.hparams.few_shot
        if count == 0:
            return []
        if len(records["train"]) <= count:
            raise ConfigError(f"data.few_shot={count} needs more than {count} training problems")
        indices = set(rng.sample(range(len(records["train"])), count))
        shots = [r for i, r in enumerate(records["train"]) if i in indices]
        records["train"] = [r for i, r in enumerate(records["train"]) if i not in indices]
        return shots

    def render(self, record: Record, shots: list[Record]) -> Example:
        """The prompt of one problem, preceded by the few-shot examples, and its reference answer."""
        fmt, hp = self.settings["reference_format"], self.hparams
        solved = [(self.user_message(s["question"]), shot_solution(s, fmt)) for s in shots]
        question = self.user_message(record["question"])
        if hp.prompt_format == "plain":
            template = self.question_template
            prefix = "".join(
                f"{template.format(question=q)}{PLAIN_ANSWER_SEPARATOR}{a}\n\n" for q, a in solved
            )
            return {"prompt": prefix + template.format(question=question), "reference": record["reference"]}
        return {"prompt": self.chat_prompt(record["question"], solved), "reference": record["reference"]}

    def target(self, record: Record) -> str:
        """The completion of ``record``'s prompt as a few-shot example shows it (``records.shot_solution``):
        the worked solution (GSM8K's without calculator annotations, its ``#### N`` as ``The final answer is
        \\boxed{N}.``), or the boxed reference where the row has none; after a plain prompt, preceded by the
        space that separates a plain example's prompt from its answer."""
        solution = shot_solution(record, self.settings["reference_format"])
        return PLAIN_ANSWER_SEPARATOR + solution if self.hparams.prompt_format == "plain" else solution
