"""The recipe for the shipped tiny policy (``models/arith-tiny``): supervised warm-up on the synthetic task.

    python -m rgra_lightning fit --config configs/warmup.yaml

A small Llama-architecture model with a character-level tokenizer is trained from scratch on answers to
the training problems in two styles (see ``problems.worked_answer``): a careful one that writes a worked
step first and is always right, used in ``steps_probability`` of the examples, and a hasty one that boxes an
answer at once and carries the task's misconception (a flipped sign, or denominators added) with
``slip_probability``. The warmed-up policy mostly answers hastily, so greedy decoding starts well below
ceiling; the careful style earns more reward, and RL can find that out only from the verifier.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import torch
from lightning import LightningDataModule, LightningModule
from tokenizers import Tokenizer, decoders, models
from torch.utils.data import DataLoader, IterableDataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rgra_lightning.arithmetic.problems import split_problems, worked_answer
from rgra_lightning.data.base import check_prompt_template
from rgra_lightning.errors import ConfigError

PAD, EOS = "<pad>", "<eos>"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII (space included) plus ``<pad>`` and ``<eos>``."""
    characters = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {token: index for index, token in enumerate([PAD, EOS, *characters])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, padding_side="left"
    )


class WorkedAnswers(IterableDataset):
    """An endless, seeded stream of ``(prompt, completion)`` pairs over the training problems."""

    def __init__(
        self,
        prompt_template: str,
        steps_probability: float,
        slip_probability: float,
        val_size: int,
        split_seed: int,
        seed: int,
    ) -> None:
        self.problems = split_problems(val_size=val_size, seed=split_seed)["train"]
        self.prompt_template = prompt_template
        self.steps_probability = steps_probability
        self.slip_probability = slip_probability
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[str, str]]:
        rng = random.Random(self.seed)
        while True:
            problem = rng.choice(self.problems)
            prompt = self.prompt_template.format(question=problem.question)
            yield prompt, worked_answer(problem, rng, self.steps_probability, self.slip_probability)


class WarmupDataModule(LightningDataModule):
    """Worked answers for supervised warm-up (see the module docstring) on the problems that
    ``split_problems(val_size, split_seed)`` does not hold out (``ArithmeticDataModule`` validates on the
    held-out ones with the same ``val_size`` and ``split_seed``); ``seed`` draws the stream."""

    def __init__(
        self,
        prompt_template: str = "{question}=",
        steps_probability: float = 0.35,
        slip_probability: float = 0.7,
        batch_size: int = 128,
        val_size: int = 128,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("steps_probability", steps_probability), ("slip_probability", slip_probability)):
            if not 0 <= value <= 1:
                raise ConfigError(f"data.{name} must be in [0, 1], got {value}")
        check_prompt_template(prompt_template)
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = WorkedAnswers(
            hp.prompt_template, hp.steps_probability, hp.slip_probability, hp.val_size, hp.split_seed, hp.seed
        )
        return DataLoader(
            dataset, batch_size=hp.batch_size, collate_fn=lambda pairs: list(zip(*pairs, strict=True))
        )


class WarmupModule(LightningModule):
    """Cross-entropy on completion tokens of a tiny Llama trained from scratch.

    Args:
        hidden_size, num_layers, num_heads: the model's shape (the MLP is 3 x hidden_size wide).
        max_positions: context window in tokens (characters).
        learning_rate: peak AdamW learning rate of a one-cycle schedule over ``trainer.max_steps``.
    """

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        max_positions: int = 64,
        learning_rate: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = build_char_tokenizer()
        config = LlamaConfig(
            vocab_size=len(self.tokenizer),
            hidden_size=hidden_size,
            intermediate_size=3 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            bos_token_id=None,
        )
        self.policy = LlamaForCausalLM(config)
        self.policy.generation_config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def hf_model(self) -> LlamaForCausalLM:
        """The model ``ExportHuggingFace`` saves: the warmed-up policy."""
        return self.policy

    def training_step(self, batch: tuple[list[str], list[str]], batch_idx: int) -> torch.Tensor:
        prompts, completions = batch
        texts = [p + c + self.tokenizer.eos_token for p, c in zip(prompts, completions, strict=True)]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right").to(
            self.device
        )
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        prompt_lengths = [len(self.tokenizer(p)["input_ids"]) for p in prompts]
        for row, length in enumerate(prompt_lengths):
            labels[row, :length] = -100
        loss = self.policy(**encoded, labels=labels).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=self.hparams.learning_rate, weight_decay=0.0
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.learning_rate, total_steps=self.trainer.max_steps, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
