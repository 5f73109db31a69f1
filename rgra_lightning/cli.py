"""LightningCLI's fit / validate / test / predict with YAML configs (``rgra fit ...``; see ``commands``).

rgra fit --config configs/rgra.yaml
rgra fit --config configs/rgra.yaml --config configs/loss/grpo.yaml   # a loss preset over a base config
rgra fit --config configs/rgra.yaml --model.loss.beta=0.0
rgra fit --config configs/rgra.yaml --print_config
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from rewards import __file__ as rewards_file
from rewards.errors import ParagraphHelpFormatter, program_name
from rewards.verifiers import Verifier
from rgra_lightning.callbacks import LineProgressBar
from rgra_lightning.checkpointing import (
    ContinuedLog,
    RunDirectoryLock,
    is_sharded_checkpoint,
    last_checkpoint,
    read_checkpoint,
    remove_refused_log_directory,
    require_checkpoint,
    require_matching_weights,
    require_new_run_directory,
    require_same_run,
)
from rgra_lightning.commands import LIGHTNING_COMMANDS
from rgra_lightning.config_files import LOSS_PRESETS, key_line, read
from rgra_lightning.distributed import AgreedStop, slurm_restarts, stop_status
from rgra_lightning.errors import ConfigError, exit_status, find_reported_error
from rgra_lightning.models import built_empty
from rgra_lightning.module import RLModule
from rgra_lightning.parser_errors import (
    Mistake,
    given_options,
    imported,
    is_file,
    one_line_report,
    option_type,
    where_set,
    without_usage,
)

# The data module of the 0.x configs, split into one data module per source: ``task`` -> class path.
_SPLIT_DATA_MODULE = {
    "arithmetic": "rgra_lightning.ArithmeticDataModule",
    "files": "rgra_lightning.JsonFilesDataModule",
    "dataset": "rgra_lightning.DatasetDataModule",
}


class FullNameParser(LightningArgumentParser):
    """The parser with every option named in full: argparse would take a unique prefix of one for it
    (``--model.loss.advantage.scal``), where the same key in a YAML file is an error. The parsers of the
    classes a config names are made of the same class, so this holds at every level, and so does the program
    name usage lines give, ``python -m rgra_lightning`` or ``rgra`` (argparse's: ``__main__.py``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("prog", program_name())
        super().__init__(*args, **kwargs)


class CommandHelpFormatter(DefaultHelpFormatter, ParagraphHelpFormatter):
    """jsonargparse's help, with the paragraphs of a description or epilog laid out as the tools lay them
    out: one with an indented line (a command to copy) keeps its line breaks."""


class SaveConfigAtStart(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback``, saving the config when the run starts (``on_fit_start``, ...)
    instead of at set-up: a fit refused during set-up (LoRA under FSDP2, a precision that cannot train, a
    second fit started at the same moment into one checkpoint directory) left a new ``version_N/`` log
    directory holding only the refused config, beside the runs that had trained."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = stage

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().setup(trainer, pl_module, self._stage)  # once: it returns at once when saved already

    on_validation_start = on_test_start = on_predict_start = on_fit_start


def is_model_parallel(config: Namespace) -> bool:
    """Whether the trainer strategy of ``config`` (one subcommand's) is Lightning's ``ModelParallelStrategy``
    (FSDP2): as a ``class_path``, a strategy object or a subclass of it."""
    strategy = config.get("trainer.strategy")
    if isinstance(strategy, Namespace):
        strategy = imported(strategy.class_path) if strategy.get("class_path") else None
    return issubclass(strategy if isinstance(strategy, type) else type(strategy), ModelParallelStrategy)


def shards_rl_models(config: Namespace) -> bool:
    """Whether ``config`` (one subcommand's) trains or evaluates an ``RLModule`` under Lightning's
    ``ModelParallelStrategy`` (FSDP2), which shards its models in ``RLModule.configure_model``."""
    model = config.get("model")
    if not isinstance(model, Namespace) or not model.get("class_path"):
        return False
    return is_model_parallel(config) and issubclass(imported(model.class_path), RLModule)


def require_readable(ckpt_path: str, model_parallel: bool) -> None:
    """A ``ConfigError`` for a sharded checkpoint to be read under another strategy than
    ``ModelParallelStrategy`` (``model_parallel``), which alone reads one (the others raised
    IsADirectoryError)."""
    if is_sharded_checkpoint(ckpt_path) and not model_parallel:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} is a sharded (FSDP2) checkpoint directory, which only "
            "ModelParallelStrategy reads: run with the run's FSDP2 strategy, or export its policy (rgra "
            f"export checkpoint --config CONFIG --ckpt-path {ckpt_path} --output DIR) and give that as "
            "model.model_path"
        )


class RLCLI(LightningCLI):
    """LightningCLI that reports config mistakes in one line where it can, naming the config file and line
    where the mistake is in one (a misspelled or abbreviated option, a value of the wrong type, a
    ``class_path`` that names no class: ``parser_errors``; YAML that does not parse, a missing file:
    ``check_config_files``; a trainer setting Lightning refuses, a GPU config without a GPU), the parser's
    other reports without its usage block, and keeps the config as given when a checkpoint is named."""

    given_arguments: list[str] | None = None  # the command line, for the file and line of a refused value

    # ``rgra fit --help`` lists the trainer's options and of the model says only "known subclasses:
    # lightning.LightningModule": the help names the project's model and says how to list its options.
    HELP_DESCRIPTION = (
        "The model is rgra_lightning.RLModule (configs/rgra.yaml); its options and the data module's are "
        "not listed here: the end of this help says how to list them."
    )
    HELP_EPILOG = (
        "The model of the configs is rgra_lightning.RLModule (configs/rgra.yaml; a reward model's is "
        "rgra_lightning.RewardModelModule, configs/reward_model.yaml). The options above are the trainer's: "
        "the model's and the data module's (a config's model.init_args, data.init_args) are listed by the "
        "class, named in full:\n\n"
        "  rgra fit --model.help rgra_lightning.RLModule\n"
        "  rgra fit --data.help rgra_lightning.ArithmeticDataModule"
        "   (JsonFilesDataModule, DatasetDataModule, ...)\n\n"
        "docs/algorithms.md documents the loss options (model.loss.*: advantage baseline and scale, policy "
        "term, KL, aggregation), docs/ablations.md the loss presets (configs/loss/*.yaml) that set them."
    )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, its help with ``HELP_DESCRIPTION`` after the description (a subcommand's:
        the first line of the Trainer method's docstring) and ``HELP_EPILOG`` at the end."""
        description = kwargs.get("description") or "Train or evaluate a policy from YAML configs."
        kwargs["description"] = f"{description} {self.HELP_DESCRIPTION}"
        kwargs.setdefault("epilog", self.HELP_EPILOG)
        kwargs.setdefault("formatter_class", CommandHelpFormatter)
        return super().init_parser(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Do nothing. LightningCLI would replace the model's settings by the hyperparameters saved in the
        ``--ckpt_path`` checkpoint, silently: ``test --ckpt_path ... --model.evaluation.num_samples=8``
        would evaluate without its samples, and a resumed fit would run with other settings than its
        config names. Here the checkpoint gives the weights and state; ``fit`` refuses one trained with
        other settings (``checkpointing.require_same_run``), validate/test/predict one whose weights do not
        fit the model (``checkpointing.require_matching_weights``)."""

    def _check_ckpt_path(self) -> None:
        """Report in one line, before Lightning runs, what it would report in a traceback or not at all: a
        ``--ckpt_path`` file that is not a Lightning checkpoint, one trained with other settings (``fit``:
        ``require_same_run``, here before Lightning makes the run a new log directory, which a refused resume
        left behind empty) or (validate, test, predict) whose weights do not fit the model built from the
        config; ``last`` naming no checkpoint (validate, test, predict: ``fit`` starts afresh, as Lightning
        documents); a ``fit`` started afresh where an earlier run's checkpoints are (its own would go beside
        them), or into the checkpoint directory of a fit still running (``RunDirectoryLock.require_free``).
        ``best`` and ``hpc`` are Lightning's to resolve. A resumed fit logs on into its run's TensorBoard
        directory (``ContinuedLog``). A fit that SLURM restarted (a requeued job, ``slurm_restarts``) with
        no ``--ckpt_path`` resumes from its ``last`` checkpoint, where it has one."""
        config = self.config_init[self.subcommand]
        ckpt_path, fitting = config.get("ckpt_path"), self.subcommand == "fit"
        if fitting:
            if hasattr(self.model, "check_fit_settings"):  # RLModule: before Lightning's set-up
                self.model.check_fit_settings(self.trainer, self.datamodule)
            RunDirectoryLock.require_free(self.trainer)
            restarts = slurm_restarts()
            if ckpt_path is None and restarts and last_checkpoint(self.trainer, required=False):
                rank_zero_info(f"SLURM restarted this job ({restarts}x): resuming from its last checkpoint")
                ckpt_path = config["ckpt_path"] = "last"
            if ckpt_path is None:
                require_new_run_directory(self.trainer)
        if ckpt_path in (None, "best", "hpc"):
            return
        if ckpt_path == "last":
            ckpt_path = last_checkpoint(self.trainer, required=not fitting)
            if ckpt_path is None:  # fit: Lightning would warn, hinting at a save_last that is set
                rank_zero_info("--ckpt_path last: the run has no checkpoint yet, so this fit starts afresh")
            if not fitting or ckpt_path is None:
                config["ckpt_path"] = ckpt_path
        if ckpt_path is not None:  # ``last`` resolved: a sharded checkpoint, perhaps
            require_readable(ckpt_path, isinstance(self.trainer.strategy, ModelParallelStrategy))
        if ckpt_path is None:
            return  # a fit from nothing
        checkpoint = read_checkpoint(ckpt_path, "--ckpt_path")  # a sharded one's metadata and shapes
        if fitting:
            require_same_run(checkpoint, ckpt_path, self.model, self.datamodule, self.trainer.world_size)
            ContinuedLog.continue_from(self.trainer, checkpoint)
        else:
            require_matching_weights(self.model, checkpoint, ckpt_path)

    def _before_run(self) -> None:
        """``_check_ckpt_path``, then note whether the run's log directory is new: fixed only now, as a
        resumed fit continues in its own (``ContinuedLog``)."""
        self._check_ckpt_path()
        log_dir = self.trainer.log_dir
        self._new_log_dir = None if log_dir is None or Path(log_dir).exists() else Path(log_dir)

    before_fit = before_validate = before_test = before_predict = _before_run
    _new_log_dir: Path | None = None

    def before_instantiate_classes(self) -> None:
        """A GPU config on a machine without a GPU, a ``--ckpt_path`` that does not exist, is no
        checkpoint (a directory other than a sharded checkpoint) or is a sharded one without
        ``ModelParallelStrategy`` (``require_readable``; ``last`` is resolved later), a value the model's
        option dataclasses refuse (``check_option_values``), a local data copy that is not there
        (``check_source``), or a ``fit`` of data options the data module's ``check_fit_options`` refuses
        (MATH-500, which has no training split) fails here, before the model is loaded (a hub model would
        first be downloaded, or retried for ~40 s offline), in one line saying what to do."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        accelerator = config.trainer.accelerator
        has_gpu = torch.cuda.is_available() or (accelerator == "gpu" and torch.backends.mps.is_available())
        if accelerator in ("gpu", "cuda") and not has_gpu:
            raise ConfigError(
                f"trainer.accelerator is {accelerator}, and this machine has no GPU torch can use: run it on "
                "a GPU machine, or check the config on this CPU with rgra rehearse --config CONFIG..."
            )
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            require_checkpoint(ckpt_path, "--ckpt_path")
            require_readable(ckpt_path, is_model_parallel(config))
        if isinstance(config.get("model"), Namespace) and config.model.get("class_path"):
            check_option_values(config.model, self.given_arguments)
        data = config.get("data")
        if isinstance(data, Namespace) and data.get("class_path"):
            data_class, init_args = imported(data.class_path), vars(data.get("init_args") or Namespace())
            if hasattr(data_class, "check_source"):  # DatasetDataModule: a local copy that is not there
                data_class.check_source(init_args)
            if self.subcommand == "fit" and hasattr(data_class, "check_fit_options"):  # no training split
                data_class.check_fit_options(init_args)

    def instantiate_classes(self) -> None:
        """Lightning's; for a subcommand that runs an RL module to be sharded (``ModelParallelStrategy``),
        its models are built empty (``models.built_empty``) on every process: rank 0 reads their weights
        as they are sharded. Without a subcommand (``main(..., run=False)``: ``rgra export`` and ``rgra
        label`` load weights into the module they get) they are read."""
        empty = self.subcommand is not None and shards_rl_models(self.config[self.subcommand])
        with built_empty(empty):
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: object) -> Trainer:
        """The trainer, with ``AgreedStop`` and ``RunDirectoryLock``; a setting it cannot run with
        (``devices: abc``, an accelerator whose library is missing) is a one-line ``ConfigError`` instead of
        Lightning's traceback.

        validate, test and predict save their config as ``<subcommand>_config.yaml``: into a log directory
        of fixed version (an ablation run's) they overwrote the fit's ``config.yaml``, which ``rgra export``
        and the checkpoint errors name as the config the run was trained with."""
        if self.subcommand not in (None, "fit"):
            self.save_config_kwargs = self.save_config_kwargs | {
                "config_filename": f"{self.subcommand}_config.yaml"
            }
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (TypeError, ValueError, ImportError) as error:
            raise ConfigError(f"trainer: {' '.join(str(error).split())}") from error
        trainer.callbacks.append(AgreedStop())  # SIGTERM, Ctrl-C: stop after a saved update, all processes
        trainer.callbacks.append(RunDirectoryLock())  # one fit at a time per checkpoint directory
        trainer.callbacks.append(ContinuedLog())  # a resumed fit logs on into its run's version_N/
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """Lightning's ``Trainer(**config)``, with ``LineProgressBar`` instead of the default progress bar
        where stderr is not a terminal (a batch job's or ``nohup``'s log, ``| ts``): the default bar's
        ``\\r`` updates show in such a log only when the run ends. A progress bar the config lists is kept,
        and a config without one (``enable_progress_bar: false``, ``barebones``) gets none."""
        listed = config.get("callbacks") or []
        listed = [*(listed if isinstance(listed, list) else [listed]), *callbacks]
        enabled = config.get("enable_progress_bar") is not False and not config.get("barebones")
        if enabled and not sys.stderr.isatty() and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks = [*callbacks, LineProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        """Lightning's, leaving no log directory behind for a run refused in one line (a ``ConfigError``,
        such as a data row found wrong as the loaders are built) after Lightning made its new one: it holds
        nothing but event files without a point (``remove_refused_log_directory``)."""
        self._new_log_dir = None
        try:
            super()._run_subcommand(subcommand)
        except Exception as error:
            refused = isinstance(find_reported_error(error), ConfigError)  # not a diverged run
            if refused and self._new_log_dir is not None and self.trainer.is_global_zero:
                remove_refused_log_directory(self._new_log_dir)
            raise

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, with a parser error as one line where it names one option. ``--print_config`` prints
        while parsing and exits: the config is parsed without it first, so that a value the model's option
        dataclasses refuse (``check_option_values``) is the same one-line error as when the run starts,
        rather than printed as if it would run."""
        arguments = sys.argv[1:] if args is None else args
        self.given_arguments = arguments if isinstance(arguments, list) else None
        printing = isinstance(arguments, list) and [
            argument for argument in arguments if str(argument).split("=", 1)[0] == "--print_config"
        ]
        if printing:
            self._parse(parser, [argument for argument in arguments if argument not in printing])
            subcommand = self.config.get("subcommand")
            model = (self.config[subcommand] if subcommand else self.config).get("model")
            if isinstance(model, Namespace) and model.get("class_path"):
                check_option_values(model, self.given_arguments)
        self._parse(parser, args)

    def _parse(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().parse_arguments(parser, args)
        except SystemExit:
            text = captured.getvalue()
            one_line = one_line_report(text, sys.argv[1:] if args is None else args)
            if one_line:
                print(one_line, file=sys.stderr)
            else:
                sys.stderr.write(without_usage(text))
            raise
        sys.stderr.write(captured.getvalue())


def check_option_values(model: Namespace, args: list[str] | None = None) -> None:
    """Build the model's dataclass options (``loss`` with its ``advantage``, ``sampling``, ``evaluation``,
    ``sharding``, ``lora``) from the parsed ``model`` config (``class_path``/``init_args``), and check its
    verifier's options (``check_verifier_options``), so that a value or combination their checks refuse
    (``advantage.selection: best_of_group`` over a group-mean baseline, ``sampling.top_p: 0``, a verifier's
    ``timeout: 0``) is a one-line ``ConfigError`` before any model loads, and in ``rgra ablate``'s check of
    every preset before the first run; the parser checks only their types. A verifier's option set in a
    ``--config`` file of the command line ``args`` is reported at its line."""
    module_class = imported(model.class_path)
    for option, value in vars(model.get("init_args") or Namespace()).items():
        option_class = _option_dataclass(module_class, option)
        if option_class is not None and isinstance(value, Namespace):
            _built(option_class, value)
        else:
            check_verifier_options(value, f"model.{option}", args)


def check_verifier_options(config: object, name: str, args: list[str] | None = None) -> None:
    """Check the options of the verifier option ``name`` (``model.verifier``) is configured with (``config``:
    its ``class_path`` and ``init_args``), its component verifiers' first (a ``WeightedSum``'s:
    ``model.verifier.verifiers[1]``), with ``Verifier.check_options``. A value the verifier would refuse
    when made inside the model's instantiation, as ``MathVerifier timeout must be ...``, is then a
    ``ConfigError`` naming the option in full as the model's own options are (``model.verifier.timeout
    must be ...``), after the ``FILE:LINE`` of the ``--config`` file of ``args`` that set it, as the parser's
    reports are. Not a verifier, or one whose ``__init__`` has no ``check_options`` of its class: left to
    the class."""
    if isinstance(config, list):
        for index, item in enumerate(config):
            check_verifier_options(item, f"{name}[{index}]", args)
        return
    if not isinstance(config, Namespace) or not isinstance(config.get("class_path"), str):
        return
    try:
        kind = imported(config.class_path)
        options = inspect.signature(kind).bind(**vars(config.get("init_args") or Namespace()))
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # the class is the parser's, or its call the class's, to report
    if not (isinstance(kind, type) and issubclass(kind, Verifier)):
        return
    for option, value in options.arguments.items():
        check_verifier_options(value, f"{name}.{option}", args)
    options.apply_defaults()
    maker = next(cls for cls in kind.__mro__ if "__init__" in vars(cls))  # whose ``__init__`` takes them
    if "check_options" not in vars(maker):
        return  # a subclass's options of its own, which its ``__init__`` checks
    prefix = f"{name}."
    try:
        kind.check_options(prefix, **options.arguments)
    except ConfigError as error:
        option = re.match(r"\w+", str(error).removeprefix(prefix))
        key = f"{prefix}{option[0]}" if option else name
        source = where_set(Mistake(key, str(error)), args, last=True) if args is not None else None
        if source is None:
            raise
        raise ConfigError(f"{source.where}: {error}") from error


def _option_dataclass(target: type, name: str) -> type | None:
    """The dataclass that option ``name`` of ``target`` takes (``LoraConfig | None``: ``LoraConfig``), or
    None: another type, or hints that do not resolve (a user's class annotated with names imported under
    ``TYPE_CHECKING`` only), whose options are then left to the class to check."""
    try:
        hint = option_type(target, name)
    except (KeyError, NameError, TypeError):
        return None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _built(option_class: type, value: Namespace) -> Any:
    arguments = {}
    for field in dataclasses.fields(option_class):
        if field.init and field.name in value:
            nested, given = _option_dataclass(option_class, field.name), value[field.name]
            arguments[field.name] = (
                _built(nested, given) if nested and isinstance(given, Namespace) else given
            )
    return option_class(**arguments)


def check_config_files(args: list[str]) -> None:
    """Read each ``--config`` file first, for one-line errors the parser would report in many or without
    the file's name: a file that does not exist, YAML that does not parse (``FILE:LINE:COLUMN: ...``), and
    a data module of before the split into one class per source (``MathPromptDataModule``), saying what
    to write instead (also for ``--data.class_path``); a loss preset's name given as ``--model.loss``; an
    option that a later ``--config`` file sets again; LightningCLI's ``optimizer`` and ``lr_scheduler``; a
    key given twice in one mapping of a file (``config_files.read``); a config file given without
    ``--config``, and a directory given with it."""
    refuse_bare_config_files(args)
    given = list(given_options(args))
    earlier: list[str] = []  # the options given so far, in order
    for index, (name, value) in enumerate(given):
        data: object = None
        if name == "--config":
            if not is_file(value):
                with contextlib.suppress(OSError):  # a YAML string may be longer than a path can be
                    if Path(value).is_dir():
                        raise ConfigError(f"--config {value} is a directory: give a YAML file")
                if "\n" not in value and value.endswith((".yaml", ".yml", ".json")):
                    raise ConfigError(f"--config {value}: no such file")
                continue  # a config given as a YAML string: the parser reads it
            later = {option for option, _ in given[index + 1 :]}  # given again after it: that value wins
            refuse_overridden_options([option for option in earlier if option not in later], value)
            config = read(value)
            data, where = config.get("data"), value
            refuse_optimizer_options(list(config), value)
        else:
            earlier.append(name)
            refuse_optimizer_options([name.removeprefix("--").split(".")[0]])
        if name in ("--data.class_path", "--data"):
            data, where = {"class_path": value}, "the command line"
        elif name == "--model.loss" and (LOSS_PRESETS / f"{value}.yaml").is_file():
            raise ConfigError(
                f"--model.loss={value}: a loss preset is a config file: write --config {LOSS_PRESETS / value}"
                ".yaml (model.loss takes the loss options, e.g. --model.loss.beta=0.04)"
            )
        if isinstance(data, dict) and str(data.get("class_path", "")).endswith("MathPromptDataModule"):
            task = (data.get("init_args") or {}).get("task", "arithmetic")
            replacement = _SPLIT_DATA_MODULE.get(task, " or ".join(_SPLIT_DATA_MODULE.values()))
            raise ConfigError(
                f"{where}: data.class_path {data['class_path']} (task: {task}) is now one data module per "
                f"source: write class_path: {replacement} and remove init_args.task"
            )


# The options that take no value of their own: an argument after one is not its value (``--print_config``
# takes one only as ``--print_config=skip_null``).
_VALUELESS_OPTIONS = ("-h", "--help", "--print_config")


def refuse_bare_config_files(args: list[str]) -> None:
    """``ConfigError`` for a config file given without ``--config`` (``rgra fit configs/rgra.yaml``), which
    the parser reports as an unrecognized argument, with the command line that gives it with ``--config``.
    Help (``--help``) is printed whatever else is given."""
    if "-h" in args or "--help" in args:
        return
    start = 1 if args and args[0] in LIGHTNING_COMMANDS else 0
    bare = set()
    for index in range(start, len(args)):
        arg, previous = args[index], args[index - 1] if index > start else ""
        # the value of ``--option value``; ``-1`` is a value itself (``--seed_everything -1``)
        is_value = previous.startswith("-") and not previous[1:2].isdigit() and "=" not in previous
        if is_value and previous not in _VALUELESS_OPTIONS or arg.startswith("-"):
            continue
        if arg.endswith((".yaml", ".yml", ".json")):
            bare.add(index)
    if bare:
        fixed = [part for index, arg in enumerate(args) for part in (["--config"] * (index in bare) + [arg])]
        command = shlex.join(["rgra", *fixed] if start else fixed)
        raise ConfigError(f"{args[min(bare)]}: a config file is given with --config ({command})")


def refuse_overridden_options(options: list[str], path: str) -> None:
    """``ConfigError`` when the config file ``path``, given after the command-line ``options``, sets one of
    them again: options apply in the order given, so the file's value would silently win
    (``--trainer.max_steps=3 --config configs/rgra.yaml`` trains 150 updates)."""
    for option in options:
        key = option.removeprefix("--").rstrip("+")
        line = key_line(path, key)
        if line is not None:
            raise ConfigError(
                f"{option} comes before --config {path}, which sets {key} again ({path}:{line}): options "
                f"apply in the order given, so put {option} after the config files"
            )


_OPTIMIZER_OPTIONS = ("optimizer", "lr_scheduler")


def refuse_optimizer_options(keys: list[str], path: str | None = None) -> None:
    """``ConfigError`` for LightningCLI's ``optimizer`` / ``lr_scheduler`` among ``keys`` (of the config
    file ``path``, or of the command line): the module builds its optimizer and schedule itself."""
    for key in keys:
        if key in _OPTIMIZER_OPTIONS:
            raise ConfigError(
                f"{f'{path}: {key}' if path else f'--{key}'} is not an option here: the policy is trained "
                "with AdamW, set by model.learning_rate, model.weight_decay, model.warmup_steps and "
                "model.lr_schedule"
            )


_LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # what ``rank_zero_info`` logs through


def _without_litlogger_tip(record: logging.LogRecord) -> bool:
    """False for Lightning's advertisement of its cloud logger, printed at the start of every run."""
    return "litlogger" not in record.getMessage()


_OWN_SOURCES = tuple(
    str(Path(package).resolve()) + os.sep for package in (Path(__file__).parent, Path(rewards_file).parent)
)
_OTHERS_FORMAT = warnings.formatwarning  # Lightning's (its import sets it)


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning raised in this project's packages as one line, ``warning: <message>``, as its errors are
    ``error: <message>``: the message says what to do, and the file and line of the check that noticed
    it only looked like a crash. Others' warnings keep Lightning's format (which gave ours the path too)."""
    if os.path.isabs(filename) and str(Path(filename).resolve()).startswith(_OWN_SOURCES):
        return f"warning: {message}\n"
    return _OTHERS_FORMAT(message, category, filename, lineno, line)


def main(args: list[str] | None = None, run: bool = True, cli_class: type[RLCLI] = RLCLI) -> LightningCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]``. With ``run=False`` (tests) the model, data and
    trainer are only instantiated from the config, and ``args`` has no subcommand; ``cli_class`` may do less
    (``rgra ablate``'s pre-flight check only parses). A reported error exits with ``errors.exit_status``."""
    # Expected with manual optimisation and a frozen reference model; they would only confuse users.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # Advises one device for validate/test, as the DistributedSampler's repeats would count twice: they do
    # not count here (evaluation.counted_problems).
    warnings.filterwarnings("ignore", message="Using `DistributedSampler` with the dataloaders")
    # Raised inside Lightning 2.6's CombinedLoader by torch's newer pytree API; nothing a user can change.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # The tools (rgra label, export, ablate) build their config through here with ``args`` on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
    logging.getLogger(_LIGHTNING_INFO_LOGGER).addFilter(_without_litlogger_tip)
    warnings.formatwarning = format_warning
    if not sys.stderr.isatty():
        # transformers' loading/saving bars: in a batch job's log their \r updates pile up on one line
        transformers.utils.logging.disable_progress_bar()
    try:
        check_config_files(sys.argv[1:] if args is None else args)
        return cli_class(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_class=FullNameParser,
            save_config_callback=SaveConfigAtStart,
            # The module builds its optimizer and schedule (model.learning_rate, lr_schedule, ...) and
            # steps them itself: Lightning's --optimizer / --lr_scheduler would crash it or go unused.
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )
    except SIGTERMException as stopped:  # Lightning's, a SystemExit without a status: 0 would read as done
        raise SystemExit(stop_status()) from stopped
    except Exception as error:
        # Lightning's MisconfigurationException is a config mistake too (e.g. accelerator: gpu on a CPU)
        config_error = find_reported_error(error) or (
            error if isinstance(error, MisconfigurationException) else None
        )
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        raise SystemExit(exit_status(config_error)) from config_error
