"""Checkpoints: exact resumption after an interruption or kill -9, periodic and last checkpoints, atomic
writes."""

import fcntl
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning import Callback, LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from rgra_lightning import distributed
from rgra_lightning.checkpointing import (
    PRECISION,
    PROCESSES,
    AtomicCheckpointIO,
    ContinuedLog,
    ExactResume,
    PeriodicModelCheckpoint,
    RunDirectoryLock,
    last_checkpoint,
    remove_partial_checkpoints,
    remove_refused_log_directory,
    require_matching_weights,
    require_same_run,
    rng_states,
    warn_if_saved_in_place,
)
from rgra_lightning.cli import main
from rgra_lightning.errors import RUN_REFUSED, ConfigError, RunRefusedError
from rgra_lightning.models import LoraConfig, load_causal_lm
from rgra_lightning.module import RLModule
from rgra_lightning.sft import SFTModule
from tests.conftest import FAST, ROOT, TINY_POLICY, one_line_error, scalar_tags, scalars_by_step
from tests.test_update import nan_loss_on_updates


def assert_same_run(straight: Path, resumed: Path, straight_policy: dict, resumed_policy: dict) -> None:
    """Every reward logged by the interrupted + resumed run equals the straight run's at that step, every
    step is covered, and the final parameters are bit-identical."""
    expected = scalars_by_step(straight, "train/reward")
    got = scalars_by_step(resumed, "train/reward")
    assert len({values[0] for values in expected.values()}) > 1, "constant rewards would prove nothing"
    assert sorted(got) == sorted(expected)
    for step, values in got.items():
        assert values == [expected[step][0]] * len(values), f"step {step}: {values} vs {expected[step]}"
    assert straight_policy.keys() == resumed_policy.keys()
    assert all(torch.equal(straight_policy[name], resumed_policy[name]) for name in straight_policy)


def resume_equals_straight(
    config: Path, straight: LightningCLI, steps: int, resume: tuple[str, ...] = ("--ckpt_path", "last")
) -> None:
    """``fit`` of the stopped run of ``config`` (in a ``fresh_config`` directory) with ``resume``'s arguments
    reaches ``steps`` and equals the ``straight`` run (``fresh_config(..., "straight")``):
    ``assert_same_run``."""
    resumed = main(["fit", "--config", str(config), *resume])
    assert resumed.trainer.global_step == steps
    assert_same_run(
        config.parent.parent / "straight" / "runs",
        config.parent / "runs",
        straight.model.policy.state_dict(),
        resumed.model.policy.state_dict(),
    )


def fresh_config(
    small_config, tmp_path: Path, name: str, data_module: str | None = None, **overrides: object
) -> Path:
    """``small_config`` in its own directory (runs/ and checkpoints/ beside it)."""
    directory = tmp_path / name
    directory.mkdir()
    config = small_config("rgra", data_module=data_module, **FAST, **overrides)
    moved = directory / "rgra.yaml"
    text = config.read_text().replace(str(tmp_path / "runs"), str(directory / "runs"))
    moved.write_text(text.replace(str(tmp_path / "checkpoints"), str(directory / "checkpoints")))
    return moved


def test_resume_after_interruption_equals_an_uninterrupted_run(small_config, tmp_path):
    """2 updates, stop, ``--ckpt_path last``, 2 more == 4 straight: same rewards, bit-identical weights."""
    straight = fresh_config(small_config, tmp_path, "straight")
    a = main(["fit", "--config", str(straight), "--trainer.max_steps=4"])
    interrupted = fresh_config(small_config, tmp_path, "interrupted")
    main(["fit", "--config", str(interrupted), "--trainer.max_steps=2"])
    b = main(["fit", "--config", str(interrupted), "--trainer.max_steps=4", "--ckpt_path", "last"])
    assert b.trainer.global_step == 4
    assert_same_run(
        tmp_path / "straight" / "runs",
        tmp_path / "interrupted" / "runs",
        a.model.policy.state_dict(),
        b.model.policy.state_dict(),
    )


def directory_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` as TensorBoard shows the directory ``log_dir`` (all its event files,
    with the steps a later file purges hidden)."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_a_resumed_fit_logs_on_into_its_runs_directory_hiding_what_came_after_the_checkpoint(
    small_config, tmp_path
):
    """Stopped after update 2 with rewards of updates 3 and 4 logged but not checkpointed (as by a kill),
    then resumed to 4: one ``version_0/`` whose curve has each update once, the resumed run's values."""
    config = fresh_config(small_config, tmp_path, "run")
    main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    log_dir = tmp_path / "run" / "runs" / "rgra" / "version_0"
    lost = SummaryWriter(str(log_dir))
    for step in (3, 4):
        lost.add_scalar("train/reward", -1.0, step)
    lost.close()
    resumed = main(["fit", "--config", str(config), "--trainer.max_steps=4", "--ckpt_path", "last"])
    assert resumed.trainer.log_dir == str(log_dir)
    assert sorted(path.name for path in log_dir.parent.iterdir()) == ["version_0"]
    logged = directory_scalars(log_dir, "train/reward")
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    assert all(value >= 0 for _, value in logged)


def test_continued_log_leaves_another_runs_or_a_fixed_versions_logger_alone(tmp_path):
    """Only a logger of the same root directory, version free or the same, into a directory that exists."""
    (tmp_path / "a" / "version_3").mkdir(parents=True)
    checkpoint = {"global_step": 7, "log": {"root_dir": os.path.realpath(tmp_path / "a"), "version": 3}}

    def continued(**logger_options: object) -> tuple[object, object]:
        logger = TensorBoardLogger(tmp_path, **logger_options)
        ContinuedLog.continue_from(SimpleNamespace(loggers=[logger]), checkpoint)
        return logger._version, logger._kwargs.get("purge_step")

    assert continued(name="a") == (3, 8)
    assert continued(name="a", version=3) == (3, 8)
    assert continued(name="a", version=5) == (5, None)
    assert continued(name="b") == (None, None)
    (tmp_path / "a" / "version_3").rmdir()
    assert continued(name="a") == (None, None)


def test_resume_at_and_after_an_epoch_boundary_continues_the_data_order(small_config, tmp_path):
    """A 12-problem file, 4 prompts a step: 3 steps an epoch. Interrupted at the end of epoch 0 and in
    the middle of epoch 1, both resumed runs equal a straight 5-step run (epoch 1 is a new permutation)."""
    train = tmp_path / "train.jsonl"
    rows = [
        {"question": f"{a}+{b}", "answer": str(a + b)}
        for a, b in zip(range(2, 14), range(9, 21), strict=True)
    ]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {
        "data_module": "JsonFilesDataModule",
        "data.init_args.train_file": str(train),
        "data.init_args.val_file": str(train),
        "model.init_args.sampling.num_generations": 2,
    }
    straight = fresh_config(small_config, tmp_path, "straight", **data)
    a = main(["fit", "--config", str(straight), "--trainer.max_steps=5"])
    recorder = json.dumps({"class_path": "tests.test_checkpointing.BatchIndices"})
    for stop in (3, 4):
        interrupted = fresh_config(small_config, tmp_path, f"stop{stop}", **data)
        main(["fit", "--config", str(interrupted), f"--trainer.max_steps={stop}"])
        BatchIndices.seen = []
        resume = ["--trainer.max_steps=5", "--ckpt_path", "last", f"--trainer.callbacks+={recorder}"]
        b = main(["fit", "--config", str(interrupted), *resume])
        # Lightning's batch_idx of updates 4 and 5 (4 alone): epoch 1's first batches, as in the straight
        # run; a last.ckpt saved at train end rather than at the batch end resumed at batch 3 of epoch 0's 3
        assert BatchIndices.seen == {3: [0, 1], 4: [1]}[stop]
        assert_same_run(
            tmp_path / "straight" / "runs",
            tmp_path / f"stop{stop}" / "runs",
            a.model.policy.state_dict(),
            b.model.policy.state_dict(),
        )


def test_a_fit_stopped_at_max_epochs_resumes_with_the_next_epochs_data_order(small_config, tmp_path):
    """12 problems, 4 prompts a step: 3 steps an epoch. A fit stopped by ``trainer.max_epochs=1`` saves
    ``last.ckpt`` at its end (update 3, between the saves every 2), with the epoch finished, where
    Lightning does not give the loader its saved state back: the resumed run replayed epoch 0's shuffle as
    epoch 1. Resumed to 3 epochs, it now equals a straight 3-epoch run."""
    epochs = {"data.init_args.train_size": 12, "trainer.max_steps": -1}
    straight = fresh_config(small_config, tmp_path, "straight", **epochs)
    a = main(["fit", "--config", str(straight), "--trainer.max_epochs=3"])
    assert a.trainer.global_step == 9
    stopped = fresh_config(small_config, tmp_path, "stopped", **epochs)
    main(["fit", "--config", str(stopped), "--trainer.max_epochs=1"])
    b = main(["fit", "--config", str(stopped), "--trainer.max_epochs=3", "--ckpt_path", "last"])
    assert b.trainer.global_step == 9
    assert_same_run(
        tmp_path / "straight" / "runs",
        tmp_path / "stopped" / "runs",
        a.model.policy.state_dict(),
        b.model.policy.state_dict(),
    )


def test_the_data_position_of_a_checkpoint_from_before_exact_resume_saved_it_is_taken_from_the_fit_loop():
    """Older checkpoints kept it only as the loader's state in Lightning's fit-loop state; a checkpoint of
    ExactResume's own holds it there too, and the fit loop's copy (the loader's, now empty) is not used."""
    position = {"generator_state": torch.zeros(3, dtype=torch.uint8), "trained_batches": 2}
    older = ExactResume()
    older.on_load_checkpoint(
        None, None, {"loops": {"fit_loop": {"state_dict": {"combined_loader": [position]}}}}
    )
    older.load_state_dict({"rng": [{}]})
    assert older._restored_position is position
    newer = ExactResume()
    newer.on_load_checkpoint(None, None, {"loops": {"fit_loop": {"state_dict": {"combined_loader": [{}]}}}})
    newer.load_state_dict({"rng": [{}], "data_position": position})
    assert newer._restored_position is position


def test_a_resume_from_the_nonfinite_stop_trains_again_the_batch_it_stopped_in(
    small_config, tmp_path, monkeypatch, capsys
):
    """The non-finite stop saves its checkpoint from inside ``training_step``: its data position counted
    the batch in progress, so the resumed run skipped that batch (and Lightning's ``batch_idx`` was one
    behind the data). It now holds the data position and RNG states of that batch's start: with the NaN
    gone, the resumed run samples the same completions and equals a run that never met it."""
    bad = {6}  # rl_loss calls: the straight run's 4, then the stopped run's third update
    nan_loss_on_updates(monkeypatch, bad)
    straight = fresh_config(small_config, tmp_path, "straight")
    a = main(["fit", "--config", str(straight), "--trainer.max_steps=4"])
    stopped = fresh_config(
        small_config, tmp_path, "stopped", **{"model.init_args.max_consecutive_nonfinite": 1}
    )
    with pytest.warns(UserWarning, match="update skipped"):
        one_line_error(["fit", "--config", str(stopped), "--trainer.max_steps=4"], capsys, status=3)
    saved = tmp_path / "stopped" / "checkpoints" / "nonfinite-stop-step=2.ckpt"
    bad.clear()
    batch_indices: list[int] = []
    recorder = {"class_path": "tests.test_checkpointing.BatchIndices"}
    BatchIndices.seen = batch_indices
    args = [
        "--trainer.max_steps=4",
        "--ckpt_path",
        str(saved),
        f"--trainer.callbacks+={json.dumps(recorder)}",
    ]
    b = main(["fit", "--config", str(stopped), *args])
    assert b.trainer.global_step == 4
    assert batch_indices == [2, 3]
    assert_same_run(
        tmp_path / "straight" / "runs",
        tmp_path / "stopped" / "runs",
        a.model.policy.state_dict(),
        b.model.policy.state_dict(),
    )


class BatchIndices(Callback):
    """Records the ``batch_idx`` Lightning gives each training batch in ``BatchIndices.seen``."""

    seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(batch_idx)


class SignalAfter(Callback):
    """Sends this process ``signum`` ``times`` times at the end of update ``step``: SIGTERM as a scheduler
    pre-empting the job would, SIGINT as Ctrl-C in the terminal does."""

    def __init__(self, step: int, signum: int, times: int = 1) -> None:
        self.step, self.signum, self.times = step, signum, times

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def signalled_fit(config: Path, step: int, signum: int, times: int = 1) -> int:
    """The exit status of ``fit`` of ``config``, sent ``signum`` ``times`` times after update ``step``."""
    sender = {
        "class_path": "tests.test_checkpointing.SignalAfter",
        "init_args": {"step": step, "signum": int(signum), "times": times},
    }
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), f"--trainer.callbacks+={json.dumps(sender)}"])
    return exit_info.value.code


@pytest.mark.parametrize(
    ("signum", "status", "named"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_signal_saves_the_update_exits_and_resumes_exactly(
    small_config, tmp_path, caplog, capsys, signum, status, named
):
    """A SIGTERM between periodic checkpoints (every 2 updates here) used to end the fit with status 0 and
    the updates since the last checkpoint lost; ``rgra ablate`` then recorded the cut-short run as done.
    Ctrl-C stopped it at once with status 1, losing them too (an audit: 6 updates). Both now stop after
    the update in progress, saved."""
    every = {"trainer.max_steps": 4}
    straight = fresh_config(small_config, tmp_path, "straight", **every)
    a = main(["fit", "--config", str(straight)])
    stopped = fresh_config(small_config, tmp_path, "stopped", **every)
    with caplog.at_level(logging.INFO):
        assert signalled_fit(stopped, 3, signum) == status
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, mmap=True)["global_step"] == 3
    assert f"stopped by {named} after update 3, saved to {last}: resume with --ckpt_path last" in caplog.text
    if signum == signal.SIGINT:
        assert "Ctrl-C: stopping after the update in progress, which will be saved" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    resume_equals_straight(stopped, a, steps=4)


@pytest.fixture
def slurm_job(tmp_path, monkeypatch) -> Path:
    """This process as task 0 of SLURM job 4242 (the variables Lightning's ``SLURMEnvironment`` reads), with
    a stand-in ``scontrol`` on the PATH that records its arguments in the returned file."""
    calls = tmp_path / "scontrol.txt"
    stand_in = tmp_path / "bin" / "scontrol"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "rgra", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0"}
    slurm |= {"SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    return calls


def test_slurms_requeue_signal_saves_the_update_requeues_and_the_restarted_job_resumes_exactly(
    small_config, tmp_path, monkeypatch, caplog, slurm_job
):
    """Under SLURM, Lightning's SIGUSR1 handler saved a checkpoint inside the signal handler, mid-update
    (with several processes, collectives meeting other collectives), and the requeued job, run with the
    same command, was refused: its directory held the earlier run's checkpoints."""
    calls = slurm_job
    every = {"trainer.max_steps": 4}
    straight = main(["fit", "--config", str(fresh_config(small_config, tmp_path, "straight", **every))])
    config = fresh_config(small_config, tmp_path, "requeued", **every)
    with caplog.at_level(logging.INFO):
        assert signalled_fit(config, 3, signal.SIGUSR1) == 138
    last = tmp_path / "requeued" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, mmap=True)["global_step"] == 3
    said = "stopped by SLURM's requeue signal (SIGUSR1) after update 3, saved to"
    assert f"{said} {last}: the requeued job resumes from it" in caplog.text
    assert calls.read_text() == "requeue 4242\n"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the same command, run again by SLURM
    resume_equals_straight(config, straight, steps=4, resume=())


class RequeueHandlers(Callback):
    """Records the names of the handlers of SLURM's requeue signal (SIGUSR1) during the first update."""

    seen: list[str] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        RequeueHandlers.seen = [h.__name__ for h in signal.getsignal(signal.SIGUSR1).signal_handlers]


def test_the_requeue_signal_is_taken_over_only_where_a_callback_saves_and_requeues(
    small_config, tmp_path, slurm_job
):
    """Without ``PeriodicModelCheckpoint`` (a reward model's plain ``ModelCheckpoint``, the warm-up's none)
    the signal stopped the fit with nothing saved and no requeue: there Lightning's handler, which saves a
    checkpoint of its own and requeues, stays."""
    probe = json.dumps({"class_path": "tests.test_checkpointing.RequeueHandlers"})
    config = fresh_config(small_config, tmp_path, "periodic")
    main(["fit", "--config", str(config), "--trainer.max_steps=2", f"--trainer.callbacks+={probe}"])
    assert RequeueHandlers.seen == ["_record"]
    config = fresh_config(small_config, tmp_path, "plain")
    main(["fit", "--config", str(config), "--trainer.max_steps=2", f"--trainer.callbacks=[{probe}]"])
    assert RequeueHandlers.seen == ["_slurm_sigusr_handler_fn"]


def test_a_second_ctrl_c_stops_at_once_unsaved(small_config, tmp_path, caplog):
    config = fresh_config(small_config, tmp_path, "twice", **{"trainer.max_steps": 4})
    with caplog.at_level(logging.INFO):
        assert signalled_fit(config, 3, signal.SIGINT, times=2) == 1  # Lightning's, for a KeyboardInterrupt
    last = tmp_path / "twice" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, mmap=True)["global_step"] == 2
    assert f"interrupted after update 3; the last checkpoint is {last} (update 2)" in caplog.text


def test_a_checkpointed_updates_points_are_on_disk_before_its_checkpoint(small_config, tmp_path, monkeypatch):
    """Whatever kills the run after a checkpoint is written, its update's metrics are in the TensorBoard
    file already: the resumed run logs from the next update on and would never write them again."""
    training = ("train/", "time/")  # the update's own metrics (a validation comes after its checkpoint)
    on_disk, save = {}, AtomicCheckpointIO.save_checkpoint

    def recording(io, checkpoint, path, storage_options=None):
        step = checkpoint["global_step"]
        tags = [tag for tag in scalar_tags(tmp_path / "runs") if tag.startswith(training)]
        on_disk[step] = {tag for tag in tags if step in scalars_by_step(tmp_path / "runs", tag)}
        return save(io, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording)
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 4})
    main(["fit", "--config", str(config)])
    final = {tag for tag in scalar_tags(tmp_path / "runs") if tag.startswith(training)}
    assert {"train/reward", "train/accuracy", "train/loss", "time/step_s"} <= final
    assert sorted(on_disk) == [2, 4] and all(tags == final for tags in on_disk.values())


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(small_config, tmp_path):
    """A real ``kill -9`` of ``python -m rgra_lightning fit`` after its update-4 checkpoint, then
    ``fit --ckpt_path last``: the 8 logged rewards and the final weights equal a straight 8-update run."""
    every = {"trainer.max_steps": 8}
    straight = fresh_config(small_config, tmp_path, "straight", **every)
    a = main(["fit", "--config", str(straight)])
    killed = fresh_config(small_config, tmp_path, "killed", **every)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "rgra_lightning", "fit", "--config", str(killed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill as soon as update 4 is checkpointed: its points are on disk before its checkpoint is.
    checkpoint = tmp_path / "killed" / "checkpoints" / "epoch=0-step=4.ckpt"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not checkpoint.exists():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "hf_model").exists()
    resume_equals_straight(killed, a, steps=8)


def test_checkpoints_every_k_updates_keep_the_last_n_and_the_final_state(small_config, tmp_path):
    """Every 2 updates and at the end (update 7), the 3 newest kept, ``last.ckpt``, the HF export."""
    config = small_config("rgra", **FAST)
    cli = main(["fit", "--config", str(config), "--trainer.max_steps=7"])
    directory = tmp_path / "checkpoints"
    steps = sorted(int(path.stem.split("step=")[1]) for path in directory.glob("epoch=*-step=*.ckpt"))
    assert steps == [4, 6, 7]
    assert torch.load(directory / "last.ckpt", weights_only=True)["global_step"] == 7
    assert not list(directory.glob("*.partial")), "temporary checkpoint files were left behind"
    exported = load_causal_lm(str(tmp_path / "hf_model")).state_dict()
    trained = cli.model.policy.state_dict()
    assert all(torch.equal(exported[name], trained[name]) for name in trained)


def test_a_fresh_fit_where_an_earlier_run_saved_checkpoints_is_refused_before_training(
    small_config, tmp_path, capsys
):
    """Lightning would save the new run's as last-v1.ckpt, ... beside the earlier run's last.ckpt, which
    ``--ckpt_path .../last.ckpt`` would go on naming; ``--ckpt_path last`` resumes the earlier run."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 1})
    main(["fit", "--config", str(config)])
    directory = tmp_path / "checkpoints"
    saved = sorted(os.listdir(directory))
    assert one_line_error(["fit", "--config", str(config)], capsys, status=RUN_REFUSED) == (
        f"error: {directory} already holds the checkpoints of an earlier run: resume it with --ckpt_path "
        f"last, or give this run another checkpoint directory (the dirpath of PeriodicModelCheckpoint) or "
        f"delete {directory}"
    )
    assert sorted(os.listdir(directory)) == saved
    assert (
        main(
            ["fit", "--config", str(config), "--trainer.max_steps=2", "--ckpt_path", "last"]
        ).trainer.global_step
        == 2
    )


def held_by_a_running_fit(lock: Path) -> int:
    """Lock ``lock`` as a fit running on another node holds it, its holder's line written; the descriptor."""
    running = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(running, b"process 4242 on node-7\n")
    return running


def still_running(directory: Path, lock: Path) -> str:
    """The refusal of a fit into ``directory`` while ``held_by_a_running_fit`` holds ``lock``."""
    return (
        f"{directory} is the checkpoint directory of a fit that is still running (process 4242 on node-7, "
        f"holding {lock}): wait for it to end, or give this run another name or checkpoint directory"
    )


def test_a_fit_into_the_checkpoint_directory_of_a_running_fit_is_refused(
    small_config, tmp_path, capsys, monkeypatch
):
    """Two fits of one config would replace each other's last.ckpt. The running fit holds a ``flock`` on
    ``<checkpoint dir>.lock``; a second fit is refused in one line naming the holder, before it trains,
    fresh or resumed, and before Lightning opens a log directory for it (the CLI's probe; where two fits
    start together, past the probe, ``setup`` refuses the second); the lock ends with the fit that held
    it."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 1})
    lock = tmp_path / "checkpoints.lock"
    running = held_by_a_running_fit(lock)
    refused = f"error: {still_running(tmp_path / 'checkpoints', lock)}"
    assert one_line_error(["fit", "--config", str(config)], capsys, status=RUN_REFUSED) == refused
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert not (tmp_path / "runs").exists()  # no log directory of the refused run beside the others
    with monkeypatch.context() as past_the_probe:
        past_the_probe.setattr(RunDirectoryLock, "require_free", lambda trainer: None)
        assert one_line_error(["fit", "--config", str(config)], capsys, status=RUN_REFUSED) == refused
    os.close(running)  # the running fit ends
    assert main(["fit", "--config", str(config)]).trainer.global_step == 1
    after = os.open(lock, os.O_RDWR)
    fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if the fit kept its lock
    assert os.read(after, 100).decode() == f"process {os.getpid()} on {socket.gethostname()}\n"
    resume = ["fit", "--config", str(config), "--trainer.max_steps=2", "--ckpt_path", "last"]
    assert one_line_error(resume, capsys, status=RUN_REFUSED).startswith(
        f"error: {tmp_path / 'checkpoints'} is the checkpoint"
    )
    os.close(after)
    assert main(resume).trainer.global_step == 2


def test_a_fit_deletes_the_files_of_killed_checkpoint_saves_once_it_holds_the_directory(
    small_config, tmp_path, capsys, monkeypatch, caplog
):
    """A kill -9 during a save leaves its full-size temporary file (``.last.ckpt.<pid>.<uuid>.partial``),
    which nothing removed: each pre-emption mid-save added one. A fit deletes them when it takes the
    checkpoint directory's lock (no other fit then saves there), and not while another fit holds it;
    files of other names stay."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 1})
    main(["fit", "--config", str(config)])
    directory = tmp_path / "checkpoints"
    killed = [
        directory / f".{name}.4242.{uuid.uuid4().hex}.partial"
        for name in ("last.ckpt", "epoch=0-step=2.ckpt")
    ]
    others = [directory / ".notes.partial", directory / "draft.partial"]
    for path in killed + others:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    resume = ["fit", "--config", str(config), "--trainer.max_steps=2", "--ckpt_path", "last"]
    running = os.open(tmp_path / "checkpoints.lock", os.O_RDWR)
    fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with monkeypatch.context() as past_the_probe:
        past_the_probe.setattr(RunDirectoryLock, "require_free", lambda trainer: None)
        one_line_error(resume, capsys, status=RUN_REFUSED)
    assert all(path.exists() for path in killed)
    os.close(running)
    with caplog.at_level(logging.INFO):
        assert main(resume).trainer.global_step == 2
    assert not any(path.exists() for path in killed)
    assert all(path.exists() for path in others)
    assert f"removed 2 checkpoint file(s) that a killed save left unfinished in {directory}" in caplog.text


@pytest.mark.parametrize("distributed", [True, False])
def test_sharded_checkpoints_saved_in_place_are_warned_of(tmp_path, distributed):
    """``AtomicCheckpointIO`` never sees the shards ``ModelParallelStrategy`` writes into ``last.ckpt/``
    (``save_distributed_checkpoint=True``, Lightning's default): a kill mid-save can corrupt it."""
    trainer = SimpleNamespace(
        strategy=ModelParallelStrategy(save_distributed_checkpoint=distributed),
        checkpoint_callbacks=[PeriodicModelCheckpoint(dirpath=tmp_path)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_saved_in_place(trainer)
    messages = [str(warning.message) for warning in caught]
    assert [message for message in messages if "writes sharded checkpoints in place" in message] == (
        [
            "ModelParallelStrategy(save_distributed_checkpoint=True) writes sharded checkpoints in place: a "
            "kill while last.ckpt is saved can leave it part old, part new (keep step checkpoints with "
            "save_top_k, or set save_distributed_checkpoint: false for one file renamed into place)"
        ]
        if distributed
        else []
    )


def test_resuming_with_another_verifier_is_refused_but_not_with_other_workers(small_config, tmp_path, capsys):
    """The verifier is not a saved hyperparameter (an object), so a resume with another one went on
    without a word (an audit resumed a reward-model run without the reward model). Its settings are now
    recorded; its worker count and cache, which change no score, may differ; a checkpoint from before
    the verifier was recorded still resumes. A refused resume is refused before Lightning makes it a log
    directory (it left an empty ``version_1/`` behind)."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 1})
    main(["fit", "--config", str(config)])
    resume = ["fit", "--config", str(config), "--trainer.max_steps=2", "--ckpt_path", "last"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    log_directories = sorted((tmp_path / "runs").glob("*/version_*"))
    logged = sorted((tmp_path / "runs").rglob("*"))
    assert one_line_error([*resume, "--model.verifier.timeout=2.0"], capsys, status=RUN_REFUSED) == (
        f"error: checkpoint {last} was trained with other settings than this run's (model.verifier.init_args."
        "timeout: 3.0 in the checkpoint, 2.0 now): resume with the config it was trained with (saved as "
        "config.yaml in its log directory), or start a new run without --ckpt_path"
    )
    assert sorted((tmp_path / "runs").glob("*/version_*")) == log_directories
    # nor did it write into the run's own (refused only once Lightning loaded the checkpoint, it had opened
    # an event file there, whose purge would hide the run's points after the checkpoint's update)
    assert sorted((tmp_path / "runs").rglob("*")) == logged
    assert one_line_error(
        [*resume, "--model.verifier=rewards.NumericVerifier"], capsys, status=RUN_REFUSED
    ).startswith(
        f"error: checkpoint {last} was trained with other settings than this run's (model.verifier."
        "class_path: 'rewards.verifiers.MathVerifier' in the checkpoint, 'rewards.verifiers.NumericVerifier' "
        "now; "
    )
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["hyper_parameters"]["verifier"]["class_path"] == "rewards.verifiers.MathVerifier"
    del checkpoint["hyper_parameters"]["verifier"]  # as written before the verifier was recorded
    torch.save(checkpoint, last)
    assert main([*resume, "--model.verifier.workers=1"]).trainer.global_step == 2


def test_a_resume_may_change_the_settings_that_leave_the_updates_as_they_are(small_config, tmp_path):
    """Refused before, though the out-of-memory advice says to lower micro_batch_size (the update stays
    the same), and evaluation, logging and stopping settings change no update: accepted, without a
    warning."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 2})
    main(["fit", "--config", str(config)])
    changed = [
        "--model.init_args.micro_batch_size=2",
        "--model.init_args.max_consecutive_nonfinite=2",
        "--model.init_args.num_logged_samples=1",
        "--model.init_args.evaluation.write_samples=false",
        "--data.init_args.val_batch_size=4",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(["fit", "--config", str(config), "--trainer.max_steps=4", "--ckpt_path", "last", *changed])
    assert cli.trainer.global_step == 4
    assert not [warning for warning in caught if "resuming" in str(warning.message)]


def test_a_resume_in_another_precision_says_so(small_config, tmp_path):
    """Checkpoints record the precision (trainer settings are not in them): a fit resumed in another one
    trains on, with a warning naming both, as for a changed learning rate."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 2})
    main(["fit", "--config", str(config)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert (saved[PRECISION], saved[PROCESSES]) == ("32-true", 1)
    resume = ["fit", "--config", str(config), "--trainer.max_steps=4", "--ckpt_path", "last"]
    with pytest.warns(UserWarning) as caught:
        assert main([*resume, "--trainer.precision=bf16-mixed"]).trainer.global_step == 4
    assert [str(warning.message) for warning in caught if "resuming" in str(warning.message)] == [
        f"resuming {last} with trainer.precision: '32-true' in the checkpoint, 'bf16-mixed' now: the new "
        "values apply from here on"
    ]


def test_a_resume_with_a_lower_learning_rate_trains_with_it_from_the_schedules_point(
    small_config, tmp_path, monkeypatch, capsys
):
    """The non-finite stop advises lowering model.learning_rate or model.max_grad_norm and resuming, which
    was refused. Accepted now, with a warning naming old and new values; and the new learning rate is the
    one the updates use (Lightning restores the optimizer's and the scheduler's saved ones), at the
    point of the warm-up the run is at (5 updates: 3/5 and 4/5 of it at updates 3 and 4)."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 2})
    main(["fit", "--config", str(config)])
    used: list[float] = []  # the learning rate of each optimizer step
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    last = tmp_path / "checkpoints" / "last.ckpt"
    lower = ["--model.init_args.learning_rate=5e-5", "--model.init_args.max_grad_norm=0.5"]
    resume = ["fit", "--config", str(config), "--trainer.max_steps=4", "--ckpt_path", "last"]
    with pytest.warns(UserWarning) as caught:
        cli = main([*resume, *lower])
    assert [str(warning.message) for warning in caught if "resuming" in str(warning.message)] == [
        f"resuming {last} with model.learning_rate: 0.0001 in the checkpoint, 5e-05 now; "
        "model.max_grad_norm: 1.0 in the checkpoint, 0.5 now: the new values apply from here on"
    ]
    assert cli.trainer.global_step == 4
    assert used == [pytest.approx(5e-5 * 3 / 5), pytest.approx(5e-5 * 4 / 5)]
    assert cli.model.updater.max_grad_norm == 0.5
    logged = scalars_by_step(tmp_path / "runs", "train/learning_rate")
    assert [logged[step][-1] for step in (3, 4)] == [pytest.approx(5e-5 * 3 / 5), pytest.approx(5e-5 * 4 / 5)]
    saved = torch.load(last, weights_only=True)  # saved at update 4, as a further resume restores it
    assert saved["lr_schedulers"][0]["base_lrs"] == [5e-5]
    assert saved["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 5e-5
    # Settings that change what the data or weights mean are still refused, named alone
    assert one_line_error(
        [*resume, "--trainer.max_steps=6", *lower, "--data.init_args.seed=1"], capsys, status=RUN_REFUSED
    ) == (
        f"error: checkpoint {last} was trained with other settings than this run's (data.seed: 0 in the "
        "checkpoint, 1 now): resume with the config it was trained with (saved as config.yaml in its log "
        "directory), or start a new run without --ckpt_path"
    )


def test_a_resume_that_extends_a_decaying_schedule_trains_on_the_new_schedule_at_once(
    small_config, tmp_path, request
):
    """Linear decay over 2 updates ends at 0; resumed with max_steps 4, updates 3 and 4 run at 2/4 and 1/4
    of the peak (the new schedule). The checkpoint's optimizer state held the old schedule's 0, at which
    update 3 ran."""
    schedule = {"model.init_args.lr_schedule": "linear", "model.init_args.warmup_steps": 0}
    config = small_config("rgra", **FAST, **schedule, **{"trainer.max_steps": 2})
    main(["fit", "--config", str(config)])
    used = request.getfixturevalue("applied_learning_rates")  # the resumed fit's updates only
    main(["fit", "--config", str(config), "--trainer.max_steps=4", "--ckpt_path", "last"])
    assert used == [pytest.approx(1e-4 * 2 / 4), pytest.approx(1e-4 * 1 / 4)]


class TwoLayers(LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(2, width), torch.nn.Linear(width, 1)


def test_weights_that_do_not_fit_and_no_saved_settings_are_named_briefly():
    checkpoint = {"state_dict": {**TwoLayers(3).state_dict(), "third.weight": torch.zeros(1)}}
    del checkpoint["state_dict"]["first.bias"]
    with pytest.raises(ConfigError) as error:
        require_matching_weights(TwoLayers(4), checkpoint, "old.ckpt")
    assert str(error.value) == (
        "checkpoint old.ckpt holds other weights than this model's, 1 missing (first.bias); 1 unexpected "
        "(third.weight); 2 of another shape (first.weight: [3, 2] in the checkpoint, [4, 2] now, "
        "second.weight: [1, 3] in the checkpoint, [1, 4] now): give the config it was trained with (saved "
        "as config.yaml in its log directory)"
    )


class SettingsLayers(TwoLayers):
    def __init__(self, width: int, lora: int | None, verifier: str, reward_model: bool = False) -> None:
        super().__init__(width)
        self.save_hyperparameters()
        self.reward_models = torch.nn.ModuleList([torch.nn.Linear(1, 1)] if reward_model else [])


@pytest.mark.parametrize("reward_model", [False, True], ids=["rule-verifier", "reward-model"])
def test_weights_that_do_not_fit_name_the_settings_that_make_weights(reward_model):
    """The verifier is named only where it holds learned reward models: a rule verifier's settings make no
    weights, and their differences buried the one that did (a LoRA checkpoint, a config without LoRA)."""
    trained = SettingsLayers(3, 8, "MathVerifier(timeout=5)", reward_model)
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    with pytest.raises(ConfigError) as error:
        require_matching_weights(
            SettingsLayers(4, None, "MathVerifier(timeout=2)", reward_model), checkpoint, "a"
        )
    named = str(error.value).split("(", 1)[1].split("): give")[0]
    expected = ["model.lora: 8 in the checkpoint, None now"]
    if reward_model:
        expected.append(
            "model.verifier: 'MathVerifier(timeout=5)' in the checkpoint, 'MathVerifier(timeout=2)' now"
        )
    assert named.split("; ") == expected


class Scorer(LightningModule):
    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = torch.nn.Linear(2, 1)


class Policy(Scorer):
    def __init__(self, learning_rate: float) -> None:
        super().__init__(learning_rate)
        del self.model
        self.policy = torch.nn.Linear(2, 1)


def test_a_checkpoint_of_another_kind_of_module_saved_without_its_class_is_told_by_its_weights():
    """LightningCLI records the module's class in a checkpoint (``_class_path``); a checkpoint saved without
    it is told by weights that share no submodule with this module's. Neither lists the settings that
    differ (here the learning rate), as if it were another run of this module."""
    scorer = Scorer(3e-4)
    checkpoint = {"state_dict": scorer.state_dict(), "hyper_parameters": dict(scorer.hparams)}
    expected = (
        "checkpoint rm.ckpt holds another module's weights (model.*); this config trains a module of class "
        "Policy: "
    )
    with pytest.raises(ConfigError) as error:
        require_matching_weights(Policy(1e-4), checkpoint, "rm.ckpt")
    assert str(error.value).startswith(expected)
    with pytest.raises(RunRefusedError) as error:
        require_same_run(checkpoint, "rm.ckpt", Policy(1e-4), None)
    assert str(error.value).startswith(expected)
    checkpoint["hyper_parameters"]["_class_path"] = "rgra_lightning.RewardModelModule"
    with pytest.raises(ConfigError) as error:
        require_matching_weights(Policy(1e-4), checkpoint, "rm.ckpt")
    assert str(error.value).startswith(
        "checkpoint rm.ckpt holds a reward model (RewardModelModule, configs/reward_model.yaml); this config "
        "trains a module of class Policy: give the config it was trained with"
    )


class Batches(LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.save_hyperparameters()


def test_a_resumed_fit_may_change_its_processes_if_the_prompts_per_update_stay():
    """``data.batch_size`` is per process: a checkpoint of 2 processes x 2 prompts resumes on 1 process
    of 4 (or 4 of 1), not on 1 of 2 (half the prompts per update), whose message names both products;
    a checkpoint that does not record its processes compares the batch size alone."""
    policy = Policy(1e-4)
    saved = {
        "state_dict": policy.state_dict(),
        "hyper_parameters": dict(policy.hparams),
        "datamodule_hyper_parameters": {"batch_size": 2},
        PROCESSES: 2,
    }
    for batch_size, processes in [(2, 2), (4, 1), (1, 4)]:
        require_same_run(saved, "last.ckpt", policy, Batches(batch_size), processes)
    for batch_size, processes, now in [(2, 1, "2 on 1 (2)"), (4, 2, "4 on 2 (8)")]:
        with pytest.raises(RunRefusedError) as error:
            require_same_run(saved, "last.ckpt", policy, Batches(batch_size), processes)
        assert str(error.value).startswith(
            "checkpoint last.ckpt was trained with other settings than this run's (data.batch_size: 2 on 2 "
            f"processes (4 prompts per update) in the checkpoint, {now} now): resume with the config"
        )
    older = {key: value for key, value in saved.items() if key != PROCESSES}
    require_same_run(older, "last.ckpt", policy, Batches(2), 1)
    with pytest.raises(RunRefusedError, match=r"\(data.batch_size: 2 in the checkpoint, 4 now\)"):
        require_same_run(older, "last.ckpt", policy, Batches(4), 1)


def test_one_process_trains_each_update_on_the_prompts_of_all_ranks_of_several():
    """With ``ExactResume``, one process's k-th batch of an epoch holds the prompts that the k-th
    batches of N ranks (of a batch size N times smaller) hold together, in every epoch: update k trains on
    the same prompts on any number of processes, and a fit resumes on another number where it stopped."""

    def batches(batch_size: int, ranks: int, rank: int, epoch: int) -> list[set[int]]:
        datamodule = Numbers(size=24, batch_size=batch_size)
        sampler = {"num_replicas": ranks, "rank": rank} if ranks > 1 else None
        strategy = SimpleNamespace(distributed_sampler_kwargs=sampler)
        trainer = SimpleNamespace(datamodule=datamodule, world_size=ranks, strategy=strategy)
        ExactResume().setup(trainer, None, "fit")
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(epoch)  # as Lightning does before each epoch
        return [set(batch.tolist()) for batch in loader]

    for epoch in (0, 1):
        one = batches(6, 1, 0, epoch)
        assert sorted(x for batch in one for x in batch) == list(range(24))
        for ranks in (2, 3):
            of_ranks = [batches(6 // ranks, ranks, rank, epoch) for rank in range(ranks)]
            assert [set().union(*step) for step in zip(*of_ranks, strict=True)] == one
    assert batches(6, 1, 0, 0) != batches(6, 1, 0, 1)


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(1000)}, path)

    def crash_midway(obj: object, file) -> None:  # what a kill during torch.save leaves behind
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("free_mib", [0, 1024], ids=["full-disk", "other-failure"])
def test_a_checkpoint_write_that_fills_the_disk_is_one_line_and_keeps_the_previous_one(
    tmp_path, monkeypatch, free_mib
):
    """torch.save reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos``, a traceback: with the disk full it is a ``ConfigError`` saying so; any other failure is raised
    as it is."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def fill_the_disk(obj: object, file) -> None:
        file.write(b"x" * 3 * 2**20)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 883814080 vs 8838")

    monkeypatch.setattr(torch, "save", fill_the_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, free_mib * 2**20))
    if free_mib:
        with pytest.raises(RuntimeError, match="unexpected pos"):
            io.save_checkpoint({"global_step": 2}, path)
    else:
        with pytest.raises(ConfigError) as error:
            io.save_checkpoint({"global_step": 2}, path)
        assert str(error.value) == (
            f"checkpoint {path} could not be saved: its disk is full (0 MiB free after 3 MiB of it were "
            "written; the checkpoints saved before are whole): free some space or save to another disk (the "
            "checkpoint callback's dirpath), then resume with --ckpt_path last"
        )
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_checkpoint_is_renamed_into_place_from_the_same_directory(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renames.append((src, dst)) or real_replace(src, dst))
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "sub" / "last.ckpt")
    [(source, target)] = renames
    assert Path(source).parent == Path(target).parent == tmp_path / "sub"
    assert torch.load(target, weights_only=True) == {"global_step": 3}
    umask = os.umask(0o022)  # readable by the group, as a file written with open() (mkstemp made 0600)
    try:
        AtomicCheckpointIO().save_checkpoint({"global_step": 4}, tmp_path / "shared.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.ckpt").stat().st_mode & 0o777 == 0o644


def test_a_fit_resumed_from_last_with_no_checkpoint_says_it_starts_afresh(small_config, tmp_path, caplog):
    """Lightning warned with a hint to set ``save_last=True`` (set already); the run starts afresh, as a
    requeued job's first attempt needs, and one line says so."""
    config = small_config("rgra", **FAST, **{"trainer.max_steps": 1})
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert cli.trainer.global_step == 1
    assert "--ckpt_path last: the run has no checkpoint yet, so this fit starts afresh" in caplog.text
    assert not [warning for warning in caught if "no last checkpoint available" in str(warning.message)]


def test_a_fit_whose_config_dropped_the_checkpoint_callbacks_warns(small_config, tmp_path):
    """A second --config that sets trainer.callbacks replaces the first's list whole: a sample logger added
    that way dropped PeriodicModelCheckpoint and ExactResume without a word."""
    overlay = tmp_path / "samples.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n    - class_path: rgra_lightning.callbacks.CompletionSampleLogger\n"
        "      init_args: {every_n_steps: 3}\n"
    )
    config = small_config("rgra", **FAST)
    expected = (
        r"trainer.callbacks has no rgra_lightning.checkpointing.PeriodicModelCheckpoint or "
        r"rgra_lightning.checkpointing.ExactResume \(no last.ckpt for --ckpt_path last; a resume restarts"
    )
    with pytest.warns(UserWarning, match=expected):
        main(["fit", "--config", str(config), "--config", str(overlay), "--trainer.max_steps=1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(config), "--trainer.max_steps=1"])  # the shipped list: no warning
    assert not [w for w in caught if "trainer.callbacks has no" in str(w.message)]


@pytest.mark.parametrize(
    ("field", "now"), [("alpha", 16.0), ("rank", 8), ("target_modules", ["q_proj"])], ids=str
)
def test_evaluating_a_checkpoint_trained_with_other_lora_settings_is_refused_even_where_its_weights_fit(
    field, now
):
    """Another alpha scales the same adapter weights otherwise (alpha / rank), silently: a checkpoint whose
    ``model.lora`` differs from the config's is refused, naming the field, also where its weights fit the
    module (as they always do for alpha)."""
    lora = {"rank": 4, "alpha": 8.0, "target_modules": "all-linear"}
    trained = SettingsLayers(3, lora, "MathVerifier()")
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    require_matching_weights(SettingsLayers(3, dict(lora), "MathVerifier()"), checkpoint, "a.ckpt")
    with pytest.raises(ConfigError) as error:
        require_matching_weights(
            SettingsLayers(3, lora | {field: now}, "MathVerifier()"), checkpoint, "a.ckpt"
        )
    assert str(error.value) == (
        f"checkpoint a.ckpt was trained with other settings than this run's (model.lora.{field}: "
        f"{lora[field]!r} in the checkpoint, {now!r} now): give the config it was trained with (saved as "
        "config.yaml in its log directory)"
    )


def saved_checkpoint(module: LightningModule, class_path: str) -> dict:
    """What ``module``'s checkpoint holds of its weights and settings, saved as LightningCLI saves the class
    ``class_path``'s (``_class_path``)."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # with LoRA: the adapters only
    checkpoint["hyper_parameters"] = {**module.hparams, "_class_path": class_path}
    return checkpoint


def test_an_rl_config_evaluates_an_sft_checkpoint_but_resumes_no_fit_from_it_and_not_the_reverse():
    """Built from the same config (model, LoRA), SFTModule and RLModule hold the same policy weights: the RL
    module evaluates an SFT checkpoint as its own (the paper's ft row, measured as its RL rows), but a fit
    resumed from it is refused in one line naming both kinds; an SFT config evaluating an RL checkpoint
    (whose weights fit as well) is refused, as any other kind's."""
    lora = LoraConfig(rank=4, alpha=8)
    sft, rl = (
        SFTModule(model_path=str(TINY_POLICY), lora=lora),
        RLModule(model_path=str(TINY_POLICY), lora=lora),
    )
    require_matching_weights(rl, saved_checkpoint(sft, "rgra_lightning.SFTModule"), "sft.ckpt")
    sft_policy = "a supervised (SFT) policy (SFTModule, configs/paper/gsm8k-sft.yaml)"
    rl_policy = "a policy (RLModule, configs/rgra.yaml)"
    with pytest.raises(RunRefusedError) as error:
        require_same_run(saved_checkpoint(sft, "rgra_lightning.SFTModule"), "sft.ckpt", rl, None)
    assert str(error.value).startswith(
        f"checkpoint sft.ckpt holds {sft_policy}; this config trains {rl_policy}: "
    )
    with pytest.raises(ConfigError) as error:
        require_matching_weights(sft, saved_checkpoint(rl, "rgra_lightning.RLModule"), "rl.ckpt")
    assert str(error.value).startswith(
        f"checkpoint rl.ckpt holds {rl_policy}; this config trains {sft_policy}: "
    )


def test_a_refused_runs_log_directory_is_removed_only_when_it_holds_no_point(tmp_path):
    def log_dir(name: str, point: bool = False, extra: str | None = None) -> Path:
        directory = tmp_path / name
        with SummaryWriter(directory) as writer:
            if point:
                writer.add_scalar("train/loss", 0.5, 1)
        (directory / "config.yaml").write_text("seed_everything: 0\n")
        if extra:
            (directory / extra).write_text("kept\n")
        return directory

    assert remove_refused_log_directory(log_dir("refused")) and not (tmp_path / "refused").exists()
    # another fit, started at the same moment into the same directory, wrote these events: its own
    shared = log_dir("shared")
    (events,) = shared.glob("events.out.tfevents.*")
    events.rename(shared / events.name.replace(f".{os.getpid()}.", f".{os.getpid() + 1}."))
    assert remove_refused_log_directory(log_dir("described", extra="hparams.yaml"))  # Lightning's
    for kept in (log_dir("trained", point=True), log_dir("noted", extra="notes.txt"), shared):
        assert not remove_refused_log_directory(kept) and kept.is_dir()
    assert not remove_refused_log_directory(tmp_path / "never-made")


def test_a_checkpoint_reaches_the_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """The rename can reach the disk before the data it names: without an ``fsync`` of the whole temporary
    file first, a power cut after the rename could leave ``last.ckpt`` empty and the previous one gone."""
    calls: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: calls.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd)
    )
    monkeypatch.setattr(
        os, "replace", lambda src, dst: calls.append(("replace", Path(dst).name)) or real_replace(src, dst)
    )
    AtomicCheckpointIO().save_checkpoint(
        {"global_step": 3, "weights": torch.ones(1000)}, tmp_path / "last.ckpt"
    )
    assert calls == [("fsync", (tmp_path / "last.ckpt").stat().st_size), ("replace", "last.ckpt")]


def test_the_file_of_a_save_killed_before_its_rename_is_no_checkpoint_and_is_deleted(tmp_path, monkeypatch):
    """What a kill -9 between the write and the rename leaves (the temporary file, whole) is named so that
    no ``*.ckpt`` glob takes it for a checkpoint and ``remove_partial_checkpoints`` deletes it."""
    real_replace = os.replace

    def killed_at_the_rename(src, dst):  # the rename happens, and a copy stays as the kill left it
        real_replace(src, dst)
        shutil.copy(dst, src)

    monkeypatch.setattr(os, "replace", killed_at_the_rename)
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == ["last.ckpt"]
    assert len(os.listdir(tmp_path)) == 2
    remove_partial_checkpoints(str(tmp_path))
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_a_fit_saving_into_two_directories_is_refused_where_a_running_fit_holds_either(tmp_path):
    """A ``PeriodicModelCheckpoint`` and a ``ModelCheckpoint`` with its own ``dirpath``: the CLI's probe and
    ``setup`` refuse the fit where another holds the lock of the first directory or of the second (the
    first one's lock file never made), and ``setup`` lets go of the lock it took on the other."""
    directories = [tmp_path / "periodic", tmp_path / "best"]
    trainer = SimpleNamespace(
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda value: value),
        checkpoint_callbacks=[
            PeriodicModelCheckpoint(dirpath=directories[0]),
            ModelCheckpoint(dirpath=directories[1]),
        ],
    )
    for held, other in [(directories[1], directories[0]), (directories[0], directories[1])]:
        lock = Path(f"{held}.lock")
        running = held_by_a_running_fit(lock)
        refused = still_running(held, lock)
        with pytest.raises(RunRefusedError) as error:
            RunDirectoryLock.require_free(trainer)
        assert str(error.value) == refused
        with pytest.raises(RunRefusedError) as error:
            RunDirectoryLock().setup(trainer, None, "fit")
        assert str(error.value) == refused
        if Path(f"{other}.lock").exists():  # taken by setup, given back with the refusal
            free = os.open(f"{other}.lock", os.O_RDWR)
            fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(free)
        os.close(running)
    lock = RunDirectoryLock()
    lock.setup(trainer, None, "fit")  # both free now
    lock.teardown(trainer, None, "fit")


def test_a_resumed_fit_saves_every_k_updates_of_the_run_not_k_after_its_start(small_config, tmp_path):
    """Every 2 updates, the 3 newest kept: a fit stopped at update 2 and resumed to 5 saves at 4 and 5 as
    an uninterrupted run does, not also at 3 (which would push update 2's out)."""
    config = small_config("rgra", **FAST)
    main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    main(["fit", "--config", str(config), "--trainer.max_steps=5", "--ckpt_path", "last"])
    directory = tmp_path / "checkpoints"
    steps = sorted(int(path.stem.split("step=")[1]) for path in directory.glob("epoch=*-step=*.ckpt"))
    assert steps == [2, 4, 5]


def test_without_a_dirpath_checkpoints_go_to_the_run_names_directory_where_last_finds_them(
    small_config, tmp_path, capsys
):
    """The shipped configs give ``PeriodicModelCheckpoint`` no ``dirpath``: it saves into
    ``<save_dir>/<name>/checkpoints`` (not the logger's ``version_N/``), a fresh fit there is refused
    naming the run name, and ``--ckpt_path last`` resumes from there into the run's ``version_0/``."""
    config = small_config("rgra", **FAST)
    text = yaml.safe_load(config.read_text())
    (periodic,) = [c for c in text["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    del periodic["init_args"]["dirpath"]
    config.write_text(yaml.safe_dump(text))
    main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    run = tmp_path / "runs" / "rgra"
    assert sorted(os.listdir(run)) == ["checkpoints", "checkpoints.lock", "version_0"]
    directory = run / "checkpoints"
    assert one_line_error(["fit", "--config", str(config)], capsys, status=RUN_REFUSED) == (
        f"error: {directory} already holds the checkpoints of an earlier run: resume it with --ckpt_path "
        f"last, or give this run another name (trainer.logger.init_args.name) or delete {directory}"
    )
    resumed = main(["fit", "--config", str(config), "--trainer.max_steps=3", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 3
    assert sorted(os.listdir(run)) == ["checkpoints", "checkpoints.lock", "version_0"]
    assert torch.load(directory / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 3
    assert [step for step, _ in directory_scalars(run / "version_0", "train/reward")] == [1, 2, 3]


@pytest.mark.parametrize("exception", [SIGTERMException(), KeyboardInterrupt()], ids=["SIGTERM", "Ctrl-C"])
def test_an_evaluation_stopped_by_a_signal_says_nothing_of_checkpoints(
    tmp_path, monkeypatch, caplog, exception
):
    """``validate`` / ``test`` stopped by SIGTERM or Ctrl-C save nothing and requeue nothing: no line says
    they saved or names a checkpoint to resume from."""
    monkeypatch.setattr(distributed, "_stopped_by", signal.SIGTERM)
    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.VALIDATING),
        global_step=0,
        is_global_zero=True,
        fast_dev_run=False,
        sanity_checking=False,
    )
    with caplog.at_level(logging.INFO):
        PeriodicModelCheckpoint(dirpath=tmp_path, save_last=True).on_exception(trainer, None, exception)
    assert caplog.text == ""
    assert os.listdir(tmp_path) == []


def test_the_points_a_logger_holds_in_memory_are_written_before_a_checkpoint(tmp_path):
    """A logger that buffers (Lightning's ``CSVLogger`` keeps its rows until ``save``) writes them out before
    each checkpoint: the resumed run logs from the next update on and would never write them again."""
    logger = CSVLogger(tmp_path, name="csv")
    logger.log_metrics({"train/reward": 0.5}, step=1)
    ContinuedLog().on_save_checkpoint(SimpleNamespace(loggers=[logger]), None, {})
    assert (Path(logger.log_dir) / "metrics.csv").read_text().splitlines() == ["step,train/reward", "1,0.5"]


def test_a_run_logging_under_a_relative_save_dir_logs_on_into_its_directory(tmp_path, monkeypatch):
    """The shipped configs log under ``save_dir: runs``, relative to where the run starts: the checkpoint
    records the directory resolved, which a resumed run's logger (resolved too) continues."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "rgra" / "version_0").mkdir(parents=True)
    checkpoint = {"global_step": 2}
    saving = TensorBoardLogger("runs", name="rgra", version=0)
    ContinuedLog().on_save_checkpoint(SimpleNamespace(loggers=[saving]), None, checkpoint)
    assert checkpoint["log"] == {"root_dir": str(tmp_path.resolve() / "runs" / "rgra"), "version": 0}
    resumed = TensorBoardLogger("runs", name="rgra")
    ContinuedLog.continue_from(SimpleNamespace(loggers=[resumed]), checkpoint)
    assert (resumed._version, resumed._kwargs.get("purge_step")) == (0, 3)


def test_last_names_the_newest_last_checkpoint_of_every_checkpoint_directory(tmp_path):
    """``--ckpt_path last`` takes the newest (by modification time) ``last*.ckpt`` of the directories of
    all checkpoint callbacks, as Lightning does; a newer step file is no last checkpoint."""
    periodic, best = tmp_path / "periodic", tmp_path / "best"
    trainer = SimpleNamespace(
        loggers=[],
        checkpoint_callbacks=[PeriodicModelCheckpoint(dirpath=periodic), ModelCheckpoint(dirpath=best)],
    )
    ages = {periodic / "last.ckpt": 300, periodic / "last-v1.ckpt": 100, best / "last.ckpt": 200}
    ages[periodic / "epoch=0-step=9.ckpt"] = 400
    for path, mtime in ages.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    assert last_checkpoint(trainer) == str(periodic / "last.ckpt")
    os.utime(best / "last.ckpt", (500, 500))
    assert last_checkpoint(trainer) == str(best / "last.ckpt")


def test_the_random_streams_a_checkpoint_holds_are_each_restored_as_they_were(tmp_path):
    """torch's, Python's and NumPy's global streams (a verifier or sampler may draw from any), saved
    through a checkpoint file (loadable with ``weights_only``) and restored when training starts, draw
    what they would have drawn; a Gaussian NumPy cached half-way is kept as well."""

    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), np.random.normal(), np.random.rand()

    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.normal()  # leaves the second Gaussian of the pair cached
    torch.save(ExactResume().state_dict(), tmp_path / "state.pt")
    expected = draws()
    restored = ExactResume()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    restored.on_train_start(SimpleNamespace(world_size=1, global_rank=0), None)
    assert draws() == expected


def test_each_process_restores_its_own_random_streams_or_on_another_number_new_ones_of_its_own(monkeypatch):
    """A checkpoint holds the streams of every process in rank order: each process of a run of as many
    takes its own. A run of another size warns: one process takes process 0's; each of several takes a
    stream of its own (shared ones would couple the ranks' samples), new to the run (not the streams a
    fresh fit starts from), the same on every resume from that update."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    streams = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        streams.append(rng_states())

    def resumed(world_size: int, rank: int, step: int = 7) -> tuple[torch.Tensor, int]:
        restored = ExactResume()
        restored.load_state_dict({"rng": streams, "data_position": None})
        trainer = SimpleNamespace(world_size=world_size, global_rank=rank, global_step=step)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored.on_train_start(trainer, None)
        warned = [w for w in caught if "holds the RNG states of 2 processes" in str(w.message)]
        return torch.rand(3), len(warned)

    def seeded(seed: int) -> torch.Tensor:
        return torch.rand(3, generator=torch.Generator().manual_seed(seed))

    for world_size, rank, seed, warned in [(2, 0, 10, 0), (2, 1, 11, 0), (1, 0, 10, 1)]:
        draw, warnings_given = resumed(world_size, rank)
        assert torch.equal(draw, seeded(seed)) and warnings_given == warned
    three = [resumed(3, rank) for rank in range(3)]
    assert all(warned == 1 for _, warned in three)
    fresh = []
    for rank in range(3):
        distributed.separate_rank_streams(3, rank)
        fresh.append(torch.rand(3))
    draws = [draw for draw, _ in three] + fresh + [seeded(10), seeded(11)]
    assert len({tuple(draw.tolist()) for draw in draws}) == len(draws)  # all different
    assert torch.equal(resumed(3, 2)[0], three[2][0])
    assert not torch.equal(resumed(3, 2, step=8)[0], three[2][0])


class Numbers(LightningDataModule):
    def __init__(self, size: int = 6, batch_size: int = 2) -> None:
        super().__init__()
        self.size, self.batch_size = size, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            list(range(self.size)),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )


def test_a_one_process_checkpoint_of_the_older_order_resumed_inside_an_epoch_warns():
    """Checkpoints without ``PROCESSES`` predate one process's ``DistributedSampler`` order: resumed inside
    an epoch on one process, that epoch's rest comes from the new order (said); a checkpoint of several
    processes kept its order, one at an epoch's start has no rest, one of this version says nothing."""
    position = {"generator_state": torch.Generator().manual_seed(5).get_state(), "trained_batches": 2}

    def warned(checkpoint: dict, rng: list, trained_batches: int) -> bool:
        restored = ExactResume()
        restored.on_load_checkpoint(None, None, checkpoint)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored.load_state_dict(
                {"rng": rng, "data_position": position | {"trained_batches": trained_batches}}
            )
        return any("written on one process by an older version" in str(w.message) for w in caught)

    one, two = [rng_states()], [rng_states(), rng_states()]
    assert warned({}, one, 2)
    assert not warned({}, one, 0)
    assert not warned({}, two, 2)
    assert not warned({PROCESSES: 1}, one, 2)


def test_a_restored_data_position_applies_to_the_first_training_loader_only():
    """The loader built first after loading a checkpoint continues at its data position; one built again
    (``reload_dataloaders_every_n_epochs``) starts its epoch from its own generator, as in an uninterrupted
    run, instead of replaying the checkpoint's epoch."""
    position = {"generator_state": torch.Generator().manual_seed(5).get_state(), "trained_batches": 1}
    datamodule = Numbers()
    restored = ExactResume()
    restored.load_state_dict({"rng": [rng_states()], "data_position": position})
    restored.setup(SimpleNamespace(datamodule=datamodule, world_size=1, strategy=None), None, "fit")
    # the epoch's order: Numbers' generator's seed, shuffled as N processes' samplers shuffle with it
    order = DistributedSampler(range(6), num_replicas=1, rank=0, seed=0)
    epoch = [batch.tolist() for batch in DataLoader(list(range(6)), batch_size=2, sampler=order)]
    assert [batch.tolist() for batch in datamodule.train_dataloader()] == epoch[1:]
    assert [batch.tolist() for batch in datamodule.train_dataloader()] == epoch


def test_checkpoints_leave_out_the_frozen_reward_models_and_loading_puts_them_back(small_config, tmp_path):
    """The verifier's reward models (as the reference policy, where a config has one) are reloaded from
    their model paths: a checkpoint holds the trained policy alone, and loading it puts them back in."""
    from tests.reward_models.conftest import save_classifier, verifier_plus_reward_model

    verifier = verifier_plus_reward_model(save_classifier(tmp_path / "reward_model", num_labels=1))
    args = ["--config", str(small_config("rgra")), f"--model.verifier={json.dumps(verifier)}"]
    model = main(args, run=False).model
    state = model.state_dict()
    assert {key.split(".", 1)[0] for key in state} == {"policy", "reward_models"}
    checkpoint = {"state_dict": dict(state)}
    model.on_save_checkpoint(checkpoint)
    assert {key.split(".", 1)[0] for key in checkpoint["state_dict"]} == {"policy"}
    model.on_load_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == state.keys()
    model.load_state_dict(checkpoint["state_dict"])
