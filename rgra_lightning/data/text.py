"""The base of data modules that read question/answer rows (files, datasets) and render them as plain or
chat prompts, optionally with an instruction and few-shot examples."""

from __future__ import annotations

import random
import warnings
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from rgra_lightning.data.base import ChatPrompt, Example, PromptDataModule
from rgra_lightning.data.records import Record, ReferenceFormat, Rows, load_records, shot_solution
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_tokenizer

# The row options' values when neither the option nor a preset sets them.
ROW_DEFAULTS = {
    "question_field": "question",
    "answer_field": "answer",
    "reference_format": "answer",
    "prompt_template": "{question}=",  # the embedded task's, as in the warm-up
}


class TextDataModule(PromptDataModule):
    """Problems read from rows with a question and an answer field, rendered as prompts.

    Args:
        question_field, answer_field: the row fields holding the question and the answer or solution
            (default ``question`` and ``answer``, or a preset's).
        reference_format: ``answer`` (the field is the answer), ``gsm8k_solution`` (the answer follows
            ``####`` at the end of a worked solution) or ``boxed_solution`` (the last ``\\boxed{}``).
        skip_invalid: skip (and count, with a warning) rows without a question or usable reference
            instead of stopping with an error naming the row.
        prompt_format: ``plain`` fills ``prompt_template``; ``chat`` applies the tokenizer's chat template
            (``tokenizer_path``, or the policy's tokenizer when the trainer runs with an ``RLModule``). A
            chat prompt is a ``ChatPrompt``, tokenized without the tokenizer's special tokens (no second
            BOS); a plain one gets them (its BOS, if the tokenizer adds one).
        prompt_template: Python format string with ``{question}`` (``plain``); default ``{question}=``, or
            with a preset ``Question: {question}\\nAnswer:`` (lm-evaluation-harness's).
        system_prompt: system message (``chat``); none when unset.
        instruction: appended to each question on a new line, e.g. the answer format.
        few_shot: solved training problems shown before each question (removed from the training set).
        tokenizer_path, tokenizer_gguf_file: the tokenizer for ``chat`` when not taken from the policy.
        **kwargs: ``PromptDataModule``'s options (batch sizes, ``train_size``, ``limit``, ``seed``).
    """

    def __init__(
        self,
        question_field: str | None = None,
        answer_field: str | None = None,
        reference_format: ReferenceFormat | None = None,
        skip_invalid: bool = False,
        prompt_format: Literal["plain", "chat"] = "plain",
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        instruction: str | None = None,
        few_shot: int = 0,
        tokenizer_path: str | None = None,
        tokenizer_gguf_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        if prompt_template is not None and "{question}" not in prompt_template:
            raise ConfigError(f"data.prompt_template must contain '{{question}}', got {prompt_template!r}")
        if few_shot < 0:
            raise ConfigError(f"data.few_shot must be >= 0, got {few_shot}")
        super().__init__(**kwargs)
        defaults = self.row_defaults()
        # Each row setting: the option when given, else the preset's (``row_defaults``).
        self.settings = {
            name: self.hparams[name] if self.hparams[name] is not None else defaults[name]
            for name in ROW_DEFAULTS
        }
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.skipped: dict[str, int] = {}

    def row_defaults(self) -> dict[str, str]:
        """The row settings used when an option is not set; sources with presets override it."""
        return ROW_DEFAULTS

    def read_records(self, split: str, rows: Rows) -> list[Record]:
        """The records of one split's rows; invalid rows raise, or with ``skip_invalid`` are counted."""
        s = self.settings
        fields = (s["question_field"], s["answer_field"], s["reference_format"], self.hparams.skip_invalid)
        records, skipped = load_records(rows.table, rows.where, *fields, lines=rows.lines)
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

    def user_message(self, question: str) -> str:
        instruction = self.hparams.instruction
        return f"{question}\n{instruction}" if instruction else question

    def render(self, record: Record, shots: list[Record]) -> Example:
        """The prompt of one problem, preceded by the few-shot examples, and its reference answer."""
        fmt, hp = self.settings["reference_format"], self.hparams
        solved = [(self.user_message(s["question"]), shot_solution(s, fmt)) for s in shots]
        question = self.user_message(record["question"])
        if hp.prompt_format == "plain":
            template = self.settings["prompt_template"]
            prefix = "".join(f"{template.format(question=q)} {a}\n\n" for q, a in solved)
            return {"prompt": prefix + template.format(question=question), "reference": record["reference"]}
        messages = [{"role": "system", "content": hp.system_prompt}] if hp.system_prompt else []
        for q, a in solved:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        prompt = self._chat_tokenizer().apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return {"prompt": ChatPrompt(prompt), "reference": record["reference"]}

    def _chat_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer whose chat template formats prompts: set, ``tokenizer_path``, or the policy's."""
        if self.tokenizer is None:
            hp = self.hparams
            if hp.tokenizer_path is not None:
                self.tokenizer = load_tokenizer(hp.tokenizer_path, hp.tokenizer_gguf_file)
            else:
                trainer = self.trainer
                self.tokenizer = getattr(trainer.lightning_module, "tokenizer", None) if trainer else None
            if self.tokenizer is None:
                raise ConfigError(
                    "data.prompt_format='chat' needs data.tokenizer_path (or a module with a tokenizer)"
                )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                "data.prompt_format='chat': the tokenizer has no chat template; use data.prompt_format=plain "
                "or a data.tokenizer_path whose tokenizer has one"
            )
        return self.tokenizer
