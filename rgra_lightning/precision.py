"""The precision policy and the memory advice: which dtype each tensor is stored in, and what a user can
change, in the current setting, when a training step runs out of memory.

Trainable weights and their AdamW state are float32; compute runs in bfloat16 where asked:

- one device or DDP: ``trainer.precision=bf16-mixed`` (autocast: matmuls in bf16, weights untouched);
- FSDP2: ``model.sharding.param_dtype=bfloat16`` (gathered weights cast to bf16; shards stay float32);
- LoRA: the frozen base may be stored in bf16 (``model.dtype=bfloat16``); ``peft`` keeps the adapters in
  float32 over it (``models.add_lora``).

A trainable weight stored in bf16 does not learn at RL learning rates. bf16 keeps 8 significant bits, so
a weight w changes only when its update exceeds half its spacing, at least ``|w| * eps / 4`` (eps = 2^-7):
an AdamW step of size lr (its first steps are ~lr per entry) rounds away on every entry with
``|w| > 4 lr / eps`` = 512 lr, i.e. 5.1e-3 at lr 1e-5, which is nearly all of them. Measured on the
paper's Qwen2.5 config with a tiny model on CPU (tests/test_precision.py): 1.5 % of the lora_A entries
moved in an update at lr 1e-5 under ``bf16-true``, 99.96 % with float32 adapters under ``bf16-mixed``.

Lightning's ``bf16-true`` / ``16-true`` plugins cast the whole module (``module.to(dtype)``): the LoRA
adapters and every floating buffer with it, RoPE's ``inv_freq`` included, which transformers otherwise
keeps in float32 whatever ``dtype`` the model is loaded in. ``bf16-mixed`` converts nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning import LightningModule
from torch import Tensor

from rgra_lightning.distributed import is_sharded
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import is_activation_checkpointing

# Lightning's plugins that cast the whole module, trained weights included, to this dtype
HALF_PRECISIONS = {"bf16-true": torch.bfloat16, "16-true": torch.float16}


def rounded_away_above(learning_rate: float, dtype: torch.dtype) -> float:
    """The magnitude above which an update of ``learning_rate`` rounds away in ``dtype``: ``4 lr / eps``."""
    return 4 * learning_rate / torch.finfo(dtype).eps


POLICY_DTYPE_FIX = (
    "use model.dtype=float32 with trainer.precision=bf16-mixed (or model.sharding.param_dtype=bfloat16 under "
    "FSDP2) for bf16 compute, or model.lora, whose float32 adapters train over a bfloat16 base"
)


def check_trainable_precision(
    parameters: Iterable[Tensor], precision: str, dtype: str, learning_rate: float
) -> None:
    """Raise a ``ConfigError`` naming the setting and the fix when the policy update cannot train as
    configured: under ``16-mixed``, whose loss scaling the update's gradient clipping does not undo, or
    with a trainable parameter stored in half precision (``check_trainable_dtype``).

    Args:
        parameters: the optimizer's parameters, as stored after Lightning's precision plugin converted
            the module.
        precision: ``trainer.precision`` (``32-true``, ``bf16-mixed``, ``bf16-true``, ...).
        dtype: the ``model.dtype`` the policy was loaded in.
        learning_rate: the peak learning rate (the message says which weights it cannot move).
    """
    if precision == "16-mixed":
        # Lightning's loss scaler unscales in optimizer.step(), after ``update`` has clipped the gradients
        # and checked them for NaN/inf: clipping would see gradients 2^16 times too large.
        raise ConfigError(
            "trainer.precision=16-mixed scales the loss, and the update would clip and log the scaled "
            "gradients: use trainer.precision=bf16-mixed (or 32-true where bfloat16 is not supported)"
        )
    check_trainable_dtype(parameters, precision, dtype, learning_rate, POLICY_DTYPE_FIX)


def check_trainable_dtype(
    parameters: Iterable[Tensor], precision: str, dtype: str, learning_rate: float, dtype_fix: str
) -> None:
    """Raise a ``ConfigError`` naming the setting and the fix when a trainable parameter is stored in
    bfloat16 or float16, where AdamW updates of ``learning_rate`` round away (see the module docstring).

    Args:
        parameters, precision, dtype, learning_rate: as for ``check_trainable_precision``.
        dtype_fix: what to do instead when ``model.dtype`` is the cause (``use ...``).
    """
    dtypes = [p.dtype for p in parameters]
    # Before the plugin has cast the module (the CLI's check, before Lightning starts) as after it
    half = HALF_PRECISIONS.get(precision) if dtypes else None
    half = half or next((dtype for dtype in dtypes if dtype in (torch.bfloat16, torch.float16)), None)
    if half is None:
        return
    name = str(half).removeprefix("torch.")
    frozen = (
        f"an AdamW step of model.learning_rate={learning_rate:g} rounds away on every weight larger than "
        f"{rounded_away_above(learning_rate, half):.1e}"
    )
    if precision in HALF_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} casts the trained weights and their AdamW state to {name}, where "
            f"{frozen}: use trainer.precision=bf16-mixed (float32 weights, bfloat16 compute)"
        )
    raise ConfigError(
        f"model.dtype={dtype} stores the trained weights in {name}, where {frozen}: {dtype_fix}"
    )


def out_of_memory_advice(
    *,
    lora: bool,
    dtype: str,
    precision: str,
    fsdp2: bool,
    ddp_ranks: int,
    gradient_checkpointing: bool,
    reference_copy: bool,
    param_dtype: str | None,
) -> str:
    """The message of an out-of-memory error in a training step: the options that reduce memory *and*
    work in this setting, leaving out those already in use.

    Args:
        lora: LoRA adapters train (``model.lora``); else full fine-tuning.
        dtype: ``model.dtype``.
        precision: ``trainer.precision``.
        fsdp2: the policy is sharded (``ModelParallelStrategy``).
        ddp_ranks: processes under DDP (1: one device, or FSDP2).
        gradient_checkpointing: ``model.gradient_checkpointing`` is on.
        reference_copy: a separate frozen reference model is loaded (full fine-tuning with a KL term).
        param_dtype: ``model.sharding.param_dtype`` (FSDP2's compute dtype).
    """
    options = [
        "a smaller model.micro_batch_size (completions per forward/backward pass; the update stays the same)",
        "a smaller data.batch_size (prompts per step)",
        "a smaller model.sampling.max_new_tokens or model.sampling.num_generations",
    ]
    if not gradient_checkpointing:
        options.append("model.gradient_checkpointing=true (recompute each decoder layer in backward)")
    if fsdp2 and param_dtype is None:
        options.append("model.sharding.param_dtype=bfloat16 (bfloat16 compute on float32 shards)")
    if not fsdp2 and precision in ("32-true", "32", "64-true"):
        options.append("trainer.precision=bf16-mixed (bfloat16 activations, float32 weights)")
    if lora and dtype == "float32":
        options.append("model.dtype=bfloat16 (the frozen base in bfloat16; the adapters stay float32)")
    if reference_copy:
        options.append("model.loss.beta=0 (no reference model)")
    if not lora and not fsdp2:
        options.append("model.lora (adapters only: no reference copy, no AdamW state for the base)")
    if not lora and not fsdp2 and ddp_ranks > 1:
        options.append(
            "trainer.strategy=ModelParallelStrategy (FSDP2 shards weights and optimizer state over the ranks)"
        )
    return f"out of memory during a training step. Options that reduce memory here: {'; '.join(options)}."


def module_out_of_memory_advice(module: LightningModule) -> str:
    """``out_of_memory_advice`` for an ``RLModule`` attached to its trainer."""
    hp, trainer = module.hparams, module.trainer
    fsdp2 = is_sharded(module.policy)
    return out_of_memory_advice(
        lora=hp.lora is not None,
        dtype=hp.dtype,
        precision=str(trainer.precision),
        fsdp2=fsdp2,
        ddp_ranks=1 if fsdp2 else trainer.world_size,
        gradient_checkpointing=is_activation_checkpointing(module.policy),
        reference_copy=module.reference is not None,
        param_dtype=module.sharding.param_dtype,
    )
