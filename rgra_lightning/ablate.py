"""The ablation study: loss presets x seeds, each a normal ``fit`` run, then a summary table and a plot.

    rgra ablate --config configs/ablations/paper.yaml

A study config (YAML) names the base config, the presets, the seeds and overrides applied to the base:

    name: paper                       # results go to <results_dir>/<name>/
    base_config: configs/rgra.yaml    # any fit config, or a list of configs composed in order
    presets: [grpo, rgra]             # loss presets configs/loss/<preset>.yaml, or paths to YAML files
    seeds: [0, 1, 2]                  # seed_everything of each run (sampling, LoRA's init), each once
    overrides: {model: {init_args: {num_iterations: 2}}}   # applied after the base and the preset
    results_dir: results
    reference: rgra                   # optional: summary.md compares every preset with it (default: first)
    benchmarks:                       # optional: each finished run's last checkpoint is tested on each
      gsm8k: {data: {init_args: {limit: null}}}                        # config keys applied to the test
      math500: {data: {init_args: {preset: math500, limit: null}}}

Each run composes configs as ``rgra fit`` does on the command line: ``rgra fit --config <base_config>...
--config <preset> --config <run_dir>/run.yaml``, where ``run.yaml`` holds the study's overrides, the seed and
the run's paths (its TensorBoard logs, checkpoints and exported policy in ``<results_dir>/<name>/runs/
<preset>/seed<k>/``, ``<preset>`` the preset file's name without its folder and ``.yaml``: two presets
whose files share a name are refused). Every preset's composed config is parsed and validated before the
first run (``parser_refusals``): a mistake the parser finds stops the study with nothing run. The run goes in
its own process (a crash or an out-of-memory in one run does not end the study; a config ``rgra fit`` refuses,
exit status 2, skips that preset's other seeds; a diverged run, 3, and a run whose own directory or checkpoint
is refused, 4, do not), reports its latest update, training reward and validation accuracy every minute, and
is marked finished by ``done.json`` only once fit returned, which records the run's composed config and the
TensorBoard files the fit wrote (written whole or not at all; one that holds no JSON record is warned of, and
its run is not finished).
Interrupted (Ctrl-C, SIGTERM), the study stops the running fit with SIGTERM, on which it saves the
update it is at, and says so. Rerunning the study skips finished runs and resumes an interrupted one from
its last checkpoint (one stopped before its first starts afresh, its event files moved aside:
``set_aside_tensorboard``), once ``stale_runs`` found each such run made with the config the study gives it
now: a study changed since (its overrides, a base config, a preset file) with the same ``name`` stops
with nothing run rather than reuse runs of other settings. Afterwards ``summary.md`` and
``val_accuracy.png`` are written from the fits' TensorBoard event files (``ablation_summary``).

Several ``rgra ablate`` processes of one study (one per GPU) share its runs out: each claims a run before it
touches it (``claimed``) and skips those another holds.

With ``benchmarks``, each run, once finished, is tested on each benchmark (``rgra test`` of its last
checkpoint in a process of its own, its log and records in ``<run>/benchmarks/<name>/``:
``ablation_benchmarks``), and ``summary.md`` tabulates the ``test/*`` metrics per preset and benchmark: the
paper's Table 1. A rerun skips the tests made with the settings the study gives now and tests again those
made with others (a changed ``benchmarks`` entry leaves the runs themselves as they are).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import difflib
import functools
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rewards.errors import ToolParser
from rgra_lightning.ablation_benchmarks import (
    LAST_CHECKPOINT,
    benchmark_command,
    benchmark_dir,
    benchmark_layer,
    current_test,
    logged_test_metrics,
    parse_benchmarks,
    without_last_checkpoint,
)
from rgra_lightning.ablation_summary import (
    CORRECTNESS_TAG,
    REWARD_TAG,
    VAL_TAG,
    curve_metrics,
    event_files,
    finished_record,
    json_record,
    read_curve,
    summarise,
)
from rgra_lightning.commands import KILLED, exit_on_termination
from rgra_lightning.config_files import (
    LOSS_PRESETS,
    changes,
    compose,
    key_at_line,
    key_line,
    merge,
    read,
)
from rgra_lightning.errors import CONFIG_REFUSED, RUN_REFUSED, TRAINING_DIVERGED, ConfigError
from rgra_lightning.locks import take_lock

PROGRESS_EVERY_S = 60.0  # how often a running fit's progress is printed
STOP_TIMEOUT_S = 600.0  # how long an interrupted study waits for the running fit to save its state and exit
MAX_SEED = 2**32 - 1  # seed_everything's (numpy's) largest seed; the smallest is 0
PR_SET_PDEATHSIG = 1  # prctl's option: the signal a process gets when its parent ends (Linux)


@dataclass(frozen=True)
class Study:
    """A parsed study config; see the module docstring for the fields."""

    name: str
    base_configs: list[Path]
    presets: list[str]
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)
    results_dir: Path = Path("results")
    reference: str | None = None
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.results_dir / self.name

    @staticmethod
    def label(preset: str) -> str:
        """The preset's name in progress lines, the summary and its run directories: its file's stem (``rgra``
        for ``rgra`` and for ``configs/loss/rgra.yaml``), unique in a study (``load_study``)."""
        return Path(preset).stem

    def run_dir(self, preset: str, seed: int) -> Path:
        return self.root / "runs" / self.label(preset) / f"seed{seed}"


def load_study(path: Path) -> Study:
    """Parse and check a study config; every problem is a ``ConfigError`` naming the field."""
    if not path.is_file():
        raise ConfigError(f"study config {path} does not exist")
    raw = read(path)
    allowed = {
        "name",
        "base_config",
        "presets",
        "seeds",
        "overrides",
        "results_dir",
        "reference",
        "benchmarks",
    }
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; valid keys: {sorted(allowed)}")
    for key in ("name", "base_config", "presets", "seeds"):
        if key not in raw:
            raise ConfigError(f"{path}: missing required key {key!r}")
    if not raw["presets"] or not isinstance(raw["presets"], list):
        raise ConfigError(f"{path}: presets must be a non-empty list of preset names or YAML paths")
    seeds = raw["seeds"]
    if not (isinstance(seeds, list) and seeds and all(is_integer(seed) for seed in seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    out_of_range = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if out_of_range:  # else every fit would fail in seed_everything, after the study's checks passed
        raise ConfigError(
            f"{path}: seed {out_of_range[0]} is out of range: seeds must be from 0 to {MAX_SEED} (2**32 - 1)"
        )
    repeated = [seed for n, seed in enumerate(seeds) if seed in seeds[:n]]
    if repeated:
        raise ConfigError(
            f"{path}: seed {repeated[0]} is listed twice: remove one (its run would count twice in the "
            "summary)"
        )
    overrides = {} if raw.get("overrides") is None else raw["overrides"]  # `overrides:` left empty: none
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"{path}: overrides must be a mapping of config keys, as in a fit config "
            f"(trainer: {{max_steps: 80}}), got a {type(overrides).__name__}"
        )
    bases = raw["base_config"] if isinstance(raw["base_config"], list) else [raw["base_config"]]
    if not bases or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: base_config must be a config path or a non-empty list of them")
    if not isinstance(raw.get("results_dir", ""), str):
        raise ConfigError(f"{path}: results_dir must be a directory's path")
    study = Study(
        name=str(raw["name"]),
        base_configs=[Path(base) for base in bases],
        presets=[str(preset) for preset in raw["presets"]],
        seeds=seeds,
        overrides=overrides,
        results_dir=Path(raw.get("results_dir", "results")),
        reference=str(raw.get("reference", raw["presets"][0])),
        benchmarks=parse_benchmarks(raw.get("benchmarks"), path),
    )
    for base in study.base_configs:
        if not base.is_file():
            raise ConfigError(f"{path}: base_config {base} does not exist")
    for preset in study.presets:  # before the reference, which defaults to the first preset
        try:
            preset_path(preset)  # fails early on a missing preset rather than hours into the study
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    shared = sharing_a_run_directory(study.presets)
    if shared:
        raise ConfigError(f"{path}: {shared}")
    if study.reference not in study.presets:
        raise ConfigError(f"{path}: reference {study.reference!r} is not one of the presets {study.presets}")
    existing = next(folder for folder in (study.root, *study.root.parents) if folder.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"{path}: results_dir {study.results_dir}: {existing} is a file, not a directory; "
            "set results_dir to a directory (it is created if missing)"
        )
    return study


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer; YAML's ``true`` and ``false`` are not, though Python's bool is one."""
    return isinstance(value, int) and not isinstance(value, bool)


def sharing_a_run_directory(presets: list[str]) -> str | None:
    """What is wrong where two presets would share a run directory (one named after the preset file's stem),
    or None: the second preset's runs would be skipped as done, and the summary would report the first
    one's results for both."""
    labels = [Study.label(preset) for preset in presets]
    for index, label in enumerate(labels):
        earlier = labels.index(label)
        if earlier == index:
            continue
        first, preset = presets[earlier], presets[index]
        if first == preset:
            return f"preset {preset!r} is listed twice: remove one"
        return (
            f"presets {first!r} and {preset!r} would share the run directory runs/{label}/ (named after the "
            "preset file's name, without its folder): rename one of the files"
        )
    return None


def preset_path(preset: str) -> Path:
    """``configs/loss/<preset>.yaml`` for a bare name, else the path itself. A ``ConfigError`` where it does
    not exist, for a bare name with the presets there are and the closest one."""
    if preset.endswith((".yaml", ".yml")):
        if not Path(preset).is_file():
            raise ConfigError(f"preset {preset!r} does not exist")
        return Path(preset)
    path = LOSS_PRESETS / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(file.stem for file in LOSS_PRESETS.glob("*.yaml"))
        close = difflib.get_close_matches(preset, names, n=1)
        hint = f": did you mean {close[0]!r}?" if close else ";"
        known = f"presets: {', '.join(names)}" if names else f"{LOSS_PRESETS} holds no presets here"
        raise ConfigError(
            f"preset {preset!r} does not exist ({path}){hint} {known} (or give a preset file's path)"
        )
    return path


def run_config(study: Study, preset: str, seed: int) -> dict[str, Any]:
    """The run's own config layer (``run.yaml``), composed after the base config and the preset: the study
    overrides, the seed, and the run's paths. The callbacks are those the base configs, the preset and the
    overrides compose to (a preset file may set its own) with their directories moved into the run
    directory, as a list given later replaces the earlier one."""
    run_dir = study.run_dir(preset, seed)
    base = compose([*study.base_configs, preset_path(preset)])
    callbacks = copy.deepcopy(merge(base, study.overrides).get("trainer", {}).get("callbacks") or [])
    for callback in callbacks:
        init_args = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("ModelCheckpoint"):
            init_args["dirpath"] = str(run_dir / "checkpoints")
        if callback["class_path"].endswith("ExportHuggingFace"):
            init_args["output_dir"] = str(run_dir / "hf_model")
    run = {
        "seed_everything": seed,
        "trainer": {
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(run_dir), "name": "tensorboard", "version": ""},
            },
            "callbacks": callbacks,
        },
    }
    return merge(study.overrides, run)


def write_run_yaml(study: Study, preset: str, seed: int) -> tuple[Path, dict[str, Any]]:
    """Write the run's own config layer (``run_config``) to its ``run.yaml``; the file and the layer."""
    layer = run_config(study, preset, seed)
    path = study.run_dir(preset, seed) / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(layer, sort_keys=False))
    return path, layer


def run_configs(study: Study, preset: str, seed: int) -> list[Path]:
    """The config files of one run, in the order they compose: the base configs, the preset and the run's
    ``run.yaml`` (``write_run_yaml``)."""
    return [*map(Path, study.base_configs), preset_path(preset), study.run_dir(preset, seed) / "run.yaml"]


def run_command(study: Study, preset: str, seed: int) -> list[str]:
    """The ``rgra fit`` command of one run."""
    configs = run_configs(study, preset, seed)
    return [sys.executable, "-m", "rgra_lightning", "fit", *(f"--config={path}" for path in configs)]


def progress(run_dir: Path, max_steps: int) -> str:
    """A running fit's progress as its TensorBoard files have it so far (written every few updates):
    ``update 12/75, train/reward 0.410, val/accuracy 0.300 at update 10``."""
    rewards, accuracies = read_curve(run_dir, REWARD_TAG), read_curve(run_dir)
    if not rewards and not accuracies:
        return "no update logged yet"
    parts = []
    if rewards:
        step, reward = rewards[-1]
        parts += [f"update {step}/{max_steps if max_steps > 0 else '?'}", f"{REWARD_TAG} {reward:.3f}"]
    if accuracies:
        parts.append(f"{VAL_TAG} {accuracies[-1][1]:.3f} at update {accuracies[-1][0]}")
    return ", ".join(parts)


def fit_reporting(
    command: list[str],
    log: Any,
    report: Callable[[], None],
    every_s: float,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    what: str = "fit",
    keep_fds: tuple[int, ...] = (),
) -> int:
    """Run ``command`` (a ``what``: ``fit`` or ``test``) with its output in ``log``, calling ``report`` every
    ``every_s`` seconds until it ends; its exit status. Interrupted (Ctrl-C, or SIGTERM to the study), it is
    stopped as a scheduler would stop it (``stop_fit``) and the interruption goes on. It runs in a session
    of its own, so that a Ctrl-C in the terminal reaches the study only: a fit interrupted mid-update would
    save nothing. It inherits ``keep_fds`` (the run's claim, ``claimed``, which it then holds until it
    ends too), and on Linux gets SIGTERM when the study dies however it dies (``kill -9``, the
    out-of-memory killer: ``_stop_with_parent``), rather than run on unclaimed, holding its GPU."""
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ,
        start_new_session=True,
        pass_fds=keep_fds,
        preexec_fn=_stop_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
    )
    try:
        while True:
            try:
                return process.wait(timeout=every_s)
            except subprocess.TimeoutExpired:
                report()
    except BaseException:
        stop_fit(process, stop_timeout_s, what)
        raise


def _stop_with_parent(parent: int) -> Callable[[], None]:
    """What a child runs before its program (``Popen``'s ``preexec_fn``): ask Linux for SIGTERM when the
    process that started it (``parent``) ends (``prctl(PR_SET_PDEATHSIG)``), and send it at once where that
    one already ended before the request."""

    def stop_with_parent() -> None:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return stop_with_parent


def stop_fit(process: subprocess.Popen, timeout_s: float, what: str = "fit") -> None:
    """SIGTERM the fit, on which ``rgra fit`` saves its state after the update in progress and exits, and
    wait for it: killed, it would lose every update since its last periodic checkpoint. Killed where it
    has not exited within ``timeout_s`` (an update of a large model takes minutes; a hung one never ends),
    or when the wait is interrupted again (a second Ctrl-C). A ``test`` saves nothing: it just exits."""
    process.send_signal(signal.SIGTERM)
    goal = "save its state" if what == "fit" else "exit"
    print(
        f"stopping the running {what}: waiting up to {timeout_s:.0f} s for it to {goal} "
        "(Ctrl-C again to kill it)",
        flush=True,
    )
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"the {what} had not exited {timeout_s:.0f} s after SIGTERM: killed", flush=True)
        process.kill()
        process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise


def saved_update(run_dir: Path) -> int | None:
    """The update the run's last checkpoint holds (a file read memory-mapped, or a sharded checkpoint's
    metadata, in a fraction of a second), or None where it has none it can read (the fit says what is wrong
    with it when it resumes)."""
    last = run_dir / LAST_CHECKPOINT
    if not last.exists():
        return None
    from rgra_lightning.checkpointing import read_checkpoint  # torch: only for a run with a checkpoint

    try:
        return read_checkpoint(str(last), "the last checkpoint")["global_step"]
    except ConfigError:
        return None


def run_one(
    study: Study, preset: str, seed: int, prefix: str = "", keep_fds: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Fit one run in a subprocess (resuming from its last checkpoint if one exists), printing its progress
    (``prefix: update 12/75, ...``) every ``PROGRESS_EVERY_S``; return its record.

    The record (also written to ``done.json`` on success) has ``returncode``, ``wall_s``, ``steps``,
    ``steps_per_s`` (optimizer updates per second of the whole fit, validation included), the final
    and best validation accuracy after step 0 (``curve_metrics``, as in the summary), ``event_files``:
    the TensorBoard files the fit wrote (the summary reads these only: ``ablation_summary.event_files``),
    and ``config``: the run's composed config (``as_recorded``), which ``stale_runs`` compares with the
    study's when it is run again.
    """
    run_dir = study.run_dir(preset, seed)
    _, layer = write_run_yaml(study, preset, seed)
    command = run_command(study, preset, seed)
    last = run_dir / LAST_CHECKPOINT
    resumed = last.exists()  # a file, or the directory of a sharded (FSDP2) checkpoint
    if resumed:
        command += ["--ckpt_path", str(last)]
    else:
        set_aside_tensorboard(run_dir, prefix)
    config = run_settings(study, preset, layer)
    # What this fit runs with, for ``stale_runs`` to compare a resume with: the run.yaml alone would be
    # composed over the base configs and preset of that later day.
    started = {"config": as_recorded(config)}
    (run_dir / "started.json").write_text(json.dumps(started, indent=2) + "\n")
    steps = config.get("trainer", {}).get("max_steps", -1)
    start = time.perf_counter()

    def report() -> None:
        elapsed = time.perf_counter() - start
        took = f"{elapsed:.0f} s" if elapsed < 120 else f"{elapsed / 60:.0f} min"
        print(f"{prefix}: {progress(run_dir, steps)} ({took})", flush=True)

    with open(run_dir / "log.txt", "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        returncode = fit_reporting(command, log, report, PROGRESS_EVERY_S, STOP_TIMEOUT_S, "fit", keep_fds)
    wall_s = time.perf_counter() - start
    files = event_files(run_dir)
    metrics = curve_metrics(read_curve(run_dir, files=files))
    record = {
        "preset": preset,
        "seed": seed,
        "returncode": returncode,
        "wall_s": round(wall_s, 1),
        "steps": steps,
        "steps_per_s": round(steps / wall_s, 3) if steps and steps > 0 and not resumed else None,
        "final_val_accuracy": metrics.get("final"),
        "best_val_accuracy": metrics.get("best"),
        "event_files": files,
        "config": config,
    }
    if returncode == 0:
        write_done(run_dir, record)
    return record


def set_aside_tensorboard(run_dir: Path, prefix: str) -> None:
    """Rename the event files of an earlier attempt of a run started afresh (one that failed or was stopped
    before its first checkpoint) to ``tensorboard.stale-<time>/``, saying so in one line: ``done.json``
    records every event file in ``tensorboard/``, so the attempt's points, maybe of other settings, would
    count in the new run's curve. A resumed run keeps them: its fit purges their points after the
    checkpoint's step itself (``checkpointing``'s ``purge_step``)."""
    if not event_files(run_dir):
        return
    tensorboard = run_dir / "tensorboard"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = (f"tensorboard.stale-{stamp}{f'-{n}' if n > 1 else ''}" for n in itertools.count(1))
    stale = next(run_dir / name for name in names if not (run_dir / name).exists())  # 2 in a second: -2
    tensorboard.rename(stale)
    print(
        f"{prefix}: moved {tensorboard} to {stale}: an earlier attempt's, which saved no checkpoint to "
        "resume from; its points would count in this run's curve",
        flush=True,
    )


def write_done(run_dir: Path, record: dict[str, Any]) -> None:
    """Write the run's ``done.json`` whole or not at all: into ``done.json.partial`` beside it, which then
    replaces it (``os.replace``, atomic within a directory). A crash while writing leaves the partial file,
    not a cut-short ``done.json`` that marks the run finished."""
    partial = run_dir / "done.json.partial"
    with open(partial, "w") as file:
        file.write(json.dumps(record, indent=2) + "\n")
        file.flush()
        os.fsync(file.fileno())  # on disk before the rename, so that a power loss leaves no empty done.json
    os.replace(partial, run_dir / "done.json")


def started_config(run_dir: Path) -> dict[str, Any] | None:
    """The composed config the run's fit was last started with (``started.json``, which ``run_one`` writes
    before it), or None where none can be read (a run started before it was written, or a file cut short)."""
    return (json_record(run_dir / "started.json") or {}).get("config")


def as_recorded(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as ``done.json`` holds it (JSON: a value JSON has no type for, a YAML date, as its text)."""
    return json.loads(json.dumps(config, default=str))


def run_settings(study: Study, preset: str, run_layer: dict[str, Any]) -> dict[str, Any]:
    """The composed config of a run of ``preset`` with ``run_layer`` as its ``run.yaml`` (what ``rgra fit``
    composes from ``run_configs``), as recorded."""
    return as_recorded(merge(compose([*study.base_configs, preset_path(preset)]), run_layer))


def stale_runs(study: Study) -> tuple[list[str], list[str]]:
    """The study's runs already made (finished, or started and to be resumed from their checkpoint) with a
    composed config other than the one the study gives them now: one ``error: ...`` line per preset with
    such runs, naming the first one's changed keys, and ``warning: ...`` lines: one per preset with finished
    runs whose ``done.json`` records no config (written before it did), and one per ``done.json`` that
    holds no JSON record (``finished_record``), whose run counts as not finished. An unfinished run is
    compared by the config its fit was started with (``started_config``). A run that records neither (made
    before they were recorded) is compared through its ``run.yaml`` (the study's overrides then) composed
    over today's base configs and preset. Reads files only: a few milliseconds a run."""
    errors, warnings = [], []
    for preset in study.presets:
        stale: list[tuple[Path, str, bool]] = []  # run directory, its changes, whether finished
        unrecorded: list[Path] = []
        for seed in study.seeds:
            run_dir = study.run_dir(preset, seed)
            done, run_yaml = run_dir / "done.json", run_dir / "run.yaml"
            record = finished_record(run_dir)
            finished = record is not None
            if done.is_file() and not finished:
                warnings.append(
                    f"warning: {done} holds no JSON record (cut short while written?): the run counts as not "
                    "finished, is left out of the summary and is run again"
                )
            recorded = record.get("config") if finished else None
            if finished and recorded is None:
                unrecorded.append(run_dir)
            resumable = not finished and (run_dir / LAST_CHECKPOINT).exists()
            if resumable:
                recorded = started_config(run_dir)
            if recorded is None and run_yaml.is_file() and (finished or resumable):
                recorded = run_settings(study, preset, read(run_yaml))
            if recorded is None:
                continue
            changed = changes(recorded, run_settings(study, preset, run_config(study, preset, seed)))
            if changed:
                stale.append((run_dir, changed, finished))
        if stale:
            run_dir, changed, finished = stale[0]
            others = f" (so were {', '.join(str(other) for other, *_ in stale[1:])})" if stale[1:] else ""
            errors.append(
                f"error: {run_dir} was {'run' if finished else 'started'} with other settings than the study "
                f"gives it now: {changed}{others}; use a new study name, or delete "
                f"{' '.join(str(other) for other, *_ in stale)} to run {'them' if others else 'it'} again"
            )
        if unrecorded:
            others = f" (and {len(unrecorded) - 1} more of {preset})" if unrecorded[1:] else ""
            warnings.append(
                f"warning: {unrecorded[0]}{others}: done.json records no config (written before rgra "
                "ablate recorded them), so only its run.yaml (the overrides then), if any, was compared with "
                "the study, not the base config or the preset; delete the run directory to run it again"
            )
    return errors, warnings


EXIT_MEANINGS = {  # ``rgra fit``'s exit statuses (``errors``), as a failed run's line names them
    CONFIG_REFUSED: "config refused",
    TRAINING_DIVERGED: "training diverged",
    RUN_REFUSED: "this run's directory or checkpoint refused",
    KILLED: "stopped by SIGTERM",
    128 + signal.SIGINT: "stopped by Ctrl-C",
}


def exit_meaning(code: int) -> str | None:
    """What a fit's exit status says (``EXIT_MEANINGS``), or None where it says nothing more; a negative
    one is ``subprocess``'s for a fit killed by a signal (``-9``: ``killed by SIGKILL``, as the kernel's
    out-of-memory killer does)."""
    if code >= 0:
        return EXIT_MEANINGS.get(code)
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal, which has no name
        return f"killed by signal {-code}"


def parse_only_cli() -> type:
    """``rgra``'s CLI class stopped before it instantiates the model, the data and the trainer: the config
    of a subcommand (``fit``, ``test``) is parsed and validated (every option known and of its type, every
    required one given) and checked as before loading anything (a GPU config on a CPU; the values of the
    model's loss, sampling, evaluation, sharding and LoRA options: ``cli.check_option_values``; a ``fit``
    of data without a training split), without loading a model, which takes minutes for a real one.
    (``--print_config`` prints the config before the required options are checked.)"""
    from rgra_lightning.cli import RLCLI

    class ParseOnly(RLCLI):
        def _set_seed(self) -> None:
            """Nothing: no run here to seed (seeding would log ``Seed set to 0`` once per preset)."""

        def instantiate_classes(self) -> None:
            """Nothing: the config is checked, and nothing is run with it."""

        def _run_subcommand(self, subcommand: str) -> None:
            """Nothing: the subcommand is parsed for its checks only."""

    return ParseOnly


def one_line(stderr: str) -> str:
    """``rgra fit``'s error in its ``stderr`` as one line: from its ``error: `` line on, every line joined,
    as a parser report spans several (``error: Parser key "model":`` alone says nothing), but its ``Given
    value`` lines, which echo the whole composed section back (thousands of characters); its last lines
    where no line starts so."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    start = next((n for n, line in enumerate(lines) if line.startswith("error: ")), len(lines) - 3)
    return " ".join(line for line in lines[max(start, 0) :] if not line.startswith("Given value"))


def parser_refusals(study: Study, study_path: Path) -> list[str]:
    """``rgra fit``'s error, as one line, for each composed config that the parser refuses (an unknown
    option, a value of the wrong type, a required option missing, a missing file): a preset's with runs to
    do, and a benchmark test's (its ``test.yaml`` after them) with tests to do, with the presets it refuses,
    found in a second or so per config (``parse_only_cli``) before the study starts rather than when the
    preset's turn comes, hours in. A mistake in the study's ``overrides`` or ``benchmarks`` is named at its
    line in the study file, not in the ``run.yaml`` or ``test.yaml`` written from them. Those are written
    into a temporary directory, not the runs': a study changes no run's file before it claims the run, so
    a refused study changes none, and another process of the study running that run keeps its own."""
    refused: dict[str, list[str]] = {}  # error -> presets
    with tempfile.TemporaryDirectory(prefix="rgra-ablate-") as scratch:
        for preset in study.presets:
            unfinished = [
                seed for seed in study.seeds if finished_record(study.run_dir(preset, seed)) is None
            ]
            untested = {seed: tests_to_do(study, preset, seed) for seed in study.seeds}
            to_test = [name for name in study.benchmarks if any(name in todo for todo in untested.values())]
            if not unfinished and not to_test:
                continue
            seed = unfinished[0] if unfinished else next(seed for seed in study.seeds if untested[seed])
            run_yaml = Path(scratch) / "run.yaml"
            run_yaml.write_text(yaml.safe_dump(run_config(study, preset, seed), sort_keys=False))
            configs = [f"--config={path}" for path in [*run_configs(study, preset, seed)[:-1], run_yaml]]
            errors = []
            if unfinished:
                errors.append(_parser_error(["fit", *configs], run_yaml, study_path, "overrides"))
            tested = [f"--config={path}" for path in [*tested_configs(study, preset, seed)[:-1], run_yaml]]
            for name in to_test:
                test_yaml = Path(scratch) / "test.yaml"
                test_yaml.write_text(
                    yaml.safe_dump(benchmark_layer(study, preset, seed, name), sort_keys=False)
                )
                args = ["test", *tested, f"--config={test_yaml}"]
                errors.append(_parser_error(args, test_yaml, study_path, f"benchmarks.{name}"))
            for error in filter(None, errors):
                refused.setdefault(error, []).append(preset)
    return [
        f"{error} (preset{'s' * (len(names) > 1)} {', '.join(names)})" for error, names in refused.items()
    ]


def _parser_error(args: list[str], layer_yaml: Path, study_path: Path, section: str) -> str | None:
    """The one-line error of ``rgra``'s parser for these arguments (a subcommand and its options), its
    ``LAYER_YAML:LINE`` replaced by the study file's line of ``section`` that wrote it (``_in_study_file``);
    None where it accepts them."""
    from rgra_lightning.cli import main as rgra_command

    errors = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            rgra_command(args, cli_class=parse_only_cli())
    except SystemExit as exit_info:
        if exit_info.code != CONFIG_REFUSED:  # the study stopped by SIGTERM meanwhile
            raise
        return _in_study_file(one_line(errors.getvalue()), layer_yaml, study_path, section)
    return None


def _in_study_file(error: str, layer_yaml: Path, study_path: Path, section: str) -> str:
    """``error`` (``error: LAYER_YAML:LINE: ...``) with ``LAYER_YAML:LINE`` replaced by the line of the
    study file's ``section`` (``overrides``, ``benchmarks.<name>``) that wrote it, where it was one of
    them."""
    match = re.match(rf"error: {re.escape(str(layer_yaml))}:(\d+): (.*)", error)
    key = key_at_line(layer_yaml, int(match[1])) if match else None
    line = key_line(study_path, f"{section}.{key}") if key else None
    return f"error: {study_path}:{line}: {match[2]}" if match and line else error


def tested_configs(study: Study, preset: str, seed: int) -> list[Path]:
    """The config files a run's benchmark tests compose before their ``test.yaml``: the run's own
    (``run_configs``), but for a preset that switches the model to another module, such as the paper's
    supervised baseline (``configs/paper/gsm8k-sft.yaml``: an ``SFTModule``, which tests its loss only),
    which is left out: its run's checkpoint is tested by the base config's module (an ``RLModule`` tests an
    SFT checkpoint as it tests its own: greedy accuracy), as the ft row of the paper's table is. A preset of
    the base's module, however its class path is written, or of a subclass of it, stays."""
    configs = run_configs(study, preset, seed)
    base = (merge(compose(study.base_configs), study.overrides).get("model") or {}).get("class_path")
    run = (
        merge(compose([*study.base_configs, preset_path(preset)]), study.overrides).get("model") or {}
    ).get("class_path")
    if base and run and not _is_module_of(run, base):
        configs.remove(preset_path(preset))
    return configs


@functools.lru_cache(maxsize=64)
def _is_module_of(run: str, base: str) -> bool:
    """Whether class path ``run`` names the class ``base`` names, or a subclass of it: a class has several
    paths (``rgra_lightning.RLModule``, ``rgra_lightning.module.RLModule``). False where one names no class
    (the parser reports that)."""
    if run == base:
        return True
    from rgra_lightning.parser_errors import imported  # the modules: only for two different paths

    try:
        run_class, base_class = imported(run), imported(base)
        return (
            isinstance(run_class, type) and isinstance(base_class, type) and issubclass(run_class, base_class)
        )
    except (ImportError, AttributeError, ValueError):
        return False


def test_settings(study: Study, preset: str, seed: int, name: str) -> dict[str, Any]:
    """The composed config of a run's test on benchmark ``name``, as recorded: its config files'
    (``tested_configs``; ``run.yaml`` as the study gives it now, which ``stale_runs`` found a finished fit
    was made with) and the test's layer."""
    files = tested_configs(study, preset, seed)[:-1]  # all but run.yaml, composed from its layer instead
    run = merge(compose(files), run_config(study, preset, seed))
    return as_recorded(merge(run, benchmark_layer(study, preset, seed, name)))


def write_test_yaml(study: Study, preset: str, seed: int, name: str) -> Path:
    """Write the test's own config layer (``benchmark_layer``) to its ``test.yaml``; the file."""
    path = benchmark_dir(study.run_dir(preset, seed), name) / "test.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(benchmark_layer(study, preset, seed, name), sort_keys=False))
    return path


def tests_to_do(study: Study, preset: str, seed: int) -> list[str]:
    """The benchmarks a run is still to be tested on: every one for a run not finished, else those without
    a test made with the settings the study gives now (``current_test``)."""
    run_dir = study.run_dir(preset, seed)
    if finished_record(run_dir) is None:
        return list(study.benchmarks)
    return [
        name
        for name in study.benchmarks
        if current_test(run_dir, name, test_settings(study, preset, seed, name))[0] is None
    ]


def run_benchmarks(
    study: Study, preset: str, seed: int, prefix: str, refused: set[str], keep_fds: tuple[int, ...] = ()
) -> int:
    """Test a finished run on each benchmark it is still to be tested on (``tests_to_do``), a line each;
    the number of tests that failed. One made with other settings than the study's now is made again. A
    benchmark whose test ``rgra test`` refused (``CONFIG_REFUSED``: its data unreachable, say) joins
    ``refused`` and is not tried on later runs, each of which would load its model to be refused the same
    way."""
    run_dir = study.run_dir(preset, seed)
    failed = 0
    for name in study.benchmarks:
        settings = test_settings(study, preset, seed, name)
        done, changed = current_test(run_dir, name, settings)
        if done is not None:
            continue
        if name in refused:
            failed += 1
            print(f"{prefix}: {name}: not tested, as its test was refused above", flush=True)
            continue
        if changed:
            print(
                f"{prefix}: {name}: tested before with other settings ({changed}): testing again", flush=True
            )
        if not (run_dir / LAST_CHECKPOINT).exists():
            failed += 1
            print(f"{prefix}: {name}: FAILED: {run_dir / LAST_CHECKPOINT} to test is missing", flush=True)
            continue
        print(f"{prefix}: testing on {name} (log: {benchmark_dir(run_dir, name) / 'log.txt'})", flush=True)
        try:
            record = run_benchmark(study, preset, seed, name, settings, prefix, keep_fds)
        except (KeyboardInterrupt, SystemExit):
            print(
                f"{prefix}: {name}: interrupted: run the same command again to test it and go on", flush=True
            )
            raise
        metrics = record["metrics"]
        if record["returncode"] == 0 and metrics:
            shown = {
                tag: value for tag, value in metrics.items() if CORRECTNESS_TAG.fullmatch(tag)
            } or metrics
            values = ", ".join(f"{tag} {value:.3f}" for tag, value in shown.items())
            print(f"{prefix}: {name}: {values} ({record['wall_s']:.0f} s)", flush=True)
            continue
        failed += 1
        code = record["returncode"]
        if code == CONFIG_REFUSED:
            refused.add(name)
        meaning = exit_meaning(code) if code else "it logged no test/* metric"
        report_failure(f"{prefix}: {name}", code, meaning, benchmark_dir(run_dir, name) / "log.txt")
    return failed


def run_benchmark(
    study: Study,
    preset: str,
    seed: int,
    name: str,
    settings: dict[str, Any],
    prefix: str,
    keep_fds: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Test the run's last checkpoint on benchmark ``name`` in a subprocess (``rgra test``), printing how
    long it has run every ``PROGRESS_EVERY_S``; its record, also written to the test's ``done.json`` where
    it returned 0 and logged a ``test/*`` metric: ``returncode``, ``wall_s``, ``metrics`` (``test/*`` tag
    -> value, from the event files this test wrote: an earlier attempt's beside them count for nothing),
    ``event_files`` and ``config`` (``settings``, which a rerun compares with the study's)."""
    run_dir = study.run_dir(preset, seed)
    directory = benchmark_dir(run_dir, name)
    test_yaml = write_test_yaml(study, preset, seed, name)
    command = benchmark_command(tested_configs(study, preset, seed), test_yaml, run_dir)
    events = directory / "tensorboard"
    before = set(events.glob("events.out.tfevents.*"))
    start = time.perf_counter()

    def report() -> None:
        print(f"{prefix}: testing on {name} ({time.perf_counter() - start:.0f} s)", flush=True)

    with open(directory / "log.txt", "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        returncode = fit_reporting(command, log, report, PROGRESS_EVERY_S, STOP_TIMEOUT_S, "test", keep_fds)
    written = sorted(set(events.glob("events.out.tfevents.*")) - before)
    record = {
        "benchmark": name,
        "preset": preset,
        "seed": seed,
        "returncode": returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "metrics": logged_test_metrics(written) if returncode == 0 else {},
        "event_files": [path.name for path in written],
        "config": settings,
    }
    if returncode == 0 and record["metrics"]:
        write_done(directory, record)
    return record


def benchmark_results(study: Study) -> dict[str, dict[str, list[dict[str, float]]]]:
    """The ``test/*`` metrics of the finished runs' tests made with the settings the study gives now:
    preset label -> benchmark -> one metrics mapping per run tested. A test made with other settings is
    left out with a ``warning: ...`` line (a rerun of the study tests it again)."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for preset in study.presets:
        for seed in study.seeds:
            run_dir = study.run_dir(preset, seed)
            if finished_record(run_dir) is None:
                continue
            for name in study.benchmarks:
                record, changed = current_test(run_dir, name, test_settings(study, preset, seed, name))
                if changed:
                    print(
                        f"warning: {benchmark_dir(run_dir, name)} was tested with other settings than the "
                        f"study gives it now ({changed}): left out of the summary; run the study to test it "
                        "again",
                        file=sys.stderr,
                    )
                if record is not None:
                    tested = results.setdefault(study.label(preset), {}).setdefault(name, [])
                    tested.append(record["metrics"])
    return results


def starting(run_dir: Path) -> str:
    """How a run starts: ``running``, or ``resuming from update N`` from its last checkpoint."""
    if not (run_dir / LAST_CHECKPOINT).exists():
        return "running"
    update = saved_update(run_dir)
    return f"resuming from update {update}" if update is not None else f"resuming from {LAST_CHECKPOINT}"


def interrupted(run_dir: Path) -> str:
    """The line of a study interrupted while a run's fit ran: what the run kept (the update its last
    checkpoint holds, the one it stopped after where it saved on SIGTERM) and how to go on."""
    update = saved_update(run_dir)
    if update is None and (run_dir / LAST_CHECKPOINT).exists():  # one whose update cannot be read
        return (
            f"interrupted; this run has a last checkpoint ({run_dir / LAST_CHECKPOINT}): run the same "
            "command again to resume it there and go on"
        )
    if update is None:
        return (
            "interrupted before this run saved a checkpoint: run the same command again to rerun it and go on"
        )
    return (
        f"interrupted; this run's last checkpoint holds update {update} ({run_dir / LAST_CHECKPOINT}): run "
        "the same command again to resume it there and go on"
    )


def run_study(study: Study) -> int:
    """Run every unfinished (preset, seed) and test each finished one (``run_job``), print progress, write
    the summary; the number of runs not done and tests that failed. A run another process holds
    (``claimed``: another ``rgra ablate`` of the study, on another GPU) is skipped and not counted.
    Interrupted, the study says where the running fit stopped and how to resume, and the interruption goes
    on."""
    jobs = [(preset, seed) for seed in study.seeds for preset in study.presets]  # every preset early
    failures = Failures()
    held_elsewhere: list[Path] = []
    for index, (preset, seed) in enumerate(jobs, start=1):
        prefix = f"[{index}/{len(jobs)}] {study.label(preset)} seed {seed}"
        with claimed(study.run_dir(preset, seed)) as claim:
            if isinstance(claim, str):
                held_elsewhere.append(study.run_dir(preset, seed))
                print(f"{prefix}: held by another rgra ablate ({claim}), skipped", flush=True)
                continue
            run_job(study, preset, seed, prefix, failures, (claim,))
    summary = summarise(study, benchmark_results(study))
    counts = [f"{failures.runs} run(s)"] * bool(failures.runs)
    counts += [f"{failures.tests} benchmark test(s)"] * bool(failures.tests)
    retry = f"; {' and '.join(counts)} failed; rerun to retry them" if counts else ""
    elsewhere = sum(finished_record(run_dir) is None for run_dir in held_elsewhere)  # not finished by now
    held = (
        f"; {elsewhere} run(s) held by another process: --summary_only adds them once done"
        if elsewhere
        else ""
    )
    print(f"summary: {summary}" + (f" ({(retry + held)[2:]})" if retry or held else ""))
    return failures.runs + failures.tests


@dataclass
class Failures:
    """What failed so far in a study: ``runs`` and ``tests`` (counts), the presets whose config ``rgra fit``
    refused and the benchmarks whose test ``rgra test`` refused (``CONFIG_REFUSED``), not tried again."""

    runs: int = 0
    tests: int = 0
    refused_presets: set[str] = field(default_factory=set)
    refused_benchmarks: set[str] = field(default_factory=set)


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[int | str]:
    """Hold the run's claim while the body runs: an exclusive lock on ``<run_dir>.lock`` beside the run's
    directory (``locks.take_lock``), so that two ``rgra ablate`` processes of one study (one per
    GPU) never run or test one run together, nor set aside each other's event files. Yields the descriptor
    that holds it (a fit or test given it holds the claim too, until it ends: ``fit_reporting``), or the
    holder's record (``process 123 on host``) where another process holds it."""
    held = take_lock(f"{run_dir}.lock")
    if isinstance(held, str):
        yield held
        return
    try:
        yield held
    finally:
        os.close(held)  # releases the lock, unless a fit started under it still runs


def run_job(
    study: Study, preset: str, seed: int, prefix: str, failures: Failures, keep_fds: tuple[int, ...] = ()
) -> None:
    """Run one (preset, seed) unless it finished, then test it on the benchmarks (``run_benchmarks``),
    counting what fails in ``failures``. A preset whose run exits with ``CONFIG_REFUSED`` is not run with
    its other seeds: only the seed differs between them, so each would be refused the same way (the hub
    unreachable, a GPU config on a CPU) after loading the same models. A diverged run
    (``TRAINING_DIVERGED``) does not stop the others: another seed may not diverge; nor does one refused for
    its own directory or checkpoint (``RUN_REFUSED``: another process holds it, say). Its fit and tests
    inherit ``keep_fds``, the run's claim."""
    run_dir = study.run_dir(preset, seed)
    label = study.label(preset)
    if finished_record(run_dir) is not None:
        print(f"{prefix}: done already, skipped", flush=True)
        failures.tests += run_benchmarks(study, preset, seed, prefix, failures.refused_benchmarks, keep_fds)
        return
    if preset in failures.refused_presets:
        failures.runs += 1
        print(f"{prefix}: not run, as {label}'s config was refused above", flush=True)
        return
    print(f"{prefix}: {starting(run_dir)} (log: {run_dir / 'log.txt'})", flush=True)
    try:
        record = run_one(study, preset, seed, prefix, keep_fds)
    except (KeyboardInterrupt, SystemExit):
        print(f"{prefix}: {interrupted(run_dir)}", flush=True)
        raise
    code = record["returncode"]
    if code == 0:
        print(
            f"{prefix}: finished in {record['wall_s']:.0f} s, final val accuracy "
            f"{record['final_val_accuracy']}, best after step 0 {record['best_val_accuracy']}",
            flush=True,
        )
        failures.tests += run_benchmarks(study, preset, seed, prefix, failures.refused_benchmarks, keep_fds)
        return
    failures.runs += 1
    if code == CONFIG_REFUSED:
        failures.refused_presets.add(preset)
    report_failure(prefix, code, exit_meaning(code), run_dir / "log.txt")


def report_failure(prefix: str, code: int, meaning: str | None, log: Path) -> None:
    """The lines of a failed fit or test: ``PREFIX: FAILED (exit CODE: MEANING); last lines:`` and the last
    5 lines of its ``log``, indented."""
    tail = log.read_text().strip().splitlines()[-5:]
    status = f"exit {code}: {meaning}" if meaning else f"exit {code}"
    print(f"{prefix}: FAILED ({status}); last lines:", *tail, sep="\n  ", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        prog="rgra ablate",
        description=__doc__.split("\n\n")[0],
        epilog="""The study config (YAML) has these fields:
  name         required: the study's name; its results go to <results_dir>/<name>/
  base_config  required: a fit config, or a list of configs composed in order
  presets      required: loss presets, names of configs/loss/<preset>.yaml or paths to YAML files
  seeds        required: a list of integers from 0 to 2**32 - 1; each preset runs once with each seed
  overrides    config keys applied after the base and the preset, as in a fit config,
               e.g. {trainer: {max_steps: 80}}
  results_dir  where the studies' results go (default: results)
  reference    the preset summary.md compares every other preset with (default: the first)
  benchmarks   names mapped to config keys applied to a test of each finished run's last checkpoint,
               e.g. {gsm8k: {data: {init_args: {limit: null}}}}; summary.md tabulates test/* per preset

Example: configs/ablations/paper.yaml. Rerun, a study skips its finished runs and resumes an interrupted
one. docs/ablations.md describes the study, its runs, their exit statuses and the summary.""",
    )
    parser.add_argument("--config", type=Path, required=True, help="the study config (YAML; fields below)")
    parser.add_argument(
        "--summary_only",
        action="store_true",
        help="run nothing: only rewrite summary.md and val_accuracy.png from the runs finished so far",
    )
    args = parser.parse_args(argv)
    try:
        return check_and_run(args.config, args.summary_only)
    except KeyboardInterrupt:  # no traceback: run_study said where the running fit stopped; else none ran
        return 128 + signal.SIGINT  # as a shell reports a process stopped by Ctrl-C


def benchmarks_without_checkpoint(study: Study, study_path: Path) -> list[str]:
    """An ``error: ...`` line per preset whose runs would leave no last checkpoint for the study's benchmark
    tests to load (``without_last_checkpoint``); none for a study without benchmarks."""
    if not study.benchmarks:
        return []
    return [
        f"error: {study_path}: benchmarks test each run's {LAST_CHECKPOINT}, and preset {preset} leaves "
        f"none: {why}; add rgra_lightning.checkpointing.PeriodicModelCheckpoint with save_last: true to the "
        "base config's trainer.callbacks"
        for preset in study.presets
        if (
            why := without_last_checkpoint(
                run_settings(study, preset, run_config(study, preset, study.seeds[0]))
            )
        )
    ]


def check_and_run(config: Path, summary_only: bool) -> int:
    """``rgra ablate``'s work once its arguments are parsed: check the study (``load_study``, ``stale_runs``,
    ``parser_refusals``), then run it or only summarise it; the exit status."""
    try:
        study = load_study(config)
        stale, unrecorded = stale_runs(study)  # before parser_refusals rewrites a run.yaml
        untestable = benchmarks_without_checkpoint(study, config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if unrecorded:
        print(*unrecorded, sep="\n", file=sys.stderr)
    if stale or untestable:
        print(*stale, *untestable, sep="\n", file=sys.stderr)
        return 2
    exit_on_termination()  # a killed study: fit_reporting stops the running fit too
    if summary_only:
        print(f"summary: {summarise(study, benchmark_results(study))}")
        return 0
    refusals = parser_refusals(study, config)
    if refusals:
        print(
            *refusals,
            "nothing was run: fix the configs above and run the study again",
            sep="\n",
            file=sys.stderr,
        )
        return 2
    return 1 if run_study(study) else 0


if __name__ == "__main__":
    sys.exit(main())
