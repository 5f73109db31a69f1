"""The summary of an ablation study (``rgra ablate``): per-preset validation metrics read from each run's
TensorBoard event files, as ``summary.md`` (mean +- std over seeds, and each preset's difference to the
reference preset) and ``val_accuracy.png`` (the curves, mean over seeds with a min-max band).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rgra_lightning.ablate import Study

VAL_TAG = "val/accuracy"
REWARD_TAG = "train/reward"


def event_files(run_dir: Path) -> list[str]:
    """The names of the run's TensorBoard event files. ``rgra ablate`` records them in ``done.json`` when
    the fit finishes: a ``validate`` of the run's checkpoint with its ``run.yaml`` later writes another one
    beside them, whose values at the fit's steps would otherwise replace the fit's own."""
    return sorted(path.name for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"))


def read_curve(run_dir: Path, tag: str = VAL_TAG, files: list[str] | None = None) -> list[tuple[int, float]]:
    """``(step, value)`` of a scalar across the run's event files named in ``files`` (None: every one; a
    resumed fit writes one per attempt), the latest write winning per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = event_files(run_dir) if files is None else files
    points: dict[int, tuple[float, float]] = {}
    for name in names:
        accumulator = EventAccumulator(str(run_dir / "tensorboard" / name), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag not in accumulator.Tags()["scalars"]:
            continue
        for event in accumulator.Scalars(tag):
            if event.step not in points or event.wall_time >= points[event.step][0]:
                points[event.step] = (event.wall_time, event.value)
    return [(step, points[step][1]) for step in sorted(points)]


def mean_std(values: list[float]) -> str:
    """``mean +- std`` (sample std over seeds; 0 for one value) to three decimals."""
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {std:.3f}"


def curve_metrics(curve: list[tuple[int, float]]) -> dict[str, float]:
    """Per-run scalars of a validation curve: ``initial``, the untrained policy's (the validation at step 0,
    absent with ``validate_before_training: false``), and of the validations after training started (the
    initial one excluded, so that "best" is a trained policy's): ``final``, ``best`` and ``mean`` (the
    area under the learning curve per step: it rewards learning early, where ``final`` may saturate). A
    metric without a validation to take it from is left out."""
    initial = [value for step, value in curve if step == 0]
    trained = [value for step, value in curve if step > 0]
    metrics = {"initial": initial[-1]} if initial else {}
    if trained:
        metrics |= {"final": trained[-1], "best": max(trained), "mean": statistics.fmean(trained)}
    return metrics


def difference(values: list[float], reference: list[float]) -> str:
    """``delta (SE s)`` of the means, with Welch's standard error, and ``*`` when |delta| > 2 SE."""
    if len(values) < 2 or len(reference) < 2:
        return "n/a"
    delta = statistics.fmean(values) - statistics.fmean(reference)
    se = (statistics.variance(values) / len(values) + statistics.variance(reference) / len(reference)) ** 0.5
    return f"{delta:+.3f} ({se:.3f}){' *' if abs(delta) > 2 * se else ''}"


def finished_curve(run_dir: Path) -> tuple[list[tuple[int, float]], dict[str, Any]]:
    """A finished run's validation curve, from the event files its fit wrote (``done.json``'s
    ``event_files``; every one for a ``done.json`` written before they were recorded), and its record;
    an empty curve and record for a run not finished."""
    done = run_dir / "done.json"
    if not done.is_file():
        return [], {}
    record = json.loads(done.read_text())
    return read_curve(run_dir, files=record.get("event_files")), record


def summarise(study: Study) -> Path:
    """Write ``summary.md`` and ``val_accuracy.png`` under the study's directory from finished runs."""
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    metrics: dict[str, dict[str, list[float]]] = {}
    speeds: dict[str, list[float]] = {}
    for preset in study.presets:
        label = study.label(preset)
        for seed in study.seeds:
            curve, record = finished_curve(study.run_dir(preset, seed))
            if not curve:
                continue
            curves.setdefault(label, []).append(curve)
            for name, value in curve_metrics(curve).items():
                metrics.setdefault(label, {}).setdefault(name, []).append(value)
            if record.get("steps_per_s"):
                speeds.setdefault(label, []).append(record["steps_per_s"])
    labels = [study.label(preset) for preset in study.presets]
    names = ("initial", "final", "best", "mean")
    rows = []
    for label in labels:
        runs = metrics.get(label, {})
        speed = f"{statistics.fmean(speeds[label]):.2f}" if label in speeds else "n/a"
        cells = " | ".join(mean_std(runs.get(name, [])) for name in names)
        rows.append(f"| {label} | {len(curves.get(label, []))}/{len(study.seeds)} | {cells} | {speed} |")
    plot = plot_curves(curves, study.root / "val_accuracy.png", study.name)
    lines = [
        f"# Ablation study `{study.name}`",
        "",
        f"Base config `{' + '.join(map(str, study.base_configs))}` with overrides "
        f"`{json.dumps(study.overrides)}`; "
        f"seeds {study.seeds}. Validation accuracy is greedy accuracy on the held-out problems. Per run: "
        "initial = the policy before training (the validation at step 0), and of the validations after "
        "it: final = the last, best = the highest, mean = their mean (area under the learning curve: "
        "higher means it learned earlier). Cells: mean +- sample std over seeds. steps/s = optimizer "
        "updates per second of wall time of the whole fit (model loading and validation included).",
        "",
        "| preset | seeds done | initial | final | best | mean over run | steps/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *difference_section(metrics, labels, study.label(study.reference), len(study.seeds)),
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
        f"Difference to `{reference}`: delta of the means (Welch standard error); "
        "`*` marks |delta| > 2 standard errors, a difference larger than the seed spread explains "
        f"(with {seeds} seed{'s' * (seeds != 1)} a rough guide, not a significance test).",
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
