"""Learned reward models as reward components: a frozen Hugging Face model scores (prompt, completion) pairs.

Two kinds of model give a raw score that is a log-odds in both cases:

- ``classifier``: a sequence-classification model. With one output its logit is the raw score; with two,
  ``logit[1] - logit[0]`` (the log-odds of class 1, "correct"). An outcome reward model trained by
  ``rgra_lightning.reward_models.training`` is of this kind.
- ``judge``: a causal LM shown ``judge_template`` (prompt, completion and a question); the raw score is
  the log-odds that the next token is ``judge_token``: ``log p - log(1 - p)``.

The raw score is then transformed (``sigmoid``: a probability in (0, 1); ``standardize``: zero mean and
unit standard deviation over the scored batch; ``none``) and optionally clipped to ``clip``.

``RewardModelScorer`` is a ``rewards.Verifier``, so it combines with the verifiers in YAML through
``rewards.WeightedSum`` (e.g. 1.0 x math verifier + 0.2 x reward model). Inside ``RLModule`` its model is a
frozen submodule: it moves to the trainer's device with the policy, is sharded like the reference model
under FSDP2 (replicated under DDP), is never in the optimizer and is left out of checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from rewards import Score, Verifier
from rgra_lightning.distributed import is_sharded, reshard_root, without_autograd
from rgra_lightning.errors import ConfigError, require_valid
from rgra_lightning.models import (
    ModelLoadError,
    freeze,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
)
from rgra_lightning.prompt_cache import last_positions, position_ids
from rgra_lightning.rollout.base import prompt_token_ids

Transform = Literal["sigmoid", "standardize", "none"]
DEFAULT_MAX_LENGTH = 512  # tokens per scored text where neither the config nor the tokenizer gives one


def transform_scores(raw: Tensor, transform: Transform, clip: tuple[float, float] | None = None) -> Tensor:
    """Rewards ``[N]`` from raw log-odds scores ``[N]``; ``standardize`` uses the batch's mean and (biased)
    std and gives zeros when the batch has fewer than two rows or no spread."""
    if transform == "sigmoid":
        values = torch.sigmoid(raw)
    elif transform == "standardize":
        spread = raw.std(unbiased=False) if raw.numel() > 1 else raw.new_zeros(())
        values = (raw - raw.mean()) / spread if spread > 0 else torch.zeros_like(raw)
    elif transform == "none":
        values = raw
    else:
        raise ConfigError(f"transform must be one of sigmoid, standardize, none; got {transform!r}")
    return values if clip is None else values.clamp(*clip)


def judge_log_odds(logits: Tensor, token_id: int) -> Tensor:
    """``log p - log(1 - p)`` ``[N]`` (float32) of token ``token_id`` under ``softmax(logits)`` for next-token
    ``logits`` ``[N, V]``, as that token's logit minus the log-sum-exp of the others': exact, and finite
    where a confident judge's p rounds to 1 in float32 (a margin of about ln V + 17 logits), which
    ``log_softmax`` would turn into an infinite score."""
    logits = logits.float()
    others = logits.index_fill(1, torch.tensor([token_id], device=logits.device), -float("inf"))
    return logits[:, token_id] - torch.logsumexp(others, dim=-1)


def pair_text(prompt: str, completion: str) -> str:
    """The text a classifier reward model reads, in training and in scoring alike."""
    return prompt + completion


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, model: nn.Module
) -> dict[str, Tensor]:
    """Model inputs ``[N, L]`` on ``model``'s device: left-padded (every row ends in the last column),
    texts longer than ``max_length`` tokens keep their end, position ids count real tokens only. A text
    that already starts with the tokenizer's BOS (a prompt from a chat template that writes it) gets no
    second one (``prompt_token_ids``)."""
    ids = [row[-max_length:] for row in prompt_token_ids(tokenizer, list(texts))]
    encoded = tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt").to(
        next(model.parameters()).device
    )
    return {**encoded, "position_ids": position_ids(encoded["attention_mask"])}


def classifier_scores(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> Tensor:
    """Log-odds ``[N]`` (float32) of a sequence-classification model: its logit with one output,
    ``logit[1] - logit[0]`` with two. Differentiable: the reward-model trainer uses it too."""
    logits = model(**encode(tokenizer, texts, max_length, model)).logits.float()
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


class RewardModelScorer(Verifier):
    """Reward = transformed score of a frozen reward model on (prompt, completion); see the module docstring.

    Args:
        model_path: local Hugging Face directory (or ``package:``/hub name, as for the policy).
        gguf_file: optional GGUF file inside ``model_path``.
        kind: ``classifier`` (sequence-classification head) or ``judge`` (causal LM, ``judge_token``).
        dtype: parameter dtype, ``float32`` | ``bfloat16`` | ``float16``.
        transform: ``sigmoid`` | ``standardize`` | ``none``, applied to the raw log-odds.
        clip: optional ``[low, high]`` bounds applied after the transform.
        max_length: tokens per scored text; longer texts keep their last ``max_length`` tokens (the end
            of the completion matters most). None: the reward model's tokenizer's ``model_max_length``
            where it saved one (a reward model trained here saves its training ``max_length``), else
            ``DEFAULT_MAX_LENGTH``.
        batch_size: texts per forward pass.
        judge_template: ``judge`` input, a format string with ``{prompt}`` and ``{completion}``.
        judge_token: ``judge``: the token (exactly one for the tokenizer) whose probability is the score.
    """

    judges_correctness = False  # a learned score, not a verdict: ``correct`` stays False
    runtime_options = ("batch_size",)  # scores do not depend on it: a resume may change it

    @classmethod
    def check_options(
        cls,
        prefix: str,
        *,
        kind: str,
        transform: str,
        clip: tuple[float, float] | None,
        max_length: int | None,
        batch_size: int,
        **others: object,
    ) -> None:
        require_valid(
            prefix,
            ("kind", kind, kind in ("classifier", "judge"), "'classifier' or 'judge'"),
            (
                "transform",
                transform,
                transform in ("sigmoid", "standardize", "none"),
                "sigmoid, standardize or none",
            ),
            (
                "clip",
                None if clip is None else list(clip),
                clip is None or clip[0] < clip[1],
                "[low, high], low < high",
            ),
            ("max_length", max_length, max_length is None or max_length >= 1, ">= 1"),
            ("batch_size", batch_size, batch_size >= 1, ">= 1"),
        )

    def __init__(
        self,
        model_path: str,
        gguf_file: str | None = None,
        kind: Literal["classifier", "judge"] = "classifier",
        dtype: str = "float32",
        transform: Transform = "sigmoid",
        clip: tuple[float, float] | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        judge_template: str = "{prompt}{completion}\nIs the answer correct?",
        judge_token: str = " Yes",
    ) -> None:
        RewardModelScorer.check_options(
            "RewardModelScorer ",
            kind=kind,
            transform=transform,
            clip=clip,
            max_length=max_length,
            batch_size=batch_size,
        )
        self.kind = kind
        self.transform = transform
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.batch_size = batch_size
        self.judge_template = judge_template
        try:
            self.tokenizer = load_tokenizer(model_path, gguf_file)
        except ModelLoadError as error:
            if kind != "classifier":
                raise
            raise ModelLoadError(
                f"reward model: {error} A reward model of your own is trained with "
                "configs/reward_model.yaml (docs/reward-models.md)"
            ) from error
        self.tokenizer.truncation_side = "left"
        if max_length is None:  # transformers' stand-in for "none saved" is a huge integer
            saved = self.tokenizer.model_max_length
            max_length = saved if saved < VERY_LARGE_INTEGER else DEFAULT_MAX_LENGTH
        self.max_length = max_length
        if kind == "classifier":
            self.model: nn.Module = freeze(load_sequence_classifier(model_path, gguf_file, dtype))
            saved = self.model.config.architectures or ["a model of unknown class"]
            if not any(name.endswith("ForSequenceClassification") for name in saved):
                # transformers would add a randomly initialised score head: a random reward, no error
                raise ConfigError(
                    f"reward model {model_path!r} is a {saved[0]} without a trained score head: train one "
                    "(configs/reward_model.yaml) or score with kind: judge"
                )
            num_labels = self.model.config.num_labels
            if num_labels not in (1, 2):
                raise ConfigError(
                    f"reward model {model_path!r} has {num_labels} labels; a classifier reward model needs 1 "
                    "(a score) or 2 (incorrect, correct)"
                )
            if self.model.config.pad_token_id is None:  # needed to find each row's last token
                self.model.config.pad_token_id = self.tokenizer.pad_token_id
        else:
            if "{prompt}" not in judge_template or "{completion}" not in judge_template:
                raise ConfigError(
                    f"RewardModelScorer judge_template must contain {{prompt}} and {{completion}}, got "
                    f"{judge_template!r}"
                )
            token_ids = self.tokenizer.encode(judge_token, add_special_tokens=False)
            if len(token_ids) != 1:
                raise ConfigError(
                    f"RewardModelScorer judge_token {judge_token!r} is {len(token_ids)} tokens for the "
                    f"tokenizer of {model_path!r}; it must be exactly one"
                )
            self.judge_token_id = token_ids[0]
            self.model = freeze(load_causal_lm(model_path, gguf_file, dtype))

    @property
    def scored_in_whole_batches(self) -> bool:
        """Whether ``robust_score_batch`` must not score a batch that failed again one completion at a time:
        ``standardize`` scores each completion against its batch's others (alone, each would be 0), and an
        FSDP2-sharded model's forwards are collectives (one rank scoring alone would pair its gathers with
        the other ranks' other gathers: a hang, or layers gathered with another layer's weights)."""
        return self.transform == "standardize" or is_sharded(self.model)

    def texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        """What the model reads for each pair."""
        if self.kind == "classifier":
            return [
                pair_text(prompt, completion) for prompt, completion in zip(prompts, completions, strict=True)
            ]
        return [
            self.judge_template.format(prompt=prompt, completion=completion)
            for prompt, completion in zip(prompts, completions, strict=True)
        ]

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Log-odds scores ``[N]`` (float32, CPU), computed in batches on the model's device."""
        texts = self.texts(prompts, completions)
        scores = []
        with without_autograd(self.model):
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                if self.kind == "classifier":
                    scores.append(classifier_scores(self.model, self.tokenizer, chunk, self.max_length))
                else:
                    inputs = encode(self.tokenizer, chunk, self.max_length, self.model)
                    length, device = inputs["input_ids"].shape[1], inputs["input_ids"].device
                    logits = self.model(**inputs, logits_to_keep=last_positions(1, length, device))
                    scores.append(judge_log_odds(logits.logits[:, -1], self.judge_token_id))
        reshard_root(self.model)
        return torch.cat(scores).cpu() if scores else torch.zeros(0)

    def score_batch(
        self,
        completions: Sequence[str],
        references: Sequence[str],
        prompts: Sequence[str] | None = None,
    ) -> list[Score]:
        if prompts is None:
            raise ValueError("RewardModelScorer scores (prompt, completion) pairs: score_batch needs prompts")
        values = transform_scores(self.raw_scores(prompts, completions), self.transform, self.clip)
        return [Score(value, False, None, f"reward model {value:.3f}") for value in values.tolist()]

    def score(self, completion: str, reference: str) -> Score:
        raise ValueError("RewardModelScorer scores (prompt, completion) pairs: use score_batch with prompts")


def learned_reward_models(verifier: Verifier) -> list[nn.Module]:
    """The models of every ``RewardModelScorer`` in ``verifier`` (itself, or inside ``WeightedSum``s)."""
    if isinstance(verifier, RewardModelScorer):
        return [verifier.model]
    return [model for part in getattr(verifier, "verifiers", ()) for model in learned_reward_models(part)]
