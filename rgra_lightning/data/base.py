"""The base of every prompt data module: batches of ``{"prompt": [...], "reference": [...]}``.

A source subclass loads question/answer records for the train, val and test splits (``load_splits``) and
renders each record as a prompt (``render``); the base takes the training subset and evaluation limit,
builds the examples once, and makes the loaders (a seeded shuffle of full training batches; the validation
and test batches in order, with each problem's ``index`` in its split).

For a module that trains on worked solutions (``SFTModule``, whose ``trains_on_targets`` is true) the
batches also carry each problem's ``target`` (``PromptDataModule.target``); RL batches never do.
"""

from __future__ import annotations

import math
import random
import string
from typing import Any

import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from rgra_lightning.data.records import Record, shot_solution
from rgra_lightning.distributed import with_distributed_sampler
from rgra_lightning.errors import ConfigError

# {"prompt": str, "reference": str}; "index": int in evaluation loaders, "target": str for SFT loaders
Example = dict[str, Any]
SPLITS = ("train", "val", "test")


class ChatPrompt(str):
    """A prompt rendered by a chat template. Its text already holds the special tokens the model expects
    (the BOS token where the template writes one), so the rollout tokenizes it without adding the
    tokenizer's own, as ``apply_chat_template(..., tokenize=True)`` does. Operations on it (slicing,
    concatenation) give plain ``str``: only the rendered text itself carries the mark."""

    __slots__ = ()


def collate(examples: list[Example]) -> dict[str, list[Any]]:
    """A batch: the examples' prompts and references, and their ``index`` and ``target`` when they carry
    them."""
    keys = ("prompt", "reference", *(key for key in ("index", "target") if key in examples[0]))
    return {key: [example[key] for example in examples] for key in keys}


def check_val_size(val_size: int, total: int, what: str) -> None:
    """Raise a ``ConfigError`` unless holding out ``val_size`` of the ``total`` problems (``what``) leaves
    at least one to train on (a larger ``val_size`` would silently take them all)."""
    if total < 2:
        raise ConfigError(
            f"data.val_size={val_size}: the {total} {what} are too few to hold out validation problems "
            "from; give a validation split"
        )
    if val_size >= total:
        raise ConfigError(
            f"data.val_size={val_size} must be between 1 and {total - 1}: it holds out validation "
            f"problems from the {total} {what}"
        )


def check_prompt_template(template: str) -> None:
    """Raise a one-line ``ConfigError`` unless ``template`` is a format string whose only field is
    ``{question}``: a literal brace (``\\boxed{}``) or another field (``{level}``) would otherwise stop the
    run at its first prompt, after the model has loaded, with a traceback (``IndexError``, ``KeyError``)."""
    escape = "write {{ and }} for a literal brace"
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:  # a lone brace: "Single '}' encountered in format string"
        raise ConfigError(f"data.prompt_template: {error}; {escape}, got {template!r}") from error
    for field in fields:
        if field != "question":
            raise ConfigError(
                f"data.prompt_template has the field {{{field}}}, and the only field is {{question}}; "
                f"{escape}, got {template!r}"
            )
    if not fields:
        raise ConfigError(f"data.prompt_template must contain '{{question}}', got {template!r}")


def question_label(template: str) -> str | None:
    """The label that introduces the question in a plain prompt ``template``, if it has one: the last line
    of the text before ``{question}`` when it ends in a colon (``Question:`` in ``Question: {question}\n
    Answer:``, ``Q:``, ``Problem:``); None otherwise (``{question}=``, ``Compute {question}.``)."""
    literal = ""
    for text, field, _, _ in string.Formatter().parse(template):  # "{{" ends a chunk of literal text
        literal += text
        if field is not None:
            break
    lines = literal.strip().splitlines()
    label = lines[-1].strip() if lines else ""
    return label if label.endswith(":") else None


class PromptDataModule(LightningDataModule):
    """Batches of math prompts with reference answers; subclasses say where the problems come from.

    Args:
        train_size: random subset of the training problems (seeded); none: all.
        limit: keep only the first ``limit`` problems of the validation and test splits (quick runs,
            fixed evaluation subsets); ``train_size`` shortens the training set.
        batch_size: prompts per training step (each is sampled G times by the module); the last partial
            batch of an epoch is dropped, and fit raises a ``ConfigError`` when no full batch is left.
        val_batch_size: prompts per validation/test batch.
        seed: seeds the splits, subsets, few-shot choice and the training shuffle order.
    """

    def __init__(
        self,
        train_size: int | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        val_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ConfigError(
                f"data.batch_size and data.val_batch_size must be >= 1, got {batch_size}, {val_batch_size}"
            )
        for name, value in (("train_size", train_size), ("limit", limit)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self.records: dict[str, list[Record]] = {}  # each split's records, in its examples' order
        self.test_split_size = 0  # the test problems before ``limit``

    # ----------------------------------------------------------- for sources

    def load_splits(self) -> dict[str, list[Record]]:
        """The records of the ``train``, ``val`` and ``test`` splits (a missing one: no problems)."""
        raise NotImplementedError

    def render(self, record: Record, shots: list[Record]) -> Example:
        """The prompt of one problem (after the few-shot ``shots``) and its reference answer."""
        raise NotImplementedError

    def take_shots(self, records: dict[str, list[Record]], rng: random.Random) -> list[Record]:
        """Solved examples shown before every question, removed from ``records["train"]``; none here."""
        return []

    def target(self, record: Record) -> str:
        """The completion a supervised fine-tune (``SFTModule``) trains on after ``record``'s prompt: the
        answer in the boxed form a few-shot example shows it (``records.shot_solution``); sources with
        worked solutions give those (``TextDataModule``)."""
        return shot_solution(record, "answer")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Texts that end a completion of these prompts (``model.sampling.stop_strings``'s default): none
        here; plain prompts that introduce the question with a label stop where a run-on completion would
        start the next one (``ChatCapableDataModule``)."""
        return ()

    @property
    def held_out_val_size(self) -> int | None:
        """``val_size`` when the validation problems are held out of the training problems, else None."""
        return None

    # ---------------------------------------------------------------- loading

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples or self.val_examples:
            return
        hp = self.hparams
        records = self.load_splits()
        rng = random.Random(hp.seed)
        shots = self.take_shots(records, rng)
        if hp.train_size is not None and len(records["train"]) > hp.train_size:
            records["train"] = rng.sample(records["train"], hp.train_size)
        elif hp.train_size is not None and 0 < len(records["train"]) < hp.train_size:
            # fewer updates per epoch; no training split at all is one that was not read (test, predict)
            rank_zero_warn(
                f"data.train_size={hp.train_size}, and the training split has {len(records['train'])} "
                f"problems: training on all {len(records['train'])}"
            )
        self.test_split_size = len(records.get("test", []))
        for split in SPLITS:
            examples = records.get(split, [])
            if hp.limit is not None and split != "train":
                examples = examples[: hp.limit]
            self.records[split] = examples
            setattr(self, f"{split}_examples", [self.render(r, shots) for r in examples])

    @property
    def serves_targets(self) -> bool:
        """Whether the loaders add each problem's ``target`` to its example: for a trainer whose module
        trains on them (its ``trains_on_targets``, ``SFTModule``'s); never for ``RLModule``, whose batches
        stay the prompts and references."""
        return bool(getattr(getattr(self.trainer, "lightning_module", None), "trains_on_targets", False))

    def loader_examples(self, split: str) -> list[Example]:
        """The examples of ``split`` as its loader serves them: with their ``target`` where
        ``serves_targets`` (rendered here, so that RL runs never render them)."""
        examples = getattr(self, f"{split}_examples")
        if not self.serves_targets:
            return examples
        records = self.records[split]
        return [example | {"target": self.target(r)} for example, r in zip(examples, records, strict=True)]

    # ------------------------------------------------------------ dataloaders

    def train_dataloader(self) -> DataLoader:
        """Shuffled full batches of ``batch_size`` prompts (the last partial batch is dropped).

        Raises a ``ConfigError`` when that leaves no batch: Lightning would skip training with a warning and
        the run would end as if it had succeeded. Checked here rather than in ``setup``, which evaluation
        (``validate``, ``test``, ``label``) also runs, on splits with no training problems (MATH-500).
        """
        hp, count = self.hparams, len(self.train_examples)
        ranks = self.trainer.world_size if self.trainer is not None else 1
        # Each rank's DistributedSampler yields ceil(count / ranks) problems (padded by repeating some), so
        # every rank has a full batch from this many problems on.
        needed = ranks * (hp.batch_size - 1) + 1
        if count < needed:
            problems = f"{count} training problems"
            if ranks > 1:
                problems = f"{math.ceil(count / ranks)} training problems per rank ({count} on {ranks} ranks)"
            val_size = self.held_out_val_size
            if hp.train_size is not None and hp.train_size < needed:
                hint = f"; raise data.train_size={hp.train_size} to at least {needed}"
            elif val_size is not None and val_size + count - needed >= 1:
                hint = f"; data.val_size={val_size} holds out too many, use 1 to {val_size + count - needed}"
            else:
                hint = ""
            raise ConfigError(
                f"data.batch_size={hp.batch_size} is larger than the {problems}, so there is no full "
                f"training batch{hint}"
            )
        generator = torch.Generator().manual_seed(hp.seed)
        return DataLoader(
            self.loader_examples("train"),
            batch_size=hp.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            collate_fn=collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader(self.loader_examples("val"))

    def test_dataloader(self) -> DataLoader:
        if len(self.test_examples) < self.test_split_size:  # a benchmark number on part of the benchmark
            rank_zero_warn(
                f"data.limit={self.hparams.limit}: evaluating the first {len(self.test_examples)} of the "
                f"{self.test_split_size} test problems (--data.limit null for all of them)"
            )
        return self.evaluation_loader(self.loader_examples("test"))

    def evaluation_loader(self, examples: list[Example]) -> DataLoader:
        """Batches of ``val_batch_size`` examples in order, each with its ``index`` in the split: with
        several processes, each counts only the problems that ``distributed.counted_on_rank`` gives it, not
        the repeats the ``DistributedSampler`` pads the split with."""
        indexed = [example | {"index": index} for index, example in enumerate(examples)]
        return DataLoader(indexed, batch_size=self.hparams.val_batch_size, collate_fn=collate)

    def predict_dataloader(self) -> DataLoader:
        """The test loader; with several processes, with the padded ``DistributedSampler`` of ``validate``
        and ``test`` (``distributed.with_distributed_sampler``), which Lightning keeps. Lightning's own for
        prediction does not pad, so ranks ran different numbers of batches and FSDP2's all-gathers in one
        rank's extra batch failed (gloo) or hung (NCCL); with fewer problems than processes it failed an
        assertion. The repeats are neither written nor returned (``counted_problems``)."""
        loader = self.test_dataloader()
        if self.trainer is None or self.trainer.world_size == 1:
            return loader
        return with_distributed_sampler(loader, self.trainer.strategy.distributed_sampler_kwargs)
