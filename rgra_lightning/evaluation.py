"""Evaluation: greedy accuracy, and over n sampled completions per problem pass@k and maj@k, as
torchmetrics objects; and the JSONL file of every evaluated completion.

The metrics' states are sums (``dist_reduce_fx="sum"``), so under DDP/FSDP every process updates with its
own problems and ``compute()`` returns the mean over all problems of all processes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import IO

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import Metric

from rewards import Verifier
from rewards.normalize import normalize
from rgra_lightning.distributed import with_distributed_sampler
from rgra_lightning.errors import ConfigError
from rgra_lightning.experience import Experience, PromptBatch
from rgra_lightning.rollout import SamplingConfig
from rgra_lightning.scoring import reward_components


@dataclass(frozen=True)
class EvaluationConfig:
    """How ``validate``/``test`` evaluate the policy on a benchmark split.

    Greedy decoding always gives ``accuracy`` (pass@1 greedy). With ``num_samples`` = n >= 2, n
    completions per problem are also sampled at ``temperature`` and ``pass@k`` / ``maj@k`` are logged for
    every k in ``k``.

    Args:
        num_samples: n, sampled completions per problem (0: greedy only).
        k: the k of pass@k and maj@k; each must be <= n.
        temperature: sampling temperature of the n completions.
        top_p: nucleus mass of the n completions.
        write_samples: write every completion (prompt, completion, extracted answer, reference, reward)
            to ``<log dir>/<stage>_samples.jsonl`` (one file per process: ``_rank<r>`` after rank 0).
    """

    num_samples: int = 0
    k: list[int] = field(default_factory=lambda: [1])
    temperature: float = 1.0
    top_p: float = 1.0
    write_samples: bool = True

    def __post_init__(self) -> None:
        if self.num_samples == 1 or self.num_samples < 0:
            raise ConfigError(f"model.evaluation.num_samples must be 0 or >= 2, got {self.num_samples}")
        if not self.num_samples and self.k != [1]:
            raise ConfigError(
                f"model.evaluation.k={self.k} needs sampled completions: set model.evaluation.num_samples"
            )
        if self.num_samples and not all(1 <= k <= self.num_samples for k in self.k):
            raise ConfigError(
                f"model.evaluation.k values must be in [1, num_samples={self.num_samples}], got {self.k}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"model.evaluation.temperature must be > 0, got {self.temperature}")

    def sampling(self, training: SamplingConfig) -> SamplingConfig:
        """The sampling options of the n completions: the training ones (``top_k``, ``min_p``, stop and
        length options included) with n, ``temperature`` and ``top_p``."""
        return replace(
            training, num_generations=self.num_samples, temperature=self.temperature, top_p=self.top_p
        )


def pass_at_k(num_samples: int, num_correct: Tensor, k: int) -> Tensor:
    """Unbiased pass@k per problem (Chen et al. 2021): ``1 - C(n - c, k) / C(n, k)``.

    Computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` to avoid huge binomials.
    ``num_correct``: ``[B]`` counts c in [0, n]; returns ``[B]`` float64 in [0, 1].
    """
    if not 1 <= k <= num_samples:
        raise ValueError(f"k={k} must be in [1, n={num_samples}]")
    c = num_correct.to(torch.float64)
    i = torch.arange(1, num_samples + 1, dtype=torch.float64, device=c.device)  # [n]
    factors = torch.where(i > num_samples - c.unsqueeze(1), 1.0 - k / i, torch.ones_like(i))  # [B, n]
    return 1.0 - factors.prod(dim=1)


# A number as the verifiers normalise it: an integer, a decimal, a/b or \frac{a}{b}.
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)|-?\d+/\d+")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(\d+)\}\{(\d+)\}")


def answer_key(answer: str) -> str | Fraction:
    """The vote group of an incorrect answer: its exact value when it is a number (so ``5``, ``5.0``,
    ``\\$5``, ``0.5``, ``1/2`` and ``\\frac{1}{2}`` vote together), else its normalised string."""
    normalized = normalize(answer)
    fraction = _LATEX_FRACTION.fullmatch(normalized)
    if fraction:
        normalized = f"{fraction[1]}{fraction[2]}/{fraction[3]}"
    if _NUMBER.fullmatch(normalized) and not normalized.endswith("/0"):
        return Fraction(normalized)
    return normalized


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most frequent answer among the samples is correct (maj@k for k = len(answers)).

    Answers the verifier judged correct are all equivalent to the reference, so they form one group;
    incorrect ones are grouped by ``answer_key``, so that equivalent wrong answers do not split their
    votes. Samples without an extracted answer do not vote. Ties go to the group whose first sample comes
    first.
    """
    keys = [
        None if answer is None else "<correct>" if ok else answer_key(answer)
        for answer, ok in zip(answers, correct, strict=True)
    ]
    votes = Counter(key for key in keys if key is not None)
    if not votes:
        return False
    return votes.most_common(1)[0][0] == "<correct>"


class PassAtK(Metric):
    """Mean unbiased pass@k over problems; ``update(correct)`` with ``correct``: ``[B, n]`` booleans."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        self.total += pass_at_k(correct.shape[1], correct.sum(dim=1), self.k).sum()
        self.count += correct.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class MajorityAtK(Metric):
    """Mean maj@k over problems: the majority answer of each problem's first k samples is correct.

    ``update(answers, correct)``: ``answers`` B lists of n extracted answers (None: none found),
    ``correct``: ``[B, n]`` booleans from the verifier.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, answers: Sequence[Sequence[str | None]], correct: Tensor) -> None:
        if correct.shape[1] < self.k:
            raise ValueError(
                f"maj@{self.k} needs at least {self.k} samples per problem, got {correct.shape[1]}"
            )
        flags = correct[:, : self.k].bool().tolist()
        self.total += sum(majority_correct(a[: self.k], f) for a, f in zip(answers, flags, strict=True))
        self.count += correct.shape[0]

    def compute(self) -> Tensor:
        return self.total.float() / self.count.clamp(min=1)


def evaluation_metrics(config: EvaluationConfig, judged: bool = True) -> torch.nn.ModuleDict:
    """``accuracy`` (greedy pass@1) and, with ``num_samples``, ``pass@k`` and ``maj@k`` for every k; none
    when the verifier judges no correctness (``judged`` False: a learned reward model alone)."""
    sampled = bool(config.num_samples)
    return torch.nn.ModuleDict(
        ({"accuracy": PassAtK(1)} if judged else {})
        | {f"pass@{k}": PassAtK(k) for k in config.k if sampled and judged}
        | {f"maj@{k}": MajorityAtK(k) for k in config.k if sampled and judged}
    )


def update_evaluation_metrics(
    metrics: torch.nn.ModuleDict, greedy: Experience, sampled: Experience | None = None
) -> None:
    """Add one batch of problems: their greedy completions, and their n sampled ones if any."""
    problems = len(greedy.prompts)
    if "accuracy" in metrics:
        metrics["accuracy"].update(greedy.correct.view(problems, 1))
    if sampled is None:
        return
    n = sampled.group_size
    correct = sampled.correct.view(problems, n)
    answers = [[s.extracted for s in sampled.scores[i * n : (i + 1) * n]] for i in range(problems)]
    for name, metric in metrics.items():
        if name.startswith("pass@"):
            metric.update(correct)
        elif name.startswith("maj@"):
            metric.update(answers, correct)


def greedy_summary(experience: Experience, verifier: Verifier) -> dict[str, Tensor]:
    """Accuracy (when ``verifier`` judges correctness), mean reward, mean completion length (tokens) and,
    for a ``WeightedSum``, each component's mean reward (``rewards/<name>``) of a batch of greedy
    completions."""
    length = experience.rollout.completion_mask.sum(dim=1).float().mean()
    accuracy = {"accuracy": experience.correct.mean()} if verifier.judges_correctness else {}
    components = reward_components(verifier, experience.scores)
    return (
        accuracy
        | {"reward": experience.rewards.mean(), "completion_length_mean": length}
        | {f"rewards/{name}": value for name, value in components.items()}
    )


def mean_greedy_summary(
    make_experience: Callable[[PromptBatch], Experience], batches: Iterable[PromptBatch], verifier: Verifier
) -> dict[str, float]:
    """``greedy_summary`` over all ``batches``, weighted by their prompts (the step-0 validation)."""
    totals: dict[str, float] = {}
    count = 0
    for batch in batches:
        size = len(batch["prompt"])
        for name, value in greedy_summary(make_experience(batch), verifier).items():
            totals[name] = totals.get(name, 0.0) + value.item() * size
        count += size
    return {name: total / count for name, total in totals.items()} if count else {}


def log_initial_validation(module: LightningModule, loader: DataLoader) -> None:
    """The step-0 validation of ``module``'s policy: ``mean_greedy_summary`` over ``loader``, each rank on
    its share (as Lightning's validation splits it), averaged over the ranks and logged as ``val/*`` at
    step 0, so every curve starts at its baseline."""
    trainer = module.trainer
    if trainer.world_size > 1:
        loader = with_distributed_sampler(loader, trainer.strategy.distributed_sampler_kwargs)
    means = mean_greedy_summary(module.make_experience, loader, module.verifier)
    metrics = {  # every rank takes part in each reduction
        f"val/{name}": trainer.strategy.reduce(torch.tensor(value, device=module.device), reduce_op="mean")
        for name, value in means.items()
    }
    for logger in module.loggers:
        logger.log_metrics({name: value.item() for name, value in metrics.items()}, step=0)


class SamplesWriter:
    """Appends evaluated completions, one JSON line each (``Experience.records()`` and how they were
    decoded), to ``<log dir>/<stage>_samples.jsonl`` (``_rank<r>`` after rank 0's; the stage is ``val``,
    ``test`` or ``predict``), opened at the first write and flushed after every batch, so an interrupted
    evaluation keeps its finished batches. A row's ``group`` is its problem's index in the file, the same
    for its greedy and sampled completions (each decoding is written once per batch, in batch order).
    Writes nothing unless ``enabled`` (``EvaluationConfig.write_samples``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._file: IO[str] | None = None
        self._others = ""  # how the announcement names the other ranks' files
        self._problems: dict[str, int] = {}  # decoding -> problems written with it so far

    def write(self, experience: Experience, decoding: str, trainer: Trainer) -> None:
        if not self.enabled:
            return
        if self._file is None:
            stage = {TrainerFn.TESTING: "test", TrainerFn.PREDICTING: "predict"}.get(trainer.state.fn, "val")
            directory = Path(trainer.log_dir or trainer.default_root_dir)
            directory.mkdir(parents=True, exist_ok=True)
            rank = trainer.global_rank
            path = directory / f"{stage}_samples{f'_rank{rank}' if rank else ''}.jsonl"
            self._file = path.open("w", encoding="utf-8")
            # each rank writes its share: the announcement names the others' files too
            others = [f"{stage}_samples_rank{r}.jsonl" for r in range(1, min(trainer.world_size, 3))]
            more = ", ..." if trainer.world_size > 3 else ""
            beside = f" (rank 0's; the other ranks' beside it: {', '.join(others)}{more})"
            self._others = beside if others else ""
        first = self._problems.get(decoding, 0)
        for record in experience.records(first):
            self._file.write(json.dumps(record | {"decoding": decoding}, ensure_ascii=False) + "\n")
        self._file.flush()
        self._problems[decoding] = first + len(experience.prompts)

    def close(self, announce: bool = False) -> None:
        """Close the file; with ``announce`` (an evaluation command, not a validation in fit) say where."""
        if self._file is not None:
            self._file.close()
            if announce:
                rank_zero_info(f"completions written to {self._file.name}{self._others}")
            self._file = None
        self._problems.clear()
