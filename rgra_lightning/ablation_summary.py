"""The summary of an ablation study (``rgra ablate``): per-preset validation metrics read from each run's
TensorBoard event files, as ``summary.md`` (mean +- std over seeds, and each preset's difference to the
reference preset) and ``val_accuracy.png`` (the curves, mean over seeds with a min-max band).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rgra_lightning.ablate import Study

VAL_TAG = "val/accuracy"
REWARD_TAG = "train/reward"


def read_curve(run_dir: Path, tag: str = VAL_TAG) -> list[tuple[int, float]]:
    """``(step, value)`` of a scalar across the run's event files, the latest write winning per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, tuple[float, float]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
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
    """Per-run scalars of a validation curve whose first point is the untrained policy: ``initial``,
    ``final``, ``best`` and ``mean`` (the mean of the validations after the initial one, i.e. the area
    under the learning curve per step: it rewards learning early, where ``final`` may saturate)."""
    trained = [value for _, value in curve[1:]] or [curve[0][1]]
    return {
        "initial": curve[0][1],
        "final": trained[-1],
        "best": max(trained),
        "mean": statistics.fmean(trained),
    }


def difference(values: list[float], reference: list[float]) -> str:
    """``delta (SE s)`` of the means, with Welch's standard error, and ``*`` when |delta| > 2 SE."""
    if len(values) < 2 or len(reference) < 2:
        return "n/a"
    delta = statistics.fmean(values) - statistics.fmean(reference)
    se = (statistics.variance(values) / len(values) + statistics.variance(reference) / len(reference)) ** 0.5
    return f"{delta:+.3f} ({se:.3f}){' *' if abs(delta) > 2 * se else ''}"


def summarise(study: Study) -> Path:
    """Write ``summary.md`` and ``val_accuracy.png`` under the study's directory from finished runs."""
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    metrics: dict[str, dict[str, list[float]]] = {}
    speeds: dict[str, list[float]] = {}
    for preset in study.presets:
        for seed in study.seeds:
            done = study.run_dir(preset, seed) / "done.json"
            curve = read_curve(study.run_dir(preset, seed))
            if not done.is_file() or not curve:
                continue
            curves.setdefault(preset, []).append(curve)
            for name, value in curve_metrics(curve).items():
                metrics.setdefault(preset, {}).setdefault(name, []).append(value)
            record = json.loads(done.read_text())
            if record.get("steps_per_s"):
                speeds.setdefault(preset, []).append(record["steps_per_s"])
    names = ("initial", "final", "best", "mean")
    rows = []
    for preset in study.presets:
        runs = metrics.get(preset, {})
        speed = f"{statistics.fmean(speeds[preset]):.2f}" if preset in speeds else "n/a"
        cells = " | ".join(mean_std(runs.get(name, [])) for name in names)
        rows.append(f"| {preset} | {len(curves.get(preset, []))}/{len(study.seeds)} | {cells} | {speed} |")
    plot = plot_curves(curves, study.root / "val_accuracy.png", study.name)
    lines = [
        f"# Ablation study `{study.name}`",
        "",
        f"Base config `{' + '.join(map(str, study.base_configs))}` with overrides "
        f"`{json.dumps(study.overrides)}`; "
        f"seeds {study.seeds}. Validation accuracy is greedy accuracy on the held-out problems. Per run: "
        "initial = the policy before training, final = the last validation, best = the highest, mean = "
        "the mean of all validations after the initial one (area under the learning curve: higher means "
        "it learned earlier). Cells: mean +- sample std over seeds. steps/s = optimizer updates per "
        "second of wall time of the whole fit (model loading and validation included).",
        "",
        "| preset | seeds done | initial | final | best | mean over run | steps/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    reference = study.reference
    if reference in metrics:
        lines += [
            f"Difference to `{reference}`: delta of the means (Welch standard error); "
            "`*` marks |delta| > 2 standard errors, a difference larger than the seed spread explains "
            "(with 3 seeds a rough guide, not a significance test).",
            "",
            "| preset | final | best | mean over run |",
            "|---|---|---|---|",
            *(
                f"| {preset} | "
                + " | ".join(
                    difference(metrics[preset][name], metrics[reference][name])
                    for name in ("final", "best", "mean")
                )
                + " |"
                for preset in study.presets
                if preset in metrics and preset != reference
            ),
            "",
        ]
    lines += [f"![validation accuracy]({plot.name})", ""]
    summary = study.root / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


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
