"""Evaluation: the means of greedy completions (accuracy, reward, completion length, each reward
component's reward), and over n sampled completions per problem pass@k and maj@k, as torchmetrics
objects; and the JSONL file of every evaluated completion.

The metrics' states are sums (``dist_reduce_fx="sum"``), so under DDP/FSDP every process updates with its
own problems and ``compute()`` returns the mean over all problems of all processes. The
``DistributedSampler`` pads a split that the processes do not divide evenly with repeats of some problems;
they are evaluated (every process must run the same batches) but neither counted nor written
(``counted_problems``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import Metric
from tqdm import tqdm

from rewards import Verifier, WeightedSum
from rewards.equivalence import as_fraction
from rewards.normalize import drop_simple_lhs, normalize
from rgra_lightning.callbacks import LineProgressBar
from rgra_lightning.distributed import counted_on_rank, with_distributed_sampler
from rgra_lightning.errors import ConfigError
from rgra_lightning.experience import Experience, PromptBatch
from rgra_lightning.rollout import SamplingConfig
from rgra_lightning.scoring import reward_components


@dataclass(frozen=True)
class EvaluationConfig:
    """How ``validate``/``test`` evaluate the policy on a benchmark split.

    Greedy decoding always gives ``accuracy`` (pass@1 greedy). With ``num_samples`` = n >= 2, n
    completions per problem are also sampled, with the training sampling options (``model.sampling``:
    ``temperature``, ``top_k``, ``top_p``, ``min_p``, stop and length options) but for the ``temperature``
    and ``top_p`` given here, and ``pass@k`` / ``maj@k`` are logged for every k in ``k``.

    Args:
        num_samples: n, sampled completions per problem (0: greedy only).
        k: the k of pass@k and maj@k; each must be <= n.
        temperature: sampling temperature of the n completions; None: the training one
            (``model.sampling.temperature``).
        top_p: nucleus mass of the n completions; None: the training one (``model.sampling.top_p``).
        write_samples: write every completion (prompt, completion, extracted answer, reference, reward)
            to ``<log dir>/<stage>_samples.jsonl`` (one file per process: ``_rank<r>`` after rank 0; each
            problem in one of them).
    """

    num_samples: int = 0
    k: list[int] = field(default_factory=lambda: [1])
    temperature: float | None = None
    top_p: float | None = None
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
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"model.evaluation.temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"model.evaluation.top_p must be in (0, 1], got {self.top_p}")

    def sampling(self, training: SamplingConfig) -> SamplingConfig:
        """The sampling options of the n completions: the ``training`` ones (``top_k``, ``min_p``, stop and
        length options included) with n, and ``temperature`` and ``top_p`` where this config gives them."""
        return replace(
            training,
            num_generations=self.num_samples,
            temperature=training.temperature if self.temperature is None else self.temperature,
            top_p=training.top_p if self.top_p is None else self.top_p,
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


_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")


def answer_key(answer: str) -> str | Fraction:
    """The vote group of an answer, without the reference: its exact value when it is a number, a
    bare-name left side dropped (so ``5``, ``5.0``, ``\\$5``, ``x = 5`` vote together, and ``-0.5``,
    ``-1/2``, ``\\frac{-1}{2}``), else its normalised string without whitespace, ``\\left`` and ``\\right``
    (``(2, 3)``, ``(2,3)``, ``\\left(2,3\\right)``). Symbolic answers vote together only when they
    normalise alike: ``2\\sqrt{2}`` and ``\\sqrt{8}`` are two groups."""
    normalized = drop_simple_lhs(normalize(answer))
    value = as_fraction(normalized)
    return "".join(_LEFT_RIGHT.sub("", normalized).split()) if value is None else value


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """maj@k of one problem's k = len(answers) samples: whether their most frequent answer is correct.

    Every answer, correct or not, is grouped by ``answer_key`` alone (as in Qwen2.5-Math's and lm-eval's
    maj@k: vote on the answers, then judge the winner), so the reference favours no group. A group's
    correctness is the verifier's verdict on its first sample (its samples share a key, so they normally
    share a verdict too). Samples without an extracted answer do not vote; with no vote at all, 0.
    A tie between several most frequent groups counts the fraction of them that are correct: the
    expected value of breaking it at random, whatever the samples' order.

    Returns a float in [0, 1]: 0 or 1 unless there is a tie.
    """
    votes: Counter[str | Fraction] = Counter()
    verdicts: dict[str | Fraction, bool] = {}  # each group's first sample's
    for answer, ok in zip(answers, correct, strict=True):
        if answer is None:
            continue
        key = answer_key(answer)
        votes[key] += 1
        verdicts.setdefault(key, bool(ok))
    if not votes:
        return 0.0
    most = max(votes.values())
    winners = [key for key, count in votes.items() if count == most]
    return sum(verdicts[key] for key in winners) / len(winners)


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
    """Mean maj@k over problems (``majority_correct``). A problem's maj@k is the mean over the floor(n/k)
    disjoint blocks of k consecutive samples of its n (the last n mod k unused), so that all n samples
    count: maj@n is one vote over them all, and maj@1 is the fraction of samples correct (pass@1 when
    every sample has an answer), not the first sample's correctness alone.

    ``update(answers, correct)``: ``answers`` B lists of n extracted answers (None: none found),
    ``correct``: ``[B, n]`` booleans from the verifier.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, answers: Sequence[Sequence[str | None]], correct: Tensor) -> None:
        n, k = correct.shape[1], self.k
        if n < k:
            raise ValueError(f"maj@{k} needs at least {k} samples per problem, got {n}")
        blocks = range(0, n // k * k, k)
        for problem, flags in zip(answers, correct.bool().tolist(), strict=True):
            if len(problem) != n:
                raise ValueError(f"maj@{k}: {len(problem)} answers for {n} samples")
            votes = [majority_correct(problem[i : i + k], flags[i : i + k]) for i in blocks]
            self.total += sum(votes) / len(votes)
        self.count += correct.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def sampled_metrics(config: EvaluationConfig, judged: bool = True) -> torch.nn.ModuleDict:
    """``pass@k`` and ``maj@k`` for every k when ``config`` samples completions; none when the verifier
    judges no correctness (``judged`` False: a learned reward model alone)."""
    sampled = bool(config.num_samples) and judged
    return torch.nn.ModuleDict(
        {f"pass@{k}": PassAtK(k) for k in config.k if sampled}
        | {f"maj@{k}": MajorityAtK(k) for k in config.k if sampled}
    )


def update_sampled_metrics(metrics: torch.nn.ModuleDict, sampled: Experience, counted: Tensor) -> None:
    """Add the counted problems (``counted`` ``[B]`` bool) of one batch of n sampled completions each."""
    problems, n = len(sampled.prompts), sampled.group_size
    kept = counted.nonzero().flatten().tolist()
    correct = sampled.correct.view(problems, n)[kept]  # [kept, n]
    answers = [[s.extracted for s in sampled.scores[i * n : (i + 1) * n]] for i in kept]
    for name, metric in metrics.items():
        if name.startswith("pass@"):
            metric.update(correct)
        elif name.startswith("maj@"):
            metric.update(answers, correct)


class ProblemMean(Metric):
    """The mean over problems of one value per problem (its ``name``: ``accuracy``, ``reward``...):
    ``update(values, counted)`` with ``values`` ``[B]`` and ``counted`` ``[B]`` bool, the problems to
    count."""

    full_state_update = False

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor, counted: Tensor) -> None:
        counted = counted.to(self.count.device)
        self.total += values.to(self.total)[counted].sum()
        self.count += counted.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def greedy_metrics(verifier: Verifier) -> torch.nn.ModuleList:
    """A ``ProblemMean`` of each value ``greedy_values`` gives for ``verifier``'s scores."""
    components = verifier.names if isinstance(verifier, WeightedSum) else []
    names = ["accuracy"] if verifier.judges_correctness else []
    names += ["reward", "completion_length_mean", *(f"rewards/{name}" for name in components)]
    return torch.nn.ModuleList(ProblemMean(name) for name in names)


def greedy_values(experience: Experience, verifier: Verifier) -> dict[str, Tensor]:
    """Per greedy completion ``[B]`` (one per problem): correctness (``accuracy``, when ``verifier`` judges
    correctness), ``reward``, length in tokens (``completion_length_mean``) and, for a ``WeightedSum``, each
    component's reward (``rewards/<name>``)."""
    values = {"accuracy": experience.correct} if verifier.judges_correctness else {}
    values |= {
        "reward": experience.rewards,
        "completion_length_mean": experience.rollout.completion_mask.sum(dim=1),
    }
    components = reward_components(verifier, experience.scores)
    return values | {f"rewards/{name}": value for name, value in components.items()}


def update_greedy_metrics(
    metrics: torch.nn.ModuleList, experience: Experience, verifier: Verifier, counted: Tensor
) -> None:
    """Add the counted problems (``counted`` ``[B]`` bool) of one batch of greedy completions."""
    values = greedy_values(experience, verifier)
    for metric in metrics:
        metric.update(values[metric.name], counted)


def counted_problems(batch: PromptBatch, trainer: Trainer) -> Tensor:
    """Which problems of an evaluation ``batch`` this process counts, ``[B]`` bool: with several processes,
    those ``counted_on_rank`` gives it by their ``index`` (the others are repeats the
    ``DistributedSampler`` pads with); every one on one process, or when the batch has no ``index`` (a data
    module other than ``PromptDataModule``: then its repeats count twice)."""
    sampler_kwargs = trainer.distributed_sampler_kwargs  # None on one device
    if sampler_kwargs is None or "index" not in batch:
        return torch.ones(len(batch["prompt"]), dtype=torch.bool)
    return counted_on_rank(batch["index"], sampler_kwargs["num_replicas"], sampler_kwargs["rank"])


def counted_records(
    experience: Experience, counted: Tensor, indices: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """The rows of ``experience.records()`` of the problems ``counted`` ``[B]`` bool marks
    (``counted_problems``), each ``group`` still its problem's place in the batch; with ``indices`` (the
    batch's ``index``, ``[B]``), each also with ``index``, its problem's place in the split."""
    kept = set(counted.nonzero().flatten().tolist())
    records = [record for record in experience.records() if record["group"] in kept]
    if indices is None:
        return records
    return [record | {"index": int(indices[record["group"]])} for record in records]


def evaluate_batch(module: LightningModule, batch: dict[str, Any], prefix: str, full: bool = True) -> None:
    """Evaluate one batch of ``module`` (an ``RLModule``) and log under ``prefix`` (``val``, ``test``): the
    means of greedy completions (accuracy, reward, completion length, reward components) and, when
    ``full``, with ``evaluation.num_samples`` = n the sampled pass@k and maj@k, as metric objects that
    aggregate over batches and processes, and each completion written to the samples JSONL. The
    ``DistributedSampler``'s repeats are evaluated (every process runs the same batches) but neither
    counted nor written (``counted_problems``)."""
    size, trainer = len(batch["prompt"]), module.trainer
    counted = counted_problems(batch, trainer)
    greedy = module.make_experience(batch)
    update_greedy_metrics(module.greedy_metrics, greedy, module.verifier, counted)
    for metric in module.greedy_metrics:
        module.log(f"{prefix}/{metric.name}", metric, prog_bar=metric.name == "accuracy", batch_size=size)
    if not full:
        return
    indices = batch.get("index")  # the evaluation loaders of ``PromptDataModule`` give it
    module.samples.write(counted_records(greedy, counted, indices), "greedy", trainer)
    if module.evaluation.num_samples:
        sampled = module.make_experience(batch, module.evaluation.sampling(module.sampling))
        module.samples.write(counted_records(sampled, counted, indices), "sampled", trainer)
        update_sampled_metrics(module.sampled_metrics, sampled, counted)
        for name, metric in module.sampled_metrics.items():
            module.log(f"{prefix}/{name}", metric, batch_size=size)


def log_initial_validation(module: LightningModule, loader: DataLoader) -> None:
    """The step-0 validation of ``module``'s policy: the ``greedy_metrics`` over ``loader``, each rank
    evaluating its share (as Lightning's validation splits it), logged as ``val/*`` at step 0, so every
    curve starts at its baseline. Its progress: a ``LineProgressBar``'s lines, or on rank 0 a TQDM bar
    (``validate (step 0)``, cleared at the end) beside any other enabled progress bar; none without one."""
    trainer = module.trainer
    if trainer.world_size > 1:
        loader = with_distributed_sampler(loader, trainer.strategy.distributed_sampler_kwargs)
    metrics = greedy_metrics(module.verifier).to(module.device)
    bar = trainer.progress_bar_callback  # Lightning's bars show their own loops only
    line_bar = bar if isinstance(bar, LineProgressBar) else None
    shown = bar is not None and getattr(bar, "is_enabled", True) and trainer.is_global_zero
    batches: Any = loader
    if line_bar:
        batches = line_bar.track(loader, "validate")
    elif shown:  # on stdout, as Lightning's TQDM bars, so that a terminal keeps them on separate lines
        batches = tqdm(loader, desc="validate (step 0)", leave=False, dynamic_ncols=True, file=sys.stdout)
    for batch in batches:
        counted = counted_problems(batch, trainer)
        update_greedy_metrics(metrics, module.make_experience(batch), module.verifier, counted)
    module.rollout.release()
    values: dict[str, float] = {}  # none without validation problems; else every rank computes
    if metrics[0].update_called:
        values = {f"val/{metric.name}": metric.compute().item() for metric in metrics}
    if line_bar:  # with the metric the progress bar shows, as after a validation in fit
        line_bar.track_end({name: value for name, value in values.items() if name == "val/accuracy"})
    if not values:
        return
    for logger in module.loggers:
        logger.log_metrics(values, step=0)


class SamplesWriter:
    """Appends evaluated completions, one JSON line each (``Experience.records()`` and how they were
    decoded), to ``<log dir>/<stage>_samples.jsonl`` (``_rank<r>`` after rank 0's; the stage is ``val``,
    ``test`` or ``predict``). The lines go to ``<that name>.partial``, opened at the first write and flushed
    after every batch, which ``close`` renames to the final name: an interrupted evaluation keeps its
    finished batches in the ``.partial`` file and leaves an earlier complete file in place. A row's
    ``group`` is its problem's index in the file, the same for its greedy and sampled completions (each
    decoding is written once per batch, in batch order, for the problems this process counts); ``index``,
    where the batch gives it (``counted_records``), is the problem's index in the split. Writes nothing
    unless ``enabled`` (``EvaluationConfig.write_samples``).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._file: IO[str] | None = None
        self._path: Path | None = None  # the final name, which ``close`` gives the file
        self._others = ""  # how the announcement names the other ranks' files
        self._problems: dict[str, int] = {}  # decoding -> problems written with it so far

    def write(self, records: list[dict[str, Any]], decoding: str, trainer: Trainer) -> None:
        """Write one batch's ``records`` (``counted_records``: the rows of the problems this process counts,
        each ``group`` its problem's place in the batch)."""
        if not self.enabled:
            return
        if self._file is None:
            stage = {TrainerFn.TESTING: "test", TrainerFn.PREDICTING: "predict"}.get(trainer.state.fn, "val")
            directory = Path(trainer.log_dir or trainer.default_root_dir)
            directory.mkdir(parents=True, exist_ok=True)
            rank = trainer.global_rank
            self._path = directory / f"{stage}_samples{f'_rank{rank}' if rank else ''}.jsonl"
            self._file = self._path.with_name(self._path.name + ".partial").open("w", encoding="utf-8")
            # each rank writes its share: the announcement names the others' files too
            others = [f"{stage}_samples_rank{r}.jsonl" for r in range(1, min(trainer.world_size, 3))]
            more = ", ..." if trainer.world_size > 3 else ""
            beside = f" (rank 0's; the other ranks' beside it: {', '.join(others)}{more})"
            self._others = beside if others else ""
        first = self._problems.get(decoding, 0)
        # the place in the file of each problem of the batch, by its place in the batch
        groups = {problem: first + i for i, problem in enumerate(sorted({r["group"] for r in records}))}
        for record in records:
            row = record | {"group": groups[record["group"]], "decoding": decoding}
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self._problems[decoding] = first + len(groups)

    def close(self, announce: bool = False) -> None:
        """Close the file and give it its final name (replacing an earlier file); with ``announce`` (an
        evaluation command, not a validation in fit) say where."""
        if self._file is not None and self._path is not None:
            self._file.close()
            os.replace(self._file.name, self._path)
            if announce:
                rank_zero_info(f"completions written to {self._path}{self._others}")
            self._file = self._path = None
        self._problems.clear()
