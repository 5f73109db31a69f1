"""The summary of an ablation study (``rgra ablate``): per-preset validation metrics read from each run's
TensorBoard event files, as ``summary.md`` (mean +- std over seeds, and each preset's difference to the
reference preset with a Welch t-test) and ``val_accuracy.png`` (the curves, mean over seeds with a min-max
band).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rgra_lightning.ablate import Study

VAL_TAG = "val/accuracy"
REWARD_TAG = "train/reward"
# The test metrics the benchmark table shows (the tests' done.json keep every test/* one: reward, lengths).
CORRECTNESS_TAG = re.compile(r"test/(accuracy|pass@\d+|maj@\d+)")

# Student's t two-sided 5 % critical values (the 97.5 % quantile, to three decimals) by degrees of freedom.
T_CRITICAL_5 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def event_files(run_dir: Path) -> list[str]:
    """The names of the run's TensorBoard event files. ``rgra ablate`` records them in ``done.json`` when
    the fit finishes: a ``validate`` of the run's checkpoint with its ``run.yaml`` later writes another one
    beside them, whose values at the fit's steps would otherwise replace the fit's own."""
    return sorted(path.name for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"))


def read_curve(run_dir: Path, tag: str = VAL_TAG, files: list[str] | None = None) -> list[tuple[int, float]]:
    """``(step, value)`` of a scalar across the run's event files named in ``files`` (None: every one; a
    resumed fit writes one per attempt), the latest write winning per step."""
    names = event_files(run_dir) if files is None else files
    paths = [run_dir / "tensorboard" / name for name in names]
    points = latest_scalars(paths, lambda name: name == tag).get(tag, {})
    return [(step, points[step][1]) for step in sorted(points)]


def latest_scalars(
    paths: list[Path], wanted: Callable[[str], bool]
) -> dict[str, dict[int, tuple[float, float]]]:
    """The scalars of these TensorBoard event files whose tag is ``wanted``: tag -> step -> (wall time,
    value), the latest write of each step winning."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, tuple[float, float]]] = {}
    for path in paths:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in filter(wanted, accumulator.Tags()["scalars"]):
            points = scalars.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if event.step not in points or event.wall_time >= points[event.step][0]:
                    points[event.step] = (event.wall_time, event.value)
    return scalars


def mean_std(values: list[float], seeds: int) -> str:
    """``mean +- std`` of the runs' values (sample std) to three decimals, a single run's value without one
    (it has no spread to show, where ``+- 0.000`` would read as identical runs), and `` (n=k)`` after it
    where only k of the study's ``seeds`` runs have the value."""
    if not values:
        return "n/a"
    cell = f"{statistics.fmean(values):.3f}"
    if len(values) > 1:
        cell += f" +- {statistics.stdev(values):.3f}"
    return cell + (f" (n={len(values)})" if len(values) < seeds else "")


def curve_metrics(curve: list[tuple[int, float]]) -> dict[str, float]:
    """Per-run scalars of a validation curve: ``initial``, the untrained policy's (the validation at step 0,
    absent with ``validate_before_training: false``), and of the validations after training started (the
    initial one excluded, so that "best" is a trained policy's): ``final``, ``best`` and ``mean`` (the
    area under the learning curve per step: it rewards learning early, where ``final`` may saturate). A
    metric without a validation to take it from is left out. Non-finite points are left out too: one NaN
    would make the run's mean NaN, and with it the preset's cells and their t-tests."""
    finite = [(step, value) for step, value in curve if math.isfinite(value)]
    initial = [value for step, value in finite if step == 0]
    trained = [value for step, value in finite if step > 0]
    metrics = {"initial": initial[-1]} if initial else {}
    if trained:
        metrics |= {"final": trained[-1], "best": max(trained), "mean": statistics.fmean(trained)}
    return metrics


def speed_cell(speeds: list[float], seeds: int) -> str:
    """The mean steps per second of a preset's runs that have one, with `` (n=k)`` where only k of the
    study's ``seeds`` runs do, as the other cells say it: a resumed run has none (its wall time is its last
    attempt's only), so a mean over fewer runs would otherwise read as every seed's."""
    if not speeds:
        return "n/a"
    return f"{statistics.fmean(speeds):.2f}" + (f" (n={len(speeds)})" if len(speeds) < seeds else "")


def difference(values: list[float], reference: list[float]) -> str:
    """``delta (SE)`` of the means (in the values' units), with Welch's standard error, and `` *`` where a
    Welch t-test finds them different (``welch_significant``); ``n/a`` with fewer than 2 runs on a side,
    which leaves no spread to judge a difference by."""
    if len(values) < 2 or len(reference) < 2:
        return "n/a"
    delta = statistics.fmean(values) - statistics.fmean(reference)
    var_mean = statistics.variance(values) / len(values)  # the mean's squared standard error
    var_mean_reference = statistics.variance(reference) / len(reference)
    se = (var_mean + var_mean_reference) ** 0.5
    mark = welch_significant(delta, (var_mean, len(values)), (var_mean_reference, len(reference)))
    return f"{delta:+.3f} ({se:.3f}){' *' if mark else ''}"


def welch_significant(delta: float, a: tuple[float, int], b: tuple[float, int]) -> bool:
    """Whether a Welch t-test, two-sided at 5 %, rejects equal means: |delta| / SE above Student's t
    critical value (``t_critical``) at the Welch-Satterthwaite degrees of freedom. ``a`` and ``b``: each
    mean's squared standard error (sample variance / n, in the values' units squared) and its n (>= 2).
    Never where the standard error is 0 (every run of both presets alike): there is no spread to judge the
    difference by; nor where a value is NaN (``t_critical``)."""
    (var_a, n_a), (var_b, n_b) = a, b
    squared_se = var_a + var_b
    if squared_se == 0:
        return False
    df = squared_se**2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    return abs(delta) > t_critical(df) * squared_se**0.5


def t_critical(df: float) -> float:
    """Student's t two-sided 5 % critical value at ``df`` (>= 1) degrees of freedom, Welch's fractional
    ones included: the value at the tabulated df at or below ``df`` (``T_CRITICAL_5``), which is at least
    the exact one, so that a fractional df errs towards no mark rather than being interpolated. Infinite
    where no tabulated df is at or below it (a NaN df, from a NaN value): nothing can exceed it, so such a
    difference is not marked."""
    # 1e-9: an integral df computed in floating point (4 for two presets of 3 runs with equal spread) can
    # come out a hair below itself, which would drop it to the next lower df.
    below = [tabulated for tabulated in T_CRITICAL_5 if tabulated <= df + 1e-9]
    return T_CRITICAL_5[max(below)] if below else math.inf


def json_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None where there is none: no file, or one that holds no JSON object
    (cut short by a crash while written, or edited by hand)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or unreadable; not JSON, or not UTF-8 text
        return None
    return record if isinstance(record, dict) else None


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's record, its ``done.json``; None where the run is not finished: no ``done.json``, or
    one that holds no JSON object (cut short by a crash while written in place, as ``rgra ablate`` wrote it
    before it wrote it atomically, or edited by hand), which ``rgra ablate`` warns of and runs again."""
    return json_record(run_dir / "done.json")


def finished_curve(run_dir: Path) -> tuple[list[tuple[int, float]], dict[str, Any]]:
    """A finished run's validation curve, from the event files its fit wrote (``done.json``'s
    ``event_files``; every one for a ``done.json`` written before they were recorded), and its record;
    an empty curve and record for a run not finished (``finished_record``). A recorded file that no longer
    exists (deleted or moved by hand) is left out with a ``warning: ...`` line naming it, rather than
    end the summary of a whole study in TensorBoard's NotFoundError."""
    record = finished_record(run_dir)
    if record is None:
        return [], {}
    files = record.get("event_files")
    if files is not None:
        missing = [name for name in files if not (run_dir / "tensorboard" / name).is_file()]
        if missing:
            print(
                f"warning: {run_dir / 'done.json'} names event files that no longer exist, left out of the "
                f"run's curve: {', '.join(str(run_dir / 'tensorboard' / name) for name in missing)}",
                file=sys.stderr,
            )
        files = [name for name in files if name not in missing]
    return read_curve(run_dir, files=files), record


def summarise(study: Study, tested: dict[str, dict[str, list[dict[str, float]]]] | None = None) -> Path:
    """Write ``summary.md`` and ``val_accuracy.png`` under the study's directory from finished runs, with
    the table of their benchmark tests (``tested``: preset label -> benchmark -> each tested run's
    ``test/*`` metrics, as ``ablate.benchmark_results`` reads them) where the study has benchmarks."""
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    metrics: dict[str, dict[str, list[float]]] = {}
    speeds: dict[str, list[float]] = {}
    finished: dict[str, int] = {}  # runs with a done.json, a validation curve or not (an SFT run has none)
    for preset in study.presets:
        label = study.label(preset)
        for seed in study.seeds:
            curve, record = finished_curve(study.run_dir(preset, seed))
            finished[label] = finished.get(label, 0) + bool(record)
            if record.get("steps_per_s"):
                speeds.setdefault(label, []).append(record["steps_per_s"])
            if not curve:
                continue
            curves.setdefault(label, []).append(curve)
            for name, value in curve_metrics(curve).items():
                metrics.setdefault(label, {}).setdefault(name, []).append(value)
    labels = [study.label(preset) for preset in study.presets]
    names = ("initial", "final", "best", "mean")
    rows = []
    for label in labels:
        runs = metrics.get(label, {})
        speed = speed_cell(speeds.get(label, []), len(study.seeds))
        cells = " | ".join(mean_std(runs.get(name, []), len(study.seeds)) for name in names)
        rows.append(f"| {label} | {finished.get(label, 0)}/{len(study.seeds)} | {cells} | {speed} |")
    plot = plot_curves(curves, study.root / "val_accuracy.png", study.name)
    lines = [
        f"# Ablation study `{study.name}`",
        "",
        f"Base config `{' + '.join(map(str, study.base_configs))}` with overrides "
        f"`{json.dumps(study.overrides)}`; "
        f"seeds {study.seeds}. Validation accuracy is greedy accuracy on the held-out problems. Per run: "
        "initial = the policy before training (the validation at step 0), and of the validations after "
        "it: final = the last, best = max over validations (selected on the evaluation set: optimistic), "
        "mean = their mean (area under the learning curve: higher means it learned earlier). Cells: mean "
        "+- sample std over the seeds' runs, a single run's value alone; (n=k): only k of the "
        f"{len(study.seeds)} seeds' runs have it. steps/s = optimizer updates per second of wall time of "
        "the whole fit (model loading and validation included), the mean over the runs not resumed.",
        "",
        "| preset | seeds done | initial | final | best | mean over run | steps/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *difference_section(metrics, labels, study.label(study.reference), len(study.seeds)),
        *benchmark_section(tested or {}, study, labels),
        f"![validation accuracy]({plot.name})",
        "",
    ]
    summary = study.root / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


def difference_section(
    metrics: dict[str, dict[str, list[float]]], labels: list[str], reference: str, seeds: int
) -> list[str]:
    """The lines of summary.md comparing each preset with finished runs to the reference preset, or one
    line saying why there is nothing to compare (an empty table would read as no difference)."""
    others = [label for label in labels if label in metrics and label != reference]
    if reference not in metrics:
        return [f"No differences: the reference preset `{reference}` has no finished run.", ""]
    if not others:
        return [f"No differences: no preset but the reference `{reference}` has a finished run.", ""]
    return [
        f"Difference to `{reference}`: delta of the means (Welch standard error); `*`: Welch t-test, "
        "two-sided 5 %, not corrected for the number of comparisons (Welch-Satterthwaite degrees of "
        "freedom; no mark where the standard error is 0; n/a: fewer than 2 runs on a side). With "
        f"{seeds} seed{'s' * (seeds != 1)} per preset only large differences are marked: no mark is no "
        "evidence of equal means.",
        "",
        "| preset | final | best | mean over run |",
        "|---|---|---|---|",
        *(
            f"| {label} | "
            + " | ".join(
                difference(metrics[label].get(name, []), metrics[reference].get(name, []))
                for name in ("final", "best", "mean")
            )
            + " |"
            for label in others
        ),
        "",
    ]


def benchmark_section(
    tested: dict[str, dict[str, list[dict[str, float]]]], study: Study, labels: list[str]
) -> list[str]:
    """The lines of summary.md giving each preset's benchmark tests (a column per benchmark and correctness
    metric, ``CORRECTNESS_TAG``, accuracy first; mean +- std over the runs tested, as the validation table)
    and their difference to the reference preset's; none for a study without benchmarks."""
    if not study.benchmarks:
        return []
    columns = [  # (benchmark, tag): accuracy, n/a where untested, and every correctness metric a run logged
        (name, tag)
        for name in study.benchmarks
        for tag in sorted(
            {"test/accuracy"}
            | {tag for runs in tested.values() for metrics in runs.get(name, []) for tag in metrics},
            key=lambda tag: (tag != "test/accuracy", tag),
        )
        if CORRECTNESS_TAG.fullmatch(tag)
    ]
    headers = [
        name if tag == "test/accuracy" else f"{name} {tag.removeprefix('test/')}" for name, tag in columns
    ]

    def values(label: str, name: str, tag: str) -> list[float]:
        return [metrics[tag] for metrics in tested.get(label, {}).get(name, []) if tag in metrics]

    seeds = len(study.seeds)
    reference = study.label(study.reference)
    others = [label for label in labels if label in tested and label != reference]
    lines = [
        "Benchmark tests of each run's last checkpoint (`rgra test`; accuracy is greedy pass@1): mean +- "
        f"sample std over the runs tested; (n=k): only k of the {seeds} seeds' runs were tested; n/a: none "
        "was (a test not made yet, failed, or made with other settings than the study's now).",
        "",
        f"| preset | {' | '.join(headers)} |",
        f"|---{'|---' * len(headers)}|",
        *(
            f"| {label} | " + " | ".join(mean_std(values(label, *column), seeds) for column in columns) + " |"
            for label in labels
        ),
        "",
    ]
    if reference in tested and others:
        lines += [
            f"Difference to `{reference}` on the benchmarks (Welch, as above):",
            "",
            f"| preset | {' | '.join(headers)} |",
            f"|---{'|---' * len(headers)}|",
            *(
                f"| {label} | "
                + " | ".join(
                    difference(values(label, *column), values(reference, *column)) for column in columns
                )
                + " |"
                for label in others
            ),
            "",
        ]
    return lines


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path, title: str) -> Path:
    """Validation accuracy against step per preset: the mean over seeds and a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for preset, runs in curves.items():
        steps = sorted(set.intersection(*(set(step for step, _ in run) for run in runs))) if runs else []
        if not steps:
            continue
        values = [[dict(run)[step] for run in runs] for step in steps]
        means = [statistics.fmean(v) for v in values]
        (line,) = axes.plot(steps, means, label=f"{preset} (n={len(runs)})")
        axes.fill_between(
            steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15, color=line.get_color()
        )
    axes.set_xlabel("optimizer updates")
    axes.set_ylabel("validation accuracy (greedy)")
    axes.set_title(f"{title}: mean over seeds, band = min..max")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    if axes.lines:  # no curve yet (every run failed before validating): an empty plot, no legend warning
        axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
