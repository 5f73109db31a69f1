"""An ablation study's benchmark tests: each finished run's last checkpoint tested on each benchmark the study
names, as the paper's Table 1 tests its methods on GSM8K, MATH, Gaokao2023, OlympiadBench and AMC23.

A study config's optional ``benchmarks`` maps a name to config keys applied after the run's own configs:

    benchmarks:
      gsm8k: {data: {init_args: {limit: null}}}                          # every test problem
      math500: {data: {init_args: {preset: math500, limit: null}}}

Each test is ``rgra test --config <the run's configs>... --config <test.yaml> --ckpt_path <run>/checkpoints/
last.ckpt`` in a process of its own, ``test.yaml`` holding the benchmark's keys and a TensorBoard logger in
``<run>/benchmarks/<name>/``, where its log goes, its events and ``test_samples.jsonl`` in ``tensorboard/``;
``done.json`` there records the ``test/*`` metrics, the composed config and the wall time once the test
returned. This module says what the tests are (their config layers, commands and records); ``ablate`` runs
them and ``ablation_summary`` tabulates them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rgra_lightning.ablation_summary import json_record, latest_scalars
from rgra_lightning.config_files import changes, merge
from rgra_lightning.errors import ConfigError

if TYPE_CHECKING:
    from rgra_lightning.ablate import Study

TEST_PREFIX = "test/"  # the metrics ``rgra test`` logs: test/accuracy, and test/pass@k, test/maj@k if sampled
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # in a run directory: what its tests load
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a benchmark's name is a directory's


def parse_benchmarks(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """A study config's ``benchmarks`` field (absent or empty: none) as name -> config layer; a
    ``ConfigError`` naming the study file for anything else."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: benchmarks must be a mapping of names to config keys applied to each run's test "
            f"(gsm8k: {{data: {{init_args: {{limit: null}}}}}}), got a {type(raw).__name__}"
        )
    benchmarks = {}
    for name, layer in raw.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: benchmark name {name!r} must be letters, digits, '.', '_' or '-' (it names a "
                "directory)"
            )
        layer = {} if layer is None else layer
        if not isinstance(layer, dict):
            raise ConfigError(
                f"{path}: benchmarks.{name} must be a mapping of config keys, as in a fit config "
                f"({{data: {{init_args: {{preset: math500}}}}}}), got a {type(layer).__name__}"
            )
        benchmarks[name] = layer
    return benchmarks


def benchmark_dir(run_dir: Path, name: str) -> Path:
    """Where a run's test on benchmark ``name`` keeps its config layer, log, events and record."""
    return run_dir / "benchmarks" / name


def benchmark_layer(study: Study, preset: str, seed: int, name: str) -> dict[str, Any]:
    """The test's own config layer (``test.yaml``), composed after the run's configs: the benchmark's keys
    and a logger writing into the test's directory (not the fit's, whose curve the summary reads)."""
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(benchmark_dir(study.run_dir(preset, seed), name)),
            "name": "tensorboard",
            "version": "",
        },
    }
    return merge(study.benchmarks[name], {"trainer": {"logger": logger}})


def benchmark_command(run_configs: list[Path], test_yaml: Path, run_dir: Path) -> list[str]:
    """The ``rgra test`` command of one test: the run's config files, then its ``test.yaml``, on the run's
    last checkpoint."""
    configs = [*run_configs, test_yaml]
    return [
        sys.executable,
        "-m",
        "rgra_lightning",
        "test",
        *(f"--config={path}" for path in configs),
        f"--ckpt_path={run_dir / LAST_CHECKPOINT}",
    ]


def finished_test(run_dir: Path, name: str) -> dict[str, Any] | None:
    """A finished test's record (its ``done.json``), or None where it has none that holds a JSON record."""
    return json_record(benchmark_dir(run_dir, name) / "done.json")


def current_test(run_dir: Path, name: str, settings: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A finished test's record if it was made with ``settings`` (its composed config), else None, and
    which settings changed (``config_files.changes``; empty where none did or no test finished)."""
    record = finished_test(run_dir, name)
    if record is None:
        return None, ""
    changed = changes(record.get("config") or {}, settings)
    return (None, changed) if changed else (record, "")


def logged_test_metrics(event_files: list[Path]) -> dict[str, float]:
    """The ``test/*`` scalars in these TensorBoard event files (the last value written of each), by tag."""
    scalars = latest_scalars(event_files, lambda tag: tag.startswith(TEST_PREFIX))
    return {tag: max(points.values())[1] for tag, points in sorted(scalars.items())}  # the latest wall time


def without_last_checkpoint(config: dict[str, Any]) -> str | None:
    """Why a run of this composed config leaves no ``checkpoints/last.ckpt`` for its tests to load (no
    ModelCheckpoint callback, or one without ``save_last: true``), or None where it leaves one."""
    callbacks = config.get("trainer", {}).get("callbacks") or []
    checkpoints = [c for c in callbacks if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    if not checkpoints:
        return "its config has no ModelCheckpoint callback among trainer.callbacks"
    if not any((c.get("init_args") or {}).get("save_last") in (True, "link") for c in checkpoints):
        return "its ModelCheckpoint callback does not set save_last: true"
    return None
