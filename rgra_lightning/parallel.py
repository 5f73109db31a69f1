"""FSDP2 (``torch.distributed.fsdp.fully_shard``) helpers for the policy and the frozen reference and
reward models.

Used by ``RLModule.configure_model`` when the trainer's strategy is Lightning's ``ModelParallelStrategy``.
Each decoder layer is its own FSDP unit (gathered for its forward, resharded after it); the root unit
holds the embeddings, final norm and LM head and stays gathered between forward and backward.
Sampling runs one small forward per new token, so ``gathered_for_generation`` keeps every unit gathered for
the whole decoding loop: one all-gather per layer per rollout instead of one per layer per token, and
no collective inside the decoding loop, so ranks may stop decoding at different steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from rgra_lightning.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ShardingConfig:
    """FSDP2 options; they apply only under ``ModelParallelStrategy`` (ignored by DDP and one device).

    Args:
        param_dtype: dtype the gathered parameters are cast to for compute (``bfloat16`` on GPUs);
            ``None`` computes in the stored parameter dtype. Sharded master weights keep their dtype.
        reduce_dtype: dtype of the gradient reduce-scatter; ``None`` follows ``param_dtype``.
            ``float32`` with ``param_dtype: bfloat16`` is the usual mixed-precision recipe.
        activation_checkpointing: recompute each decoder layer's activations in the backward pass of the
            policy (less memory, about one more forward of compute); the reference is never trained.
    """

    param_dtype: str | None = None
    reduce_dtype: str | None = None
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ConfigError(f"sharding.{name} must be one of {sorted(DTYPES)} or null, got {value!r}")

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


def shard_model(model: nn.Module, mesh: DeviceMesh, config: ShardingConfig, trainable: bool) -> None:
    """Apply ``fully_shard`` in place: one unit per decoder layer, then the root (``mesh``: 1-D data mesh)."""
    if trainable and config.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=config.mixed_precision, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=config.mixed_precision, reshard_after_forward=False)


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
