"""The base of data modules whose prompts can be written as chat: a user message (the question, then an
optional instruction on a new line), optionally after a system message and solved examples, rendered by
a tokenizer's chat template."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from rgra_lightning.data.base import ChatPrompt, PromptDataModule, question_label
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import ModelLoadError, load_tokenizer

PromptFormat = Literal["plain", "chat"]


class ChatCapableDataModule(PromptDataModule):
    """A ``PromptDataModule`` with the prompt-format options; sources decide what the question text is.

    Args:
        prompt_format: ``plain`` (the source's template fills the prompt) or ``chat`` (the tokenizer's chat
            template: ``tokenizer_path``, or the policy's tokenizer when the trainer runs with an
            ``RLModule``). A chat prompt is a ``ChatPrompt``, tokenized without the tokenizer's special
            tokens (no second BOS); a plain one gets them (its BOS, if the tokenizer adds one).
        system_prompt: system message (``chat``). Unset, the prompt has none of ours, and a chat template
            with a default of its own inserts that (SmolLM2's "You are a helpful AI assistant named
            SmolLM...", Qwen2.5's "You are Qwen, created by Alibaba Cloud...").
        instruction: appended to each question on a new line, e.g. the answer format.
        chat_template_kwargs: extra variables for the chat template (``chat``), as
            ``apply_chat_template(**kwargs)`` takes them (TRL's ``chat_template_kwargs``): e.g.
            ``{date_string: 26 Jul 2024}`` for Llama 3.x templates, which otherwise write today's date
            into every prompt (a warning says so), so that a run's prompts change from day to day.
        tokenizer_path, tokenizer_gguf_file: the tokenizer for ``chat`` when not taken from the policy.
        **kwargs: ``PromptDataModule``'s options (batch sizes, ``train_size``, ``limit``, ``seed``).
    """

    def __init__(
        self,
        prompt_format: PromptFormat = "plain",
        system_prompt: str | None = None,
        instruction: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        tokenizer_gguf_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        chat_only = {
            "system_prompt": system_prompt,
            "chat_template_kwargs": chat_template_kwargs,
            "tokenizer_path": tokenizer_path,
        }
        unused = [f"data.{name}" for name, value in chat_only.items() if value is not None]
        if prompt_format == "plain" and unused:
            rank_zero_warn(
                f"{' and '.join(unused)}: used with data.prompt_format=chat only; these prompts are plain"
            )

    @property
    def question_template(self) -> str:
        """The format string with ``{question}`` that writes a question (a plain prompt's whole text)."""
        raise NotImplementedError

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Plain prompts whose template introduces the question with a label (``Question:``) stop at that
        label, which starts a run-on completion's invented next problem, as lm-evaluation-harness stops
        GSM8K; chat prompts end at the chat template's EOS token."""
        label = question_label(self.question_template) if self.hparams.prompt_format == "plain" else None
        return (label,) if label else ()

    def user_message(self, question: str) -> str:
        """The question followed by the instruction, if any, on a new line."""
        instruction = self.hparams.instruction
        return f"{question}\n{instruction}" if instruction else question

    def chat_prompt(self, question: str, solved: list[tuple[str, str]] = ()) -> ChatPrompt:
        """The chat-template rendering of the system message, the ``solved`` (user message, answer) pairs
        and ``question``'s user message, ending with the assistant's turn."""
        hp = self.hparams
        messages = [{"role": "system", "content": hp.system_prompt}] if hp.system_prompt else []
        for user, answer in solved:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": self.user_message(question)})
        prompt = self._chat_tokenizer().apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(hp.chat_template_kwargs or {})
        )
        return ChatPrompt(prompt)

    def _chat_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer whose chat template formats prompts: set, ``tokenizer_path``, or the policy's.

        A ``tokenizer_path`` whose vocabulary is not the policy's warns: its template writes special tokens
        (``<|im_start|>``) that the policy splits into other tokens, so training runs on prompts the model
        cannot read. A warning, not an error: a tokenizer that adds a token or two to the policy's can be
        meant. The common case, a base policy given its instruct twin's template, has the same vocabulary
        and passes.
        """
        if self.tokenizer is None:
            hp, trainer = self.hparams, self.trainer
            policy = getattr(trainer.lightning_module, "tokenizer", None) if trainer else None
            if hp.tokenizer_path is not None:
                try:
                    self.tokenizer = load_tokenizer(hp.tokenizer_path, hp.tokenizer_gguf_file)
                except ModelLoadError as error:
                    raise ModelLoadError(f"data.tokenizer_path: {error}") from error
                if policy is not None and self.tokenizer.get_vocab() != policy.get_vocab():
                    rank_zero_warn(
                        f"data.tokenizer_path={hp.tokenizer_path!r} is not the tokenizer of the policy "
                        f"{policy.name_or_path!r}: their vocabularies differ ({len(self.tokenizer)} and "
                        f"{len(policy)} tokens), so the policy reads these chat prompts as other tokens; "
                        "leave data.tokenizer_path unset, or give one with the policy's vocabulary"
                    )
            else:
                self.tokenizer = policy
            if self.tokenizer is None:
                raise ConfigError(
                    "data.prompt_format='chat' needs data.tokenizer_path (or a module with a tokenizer)"
                )
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ConfigError(
                "data.prompt_format='chat': the tokenizer has no chat template; use data.prompt_format=plain "
                "or a data.tokenizer_path whose tokenizer has one"
            )
        if "strftime_now" in str(template) and "date_string" not in (self.hparams.chat_template_kwargs or {}):
            rank_zero_warn(  # shown once: the same message from the same line
                "data: the chat template writes today's date into every prompt (strftime_now), so this "
                "run's prompts change from day to day; pin it with data.chat_template_kwargs, e.g. "
                "{date_string: 26 Jul 2024} for a Llama 3.x template"
            )
        return self.tokenizer
