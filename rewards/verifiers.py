"""The ``Verifier`` interface and its implementations.

A verifier turns (completion text, reference answer) into a ``Score``. It never raises on model output:
anything it cannot parse earns reward 0 with the reason in ``details``/``error``.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import math
import os
import re
import warnings
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction

from rewards.equivalence import as_fraction, equivalent, fast_readings_equivalent, warmup
from rewards.errors import ConfigError, require_valid
from rewards.extract import DEFAULT_ORDER, EXTRACTORS, extract_answer
from rewards.normalize import normalize_pair, strip_wrappers
from rewards.sandbox import Outcome, WorkerPool


@dataclass(frozen=True)
class Score:
    """The verdict on one completion."""

    reward: float  # what the trainer optimises
    correct: bool  # the final answer is mathematically equivalent to the reference (accuracy)
    extracted: str | None  # the extracted answer, None if none was found
    details: str  # short human-readable reason, for logs
    error: str | None = None  # None, or why verification failed (reward is then 0)
    components: dict[str, float] = field(default_factory=dict)  # a combination's unweighted parts, by name


class Verifier(abc.ABC):
    """Scores completions against reference answers. Subclass it and implement ``score``; override
    ``score_batch`` when a batch is faster than a loop or when the prompts matter (learned reward models).
    """

    judges_correctness: bool = True  # False: its ``correct`` is no verdict (format rewards, learned models)
    runtime_options: tuple[str, ...] = ()  # arguments that change speed, not scores: left out of ``settings``
    _arguments: dict[str, object] = {}  # what ``__init__`` was called with (``settings``)

    def __new__(cls, *args: object, **kwargs: object) -> Verifier:
        verifier = super().__new__(cls)
        # However the verifier is made (a config, Python). A wrong call is __init__'s to report, and
        # unpickling passes no arguments (the pickled __dict__ brings them back).
        with contextlib.suppress(TypeError):
            verifier._arguments = _init_arguments(cls, args, kwargs)
        return verifier

    @classmethod  # noqa: B027 (not abstract: a verifier may have no options to check)
    def check_options(cls, prefix: str, **options: object) -> None:
        """Raise a one-line ``ConfigError`` for the first of ``options`` (``__init__``'s arguments, defaults
        included) that the verifier cannot work with, naming it ``<prefix><option>``. A subclass that checks
        its options does it here: its ``__init__`` calls its own class's (``MathVerifier.check_options``, not
        a subclass's, whose options may be others) with its class name (``MathVerifier timeout must be
        ...``), and ``rgra`` calls it on a config's verifier before anything is made (a learned reward model
        would load first), with the option's full name (``model.verifier.timeout``; a ``WeightedSum``
        component's ``model.verifier.verifiers[1].timeout``), component verifiers still configs. The default
        checks nothing."""

    def settings(self) -> dict[str, object]:
        """The class and the arguments this verifier was made with, as plain values (component verifiers
        as their own settings): the trainer records them in checkpoints and refuses to resume one with
        another verifier. Computed from ``__init__``'s arguments, so a subclass needs nothing for it; those
        named in ``runtime_options`` (worker counts, caches) may differ on resume."""
        kind, arguments = type(self), self._arguments
        if hasattr(self, "_lazy_class_type"):  # jsonargparse's lazy_instance (a module's default verifier)
            kind, arguments = (
                self._lazy_class_type,
                _init_arguments(self._lazy_class_type, (), self._lazy_kwargs),
            )
        return {
            "class_path": f"{kind.__module__}.{kind.__qualname__}",
            "init_args": {
                name: _plain(value) for name, value in arguments.items() if name not in self.runtime_options
            },
        }

    @abc.abstractmethod
    def score(self, completion: str, reference: str) -> Score:
        """The score of one completion."""

    def score_batch(
        self,
        completions: Sequence[str],
        references: Sequence[str],
        prompts: Sequence[str] | None = None,
    ) -> list[Score]:
        """Scores of a batch, in order. ``prompts`` (one per completion) are given by the trainer; verifiers
        that judge the answer alone ignore them."""
        return [
            self.score(completion, reference)
            for completion, reference in zip(completions, references, strict=True)
        ]

    def score_answers(self, answers: Sequence[str], references: Sequence[str]) -> list[Score]:
        """Scores of bare answers (``x^2``, ``$\\frac{1}{2}$``, ``\\boxed{3}``) that need no extraction from a
        completion. The default scores them as completions; verifiers that extract answers override it."""
        return self.score_batch(answers, references)


class MathVerifier(Verifier):
    """Reward ``correct_reward`` when the extracted final answer is mathematically equivalent to the
    reference, else 0. Cheap cases (identical strings, plain numerals and fractions) are decided in the
    calling process; the rest run in killable worker processes under ``timeout`` and ``memory_mb``. A timeout
    or crash gives reward 0 with ``Score.error`` set. Verdicts for repeated (answer, reference) pairs are
    cached (``cache_size`` entries, least recently used dropped).

    Args:
        correct_reward: reward for an equivalent answer.
        timeout: wall-clock seconds allowed per verification.
        memory_mb: address-space limit of each worker process in MiB (0: none).
        workers: worker processes (started on first use, reused across calls).
        extractors: extraction markers to use, see ``rewards.extract.EXTRACTORS``.
        last_number_fallback: when no marker or math span is found, use the completion's last number.
        cache_size: verdicts kept for repeated pairs (0: none).
        warm_start: train the LaTeX parser on one answer of each common form before the first verification
            (~1.4 s, once: in the fork server every worker is forked from, or in each spawned worker), so
            that no verification pays the parser's first-use cost; the fork server is then started in the
            background at construction, so the first batch that needs workers does not wait for its
            imports. Worth it for a trainer's steady per-batch latency; a one-shot batch job (``python -m
            rewards score``) is faster without (it pays only for the forms it meets).
    """

    runtime_options = ("workers", "cache_size", "warm_start")

    @classmethod
    def check_options(
        cls,
        prefix: str,
        *,
        correct_reward: float,
        timeout: float,
        memory_mb: int,
        workers: int,
        extractors: list[str] | None,
        cache_size: int,
        **others: object,
    ) -> None:
        require_valid(
            prefix,
            ("correct_reward", correct_reward, math.isfinite(correct_reward), "a finite number"),
            ("timeout", timeout, 0 < timeout < math.inf, "> 0 (seconds) and finite"),
            ("memory_mb", memory_mb, memory_mb >= 0, ">= 0 (MiB; 0: no limit)"),
            ("workers", workers, workers >= 1, ">= 1"),
            ("cache_size", cache_size, cache_size >= 0, ">= 0 (0: no cache)"),
        )
        unknown = sorted(set(extractors or ()) - set(EXTRACTORS))
        if unknown:
            raise ConfigError(
                f"{prefix}extractors must be among {', '.join(EXTRACTORS)}; got {', '.join(unknown)}"
            )

    def __init__(
        self,
        correct_reward: float = 1.0,
        timeout: float = 3.0,
        memory_mb: int = 2048,
        workers: int = 2,
        extractors: list[str] | None = None,
        last_number_fallback: bool = True,
        cache_size: int = 100_000,
        warm_start: bool = True,
    ) -> None:
        MathVerifier.check_options(
            "MathVerifier ",
            correct_reward=correct_reward,
            timeout=timeout,
            memory_mb=memory_mb,
            workers=workers,
            extractors=extractors,
            cache_size=cache_size,
        )
        self.correct_reward = correct_reward
        self.extractors = tuple(extractors) if extractors is not None else DEFAULT_ORDER
        self.last_number_fallback = last_number_fallback
        self.cache_size = cache_size
        self.pool = WorkerPool(
            workers=workers,
            timeout=timeout,
            memory_mb=memory_mb,
            warmup=warmup if warm_start else None,
            preload=("rewards.preload", "rewards.preload_warm") if warm_start else ("rewards.preload",),
        )
        if warm_start:  # a trainer's verifier: have the imports done before the first batch needs them
            self.pool.start_fork_server()
        self._cache: OrderedDict[tuple[str, str], Outcome] = OrderedDict()

    def extract(self, text: str) -> str | None:
        """The final answer of a completion or reference, per this verifier's extraction settings."""
        return extract_answer(text, self.extractors, self.last_number_fallback)

    def score(self, completion: str, reference: str) -> Score:
        return self.score_batch([completion], [reference])[0]

    def score_batch(
        self,
        completions: Sequence[str],
        references: Sequence[str],
        prompts: Sequence[str] | None = None,
    ) -> list[Score]:
        """Scores in order; the expensive checks of the whole batch run in parallel in the workers."""
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions but {len(references)} references")
        return self._score_pairs(
            [(self.extract(c), self.extract(r) or r) for c, r in zip(completions, references, strict=True)]
        )

    def score_answers(self, answers: Sequence[str], references: Sequence[str]) -> list[Score]:
        """Scores of bare answers, compared as they are (surrounding ``$...$`` and enclosing ``\\boxed{}``
        are dropped by normalisation), without extraction; references are still extracted."""
        if len(answers) != len(references):
            raise ValueError(f"{len(answers)} answers but {len(references)} references")
        return self._score_pairs(
            [
                (strip_wrappers(a) or None, self.extract(r) or r)
                for a, r in zip(answers, references, strict=True)
            ]
        )

    def _score_pairs(self, pairs: list[tuple[str | None, str]]) -> list[Score]:
        verdicts: dict[tuple[str, str], Outcome] = {}
        for pair in pairs:
            if pair[0] is None or pair in verdicts:
                continue
            if pair in self._cache:
                self._cache.move_to_end(pair)
                verdicts[pair] = self._cache[pair]
                continue
            fast = fast_readings_equivalent(*normalize_pair(pair[0], pair[1]))
            if fast is not None:
                verdicts[pair] = Outcome(fast)
        slow = list(dict.fromkeys(p for p in pairs if p[0] is not None and p not in verdicts))
        for pair, outcome in zip(slow, self.pool.map(equivalent, slow), strict=True):
            verdicts[pair] = outcome
            self._cache[pair] = outcome
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return [self._score(pair[0], verdicts.get(pair)) for pair in pairs]

    def _score(self, answer: str | None, outcome: Outcome | None) -> Score:
        if answer is None or outcome is None:
            return Score(0.0, False, None, "no final answer found")
        if outcome.error is not None:
            return Score(0.0, False, answer, "verification failed", error=outcome.error)
        correct = bool(outcome.value)
        return Score(
            self.correct_reward if correct else 0.0, correct, answer, "equivalent" if correct else "different"
        )


class NumericVerifier(Verifier):
    """GSM8K-style: the extracted answer and the reference are plain numbers compared exactly.

    Args:
        correct_reward: reward for an equal number.
    """

    def __init__(self, correct_reward: float = 1.0) -> None:
        NumericVerifier.check_options("NumericVerifier ", correct_reward=correct_reward)
        self.correct_reward = correct_reward

    @classmethod
    def check_options(cls, prefix: str, *, correct_reward: float, **others: object) -> None:
        require_valid(
            prefix, ("correct_reward", correct_reward, math.isfinite(correct_reward), "a finite number")
        )

    def score(self, completion: str, reference: str) -> Score:
        answer = extract_answer(completion)
        if answer is None:
            return Score(0.0, False, None, "no final answer found")
        normalized = normalize_pair(answer, extract_answer(reference) or reference)
        pred: Fraction | None = as_fraction(normalized[0])
        gold: Fraction | None = as_fraction(normalized[1])
        if pred is None or gold is None:
            return Score(0.0, False, answer, "not a plain number")
        correct = pred == gold
        return Score(
            self.correct_reward if correct else 0.0, correct, answer, "equal" if correct else "different"
        )


class FormatReward(Verifier):
    """Reward for the completion's shape, not its correctness (``correct`` is always False).

    Args:
        pattern: regular expression the completion must contain (searched, DOTALL).
        reward: reward when it does.
    """

    judges_correctness = False

    def __init__(self, pattern: str = r"\\boxed\{", reward: float = 1.0) -> None:
        FormatReward.check_options("FormatReward ", pattern=pattern, reward=reward)
        self.pattern = re.compile(pattern, re.DOTALL)
        self.reward = reward

    @classmethod
    def check_options(cls, prefix: str, *, pattern: str, reward: float, **others: object) -> None:
        require_valid(prefix, ("reward", reward, math.isfinite(reward), "a finite number"))
        try:
            re.compile(pattern, re.DOTALL)
        except re.error as error:
            raise ConfigError(f"{prefix}pattern must be a regular expression; {pattern!r}: {error}") from None

    def score(self, completion: str, reference: str) -> Score:
        found = self.pattern.search(completion) is not None
        return Score(self.reward if found else 0.0, False, None, "format ok" if found else "format missing")


class WeightedSum(Verifier):
    """``sum(w * v.reward)``; ``correct`` is True when every component that judges correctness (its
    ``judges_correctness``: not a ``FormatReward``, a learned reward model or another shaping reward) says
    correct, and False when there is none. Several judges warn: a shaping reward of your own that leaves
    ``judges_correctness`` True would make every completion it does not call correct count as wrong. Each
    component's unweighted reward is kept in ``Score.components`` under its name (the trainer logs them as
    ``train/rewards/<name>``; it scores each component on its own, so one that fails costs only its part).

    Args:
        verifiers: the components; each scores the whole batch at once.
        weights: one weight per component.
        names: one name per component; default: the class names in snake case (``math_verifier``,
            ``reward_model_scorer``), numbered when repeated.
    """

    def __init__(
        self, verifiers: list[Verifier], weights: list[float], names: list[str] | None = None
    ) -> None:
        if names is None:
            names = default_names(verifiers)
        WeightedSum.check_options("WeightedSum ", verifiers=verifiers, weights=weights, names=names)
        self.verifiers = verifiers
        self.weights = weights
        self.names = names
        judges = [
            name for name, verifier in zip(names, verifiers, strict=True) if verifier.judges_correctness
        ]
        if len(judges) > 1:
            warnings.warn(
                f"WeightedSum: {', '.join(judges)} all judge correctness, so a completion counts as correct "
                "only when every one of them says so; give a shaping reward judges_correctness = False",
                stacklevel=2,
            )

    @classmethod
    def check_options(
        cls,
        prefix: str,
        *,
        verifiers: list[object],
        weights: list[float],
        names: list[str] | None,
        **others: object,
    ) -> None:
        if not verifiers:
            raise ConfigError(f"{prefix}verifiers must list at least one verifier, got none")
        if len(weights) != len(verifiers) or not all(math.isfinite(weight) for weight in weights):
            raise ConfigError(
                f"{prefix}weights must be a finite number per verifier ({len(verifiers)}), got {weights}"
            )
        if names is not None and (len(names) != len(verifiers) or len(set(names)) != len(names)):
            raise ConfigError(
                f"{prefix}names must be one distinct name per verifier ({len(verifiers)}), got {names}"
            )

    @property
    def judges_correctness(self) -> bool:  # type: ignore[override]
        """Whether any component judges correctness: else ``correct`` is always False, and no accuracy."""
        return any(verifier.judges_correctness for verifier in self.verifiers)

    def score(self, completion: str, reference: str) -> Score:
        return self.score_batch([completion], [reference])[0]

    def score_batch(
        self,
        completions: Sequence[str],
        references: Sequence[str],
        prompts: Sequence[str] | None = None,
    ) -> list[Score]:
        return self.combine([v.score_batch(completions, references, prompts) for v in self.verifiers])

    def combine(self, per_component: Sequence[Sequence[Score]]) -> list[Score]:
        """The combined scores of N completions from each component's N scores (in ``verifiers`` order)."""
        judges = [i for i, v in enumerate(self.verifiers) if v.judges_correctness]
        combined = []
        for scores in zip(*per_component, strict=True):
            errors = [s.error for s in scores if s.error]
            combined.append(
                Score(
                    sum(w * s.reward for w, s in zip(self.weights, scores, strict=True)),
                    bool(judges) and all(scores[i].correct for i in judges),
                    next((s.extracted for s in scores if s.extracted is not None), None),
                    "; ".join(s.details for s in scores),
                    errors[0] if errors else None,
                    {name: s.reward for name, s in zip(self.names, scores, strict=True)},
                )
            )
        return combined


VERIFIER_FAILED = "verifier failed"  # Score.details of a completion the verifier failed on: no verdict


def finite_score(score: Score) -> Score:
    """``score``, or reward 0, not correct, with the error ``non-finite reward nan`` when the verifier
    returned a NaN/inf reward (a verifier's bug, not a verdict): the row counts as an error, and its JSON
    line stays JSON (``json.dumps`` writes a NaN as the invalid ``NaN``)."""
    if math.isfinite(score.reward):
        return score
    return replace(
        score, reward=0.0, correct=False, details=VERIFIER_FAILED, error=f"non-finite reward {score.reward}"
    )


def _init_arguments(kind: type, args: tuple, kwargs: dict) -> dict[str, object]:
    """The arguments of ``kind(*args, **kwargs)`` by name, as ``kind.__init__`` binds them (with defaults)."""
    bound = inspect.signature(kind.__init__).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return dict(list(bound.arguments.items())[1:])


def _plain(value: object) -> object:
    """``value`` as numbers, strings, lists and dicts, for comparing configurations: a verifier as its
    ``settings``, a path as its text, a regular expression as its pattern, any other object as its class
    (its ``repr`` may hold a memory address, which differs in every process)."""
    if isinstance(value, Verifier):
        return value.settings()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    return f"{type(value).__module__}.{type(value).__qualname__}"


def default_names(verifiers: Sequence[Verifier]) -> list[str]:
    """Snake-case class names, with ``_2``, ``_3``... appended to repeats."""
    seen: Counter[str] = Counter()
    names = []
    for verifier in verifiers:
        base = re.sub(r"(?<!^)(?=[A-Z])", "_", type(verifier).__name__).lower()
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


class MathVerifyAdapter(Verifier):
    """Hugging Face's ``math-verify`` (optional dependency: ``pip install math-verify``).

    Args:
        correct_reward: reward for an answer math-verify calls equivalent.
    """

    def __init__(self, correct_reward: float = 1.0) -> None:
        MathVerifyAdapter.check_options("MathVerifyAdapter ", correct_reward=correct_reward)
        try:
            import math_verify
        except ImportError as error:
            raise ConfigError(
                "MathVerifyAdapter needs the optional package math-verify: pip install math-verify"
            ) from error
        self._math_verify = math_verify
        self.correct_reward = correct_reward

    @classmethod
    def check_options(cls, prefix: str, *, correct_reward: float, **others: object) -> None:
        require_valid(
            prefix, ("correct_reward", correct_reward, math.isfinite(correct_reward), "a finite number")
        )

    def score(self, completion: str, reference: str) -> Score:
        try:
            gold = self._math_verify.parse(reference)
            pred = self._math_verify.parse(completion)
            correct = bool(self._math_verify.verify(gold, pred))
        except Exception as error:  # math-verify raises on some inputs; the trainer must not see it
            return Score(0.0, False, None, "math-verify failed", error=f"crash: {error!r}")
        return Score(
            self.correct_reward if correct else 0.0,
            correct,
            str(pred[-1]) if pred else None,
            "equivalent" if correct else "different",
        )
