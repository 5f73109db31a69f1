"""The embedded arithmetic task as a data module: problems generated in code, nothing to download."""

from __future__ import annotations

from typing import Any

from rgra_lightning.arithmetic.problems import split_problems
from rgra_lightning.data.base import Example, check_prompt_template, check_val_size
from rgra_lightning.data.chat import ChatCapableDataModule
from rgra_lightning.data.records import Record
from rgra_lightning.errors import ConfigError


class ArithmeticDataModule(ChatCapableDataModule):
    """The embedded task (``rgra_lightning.arithmetic``): 1,287 signed-integer and fraction problems, of
    which ``val_size`` are held out for validation (and test). The defaults give the prompts of the warm-up
    that made the shipped tiny policy (``6*(-2)=``); for a pretrained chat model, ask the question in a
    chat prompt (``prompt_format: chat``, ``prompt_template: "Compute {question}."`` and an answer-format
    ``instruction``, as configs/smollm2-135m/arithmetic-rgra.yaml does).

    Args:
        prompt_template: Python format string with ``{question}`` (the expression), its only field (write
            ``{{`` and ``}}`` for literal braces), giving the question text: the whole prompt (``plain``)
            or the user message (``chat``), either followed by the ``instruction`` on a new line. The
            warm-up's is ``{question}=``.
        val_size: problems held out for validation, at least 1 and fewer than all of them.
        split_seed: which problems are held out (``split_problems``): the warm-up's ``data.split_seed``,
            0 for the shipped policy, whose warm-up trained on the others. It is not ``seed``, so that a
            run with another ``seed`` (shuffle order, subsets) validates on problems never trained on.
        **kwargs: ``ChatCapableDataModule``'s prompt options (``prompt_format``, ``system_prompt``,
            ``instruction``, the tokenizer) and ``PromptDataModule``'s (batch sizes, ``train_size``,
            ``limit``, ``seed``).
    """

    def __init__(
        self, prompt_template: str = "{question}=", val_size: int = 128, split_seed: int = 0, **kwargs: Any
    ) -> None:
        check_prompt_template(prompt_template)
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}")
        super().__init__(**kwargs)

    @property
    def question_template(self) -> str:
        return self.hparams.prompt_template

    @property
    def held_out_val_size(self) -> int:
        return self.hparams.val_size

    def load_splits(self) -> dict[str, list[Record]]:
        hp = self.hparams
        splits = split_problems(val_size=hp.val_size, seed=hp.split_seed)
        check_val_size(
            hp.val_size, len(splits["train"]) + len(splits["val"]), "problems of the synthetic task"
        )
        records = {
            split: [{"question": p.question, "answer": p.answer, "reference": p.answer} for p in problems]
            for split, problems in splits.items()
        }
        return {**records, "test": records["val"]}

    def render(self, record: Record, shots: list[Record]) -> Example:
        question = self.question_template.format(question=record["question"])
        if self.hparams.prompt_format == "chat":
            return {"prompt": self.chat_prompt(question), "reference": record["reference"]}
        return {"prompt": self.user_message(question), "reference": record["reference"]}
