"""Everything that differs when several processes train together: FSDP2 sharding, DDP's gradient no-sync,
reductions of metrics over ranks, the distributed sampler of the training and prediction data, which
problems of an evaluation each rank counts (``counted_on_rank``), and stopping every process together
after a saved update on SIGTERM or Ctrl-C (``AgreedStop``).

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards the policy and the frozen reference and reward models
in ``RLModule.configure_model`` when the trainer's strategy is Lightning's ``ModelParallelStrategy``.
Each decoder layer is its own FSDP unit (gathered for its forward, resharded after it); the root unit
holds the embeddings, final norm and LM head and stays gathered between forward and backward.
Sampling runs one small forward per new token, so ``gathered_for_generation`` keeps every unit gathered for
the whole decoding loop: one all-gather per layer per rollout instead of one per layer per token, and
no collective inside the decoding loop, so ranks may stop decoding at different steps.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import ParallelStrategy, Strategy
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from rgra_lightning.errors import ConfigError
from rgra_lightning.models import DTYPES, with_weights


@dataclass(frozen=True)
class ShardingConfig:
    """FSDP2 options; they apply only under ``ModelParallelStrategy`` (ignored by DDP and one device).

    Args:
        param_dtype: dtype the gathered parameters are cast to for compute (``bfloat16`` on GPUs);
            ``None`` computes in the stored parameter dtype. Sharded master weights keep their dtype
            (``model.dtype``, float32 for the trained policy: see ``rgra_lightning.precision``).
        reduce_dtype: dtype of the gradient reduce-scatter; ``None`` follows ``param_dtype``.
            ``float32`` with ``param_dtype: bfloat16`` is the usual mixed-precision recipe.
        activation_checkpointing: moved to ``model.gradient_checkpointing``, which works on one device and
            under DDP too; ``true`` here is an error that says so (``false`` is accepted, as old configs and
            checkpoints have it).
    """

    param_dtype: str | None = None
    reduce_dtype: str | None = None
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ConfigError(f"sharding.{name} must be one of {sorted(DTYPES)} or null, got {value!r}")
        if self.activation_checkpointing:
            raise ConfigError(
                "model.sharding.activation_checkpointing is now model.gradient_checkpointing (one device, "
                "DDP and FSDP2): write gradient_checkpointing: true under model.init_args, not under sharding"
            )

    @property
    def mixed_precision(self) -> MixedPrecisionPolicy:
        return MixedPrecisionPolicy(
            param_dtype=DTYPES.get(self.param_dtype), reduce_dtype=DTYPES.get(self.reduce_dtype)
        )


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a HF model: instances of its ``_no_split_modules`` classes."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ConfigError(
            f"cannot shard {type(model).__name__}: it declares no decoder-layer classes (_no_split_modules)"
        )
    return layers


def shard_model(model: nn.Module, mesh: DeviceMesh, config: ShardingConfig) -> None:
    """Apply ``fully_shard`` in place: one unit per decoder layer, then the root (``mesh``: 1-D data mesh);
    every rank's shards then hold rank 0's weights and buffers, on the mesh's device.

    Only rank 0 needs ``model``'s weights: other ranks may have built it on the meta device
    (``models.built_empty``), and a rank 0 that did reads them now (``models.with_weights``). Rank 0
    broadcasts them tensor by tensor (``set_model_state_dict`` with ``broadcast_from_rank0``), so no rank
    but 0 (which reads one whole model) holds more than its shards and one whole tensor at a time; the
    buffers that state dicts leave out (RoPE's ``inv_freq``) are broadcast too. Tied weights stay tied.

    Activation checkpointing, if on (``models.enable_activation_checkpointing``), was enabled before: it
    checkpoints each layer's ``forward``, inside FSDP2's gather and reshard hooks.
    """
    source = with_weights(model) if torch.distributed.get_rank() == 0 else None
    # Views of rank 0's weights, which ``to_empty`` below leaves alone: it replaces tensors, not their data
    full_state = source.state_dict() if source is not None else {}
    buffers = dict(source.named_buffers()) if source is not None else {}
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=config.mixed_precision, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=config.mixed_precision, reshard_after_forward=False)
    model.to_empty(device=mesh_device(mesh))
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(model, full_state, options=options)
    in_state = set(model.state_dict())
    for name, buffer in model.named_buffers():
        if name not in in_state:
            if source is not None:
                buffer.copy_(buffers[name])
            torch.distributed.broadcast(buffer, src=0)


def mesh_device(mesh: DeviceMesh) -> torch.device:
    """The device of this process's part of ``mesh``: the CPU, or its current GPU (Lightning sets it)."""
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.accelerator.current_device_index())


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def gathered_for_generation(model: nn.Module) -> Iterator[None]:
    """Keep an FSDP2-sharded ``model`` gathered across all its forwards inside the block, then reshard it.

    A no-op for a model that is not sharded.
    """
    if not is_sharded(model):
        yield
        return
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        units = [unit for unit in model.modules() if isinstance(unit, FSDPModule)]
        for unit in units:
            # As ``shard_model`` set it: layers reshard after forward, the root does not.
            unit.set_reshard_after_forward(unit is not model, recurse=False)
            unit.reshard()


def reshard_root(model: nn.Module) -> None:
    """Free the gathered root parameters (embeddings, final norm, LM head) of an FSDP2-sharded ``model``
    after forwards without a backward (reference log-probs, a reward model's scores): the root does not
    reshard after its forward, as the policy's head is applied after it and its backward frees it, so a
    frozen model's would otherwise stay gathered for the whole run. A no-op for an unsharded model."""
    if is_sharded(model):
        model.reshard()


@contextmanager
def without_autograd(model: nn.Module) -> Iterator[None]:
    """No autograd for ``model``'s forwards inside the block, whatever the caller's mode.

    An unsharded model runs in inference mode, which also skips autograd's bookkeeping (a tenth of a
    decoding step of a small model). An FSDP2-sharded one runs under ``no_grad`` outside inference mode,
    even inside an inference-mode block (Lightning runs its evaluation loops in one, except on gloo): FSDP2
    gathers parameters into buffers it keeps and later writes in place, which must not be inference tensors.
    ``no_grad`` is entered last, as ``inference_mode(False)`` turns gradients back on.
    """
    with torch.inference_mode(not is_sharded(model)), torch.no_grad():
        yield


def no_gradient_sync(strategy: Strategy) -> AbstractContextManager:
    """A context in which backward passes accumulate gradients without all-reducing them (DDP's
    ``no_sync``); a no-op for one device and for FSDP2, which reduce-scatters at every backward."""
    if isinstance(strategy, ParallelStrategy):
        return strategy.block_backward_sync()
    return nullcontext()


def reduce_gathered(gathered: Tensor, kinds: list[str], weights: dict[str, Tensor]) -> Tensor:
    """Column k of ``gathered`` ``[ranks, K]`` reduced over the ranks by ``kinds[k]``: ``mean``, ``max``,
    ``sum``, or a kind named in ``weights``, the mean weighted by its ``[ranks]`` weights (each rank's
    tokens: a per-token mean of every rank becomes the per-token mean of all); ``[K]``."""
    by_kind = {
        "mean": gathered.mean(dim=0),
        "max": gathered.amax(dim=0),
        "sum": gathered.sum(dim=0),
    }
    for kind, weight in weights.items():
        by_kind[kind] = (gathered * weight.unsqueeze(1)).sum(dim=0) / weight.sum().clamp(min=1)
    return torch.stack([by_kind[kind][column] for column, kind in enumerate(kinds)])


def reduce_across_ranks(
    metrics: dict[str, Tensor],
    reductions: dict[str, str],
    weights: dict[str, Tensor],
    all_gather: Callable[[Tensor], Tensor],
    device: torch.device,
) -> dict[str, Tensor]:
    """Scalar ``metrics`` reduced over all ranks, each by its entry in ``reductions`` (``mean`` when it has
    none; see ``reduce_gathered``; ``weights`` holds this rank's weight ``[]`` of each weighted kind), with
    one ``all_gather`` (the LightningModule's) of them all: Lightning's ``sync_dist`` would run a barrier
    and an all-reduce per metric. The values are stacked on ``device``, as NCCL needs CUDA tensors
    (timings and counts are made on the CPU)."""
    names, kinds = list(metrics), list(weights)
    values = [metrics[name] for name in names] + [weights[kind] for kind in kinds]  # the weights last
    stacked = torch.stack([value.to(device, torch.float32) for value in values])
    gathered = all_gather(stacked).view(-1, len(values))  # [ranks, K + weights]; one device: 1 row
    gathered_weights = {kind: gathered[:, len(names) + index] for index, kind in enumerate(kinds)}
    reduced = reduce_gathered(
        gathered[:, : len(names)], [reductions.get(name, "mean") for name in names], gathered_weights
    )
    return dict(zip(names, reduced, strict=True))


def counted_on_rank(indices: Sequence[int], num_replicas: int, rank: int) -> Tensor:
    """Which problems of an evaluation batch rank ``rank`` of ``num_replicas`` (N) counts, ``[B]`` bool, from
    their ``indices`` ``[B]`` in the split: those whose index is congruent to ``rank`` mod N.

    An unshuffled ``DistributedSampler`` (what Lightning injects into an unshuffled validation or test
    loader, and what ``with_distributed_sampler`` gives one: ``PromptDataModule.predict_dataloader`` uses
    it, as Lightning's sampler for ``predict`` does not pad) hands rank r the positions r, r + N, r + 2N...
    of the indices 0 ... n - 1 padded with repeats of the first ones up to a multiple of N, so that every
    rank runs the same number of batches (FSDP2 runs collectives in each one). Position p < n holds index p:
    each problem comes once to the rank of its index mod N. A repeat at position p >= n holds index p - kn
    (k >= 1), where kn is no multiple of N (N does not divide n, or kn <= p < N when n < N): it falls to
    another rank, which evaluates it but does not count it."""
    return torch.tensor([index % num_replicas == rank for index in indices], dtype=torch.bool)


def with_distributed_sampler(loader: DataLoader, distributed_sampler_kwargs: dict[str, Any]) -> DataLoader:
    """``loader`` with the ``DistributedSampler`` that Lightning would inject into it (same shuffling and
    split of the data over the ranks). Lightning injects none into a loader it does not recognise as a
    ``DataLoader`` (``checkpointing.ResumableLoader``), so it is made here. It shuffles with the seed of
    the loader's generator (``data.seed``), as one process does, where Lightning's would take
    ``seed_everything``'s: with it, ``data.seed`` sets the order on any number of processes."""
    seed = loader.generator.initial_seed() if loader.generator is not None else None
    sampler = DistributedSampler(
        loader.dataset,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=int(os.getenv("PL_GLOBAL_SEED", 0)) if seed is None else seed,
        **distributed_sampler_kwargs,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        drop_last=loader.drop_last,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        generator=loader.generator,
    )


_stopped_by = signal.SIGTERM  # the signal that stopped the latest fit (``AgreedStop``)
_requeue_signal: int | None = None  # SLURM's requeue signal where the latest fit took it over


def token_share(trainer: Trainer, tokens: Tensor) -> Tensor | float:
    """This rank's ``tokens`` ``[]`` (of a loss that is their mean) over the ranks' mean count; 1 on one
    process. DDP and FSDP2 average the ranks' gradients, so the ranks' token means, each weighted by its
    share, average to the token mean of the global batch, as one process computes it. 0 where no rank
    has a token (a loss of none is 0 anyway)."""
    if trainer.world_size == 1:
        return 1.0
    mean = trainer.strategy.reduce(tokens.float(), reduce_op="mean")
    return tokens.float() / mean.clamp(min=1 / trainer.world_size)


def separate_rank_streams(world_size: int, rank: int, resumed_at: int | None = None) -> None:
    """Reseed torch's generators (the CPU's and every CUDA device's) of process ``rank`` of ``world_size``
    from the run's seed and the rank, and ``resumed_at``, the update a fit resumed on another number of
    processes starts from (streams other than a fresh fit's); nothing with one process.

    Lightning seeds every process with the same seed (``seed_everything``'s ``PL_GLOBAL_SEED``; unseeded,
    torch starts every process at the same constant), so each rank drew the same random numbers for its
    samples: the completions of different prompts on different ranks were coupled (each still sampled
    from its own distribution), a less diverse global batch. vLLM's per-request seeds take a row per rank
    of one draw, so they stay apart either way."""
    if world_size == 1:
        return
    seed = os.environ.get("PL_GLOBAL_SEED", str(torch.initial_seed()))
    key = f"{seed}/{rank}" if resumed_at is None else f"{seed}/{rank}/resumed at {resumed_at}"
    digest = hashlib.sha256(key.encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # below 2**63, as manual_seed takes


def stop_status() -> int:
    """The exit status of a fit that a signal stopped after saving its state, as a shell reports the
    signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 138 for SLURM's requeue signal (SIGUSR1)."""
    return 128 + _stopped_by


def stop_reason() -> str:
    """What stopped the latest fit, as the line saying so names it."""
    if _stopped_by == signal.SIGINT:
        return "Ctrl-C"
    if stopped_for_requeue():
        return f"SLURM's requeue signal ({signal.Signals(_stopped_by).name})"
    return signal.Signals(_stopped_by).name


def stopped_for_requeue() -> bool:
    """Whether the latest fit stopped for SLURM's requeue signal (``AgreedStop``)."""
    return _requeue_signal is not None and _stopped_by == _requeue_signal


def requeue_slurm_job() -> None:
    """Put this SLURM job back in the queue (``scontrol requeue``, as Lightning's requeue handler does);
    SLURM ends the running job. Says in one line whether it worked."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as error:
        print(f"could not requeue SLURM job {job}: {error}", file=sys.stderr, flush=True)
        return
    reason = " ".join((result.stderr or result.stdout).split())
    if result.returncode == 0:
        print(f"requeued SLURM job {job}: it resumes from its last checkpoint", file=sys.stderr, flush=True)
    else:
        print(f"could not requeue SLURM job {job}: scontrol: {reason}", file=sys.stderr, flush=True)


def slurm_restarts() -> int:
    """How many times SLURM has requeued and restarted this job (``SLURM_RESTART_COUNT``; 0 outside
    SLURM)."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(count) if count.isdigit() else 0


class AgreedStop(Callback):
    """Stop a fit after the update in progress, saved, on SIGTERM or Ctrl-C; every process of a
    multi-process fit after the same update.

    Ctrl-C: Lightning stops at once (``KeyboardInterrupt``, maybe mid-update, so nothing can be saved), and
    an audit's Ctrl-C at update 31 lost the 6 updates since the checkpoint at 25. Here the first Ctrl-C is
    recorded and the fit stops as on SIGTERM, after the update in progress, which
    ``PeriodicModelCheckpoint`` saves; exit status 130 (``stop_status``). A second Ctrl-C stops at once.

    SIGTERM with several processes: Lightning 2.6's handler runs a broadcast inside the signal handler, and
    each process checks its own flag at its own batch end. Processes signalled at different points of their
    step (``timeout`` signals them all, and the launcher forwards the signal once more) then wait in different
    collectives for ever: an audit's DDP runs on 2 CPU processes hung 4 times out of 4. Here the handler only
    records the signal (and forwards it to the launcher's processes, as Lightning's does). With one process
    Lightning's own SIGTERM handler is kept.

    SLURM's requeue signal (SIGUSR1 unless the ``SLURMEnvironment`` names another; SLURM sends it before the
    time limit to a job submitted with ``--signal=USR1@<seconds>``): Lightning's handler saves a checkpoint
    inside the signal handler, wherever each process is (mid-update; with several processes its collectives
    meet other collectives and hang), and requeues the job. Here the signal stops the fit as SIGTERM does,
    after the saved update (exit status 138); then ``PeriodicModelCheckpoint`` requeues the job
    (``requeue_slurm_job``), and the restarted job resumes from that checkpoint (the CLI's
    ``slurm_restarts``).

    At each batch end the processes agree, with one all-reduce, whether any received a signal, and which;
    then they all set Lightning's flag and Lightning stops each after that batch. The CLI adds this
    callback to every trainer.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._launcher: Any = None
        self._sigint_taken = False
        self._global_zero = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        global _stopped_by, _requeue_signal
        _stopped_by, self.received, self._global_zero = signal.SIGTERM, None, trainer.is_global_zero
        _requeue_signal = None
        # Only where Ctrl-C would raise KeyboardInterrupt (the main thread, no handler of someone else's)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._interrupt)
            self._sigint_taken = True
        environment = trainer._accelerator_connector.cluster_environment
        # Only where a callback saves the stopped update and requeues (``PeriodicModelCheckpoint``): else
        # Lightning's handler, which at least saves a checkpoint of its own and requeues, stays.
        saver = any(getattr(callback, "saves_and_requeues_on_stop", False) for callback in trainer.callbacks)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and saver:
            lightnings = trainer._signal_connector._slurm_sigusr_handler_fn
            if self._take_over(environment.requeue_signal, lightnings):
                _requeue_signal = environment.requeue_signal
        if trainer.world_size > 1 and self._take_over(
            signal.SIGTERM, trainer._signal_connector._sigterm_notifier_fn
        ):
            self._launcher = trainer.strategy.launcher

    def _take_over(self, signum: int, lightnings: Callable) -> bool:
        """Whether Lightning's handler ``lightnings`` of ``signum`` was there, now replaced by ``_record``."""
        handler = signal.getsignal(signum)
        handlers = getattr(handler, "signal_handlers", None)  # Lightning's _HandlersCompose
        if handlers is None or lightnings not in handlers:
            return False
        handler.signal_handlers = [self._record if h == lightnings else h for h in handlers]
        return True

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None and self._launcher is not None:
            self._launcher.kill(signum)
        self.received = self.received or signum

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        self.received = self.received or signum
        if self._global_zero:
            print(
                "\nCtrl-C: stopping after the update in progress, which will be saved "
                "(Ctrl-C again: at once, unsaved)",
                file=sys.stderr,
                flush=True,
            )

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        global _stopped_by
        received = self.received or 0
        if trainer.world_size > 1:  # the signal any process received (SIGTERM over a requeue signal)
            agreed = torch.tensor(received, device=trainer.strategy.root_device)
            received = int(trainer.strategy.reduce(agreed, reduce_op="max"))
        if received:
            _stopped_by = received
            trainer._signal_connector.received_sigterm = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._sigint_taken:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._sigint_taken = False

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")
