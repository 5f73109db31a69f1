"""LightningCLI's fit / validate / test / predict with YAML configs (``rgra fit ...``; see ``commands``).

rgra fit --config configs/rgra.yaml
rgra fit --config configs/rgra.yaml --config configs/loss/grpo.yaml   # a loss preset over a base config
rgra fit --config configs/rgra.yaml --model.loss.beta=0.0
rgra fit --config configs/rgra.yaml --print_config
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import io
import logging
import re
import sys
import typing
import warnings
from pathlib import Path

import torch
import yaml
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from rgra_lightning.errors import ConfigError, find_reported_error

# The data module of the 0.x configs, split into one data module per source: ``task`` -> class path.
_SPLIT_DATA_MODULE = {
    "arithmetic": "rgra_lightning.ArithmeticDataModule",
    "files": "rgra_lightning.JsonFilesDataModule",
    "dataset": "rgra_lightning.DatasetDataModule",
}

# jsonargparse's wordings for an unknown key below a class given by class_path, and for the section.
_SECTION = re.compile(r'Parser key "(?P<section>[\w.]+)"')
_CLASS_PATH = re.compile(r"class_path '(?P<class_path>[\w.]+)'")
# A value of the wrong type: one type expected, or a union of plain types (``int | None``).
_WRONG_VALUE = re.compile(
    r'Parser key "(?P<key>[\w.]+)":\s*\n\s*Expected a (?P<expected>[^\n]+?)\. Got value: (?P<value>[^\n]*)'
    r'|Parser key "(?P<union_key>[\w.]+)":\s*\n\s*Does not validate against any of the Union subtypes\s*\n'
    r"\s*Subtypes: \[(?P<subtypes>(?:<class '(?:int|float|str|bool|NoneType)'>(?:, )?)+)\]\s*\n"
    r"(?:[^\n]*\n)*?\s*Given value: (?P<union_value>[^\n]*)"
)
_UNKNOWN_KEY = re.compile(
    r"unrecognized arguments: --(?P<key>[\w.]+)"
    r"|Option '(?P<option>[\w.]+)' is not accepted"
    r"|Group '(?P<group>[\w.]+)' does not accept option '(?P<group_option>[\w.]+)'"
)


def _options(target: object) -> list[str]:
    """The option names of a class's ``__init__`` (and its bases', when it passes ``**kwargs`` on to them,
    as the data modules do) or a dataclass's fields."""
    if dataclasses.is_dataclass(target):
        return [field.name for field in dataclasses.fields(target)]
    names: list[str] = []
    for cls in getattr(target, "__mro__", [target]):
        if "__init__" not in vars(cls) and cls is not target:
            continue
        parameters = inspect.signature(cls).parameters.values()
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def unknown_key_error(error_text: str) -> str | None:
    """For jsonargparse's report of an unknown key under one of our classes, one line naming the key, the
    closest valid one and every valid one at that level; None for any other error."""
    key_match = _UNKNOWN_KEY.search(error_text)
    if key_match is None:
        return None
    # the innermost class named before the unknown key (a LoraConfig inside an RLModule, say)
    class_match = None
    for match in _CLASS_PATH.finditer(error_text, 0, key_match.start()):
        class_match = match
    if class_match is None:
        return None
    dotted = key_match["key"] or key_match["option"] or f"{key_match['group']}.{key_match['group_option']}"
    module_name, _, class_name = class_match["class_path"].rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), class_name)
        *parents, _ = dotted.split(".")
        for name in parents:  # walk nested dataclass options, e.g. loss.advantage
            hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__)
            target = hints[name]
        options = _options(target)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return None
    section = _SECTION.search(error_text, 0, key_match.start())
    owner = f"{section['section']} ({class_match['class_path']})" if section else class_match["class_path"]
    *_, unknown = dotted.split(".")
    prefix = "".join(f"{name}." for name in parents)
    close = difflib.get_close_matches(unknown, options, n=1)
    suggestion = f": did you mean '{prefix}{close[0]}'?" if close else ":"
    level = f" under {prefix.rstrip('.')}" if parents else ""
    return f"unknown option '{dotted}' of {owner}{suggestion} valid keys{level}: {', '.join(options)}"


def _type_names(text: str) -> str:
    """``<class 'int'>`` -> ``an int``, ``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``."""
    text = re.sub(
        r"<class '(?:\w+\.)*(\w+)'>", lambda name: f"{'an' if name[1][0] in 'aeiou' else 'a'} {name[1]}", text
    )
    return re.sub(r"^typing\.Literal\[(.*)\]$", r"one of \1", text).replace("a NoneType", "None")


def wrong_value_error(error_text: str) -> str | None:
    """For jsonargparse's report of a value of the wrong type (a word for a number, a name not among a
    Literal's), one line naming the field, the type and the value; None for any other error."""
    matches = list(_WRONG_VALUE.finditer(error_text))
    if not matches:
        return None
    wrong = max(matches, key=lambda match: match.start())  # the innermost: classes nest their reports
    # the dotted key: every section the report is nested in (model > lora > rank), outermost first
    sections = [match["section"] for match in _SECTION.finditer(error_text, 0, wrong.start())]
    key = ".".join([*sections, wrong["key"] or wrong["union_key"]])
    if wrong["key"]:
        expected, value = _type_names(wrong["expected"]), wrong["value"]
    else:
        expected, value = " or ".join(map(_type_names, wrong["subtypes"].split(", "))), wrong["union_value"]
    return f"{key}: expected {expected}, got {value!r}"


def without_usage(error_text: str) -> str:
    """jsonargparse's error output without the usage block it prints first (a line per option, about 50 for
    ``fit``, above the error that matters); its ``tip:`` line still says how to list the options."""
    lines, in_usage = [], False
    for line in error_text.splitlines(keepends=True):
        in_usage = line.startswith("usage: ") or (in_usage and line[:1].isspace())
        if not in_usage:
            lines.append(line)
    return "".join(lines)


class RLCLI(LightningCLI):
    """LightningCLI that reports config mistakes in one line where it can (a misspelled option of one of our
    classes, a value of the wrong type, a trainer setting Lightning refuses, a GPU config without a GPU),
    the parser's other reports without its usage block, and keeps the config as given when a checkpoint is
    named."""

    def _parse_ckpt_path(self) -> None:
        """Do nothing. LightningCLI would replace the model's settings by the hyperparameters saved in the
        ``--ckpt_path`` checkpoint, silently: ``test --ckpt_path ... --model.evaluation.num_samples=8``
        would evaluate without its samples, and a resumed fit would run with other settings than its
        config names. Here the checkpoint gives the weights and state; ``fit`` refuses one trained with
        other settings (``checkpointing.require_same_run``)."""

    def _check_ckpt_path(self) -> None:
        """A ``--ckpt_path`` file (or sharded checkpoint directory) must exist: Lightning would fail with a
        traceback. ``last``, ``best`` and ``hpc`` are Lightning's to resolve."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and not Path(ckpt_path).exists():
            raise ConfigError(f"--ckpt_path {ckpt_path!r} does not exist")

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path

    def before_instantiate_classes(self) -> None:
        """A GPU config on a machine without a GPU fails here, before the model is loaded (a hub model would
        first be downloaded, or retried for ~40 s offline), in one line saying what to do."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        accelerator = config.trainer.accelerator
        has_gpu = torch.cuda.is_available() or (accelerator == "gpu" and torch.backends.mps.is_available())
        if accelerator in ("gpu", "cuda") and not has_gpu:
            raise ConfigError(
                f"trainer.accelerator is {accelerator}, and this machine has no GPU torch can use: run it on "
                "a GPU machine, or check the config on this CPU with rgra rehearse --config CONFIG..."
            )

    def instantiate_trainer(self, **kwargs: object) -> Trainer:
        """The trainer; a setting it cannot run with (``devices: abc``, an accelerator whose library is
        missing) is a one-line ``ConfigError`` instead of Lightning's traceback."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (TypeError, ValueError, ImportError) as error:
            raise ConfigError(f"trainer: {' '.join(str(error).split())}") from error

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 (LightningCLI's signature)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().parse_arguments(parser, args)
        except SystemExit:
            text = captured.getvalue()
            one_line = unknown_key_error(text) or wrong_value_error(text)
            if one_line:
                print(f"error: {one_line}", file=sys.stderr)
            else:
                sys.stderr.write(without_usage(text))
            raise
        sys.stderr.write(captured.getvalue())


def _is_file(value: str) -> bool:
    """Whether ``value`` names a file; False for what cannot be a path (jsonargparse also takes a
    ``--config`` given as a YAML string, longer than a file name may be)."""
    try:
        return Path(value).is_file()
    except OSError:
        return False


def check_data_module(args: list[str]) -> None:
    """Raise a ``ConfigError`` saying what to write instead when a config (``--config FILE`` or
    ``--data.class_path``) names ``MathPromptDataModule``, which was split into one class per source."""
    for index, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if not value and index + 1 < len(args):
            value = args[index + 1]
        data: object = None
        if name == "--config" and _is_file(value):
            try:
                data = (yaml.safe_load(Path(value).read_text()) or {}).get("data")
            except (yaml.YAMLError, AttributeError):
                continue  # the config parser reports what is wrong with the file
            where = value
        elif name in ("--data.class_path", "--data"):
            data, where = {"class_path": value}, "the command line"
        if isinstance(data, dict) and str(data.get("class_path", "")).endswith("MathPromptDataModule"):
            task = (data.get("init_args") or {}).get("task", "arithmetic")
            replacement = _SPLIT_DATA_MODULE.get(task, " or ".join(_SPLIT_DATA_MODULE.values()))
            raise ConfigError(
                f"{where}: data.class_path {data['class_path']} (task: {task}) is now one data module per "
                f"source: write class_path: {replacement} and remove init_args.task"
            )


_LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # what ``rank_zero_info`` logs through


def _without_litlogger_tip(record: logging.LogRecord) -> bool:
    """False for Lightning's advertisement of its cloud logger, printed at the start of every run."""
    return "litlogger" not in record.getMessage()


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]``. With ``run=False`` (tests) the model, data and
    trainer are only instantiated from the config, and ``args`` has no subcommand."""
    # Expected with manual optimisation and a frozen reference model; they would only confuse users.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # Raised inside Lightning 2.6's CombinedLoader by torch's newer pytree API; nothing a user can change.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    logging.getLogger(_LIGHTNING_INFO_LOGGER).addFilter(_without_litlogger_tip)
    try:
        check_data_module(sys.argv[1:] if args is None else args)
        return RLCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except Exception as error:
        # Lightning's MisconfigurationException is a config mistake too (e.g. accelerator: gpu on a CPU)
        config_error = find_reported_error(error) or (
            error if isinstance(error, MisconfigurationException) else None
        )
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from config_error
