"""Crash-safe checkpoints and exact resumption, in the order a run meets them.

- Saving: ``AtomicCheckpointIO`` writes every checkpoint to a temporary file in the target directory and
  renames it into place, so a kill during saving leaves the previous ``last.ckpt`` intact (a full disk is a
  one-line error). ``PeriodicModelCheckpoint`` saves every k updates of a manual-optimisation run, at the
  end and on SIGTERM / Ctrl-C, into one directory per run name.
- One run per directory: ``require_new_run_directory`` refuses a fresh fit beside an earlier run's
  checkpoints, ``RunDirectoryLock`` a second fit into the directory of one still running (and, holding
  the directory, deletes the temporary files of saves killed mid-write).
- Resuming: ``last_checkpoint`` finds what ``--ckpt_path last`` names, ``require_same_run`` refuses one
  trained with other settings (but those of ``RESUMABLE_SETTINGS`` and ``ADJUSTABLE_SETTINGS``),
  ``ContinuedLog`` logs on into the run's TensorBoard directory.
  ``ExactResume`` adds what Lightning does not store by default: the global RNG streams (sampling uses
  them) and the position of the shuffled training data (``ResumableLoader``), so ``fit --ckpt_path last``
  continues with the same prompts and random draws as an uninterrupted run.
- Reading a checkpoint for evaluation or export: ``require_checkpoint``, ``read_checkpoint``,
  ``require_matching_weights`` and ``load_trained_weights``; ``reloaded_state_keys`` are the frozen
  weights checkpoints leave out (reloaded from their model paths). A checkpoint of another kind of
  module (a reward model's given with a policy's config, or the reverse) is refused, saying so
  (``other_module``) instead of listing the settings that differ; but for evaluation, an RL config takes an
  SFT policy's checkpoint as its own (``EVALUATED_KINDS``: the paper's "ft" row, tested as its RL rows).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import re
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.utils.data import DataLoader

from rgra_lightning.config_files import differences
from rgra_lightning.distributed import (
    requeue_slurm_job,
    separate_rank_streams,
    stop_reason,
    stopped_for_requeue,
    with_distributed_sampler,
)
from rgra_lightning.errors import ConfigError, RunRefusedError
from rgra_lightning.locks import recorded_holder, take_lock

SAVED = "saved as config.yaml in its log directory"  # where a run's config is, for the errors to say


_FULL_DISK_BYTES = 64 * 2**20  # free space below which a failed write is taken for a full disk


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save with ``torch.save`` into a temporary file beside the target, fsync it, then ``os.replace``.

    The rename is atomic only within one filesystem, hence the temporary file in the same directory
    (Lightning's default stages it in the system temp dir and falls back to an in-place copy across
    filesystems). The temporary name does not end in ``.ckpt``, so ``--ckpt_path last`` never picks it up.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique name (``_PARTIAL``) created like open() would (0666 less the umask; mkstemp's is 0600)
        temporary = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.partial"
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException as error:
            written = Path(temporary).stat().st_size if Path(temporary).exists() else 0
            Path(temporary).unlink(missing_ok=True)
            if isinstance(error, (OSError, RuntimeError)):  # torch.save reports a failed write as either
                free = shutil.disk_usage(target.parent).free
                if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < _FULL_DISK_BYTES:
                    raise ConfigError(
                        f"checkpoint {target} could not be saved: its disk is full ({free / 2**20:.0f} MiB "
                        f"free after {written / 2**20:.0f} MiB of it were written; the checkpoints saved "
                        "before are whole): free some space or save to another disk (the checkpoint "
                        "callback's dirpath), then resume with --ckpt_path last"
                    ) from error
            raise


# The temporary files of AtomicCheckpointIO: a kill during the write leaves them behind, full-size
_PARTIAL = re.compile(r"\..+\.\d+\.[0-9a-f]{32}\.partial")


def remove_partial_checkpoints(directory: str) -> None:
    """Delete the temporary files that saves into ``directory`` killed mid-write (``AtomicCheckpointIO``)
    left there, saying how many; only while no other fit can be saving there (``RunDirectoryLock``)."""
    partial = [path for path in Path(directory).glob(".*.partial") if _PARTIAL.fullmatch(path.name)]
    for path in partial:
        path.unlink(missing_ok=True)
    if partial:
        rank_zero_info(
            f"removed {len(partial)} checkpoint file(s) that a killed save left unfinished in {directory}"
        )


class PeriodicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for manual optimisation that saves every ``every_n_train_steps`` updates even
    when one rollout batch advances ``global_step`` by several updates (mu x mini-batches), and saves the
    final state (a step file and ``last.ckpt``) when it fell between two saves.

    Use ``save_top_k=n, monitor="step", mode="max"`` to keep the n newest step files.

    Without ``dirpath``, checkpoints go to ``<logger save_dir>/<logger name>/checkpoints`` (e.g.
    ``runs/rgra/checkpoints``), one directory per run name and not per logger version, so that
    ``--ckpt_path last`` finds the previous run's ``last.ckpt`` and a loss preset composed onto a base config
    (which renames the run) gets its own directory. Lightning's default would put them under the version
    directory, which a resumed run does not reuse.
    """

    saves_and_requeues_on_stop = True  # ``AgreedStop`` takes SLURM's requeue signal over only then

    def run_checkpoint_dir(self, trainer: Trainer) -> str:
        """``dirpath``, or the run's checkpoint directory described above."""
        if self.dirpath is not None:
            return str(self.dirpath)
        logger = trainer.loggers[0] if trainer.loggers else None
        root = getattr(logger, "root_dir", None) or trainer.default_root_dir
        return os.path.join(root, "checkpoints")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.dirpath = trainer.strategy.broadcast(self.run_checkpoint_dir(trainer))
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        self.dirpath = self.run_checkpoint_dir(trainer)  # ``--ckpt_path last`` looks before ``setup``
        return super()._find_last_checkpoints(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_global_step_saved = max(self._last_global_step_saved, trainer.global_step)  # resumed

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        every, step = self._every_n_train_steps, trainer.global_step
        due = every >= 1 and step // every > self._last_global_step_saved // every
        if due or 0 <= trainer.max_steps <= step:
            self._save_now(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Only when training stopped otherwise than at max_steps (max_epochs, max_time, should_stop):
        # the final save is made at the batch end above because, at an epoch boundary, the loop state
        # Lightning stores in on_train_end resumes with the next epoch wrongly marked as partly done.
        self._save_now(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A fit stopped by SIGTERM (a scheduler's pre-emption, ``timeout``) or a first Ctrl-C
        (``distributed.AgreedStop``) ends at a batch end, where the state is whole: it is saved (a step file
        and ``last.ckpt``), so that no update is lost. A second Ctrl-C may come mid-update: nothing is
        saved, and one line says which update the last checkpoint holds."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if isinstance(exception, SIGTERMException):
            self._save_now(trainer)  # every process has written its part when it returns (a barrier)
            requeue = stopped_for_requeue()
            then = "the requeued job resumes from it" if requeue else "resume with --ckpt_path last"
            rank_zero_info(
                f"stopped by {stop_reason()} after update {trainer.global_step}, saved to "
                f"{self.last_model_path}: {then}"
            )
            if requeue and trainer.is_global_zero:
                requeue_slurm_job()
        elif isinstance(exception, KeyboardInterrupt):
            if self.last_model_path:
                rank_zero_info(
                    f"interrupted after update {trainer.global_step}; the last checkpoint is "
                    f"{self.last_model_path} (update {self._last_global_step_saved}): resume with "
                    "--ckpt_path last"
                )
            else:
                step = trainer.global_step
                rank_zero_info(f"interrupted after update {step}, before any checkpoint was saved")

    def _save_now(self, trainer: Trainer) -> None:
        if self._should_skip_saving_checkpoint(trainer):  # also: already saved at this global step
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def run_checkpoint_directories(trainer: Trainer) -> list[tuple[ModelCheckpoint, str]]:
    """The checkpoint callbacks of ``trainer`` that save into one fixed directory, with that directory: a
    ``PeriodicModelCheckpoint`` (its run's directory) or a ``ModelCheckpoint`` with a ``dirpath``. A plain
    ``ModelCheckpoint`` without one saves into a new version directory of its logger, and is left out."""
    directories = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, PeriodicModelCheckpoint):
            directories.append((callback, callback.run_checkpoint_dir(trainer)))
        elif isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            directories.append((callback, str(callback.dirpath)))
    return directories


# What a refused run may leave beside its event files: its config (``cli.SaveConfigAtStart``) and
# Lightning's hparams.yaml
REFUSED_RUN_FILES = (
    "config.yaml",
    "validate_config.yaml",
    "test_config.yaml",
    "predict_config.yaml",
    "hparams.yaml",
)


def remove_refused_log_directory(log_dir: Path) -> bool:
    """Remove the log directory ``log_dir`` that this process's run, refused before it logged a point, made:
    its event files, all written by this process (host and pid in their names: another fit started at the
    same moment into the same directory keeps its own), hold no scalar, and nothing else is there but the
    config files. In TensorBoard it would show as an empty run beside the trained ones, and the next run's
    version number would be one higher. Whether it was removed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir():
        return False
    files = list(log_dir.iterdir())
    events = [path for path in files if path.name.startswith("events.out.tfevents.")]
    if any(path.name not in REFUSED_RUN_FILES and path not in events for path in files):
        return False
    ours = f".{socket.gethostname()}.{os.getpid()}."
    if any(ours not in path.name for path in events):
        return False
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if accumulator.Tags()["scalars"]:
            return False
    shutil.rmtree(log_dir)
    return True


def require_new_run_directory(trainer: Trainer) -> None:
    """For a fit started without ``--ckpt_path``: raise ``ConfigError`` when the directory of a checkpoint
    callback already holds checkpoints, an earlier run's. This run's would be saved beside them
    (``last-v1.ckpt``, ...), ``--ckpt_path <dir>/last.ckpt`` would name the earlier run's, and an export to a
    fixed directory would replace the earlier run's model."""
    for callback, directory in run_checkpoint_directories(trainer):
        if any(Path(directory).glob("*.ckpt")):
            other = (
                "name (trainer.logger.init_args.name)"
                if callback.dirpath is None
                else f"checkpoint directory (the dirpath of {type(callback).__name__})"
            )
            raise RunRefusedError(
                f"{directory} already holds the checkpoints of an earlier run: resume it with --ckpt_path "
                f"last, or give this run another {other} or delete {directory}"
            )


class RunDirectoryLock(Callback):
    """Refuse a fit whose checkpoint directory another running fit saves into.

    Two fits of one config (a job submitted twice, a resume started while the run still runs) would save
    into one directory in turn, each one's ``last.ckpt`` replacing the other's. While it fits, global rank 0
    holds an exclusive ``flock`` on ``<checkpoint directory>.lock`` (a file beside the directory: one
    inside it would make Lightning warn that the directory is not empty). The kernel releases the lock when
    the process ends, however it ends (``kill -9`` included), so no stale lock outlives a run, and a
    requeued job finds it free. The file names the holder (process id and host). On a network filesystem
    ``flock`` holds across nodes where the filesystem supports it (NFSv4, Lustre with ``flock``
    mounted). Once it holds the locks, it deletes what saves killed mid-write left in the directories
    (``remove_partial_checkpoints``). The CLI adds this callback to every trainer.
    """

    def __init__(self) -> None:
        self._held: list[int] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        holder = None
        if trainer.is_global_zero:
            directories = [directory for _, directory in run_checkpoint_directories(trainer)]
            for directory in directories:
                holder = holder or self._lock(f"{os.path.normpath(directory)}.lock")
            if holder is None:  # every directory is this fit's alone: no save of another fit is under way
                for directory in directories:
                    remove_partial_checkpoints(directory)
        holder = trainer.strategy.broadcast(holder)
        if holder is not None:
            self._release()
            raise RunRefusedError(holder)
        warn_if_saved_in_place(trainer)

    @staticmethod
    def require_free(trainer: Trainer) -> None:
        """Raise the ``ConfigError`` of ``setup`` where a running fit holds a checkpoint directory's lock,
        before Lightning starts: it opens the run's TensorBoard directory before any set-up, so a refusal
        there left an empty ``version_N/``. The probe takes a shared lock and lets it go at once (the
        processes of one fit may probe together); ``setup`` still takes the lock."""
        for _, directory in run_checkpoint_directories(trainer):
            path = f"{os.path.normpath(directory)}.lock"
            if not os.path.isfile(path):
                continue
            handle = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunRefusedError(_held_lock(path, recorded_holder(handle))) from None
            finally:
                os.close(handle)

    def _lock(self, path: str) -> str | None:
        """Take the lock at ``path``; None, or what to report when another process holds it."""
        held = take_lock(path)
        if isinstance(held, str):
            return _held_lock(path, held)
        self._held.append(held)
        return None

    def _release(self) -> None:
        for handle in self._held:
            os.close(handle)  # closing the last descriptor of the open file releases its flock
        self._held.clear()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()


def warn_unless_resumable(trainer: Trainer) -> None:
    """Warn, once a policy fit, where its callbacks save no ``last.ckpt`` (no ``ModelCheckpoint`` with
    ``save_last``) or lack ``ExactResume``. A ``--config`` that sets ``trainer.callbacks`` replaces the
    list of the configs before it whole, so one that adds a sample logger silently dropped the shipped
    configs' ``PeriodicModelCheckpoint``, ``ExactResume`` and export."""
    callbacks = trainer.callbacks
    missing = []
    if not any(isinstance(callback, ModelCheckpoint) and callback.save_last for callback in callbacks):
        missing.append(("PeriodicModelCheckpoint", "no last.ckpt for --ckpt_path last"))
    if not any(isinstance(callback, ExactResume) for callback in callbacks):
        missing.append(("ExactResume", "a resume restarts the data order and random streams"))
    if missing:
        names = " or ".join(f"rgra_lightning.checkpointing.{name}" for name, _ in missing)
        rank_zero_warn(
            f"trainer.callbacks has no {names} ({'; '.join(effect for _, effect in missing)}). A --config "
            "that sets trainer.callbacks replaces the list of the configs before it whole: list them there "
            "too"
        )


def warn_if_saved_in_place(trainer: Trainer) -> None:
    """Warn, once a fit, where its checkpoints are saved without ``AtomicCheckpointIO``'s protection: under
    ``ModelParallelStrategy`` with ``save_distributed_checkpoint=True`` (Lightning's default), each rank
    writes its shard into ``last.ckpt/`` in place, so a kill mid-save leaves it part old, part new."""
    strategy = trainer.strategy
    in_place = isinstance(strategy, ModelParallelStrategy) and strategy._save_distributed_checkpoint
    if in_place and run_checkpoint_directories(trainer):
        rank_zero_warn(
            "ModelParallelStrategy(save_distributed_checkpoint=True) writes sharded checkpoints in place: a "
            "kill while last.ckpt is saved can leave it part old, part new (keep step checkpoints with "
            "save_top_k, or set save_distributed_checkpoint: false for one file renamed into place)"
        )


def _held_lock(path: str, holder: str) -> str:
    """The refusal for the checkpoint-directory lock ``path`` that another fit (``holder``) holds."""
    return (
        f"{path.removesuffix('.lock')} is the checkpoint directory of a fit that is still running ({holder}, "
        f"holding {path}): wait for it to end, or give this run another name or checkpoint directory"
    )


class ContinuedLog(Callback):
    """Makes a resumed fit write on into the TensorBoard directory its run logged into, as one run with one
    set of curves, instead of a new ``version_N/`` whose steps overlap the old one's; and flushes the
    loggers before each checkpoint is written.

    Each checkpoint records the directory of the fit's ``TensorBoardLogger`` (``checkpoint["log"]``: its
    root and version); ``continue_from`` (the CLI calls it before Lightning starts a resumed fit) points the
    logger there, with TensorBoard hiding what the old run logged after the checkpoint's update
    (``SummaryWriter``'s ``purge_step``): those updates are trained again. The logger is left as it is
    where it is no ``TensorBoardLogger``, its root directory is another (another run name or ``save_dir``),
    the config fixes another version, the recorded directory is gone, or the checkpoint predates the record.
    """

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # What the run logged so far reaches the disk before the checkpoint does: a kill after the
        # checkpoint cannot lose its update's points, which the resumed run (logging from the next
        # update on) would not write again.
        for logger in trainer.loggers:
            logger.save()
        logger = _tensorboard_logger(trainer)
        if logger is not None:
            checkpoint["log"] = {"root_dir": os.path.realpath(logger.root_dir), "version": logger.version}

    @staticmethod
    def continue_from(trainer: Trainer, checkpoint: Mapping[str, Any]) -> None:
        """Point ``trainer``'s TensorBoard logger at the log directory ``checkpoint`` records (see above);
        before the logger has written anything."""
        logger, recorded = _tensorboard_logger(trainer), checkpoint.get("log")
        if logger is None or not isinstance(recorded, Mapping) or logger._experiment is not None:
            return
        version, root_dir = recorded.get("version"), os.path.realpath(logger.root_dir)
        if recorded.get("root_dir") != root_dir or logger._version not in (None, version):
            return
        directory = version if isinstance(version, str) else f"version_{version}"
        if os.path.isdir(os.path.join(logger.root_dir, directory)):
            # Lightning's logger has no public setter: its version and SummaryWriter arguments are set
            # before the writer exists (``_experiment is None`` above), which is when it reads them.
            logger._version = version
            logger._kwargs["purge_step"] = int(checkpoint["global_step"]) + 1


def _tensorboard_logger(trainer: Trainer) -> TensorBoardLogger | None:
    """The first of ``trainer``'s loggers that is a ``TensorBoardLogger``, if any."""
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def last_checkpoint(trainer: Trainer, required: bool = True) -> str | None:
    """The checkpoint ``--ckpt_path last`` names, chosen as Lightning chooses it (the newest ``last*.ckpt``
    in the directories of the checkpoint callbacks). When there is none: ``ConfigError`` if ``required``
    (validate, test, predict, where Lightning would warn and go on without one, evaluating an untrained
    model), else None (a fit, which then starts afresh, as Lightning documents)."""
    callbacks = [
        callback for callback in trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)
    ]
    found = [path for callback in callbacks for path in callback._find_last_checkpoints(trainer)]
    if not found:
        if not required:
            return None
        directories = (
            ", ".join(str(callback.dirpath) for callback in callbacks) or "no directory: no ModelCheckpoint"
        )
        raise ConfigError(
            f"--ckpt_path last: there is no last checkpoint (last.ckpt) in {directories}: train the run first"
            " (rgra fit), or give the checkpoint's path"
        )
    return max(found, key=os.path.getmtime)


def rng_states() -> dict[str, Any]:
    """The global random states of torch (CPU and every CUDA device), Python and NumPy, as tensors and
    plain Python values so that checkpoints still load with ``torch.load(weights_only=True)``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))


def require_checkpoint(ckpt_path: str, option: str) -> None:
    """Raise ``ConfigError`` unless ``ckpt_path`` is a file or a sharded (FSDP2) checkpoint directory;
    commands call it before building a module, which takes a while. ``option`` is how the command names
    it (``--ckpt_path``)."""
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"{option} {ckpt_path!r} does not exist")
    if (path / "config.json").is_file():
        raise ConfigError(
            f"{option} {ckpt_path} is a Hugging Face model directory: give it as model.model_path"
        )
    # A sharded one holds Lightning's meta.pt and the shards' index
    if path.is_dir() and not (is_sharded_checkpoint(ckpt_path) and (path / ".metadata").is_file()):
        raise not_a_checkpoint(ckpt_path, option)


def is_sharded_checkpoint(ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` is a directory of ``torch.distributed.checkpoint`` shards (FSDP2 with
    ``save_distributed_checkpoint``: one file per rank, and Lightning's ``meta.pt``)."""
    return _is_sharded_checkpoint(Path(ckpt_path))


def sharded_weights(ckpt_path: str, read: bool = True) -> dict[str, torch.Tensor]:
    """The module weights (``state_dict``) of a sharded checkpoint directory but the frozen models'
    (``FROZEN_PREFIXES``: reloaded from their model paths), whole, on the CPU: read by
    ``torch.distributed.checkpoint`` in this one process (any number of ranks wrote it), the optimizer
    states left unread. With ``read=False`` only their shapes and dtypes, as meta tensors."""
    reader = FileSystemReader(ckpt_path)
    prefix = "state_dict."  # the module's weights, as Lightning's ``ModelParallelStrategy`` saves them
    weights = {
        name: torch.empty(stored.size, dtype=stored.properties.dtype, device="cpu" if read else "meta")
        for key, stored in reader.read_metadata().state_dict_metadata.items()
        if isinstance(stored, TensorStorageMetadata)
        and key.startswith(prefix)
        and not (name := key.removeprefix(prefix)).startswith(FROZEN_PREFIXES)
    }
    if read:
        dcp.load({"state_dict": weights}, storage_reader=reader, no_dist=True)
    return weights


def not_a_checkpoint(ckpt_path: str, option: str) -> ConfigError:
    """The error for ``ckpt_path``, given as ``option``, that is no checkpoint Lightning can read."""
    return ConfigError(
        f"{option} {ckpt_path} is not a Lightning checkpoint (.ckpt file or sharded checkpoint directory)"
    )


def read_checkpoint(ckpt_path: str, option: str) -> dict[str, Any]:
    """The contents of the checkpoint file ``ckpt_path``, its tensors memory-mapped (read when used), or of
    a sharded checkpoint directory's metadata (``meta.pt``: all but the weights and optimizer states) with
    its weights' shapes (``sharded_weights`` unread); ``ConfigError`` for one that is not a Lightning
    checkpoint."""
    if is_sharded_checkpoint(ckpt_path):
        try:
            metadata = torch.load(Path(ckpt_path, _METADATA_FILENAME), map_location="cpu", weights_only=True)
            return metadata | {"state_dict": sharded_weights(ckpt_path, read=False)}
        except (Exception, dcp.CheckpointException) as error:  # the shards' index or meta.pt damaged
            raise not_a_checkpoint(ckpt_path, option) from error
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch.load raises many types for a file that is not a checkpoint
        raise not_a_checkpoint(ckpt_path, option) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise not_a_checkpoint(ckpt_path, option)
    return checkpoint


_WEIGHT_SETTINGS = tuple(f"model.{key}" for key in ("model_path", "gguf_file", "lora", "dtype"))


# The settings that name the model a checkpoint's weights go with: the base weights under LoRA adapters
# (which a LoRA checkpoint leaves out), the tokenizer and chat template of any checkpoint.
BASE_MODEL_SETTINGS = ("model.model_path:", "model.gguf_file:", "model.dtype:")


def require_matching_weights(module: LightningModule, checkpoint: dict[str, Any], ckpt_path: str) -> None:
    """Give ``checkpoint`` to the module's ``on_load_checkpoint``, as Lightning does before loading its
    weights (it puts back what checkpoints leave out: frozen models), then raise ``ConfigError`` unless
    they fit ``module``, naming the settings it was trained with that differ from the module's (those
    that make the weights, where any of them differ) or, where none differ (or none were saved), the
    weights that are missing, unexpected or of another shape. Refused also where the weights fit: a
    checkpoint of another kind of module (``MODULE_KINDS``) than ``module`` and those it evaluates
    (``EVALUATED_KINDS``), which says so (``other_module``), and one trained with other LoRA settings
    (``model.lora``: another alpha scales the same adapter weights otherwise, silently). A checkpoint of
    another kind unknown there is refused only where its weights do not fit (saying so as well). Where
    they fit, another model named (``BASE_MODEL_SETTINGS``) is a warning: a LoRA checkpoint's adapters are
    then evaluated over that model's base weights, any checkpoint's weights with its tokenizer."""
    other = other_module(checkpoint, ckpt_path, module, evaluating=True)  # before frozen weights are put in
    if other and saved_module_class(checkpoint) in MODULE_KINDS:
        raise ConfigError(f"{other}: give the config it was trained with ({SAVED})")
    module.on_load_checkpoint(checkpoint)
    saved, current = checkpoint["state_dict"], module.state_dict()
    missing, unexpected = sorted(current.keys() - saved.keys()), sorted(saved.keys() - current.keys())
    reshaped = sorted(
        f"{key}: {list(saved[key].shape)} in the checkpoint, {list(current[key].shape)} now"
        for key in saved.keys() & current.keys()
        if saved[key].shape != current[key].shape
    )
    changes = changed_settings(checkpoint.get("hyper_parameters", {}), module.hparams, "model.")
    if not (missing or unexpected or reshaped):
        lora = [change for change in changes if change.startswith(("model.lora:", "model.lora."))]
        if lora:
            raise ConfigError(
                f"{other_settings(ckpt_path, lora)}: give the config it was trained with ({SAVED})"
            )
        base = [change for change in changes if change.startswith(BASE_MODEL_SETTINGS)]
        if base:  # a local copy of the same model is as likely as another one: said, not refused
            loaded = "LoRA adapters over" if module.hparams.get("lora") else "weights with the tokenizer of"
            rank_zero_warn(
                f"{other_settings(ckpt_path, base)}: evaluating its {loaded} the model as this config "
                f"loads it; give the config it was trained with ({SAVED}) if that is not the model it was "
                "trained on"
            )
        return
    # The settings that make the weights (learning_rate and the like change none, and would bury them);
    # the verifier's only where it holds learned reward models, whose weights the module carries
    weights = _WEIGHT_SETTINGS + (("model.verifier",) if len(getattr(module, "reward_models", ())) else ())
    shaping = [change for change in changes if change.startswith(weights)]
    if other or changes:
        start = other or other_settings(ckpt_path, shaping or changes)
        raise ConfigError(f"{start}: give the config it was trained with ({SAVED})")
    found = [
        f"{len(keys)} {what} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"
        for keys, what in [(missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")]
        if keys
    ]
    raise ConfigError(
        f"checkpoint {ckpt_path} holds other weights than this model's, {'; '.join(found)}: give the config "
        f"it was trained with ({SAVED})"
    )


def load_trained_weights(module: LightningModule, ckpt_path: str, option: str) -> None:
    """Load the weights of a training checkpoint (a file, or a sharded directory: ``sharded_weights``),
    given as ``option``, into ``module``, built from the same config (``require_matching_weights``)."""
    require_checkpoint(ckpt_path, option)
    checkpoint = read_checkpoint(ckpt_path, option)
    require_matching_weights(module, checkpoint, ckpt_path)
    if is_sharded_checkpoint(ckpt_path):
        try:
            checkpoint["state_dict"] |= sharded_weights(ckpt_path)  # its shapes, checked, become weights
        except dcp.CheckpointException as error:  # what a shard's read raised, wrapped (a BaseException)
            raise ConfigError(
                f"{option} {ckpt_path}: the sharded checkpoint's index and meta.pt were read, but a shard "
                "could not be read (missing or cut short?)"
            ) from error
    module.load_state_dict(checkpoint["state_dict"])


class ResumableLoader:
    """A shuffled map-style ``DataLoader`` whose position within the epoch can be saved and restored.

    The position is the loader generator's state at the start of the epoch plus the number of batches the
    trainer has *trained on* (counted by ``ExactResume``; batches only prefetched are not consumed).
    ``ExactResume`` saves and restores it (``position``, ``restore``) with its own state: Lightning, which
    saves a loader's ``state_dict`` with its fit loop, does not load it back when the checkpoint ends an
    epoch (a fit stopped at ``trainer.max_epochs``), and the resumed run replayed epoch 0's order.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.trained_batches = 0
        self._epoch_generator_state: torch.Tensor | None = None
        self._restored: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self) -> Any:
        """The loader's sampler, where Lightning calls ``set_epoch`` (a ``DistributedSampler`` reshuffles by
        epoch)."""
        return self.loader.sampler

    def __iter__(self) -> Iterator[Any]:
        generator = self.loader.generator
        skip = 0
        if self._restored is not None:
            generator.set_state(self._restored["generator_state"])
            skip = self._restored["trained_batches"]
            self._restored = None
            if skip >= len(self.loader):  # saved after the epoch's last batch: replay that epoch's draws
                # exactly as Lightning made them: len(loader) batches, never running into StopIteration
                # (which would draw one more permutation from the sampler).
                finished = iter(self.loader)
                for _ in range(len(self.loader)):
                    next(finished)
                skip = 0
        self._epoch_generator_state = generator.get_state()
        self.trained_batches = skip
        iterator = iter(self.loader)
        for _ in range(skip):
            next(iterator)
        yield from iterator

    def position(self) -> dict[str, Any] | None:
        """Where the data stands, for ``restore`` before the next ``iter``; None before the first."""
        if self._epoch_generator_state is None:
            return None
        return {"generator_state": self._epoch_generator_state, "trained_batches": self.trained_batches}

    def restore(self, position: dict[str, Any]) -> None:
        self._restored = position

    def state_dict(self) -> dict[str, Any]:
        """Nothing: ``ExactResume`` keeps the position. Lightning takes a loader without this method (and
        ``load_state_dict``) for one that cannot resume, and warns on every resume inside an epoch."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to load (``state_dict``)."""


class ExactResume(Callback):
    """Make ``fit --ckpt_path ...`` continue exactly where the checkpoint was taken.

    Saves the global RNG states and the data position (``ResumableLoader``) with every checkpoint and
    restores them, whatever the point of the epoch the checkpoint was taken at (Lightning restores a
    loader's own state only when it resumes inside an epoch); flushes the loggers before each step so
    that the metrics of every checkpointed step are on disk; wraps the datamodule's training loader in a
    ``ResumableLoader`` (it must shuffle with an explicit ``torch.Generator``, as ``PromptDataModule``
    does) and counts the batches trained on. A checkpoint saved while a batch is being trained (the
    non-finite stop, from inside ``training_step``) records the data position and RNG states as of that
    batch's start, so the resumed run samples and trains that batch again. The loader gets the
    ``DistributedSampler`` Lightning would give it with several processes, with one process too: then
    rollout batch k holds the same prompts on any number of processes of the same prompts per update
    (together, N ranks' k-th batches of epoch e are one slice of epoch e's permutation), and a run resumed
    on another number of processes (``require_same_run``) goes on with the prompts the interrupted run
    would have had. Each rank skips the batches it has trained on in the epoch; the RNG states of every
    rank are saved, and each rank restores its own (on another number: ``on_train_start``).
    """

    def __init__(self) -> None:
        self._loader: ResumableLoader | None = None
        self._restored_rng: dict[str, Any] | None = None
        self._restored_position: dict[str, Any] | None = None
        self._batch_start_rng: dict[str, Any] | None = None  # set while a batch is being trained
        self._older_checkpoint = False  # one without ``PROCESSES``: before one process shuffled as N do

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None:
            return
        make_loader = type(datamodule).train_dataloader.__get__(datamodule)

        def train_dataloader() -> Any:
            loader = make_loader()
            if not isinstance(loader, DataLoader) or loader.generator is None:
                rank_zero_warn(
                    "ExactResume restores the RNG streams but not the data position: the training loader is"
                    " not a DataLoader shuffled by an explicit torch.Generator. A run resumed mid-epoch will"
                    " not see the same batches as an uninterrupted one."
                )
                return loader
            # One process too: its k-th batch then holds what N processes' k-th batches hold together (of
            # N times fewer prompts each), so a run resumed on another number of processes continues.
            one = {"num_replicas": 1, "rank": 0}
            ranks = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or one
            self._loader = ResumableLoader(with_distributed_sampler(loader, ranks))
            if self._restored_position is not None:
                self._loader.restore(self._restored_position)
                self._restored_position = None
            return self._loader

        datamodule.train_dataloader = train_dataloader

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.datamodule is not None:
            vars(trainer.datamodule).pop("train_dataloader", None)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._loader is not None:
            self._loader.trained_batches += 1
        self._batch_start_rng = rng_states()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        # Lightning calls the checkpoint callbacks' hooks after this one's: their saves see the batch done
        self._batch_start_rng = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._batch_start_rng = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Restored here, not on load: nothing between this point and the first training step draws from
        # the global streams, whereas model set-up and data loading before it may.
        if self._restored_rng is not None:
            per_rank, world_size, rank = self._restored_rng, trainer.world_size, trainer.global_rank
            self._restored_rng = None
            if len(per_rank) == world_size:
                set_rng_states(per_rank[rank])
                return
            rank_zero_warn(
                f"the checkpoint holds the RNG states of {len(per_rank)} processes, this run has "
                f"{world_size}: sampling will not continue as in the interrupted run (one process takes "
                "process 0's streams, several take new ones, each its own)"
            )
            set_rng_states(per_rank[0])
            separate_rank_streams(world_size, rank, resumed_at=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """The RNG states of every process, in rank order (Lightning saves rank 0's callback state only;
        every rank takes part in a checkpoint save, so they can be gathered here), and the data position;
        both as of the start of the batch in progress, if any."""
        in_batch = self._batch_start_rng is not None
        states = self._batch_start_rng if in_batch else rng_states()
        position = self._loader.position() if self._loader is not None else None
        if position is not None and in_batch:
            position["trained_batches"] -= 1
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {"rng": [states], "data_position": position}
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, states)
        return {"rng": gathered, "data_position": position}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # Older checkpoints kept the data position only with the fit loop, as the loader's state_dict
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        loader_states = fit_loop.get("combined_loader") or [{}]
        if "generator_state" in loader_states[0]:
            self._restored_position = loader_states[0]
        self._older_checkpoint = PROCESSES not in checkpoint  # Lightning calls load_state_dict next

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rng = state_dict["rng"]
        self._restored_rng = rng if isinstance(rng, list) else [rng]  # older checkpoints: one process
        if state_dict.get("data_position") is not None:
            self._restored_position = state_dict["data_position"]
        position = self._restored_position or {}
        if self._older_checkpoint and len(self._restored_rng) == 1 and position.get("trained_batches", 0) > 0:
            rank_zero_warn(
                "the checkpoint was written on one process by an older version, which shuffled the "
                "training data otherwise: if it stopped inside an epoch, the rest of that epoch follows the "
                "new order, so some of the epoch's problems may be trained on twice and others not at all"
            )


# Frozen submodules of the RL module, reloaded from their model paths, so left out of checkpoints.
FROZEN_PREFIXES = ("reference.", "reward_models.")


def reloaded_state_keys(module: LightningModule, lora: bool) -> set[str]:
    """State-dict keys that checkpoints leave out because they are reloaded from model paths: the
    reference and reward models and, with LoRA, the policy's frozen base weights (only adapters train)."""
    state = module.state_dict(keep_vars=True)
    keys = {key for key in state if key.startswith(FROZEN_PREFIXES)}
    if lora:
        keys |= {
            key
            for key, value in state.items()
            if key.startswith("policy.") and isinstance(value, torch.nn.Parameter) and not value.requires_grad
        }
    return keys


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The settings (dotted names below ``prefix``) whose value in ``current`` differs from ``saved``
    (``config_files.differences``), each as ``"name: <saved> in the checkpoint, <current> now"``. A
    top-level setting the checkpoint does not record is not compared: the checkpoint predates it."""
    return [_described(change) for change in _changes(saved, current, prefix)]


def _changes(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str) -> list[tuple[str, Any, Any]]:
    """``changed_settings`` as ``(name, saved value, current value)``."""
    return differences(saved, {name: value for name, value in current.items() if name in saved}, prefix)


def _described(change: tuple[str, Any, Any]) -> str:
    name, old, new = change
    return f"{name}: {old!r} in the checkpoint, {new!r} now"


# Settings a resumed fit may change without a word: they leave the updates as they are (micro-batching
# splits one gradient; up to rounding), or touch only evaluation, logging and when to stop. A name ending
# in "." stands for the settings under it.
RESUMABLE_SETTINGS = (
    "model.micro_batch_size",
    "model.micro_batch_tokens",
    "model.max_consecutive_nonfinite",
    "model.num_logged_samples",
    "model.validate_before_training",
    "model.evaluation.",
    "data.val_batch_size",
)
# Settings a resumed fit may change that change the updates from the checkpoint on, as lowering them after
# a non-finite stop (its message advises it) or mid-run does: named in a warning. The new learning rate
# replaces the one the optimizer and scheduler states restore (``update.follow_learning_rate``).
ADJUSTABLE_SETTINGS = ("model.learning_rate", "model.max_grad_norm")


def _listed(name: str, settings: tuple[str, ...]) -> bool:
    return any(
        name == setting or (setting.endswith(".") and name.startswith(setting)) for setting in settings
    )


def require_same_run(
    checkpoint: Mapping[str, Any],
    ckpt_path: _PATH | None,
    module: LightningModule,
    datamodule: LightningDataModule | None,
    processes: int | None = None,
) -> None:
    """Refuse to resume a fit from a checkpoint trained with other model or data settings: that is
    another run (``--ckpt_path last`` takes the newest ``last*.ckpt`` of the checkpoint directory, which
    a run with other settings may have written), and a changed batch size would also misplace the data
    position that ``ExactResume`` restores; a checkpoint of another kind of module is named as such
    (``other_module``). On another number of ``processes`` (the world size) than the checkpoint's,
    ``data.batch_size`` must change with it to keep the prompts per update (the rollout batches then hold
    the prompts they would have had: ``ExactResume``). The settings of ``RESUMABLE_SETTINGS`` and
    ``ADJUSTABLE_SETTINGS`` may differ; a changed adjustable one is named in a warning when Lightning
    loads the checkpoint into the module (the CLI's check before the fit starts stays silent), and so is
    another ``trainer.precision`` than the checkpoint's (``PRECISION``)."""
    changes = _changes(checkpoint.get("hyper_parameters", {}), module.hparams, "model.")
    if datamodule is not None and "datamodule_hyper_parameters" in checkpoint:
        changes += _changes(checkpoint["datamodule_hyper_parameters"], datamodule.hparams, "data.")
    allowed = (*RESUMABLE_SETTINGS, *ADJUSTABLE_SETTINGS, "data.batch_size")
    refused = [_described(change) for change in changes if not _listed(change[0], allowed)]
    refused += _prompts_per_update_change(checkpoint, datamodule, processes)
    other = other_module(checkpoint, ckpt_path, module)
    if other or refused:
        start = other or other_settings(ckpt_path, refused)
        raise RunRefusedError(
            f"{start}: resume with the config it was trained with ({SAVED}), or start a new run without "
            "--ckpt_path"
        )
    adjusted = [_described(change) for change in changes if _listed(change[0], ADJUSTABLE_SETTINGS)]
    trainer = getattr(module, "_trainer", None)
    saved_precision = checkpoint.get(PRECISION)
    if trainer is not None and saved_precision not in (None, str(trainer.precision)):
        adjusted.append(_described(("trainer.precision", saved_precision, str(trainer.precision))))
    if adjusted and trainer is not None:
        rank_zero_warn(f"resuming {ckpt_path} with {'; '.join(adjusted)}: the new values apply from here on")


def check_resumed_fit(checkpoint: Mapping[str, Any], module: LightningModule) -> None:
    """``require_same_run`` as Lightning loads a fit's checkpoint into ``module``: the CLI refused a
    checkpoint of other settings before the fit started; its warnings (a changed learning rate, precision)
    are given here. Nothing outside a fit."""
    trainer = module._trainer
    if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
        require_same_run(checkpoint, trainer.ckpt_path, module, trainer.datamodule, trainer.world_size)


# The checkpoint keys for what the trainer's settings, which checkpoints do not hold, made of the run
# (``record_trainer_settings``): the number of processes (each trains on prompts of its own: tensor
# parallelism is refused), as ``data.batch_size`` is per process, and the precision, which a resumed fit
# may change (saying so: ``require_same_run``).
PROCESSES, PRECISION = "processes", "precision"


def record_trainer_settings(checkpoint: dict[str, Any], module: LightningModule) -> None:
    """Write ``PROCESSES`` and ``PRECISION`` of the module's trainer into ``checkpoint``; nothing for a
    module without one."""
    if module._trainer is not None:
        checkpoint[PROCESSES] = module.trainer.world_size
        checkpoint[PRECISION] = str(module.trainer.precision)


def _prompts_per_update_change(
    checkpoint: Mapping[str, Any], datamodule: LightningDataModule | None, processes: int | None
) -> list[str]:
    """``data.batch_size`` is per process: a resumed fit may change it with the number of processes
    (``processes``, this fit's world size) if the prompts per update stay; described as
    ``changed_settings`` does where they change. Where the checkpoint or the caller does not know its
    processes (a checkpoint older than ``PROCESSES``), the batch size alone is compared."""
    saved = checkpoint.get("datamodule_hyper_parameters", {}).get("batch_size")
    current = getattr(datamodule, "hparams", {}).get("batch_size")
    saved_processes = checkpoint.get(PROCESSES)
    if saved is None or current is None:
        return []
    if saved_processes is None or processes is None:
        return [] if saved == current else [_described(("data.batch_size", saved, current))]
    if saved * saved_processes == current * processes:
        return []
    return [
        f"data.batch_size: {saved} on {saved_processes} processes ({saved * saved_processes} prompts per "
        f"update) in the checkpoint, {current} on {processes} ({current * processes}) now"
    ]


def other_settings(ckpt_path: _PATH, changes: list[str]) -> str:
    """The start of the message for a checkpoint trained with other settings (``changed_settings``)."""
    return f"checkpoint {ckpt_path} was trained with other settings than this run's ({'; '.join(changes)})"


# The modules a checkpoint may hold, by class name: what each trains and the config that trains it
MODULE_KINDS = {
    "RLModule": ("a policy", "configs/rgra.yaml"),
    "SFTModule": ("a supervised (SFT) policy", "configs/paper/gsm8k-sft.yaml"),
    "RewardModelModule": ("a reward model", "configs/reward_model.yaml"),
    "WarmupModule": ("the warm-up policy", "configs/warmup.yaml"),
}
# The other kinds whose checkpoints a kind evaluates (validate, test, predict; export) as its own, never
# resumes: RLModule's greedy accuracy of an SFT policy is the paper's "ft" row, measured as its RL rows are.
# Built from the same config (the RL config with the SFT preset last, and without it), both modules hold the
# policy under ``policy.`` with the same LoRA layout, and load it over the same base weights.
EVALUATED_KINDS = {"RLModule": ("SFTModule",)}


def saved_module_class(checkpoint: Mapping[str, Any]) -> str | None:
    """The class name of the module ``checkpoint`` holds, as LightningCLI records it among the
    hyperparameters (``_class_path``); None where it is not recorded."""
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    return None if class_path is None else str(class_path).rsplit(".", 1)[-1]


def other_module(
    checkpoint: Mapping[str, Any],
    ckpt_path: _PATH | None,
    module: LightningModule,
    evaluating: bool = False,
) -> str | None:
    """The start of the message for a checkpoint of another kind of module than ``module``, None for one of
    the same kind or, ``evaluating``, of a kind ``EVALUATED_KINDS`` lets it evaluate. The kind is the class
    LightningCLI records (``saved_module_class``); a checkpoint saved without it is of another kind where
    its weights share no submodule with the module's (a reward model's are under ``model.``, a policy's
    under ``policy.``)."""
    classes = [cls.__name__ for cls in type(module).__mro__]
    current = next((name for name in classes if name in MODULE_KINDS), classes[0])
    saved = saved_module_class(checkpoint)
    if saved is not None:
        if saved in classes or (evaluating and saved in EVALUATED_KINDS.get(current, ())):
            return None
        held = _module_kind(saved)
    else:
        parts = {key.split(".", 1)[0] for key in checkpoint.get("state_dict", {})}
        if not parts or parts & {key.split(".", 1)[0] for key in module.state_dict()}:
            return None
        held = f"another module's weights ({', '.join(f'{part}.*' for part in sorted(parts))})"
    return f"checkpoint {ckpt_path} holds {held}; this config trains {_module_kind(current)}"


def _module_kind(name: str) -> str:
    if name not in MODULE_KINDS:
        return f"a module of class {name}"
    what, config = MODULE_KINDS[name]
    return f"{what} ({name}, {config})"
