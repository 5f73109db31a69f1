"""SFTModule, the paper's "ft" baseline: its loss, the targets the data modules give it, a fit through the CLI
with export, LoRA's precision, RL batches left as they were, and the paper config composed for it."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning import Trainer

from rewards import FormatReward, MathVerifier
from rgra_lightning.cli import main
from rgra_lightning.config_files import read
from rgra_lightning.data import ArithmeticDataModule, JsonFilesDataModule
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import LoraConfig, load_causal_lm
from rgra_lightning.sft import SFTModule
from tests.conftest import LOGPROB_RTOL, ROOT, TINY_POLICY, printed_config, scalars_by_step

# A literal GSM8K training row (openai/gsm8k, main, train[0]) and a second one with a thousands separator
NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
THOUSANDS = {"question": "What is 1000 + 234?", "answer": "1000 + 234 = <<1000+234=1234>>1234\n#### 1,234"}


def stub_trainer(module: object) -> SimpleNamespace:
    """What a data module's loaders read of their trainer: its module and process count."""
    return SimpleNamespace(lightning_module=module, world_size=1)


def by_hand(policy: torch.nn.Module, tokenizer, prompts: list[str], targets: list[str]) -> tuple[float, int]:
    """The mean cross-entropy over every target token (EOS appended) of the rows, each row run alone and
    unpadded, from the model's full float32 log-softmax: no padding or mask enters it."""
    total, count = 0.0, 0
    for prompt, target in zip(prompts, targets, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + target_ids])
        with torch.no_grad():
            logp = torch.log_softmax(policy(input_ids=ids).logits[0].float(), dim=-1)
        for position, token in enumerate(target_ids, start=len(prompt_ids)):
            total -= float(logp[position - 1, token])
            count += 1
    return total / count, count


def test_the_loss_is_the_mean_cross_entropy_over_the_target_tokens_of_the_batch():
    """Rows of different prompt and target lengths (so padding on both sides of the targets): the module's
    loss equals the hand-computed token mean over target tokens + EOS only, and differs from the mean of
    per-row means (the alternative it does not take)."""
    module = SFTModule(model_path=str(TINY_POLICY))
    prompts = ["6*(-2)=", "(3/4)+(-5/6)=", "1+1="]
    targets = ["The final answer is \\boxed{-12}.", "\\boxed{-1/12}", "2"]
    batch = {"prompt": prompts, "reference": ["-12", "-1/12", "2"], "target": targets}
    with torch.no_grad():
        loss, tokens, cut = module.target_loss(batch)
    expected, count = by_hand(module.policy, module.tokenizer, prompts, targets)
    assert int(tokens) == count == sum(len(t) + 1 for t in targets)  # one token per character, + EOS
    assert cut == 0
    assert math.isclose(float(loss), expected, rel_tol=LOGPROB_RTOL)
    row_means = [
        by_hand(module.policy, module.tokenizer, [p], [t])[0] for p, t in zip(prompts, targets, strict=True)
    ]
    assert not math.isclose(expected, sum(row_means) / len(row_means), rel_tol=100 * LOGPROB_RTOL)


def test_max_length_cuts_the_end_of_a_target_and_counts_it():
    module = SFTModule(model_path=str(TINY_POLICY), max_length=10)
    rollout, cut = module.encode(["6*(-2)=", "1+1="], ["\\boxed{-12}", "2"])
    assert cut == 1
    assert rollout.completion_mask.sum(dim=1).tolist() == [10 - 7, 2]  # "1+1=" + "2" + EOS fits
    with pytest.raises(ConfigError, match="model.max_length=10: a prompt of 13 tokens"):
        module.encode(["(3/4)+(-5/6)="], ["x"])


def gsm8k_files(tmp_path: Path) -> Path:
    rows = "".join(json.dumps(row) + "\n" for row in (NATALIA, THOUSANDS))
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text(rows)
    return tmp_path


def test_gsm8k_targets_drop_the_calculator_annotations_and_box_the_final_answer(tmp_path):
    """The target of a literal GSM8K row, as the loader serves it to SFTModule: the solution without
    ``<<...>>``, its ``#### N`` as the boxed sentence, after a plain prompt's separating space. The paper
    config's verifier parts accept it: MathVerifier finds the reference, FormatReward its box."""
    instruction = read(ROOT / "configs/paper/gsm8k-rgra.yaml")["data"]["init_args"]["instruction"]
    assert "\\boxed{}" in instruction  # what the target's format follows
    files = gsm8k_files(tmp_path)
    data = JsonFilesDataModule(
        train_file=str(files / "train.jsonl"),
        val_file=str(files / "val.jsonl"),
        reference_format="gsm8k_solution",
        prompt_template="Question: {question}\nAnswer:",
        instruction=instruction,
        batch_size=2,
    )
    data.setup("fit")
    data.trainer = stub_trainer(SFTModule.__new__(SFTModule))
    batch = next(iter(data.val_dataloader()))
    assert batch["target"][0] == (
        " Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The final answer is \\boxed{72}."
    )
    assert batch["target"][1] == " 1000 + 234 = 1234\nThe final answer is \\boxed{1234}."
    assert batch["reference"] == ["72", "1234"]
    assert all(s.correct for s in MathVerifier().score_batch(batch["target"], batch["reference"]))
    assert all(
        s.reward == 1.0 for s in FormatReward(pattern="\\\\boxed\\{").score_batch(batch["target"], ["", ""])
    )


def test_rl_batches_are_unchanged_and_sft_batches_add_the_target():
    """Without a module that trains on targets (none, or an RL module), batches hold what they held
    before; for SFTModule the same batches, in the same order, gain each problem's boxed answer."""
    data = ArithmeticDataModule(val_size=8, batch_size=4, val_batch_size=8)
    data.setup("fit")
    rl_module = SimpleNamespace(tokenizer=None)  # RLModule has no trains_on_targets
    batches = {}
    for name, trainer in [("none", None), ("rl", stub_trainer(rl_module)), ("sft", stub_trainer(SFTModule))]:
        data.trainer = trainer
        batches[name] = (next(iter(data.train_dataloader())), next(iter(data.val_dataloader())))
    for name in ("none", "rl"):
        train, val = batches[name]
        assert set(train) == {"prompt", "reference"} and set(val) == {"prompt", "reference", "index"}
        assert train == batches["none"][0] and val == batches["none"][1]
    train, val = batches["sft"]
    assert {k: v for k, v in train.items() if k != "target"} == batches["none"][0]
    assert {k: v for k, v in val.items() if k != "target"} == batches["none"][1]
    assert train["target"] == [f"The final answer is \\boxed{{{r}}}." for r in train["reference"]]


def test_lora_trains_float32_adapters_over_a_frozen_bf16_base():
    """Only the adapters train, in float32, over a bfloat16 base; two updates under bf16-mixed move the
    adapters (lora_B starts at zero) and leave every base weight bitwise as loaded."""
    module = SFTModule(model_path=str(TINY_POLICY), dtype="bfloat16", lora=LoraConfig(rank=4, alpha=8))
    named = dict(module.policy.named_parameters())
    trained = {name for name, p in named.items() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    assert {named[name].dtype for name in trained} == {torch.float32}
    assert {p.dtype for name, p in named.items() if name not in trained} == {torch.bfloat16}
    before = {name: p.detach().clone() for name, p in named.items()}
    trainer = Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, ArithmeticDataModule(val_size=8, batch_size=4))
    assert trainer.global_step == 2
    for name, p in module.policy.named_parameters():
        if name in trained and "lora_B" in name:
            assert not torch.equal(p, before[name]), name
        elif name not in trained:
            assert torch.equal(p, before[name]), name


def test_a_half_precision_policy_without_lora_is_refused_before_training():
    module = SFTModule(model_path=str(TINY_POLICY), dtype="bfloat16")
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="bfloat16"):
        module.check_fit_settings(trainer, None)


def test_a_short_fit_through_the_cli_lowers_the_loss_and_exports_the_policy(tmp_path):
    """30 updates on the embedded task's boxed answers: the logged training loss falls, and the exported
    directory loads as a plain model whose loss on the held-out problems' targets is below the initial
    policy's."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 30,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "sft"},
            },
            "callbacks": [
                {"class_path": "rgra_lightning.checkpointing.ExactResume"},
                {
                    "class_path": "rgra_lightning.callbacks.ExportHuggingFace",
                    "init_args": {"output_dir": str(tmp_path / "hf_model")},
                },
            ],
        },
        "model": {
            "class_path": "rgra_lightning.SFTModule",
            "init_args": {"model_path": str(TINY_POLICY), "learning_rate": 0.001},
        },
        "data": {
            "class_path": "rgra_lightning.ArithmeticDataModule",
            "init_args": {"batch_size": 8, "val_size": 16, "val_batch_size": 16},
        },
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    losses = [values[-1] for _, values in sorted(scalars_by_step(tmp_path / "runs", "train/loss").items())]
    assert len(losses) == 30
    assert sum(losses[-5:]) < sum(losses[:5])
    norms = scalars_by_step(tmp_path / "runs", "train/grad_norm")  # rgra rehearse's sign of a gradient
    assert len(norms) == 30 and all(values[-1] > 0 for values in norms.values())
    exported = load_causal_lm(str(tmp_path / "hf_model"))
    assert not any(type(m).__module__.startswith("peft") for m in exported.modules())
    data = ArithmeticDataModule(val_size=16, val_batch_size=16)
    data.setup("validate")
    data.trainer = stub_trainer(SFTModule)
    batch = next(iter(data.val_dataloader()))
    initial, trained = (
        SFTModule(model_path=str(TINY_POLICY)),
        SFTModule(model_path=str(tmp_path / "hf_model")),
    )
    with torch.no_grad():
        assert float(trained.target_loss(batch)[0]) < float(initial.target_loss(batch)[0])


def test_the_paper_ft_config_is_the_rl_config_with_the_sft_preset(monkeypatch):
    """configs/paper/gsm8k-sft.yaml over gsm8k-rgra.yaml: SFTModule with the paper's ft settings (lr 1e-4,
    batch 8, one epoch = 225 updates) and the RL config's LoRA, dtype, precision, data and callbacks; the
    RL-only options are dropped. Over a model preset it trains that model."""
    monkeypatch.chdir(ROOT)
    rl = printed_config("configs/paper/gsm8k-rgra.yaml")
    sft = printed_config("configs/paper/gsm8k-rgra.yaml", "configs/paper/gsm8k-sft.yaml")
    model, data, trainer = sft["model"]["init_args"], sft["data"]["init_args"], sft["trainer"]
    assert sft["model"]["class_path"] == "rgra_lightning.SFTModule"
    assert set(model) <= set(SFTModule.__init__.__code__.co_varnames)
    assert (model["learning_rate"], data["batch_size"], trainer["max_epochs"], trainer["max_steps"]) == (
        1e-4, 8, 1, -1,
    )  # fmt: skip
    assert data["train_size"] // data["batch_size"] == 225
    assert model["lora"] == rl["model"]["init_args"]["lora"] == {
        "rank": 128, "alpha": 256.0, "target_modules": "all-linear",
    }  # fmt: skip
    assert model["dtype"] == "bfloat16" and trainer["precision"] == "bf16-mixed"
    assert {k: v for k, v in data.items() if k != "batch_size"} == {
        k: v for k, v in rl["data"]["init_args"].items() if k != "batch_size"
    }
    assert sft["seed_everything"] == rl["seed_everything"]
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        c["class_path"] for c in rl["trainer"]["callbacks"]
    ]
    llama = printed_config(
        "configs/paper/gsm8k-rgra.yaml",
        "configs/paper/models/llama-3.2-1b.yaml",
        "configs/paper/gsm8k-sft.yaml",
    )
    assert llama["model"]["class_path"] == "rgra_lightning.SFTModule"
    assert llama["model"]["init_args"]["model_path"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert llama["data"]["init_args"]["chat_template_kwargs"] == {"date_string": "26 Jul 2024"}
