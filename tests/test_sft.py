"""SFTModule, the paper's "ft" baseline: its loss (plain and chat rows, as the chat template writes them; cut
rows), the targets the data modules give it, the schedule and clipping a fit runs, val/loss, a fit through
the CLI with export, LoRA's precision, RL batches left as they were, the paper config composed for it and
its documented commands, and the RL config testing its checkpoint (the ft row's accuracy)."""

import contextlib
import io
import json
import math
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from lightning import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from rewards import FormatReward, MathVerifier
from rgra_lightning.checkpointing import PROCESSES
from rgra_lightning.cli import main
from rgra_lightning.config_files import read
from rgra_lightning.data import ArithmeticDataModule, JsonFilesDataModule
from rgra_lightning.errors import CONFIG_REFUSED, RUN_REFUSED, ConfigError
from rgra_lightning.models import LoraConfig, load_causal_lm
from rgra_lightning.module import RLModule
from rgra_lightning.sft import SFTModule
from tests.conftest import LOGPROB_RTOL, ROOT, TINY_POLICY, printed_config, scalar_tags, scalars_by_step
from tests.tiny_models import llama3_style_tokenizer

# A literal GSM8K training row (openai/gsm8k, main, train[0]) and a second one with a thousands separator
NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
THOUSANDS = {"question": "What is 1000 + 234?", "answer": "1000 + 234 = <<1000+234=1234>>1234\n#### 1,234"}
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # the paper config's
SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"


def stub_trainer(module: object) -> SimpleNamespace:
    """What a data module's loaders read of their trainer: its module and process count."""
    return SimpleNamespace(lightning_module=module, world_size=1)


def cross_entropy_by_hand(policy: torch.nn.Module, rows: list[tuple[list[int], int]]) -> tuple[float, int]:
    """The mean cross-entropy over the last ``n`` tokens of every row ``(ids, n)``, each row run alone and
    unpadded, from the model's full float32 log-softmax: no padding or mask enters it; and the tokens'
    number."""
    total, count = 0.0, 0
    for ids, targets in rows:
        with torch.no_grad():
            logp = torch.log_softmax(policy(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        for position in range(len(ids) - targets, len(ids)):
            total -= float(logp[position - 1, ids[position]])
            count += 1
    return total / count, count


def by_hand(policy: torch.nn.Module, tokenizer, prompts: list[str], targets: list[str]) -> tuple[float, int]:
    """``cross_entropy_by_hand`` of plain prompts (with the tokenizer's special tokens) followed by their
    targets and the EOS."""
    rows = []
    for prompt, target in zip(prompts, targets, strict=True):
        target_ids = token_ids(tokenizer, target) + [tokenizer.eos_token_id]
        rows.append((tokenizer(prompt)["input_ids"] + target_ids, len(target_ids)))
    return cross_entropy_by_hand(policy, rows)


def token_ids(tokenizer, text: str) -> list[int]:
    """``text``'s token ids, without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def row_tokens(rollout) -> tuple[list[list[int]], list[list[int]]]:
    """Each row's tokens (prompt and target, no padding) and its target tokens, those that carry the loss."""
    rows = [
        ids[mask.bool()].tolist() for ids, mask in zip(rollout.input_ids, rollout.attention_mask, strict=True)
    ]
    completions = rollout.input_ids[:, rollout.prompt_length :]
    targets = [
        ids[mask.bool()].tolist() for ids, mask in zip(completions, rollout.completion_mask, strict=True)
    ]
    return rows, targets


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
    """The cut row keeps its whole prompt and the first tokens of its target, without an EOS (the target
    goes on: an EOS would teach the model to stop mid-solution); the row that fits keeps its EOS."""
    module = SFTModule(model_path=str(TINY_POLICY), max_length=10)
    rollout, cut = module.encode(["6*(-2)=", "1+1="], ["\\boxed{-12}", "2"])
    assert cut == 1
    assert rollout.completion_mask.sum(dim=1).tolist() == [10 - 7, 2]  # "1+1=" + "2" + EOS fits
    rows, targets = row_tokens(rollout)
    eos = module.tokenizer.eos_token_id
    assert targets == [token_ids(module.tokenizer, "\\bo"), [*token_ids(module.tokenizer, "2"), eos]]
    assert rows == [token_ids(module.tokenizer, "6*(-2)=\\bo"), [*token_ids(module.tokenizer, "1+1=2"), eos]]
    with pytest.raises(ConfigError, match="model.max_length=10: a prompt of 13 tokens"):
        module.encode(["(3/4)+(-5/6)="], ["x"])


def gsm8k_files(tmp_path: Path) -> Path:
    rows = "".join(json.dumps(row) + "\n" for row in (NATALIA, THOUSANDS))
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text(rows)
    return tmp_path


def gsm8k_data(tmp_path: Path, **options: Any) -> JsonFilesDataModule:
    """The two GSM8K rows (``gsm8k_files``) as train and validation split, with their worked solutions as
    targets, 2 per batch, and the prompt ``options``."""
    files = gsm8k_files(tmp_path)
    return JsonFilesDataModule(
        train_file=str(files / "train.jsonl"),
        val_file=str(files / "val.jsonl"),
        reference_format="gsm8k_solution",
        batch_size=2,
        **options,
    )


def test_gsm8k_targets_drop_the_calculator_annotations_and_box_the_final_answer(tmp_path):
    """The target of a literal GSM8K row, as the loader serves it to SFTModule: the solution without
    ``<<...>>``, its ``#### N`` as the boxed sentence, after a plain prompt's separating space. The paper
    config's verifier parts accept it: MathVerifier finds the reference, FormatReward its box."""
    instruction = read(ROOT / "configs/paper/gsm8k-rgra.yaml")["data"]["init_args"]["instruction"]
    assert "\\boxed{}" in instruction  # what the target's format follows
    data = gsm8k_data(tmp_path, prompt_template="Question: {question}\nAnswer:", instruction=instruction)
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


def chat_module(kind: str) -> tuple[SFTModule, dict[str, str]]:
    """The module whose tokenizer and chat template a chat-prompt test uses, and the template's variables:
    SmolLM2-135M-Instruct (its ChatML template, no BOS; skipped where the converted directory is absent), or
    the tiny policy with a Llama-3-style tokenizer (Llama 3's template writes the BOS that the tokenizer
    also adds by default), for ``encode`` only: the tiny model does not know its tokens."""
    if kind == "smollm2":
        if not (SMOLLM2 / "config.json").exists():
            pytest.skip(f"{SMOLLM2} is absent: convert it as configs/smollm2-135m/gsm8k-rgra.yaml says")
        return SFTModule(model_path=str(SMOLLM2)), {}
    module = SFTModule(model_path=str(TINY_POLICY), max_length=4096)
    module.tokenizer = llama3_style_tokenizer()
    return module, {"date_string": "26 Jul 2024"}


@pytest.mark.parametrize("kind", ["smollm2", "llama-3-style"])
def test_a_chat_row_is_the_conversation_its_chat_template_writes(kind, tmp_path):
    """Each GSM8K row as the paper config renders it (a chat prompt with the instruction, the solution as
    target) is the conversation with the target as the assistant's turn, as the chat template writes it, up
    to the end of that turn (the EOS): one BOS where the template writes one (Llama 3's tokenizer would add
    a second), the prompt tokenized as the template tokenizes it, and the loss on exactly the assistant's
    tokens. Expected values come from ``apply_chat_template``, not from the module's tokenization. On
    SmolLM2 the row's tokens are the template's tokenization of the whole conversation, and the module's
    loss is their cross-entropy computed by hand. (The Llama-3-style tokenizer, SmolLM2's pre-tokenizer,
    splits the header's ``\\n\\n`` in two before a word, as Llama 3's does not: its target is compared as
    text.)"""
    module, template_options = chat_module(kind)
    tokenizer = module.tokenizer
    data = gsm8k_data(
        tmp_path, prompt_format="chat", instruction=INSTRUCTION, chat_template_kwargs=template_options or None
    )
    data.trainer = stub_trainer(module)  # the chat template is the module's tokenizer's
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    rows, targets = row_tokens(module.encode(batch["prompt"], batch["target"])[0])
    assert len(rows[0]) != len(rows[1])  # padded on both sides of the targets
    expected = []
    for row, target_ids, problem, target in zip(
        rows, targets, (NATALIA, THOUSANDS), batch["target"], strict=True
    ):
        user = [{"role": "user", "content": f"{problem['question']}\n{INSTRUCTION}"}]
        conversation = [*user, {"role": "assistant", "content": target}]
        prompt = tokenizer.apply_chat_template(
            user, add_generation_prompt=True, tokenize=False, **template_options
        )
        text = tokenizer.apply_chat_template(conversation, tokenize=False, **template_options)
        end = text.index(tokenizer.eos_token, len(prompt)) + len(tokenizer.eos_token)  # the turn's end
        assert text.startswith(prompt)
        prompt_ids = tokenizer.apply_chat_template(
            user, add_generation_prompt=True, tokenize=True, return_dict=True, **template_options
        )["input_ids"]
        assert row == prompt_ids + target_ids
        assert tokenizer.decode(row) == text[:end]
        assert tokenizer.decode(target_ids) == text[len(prompt) : end]
        if kind == "smollm2":
            ids = tokenizer.apply_chat_template(
                conversation, tokenize=True, return_dict=True, **template_options
            )["input_ids"]
            assert row == ids[: len(row)] and tokenizer.decode(ids[len(row) :]) == text[end:]
            expected.append((row, len(target_ids)))
    if kind == "smollm2":
        with torch.no_grad():
            loss, tokens, _ = module.target_loss(batch)
        by_template, count = cross_entropy_by_hand(module.policy, expected)
        assert int(tokens) == count
        assert math.isclose(float(loss), by_template, rel_tol=LOGPROB_RTOL)


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


def trainable_grad_norm(module: SFTModule) -> float:
    """The 2-norm of the trainable parameters' gradients, all together."""
    grads = [p.grad for p in module.policy.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


class UpdateRecorder(Callback):
    """Per optimizer update: its learning rate and the gradient norm as AdamW steps with it (a step hook;
    Lightning clips before), and the norm before clipping (``on_before_optimizer_step``, which Lightning
    calls before ``configure_gradient_clipping``)."""

    def __init__(self) -> None:
        self.learning_rates: list[float] = []
        self.stepped_norms: list[float] = []
        self.unclipped_norms: list[float] = []

    def on_train_start(self, trainer: Trainer, pl_module: SFTModule) -> None:
        def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            self.learning_rates.append(optimizer.param_groups[0]["lr"])
            self.stepped_norms.append(trainable_grad_norm(pl_module))

        trainer.optimizers[0].register_step_post_hook(record)  # AdamW leaves the gradients as they were

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: SFTModule, optimizer: object) -> None:
        self.unclipped_norms.append(trainable_grad_norm(pl_module))


def quiet_trainer(**options: object) -> Trainer:
    """A CPU trainer without checkpoints, progress bar or model summary (and no logger unless given)."""
    defaults = {"logger": False, "enable_checkpointing": False}
    return Trainer(
        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, **(defaults | options)
    )


def test_a_fit_runs_the_ft_presets_schedule_and_clips_every_update():
    """One epoch of 3 updates with the ft preset's schedule (its lr, no warm-up, linear decay to 0 at the
    end of the epoch, trainer.max_epochs counting the updates as it counts its 225): the first update runs
    at the peak rate, the last at a third of it; every update's gradient reaches AdamW clipped to
    ``max_grad_norm`` (here far below the gradient's norm)."""
    preset = read(ROOT / "configs/paper/gsm8k-sft.yaml")
    schedule = {
        key: preset["model"]["init_args"][key] for key in ("learning_rate", "warmup_steps", "lr_schedule")
    }
    assert (schedule["warmup_steps"], schedule["lr_schedule"]) == (0, "linear")
    module = SFTModule(
        model_path=str(TINY_POLICY), max_grad_norm=1e-3, validate_before_training=False, **schedule
    )
    recorder = UpdateRecorder()
    trainer = quiet_trainer(
        max_epochs=preset["trainer"]["max_epochs"],
        max_steps=preset["trainer"]["max_steps"],
        limit_val_batches=0,
        callbacks=[recorder],
    )
    trainer.fit(module, ArithmeticDataModule(val_size=8, train_size=12, batch_size=4))
    peak = schedule["learning_rate"]
    assert recorder.learning_rates == pytest.approx([peak, peak * 2 / 3, peak / 3], rel=1e-6)
    assert len(recorder.unclipped_norms) == 3 and min(recorder.unclipped_norms) > 100 * 1e-3
    assert recorder.stepped_norms == pytest.approx([1e-3] * 3, rel=1e-4)


def test_val_loss_is_the_token_mean_over_all_targets_also_of_the_initial_policy_at_step_0(tmp_path):
    """Validation batches of 2, 2 and 1 problems whose targets differ in length: ``val/loss`` is the mean
    cross-entropy over all their target tokens (each batch's mean weighted by its tokens), not the mean of
    the batch means; a fit logs it for the initial policy at step 0 (``validate_before_training``), before
    the first update, even where its validations during training are off."""
    module = SFTModule(model_path=str(TINY_POLICY))
    data = ArithmeticDataModule(val_size=5, batch_size=4, val_batch_size=2)
    data.trainer = stub_trainer(module)
    data.setup("validate")
    batches = list(data.val_dataloader())
    assert [len(batch["prompt"]) for batch in batches] == [2, 2, 1]
    prompts, targets = [sum((b[key] for b in batches), []) for key in ("prompt", "target")]
    expected, _ = by_hand(module.policy, module.tokenizer, prompts, targets)
    batch_means = [by_hand(module.policy, module.tokenizer, b["prompt"], b["target"])[0] for b in batches]
    assert not math.isclose(expected, sum(batch_means) / 3, rel_tol=100 * LOGPROB_RTOL)
    validated = quiet_trainer().validate(module, ArithmeticDataModule(val_size=5, val_batch_size=2))
    assert validated[0]["val/loss"] == pytest.approx(expected, rel=LOGPROB_RTOL)
    logger = TensorBoardLogger(str(tmp_path), name="sft")
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, logger=logger)
    trainer.fit(module, ArithmeticDataModule(val_size=5, batch_size=4, val_batch_size=2))
    initial = scalars_by_step(tmp_path / "sft", "val/loss")
    assert list(initial) == [0] and initial[0] == [pytest.approx(expected, rel=LOGPROB_RTOL)]


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


def test_an_sft_fit_resumed_in_another_precision_or_learning_rate_says_so(tmp_path):
    """As an RL fit: the checkpoint records the precision, and the resume names both changes in a warning
    (the CLI's check before the fit is silent; the module's as Lightning loads the checkpoint speaks)."""
    rl, sft = rl_and_sft_configs(tmp_path, None)
    main(["fit", "--config", str(rl), "--config", str(sft), "--trainer.max_steps=2"])
    last = tmp_path / "runs" / "sft" / "checkpoints" / "last.ckpt"
    changed = ["--trainer.precision=bf16-mixed", "--model.init_args.learning_rate=0.005"]
    configs = ["--config", str(rl), "--config", str(sft)]
    resume = ["fit", *configs, "--trainer.max_steps=3", "--ckpt_path", "last"]
    with pytest.warns(UserWarning) as caught:
        assert main([*resume, *changed]).trainer.global_step == 3
    assert [str(warning.message) for warning in caught if "resuming" in str(warning.message)] == [
        f"resuming {last} with model.learning_rate: 0.01 in the checkpoint, 0.005 now; trainer.precision: "
        "'32-true' in the checkpoint, 'bf16-mixed' now: the new values apply from here on"
    ]


def rl_and_sft_configs(tmp_path: Path, lora: dict | None) -> tuple[Path, Path]:
    """A small RL config on the tiny policy (run ``rl``; KL to a frozen reference: a full copy without
    LoRA) and an SFT preset over it like configs/paper/gsm8k-sft.yaml (run ``sft``): its checkpoints go to
    ``runs/<name>/checkpoints``, as the paper config's."""
    rl = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 3,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "rl"},
            },
            "callbacks": [
                {
                    "class_path": "rgra_lightning.checkpointing.PeriodicModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 2},
                },
                {"class_path": "rgra_lightning.checkpointing.ExactResume"},
            ],
        },
        "model": {
            "class_path": "rgra_lightning.RLModule",
            "init_args": {
                "model_path": str(TINY_POLICY),
                "lora": lora,
                "validate_before_training": False,
                "sampling": {"num_generations": 4, "max_new_tokens": 28},
                "loss": {"beta": 0.04},
            },
        },
        "data": {
            "class_path": "rgra_lightning.ArithmeticDataModule",
            "init_args": {"batch_size": 4, "val_size": 8, "val_batch_size": 8},
        },
    }
    sft = {
        "trainer": {"logger": {"init_args": {"name": "sft"}}},
        "model": {"class_path": "rgra_lightning.SFTModule", "init_args": {"learning_rate": 0.01}},
    }
    paths = tmp_path / "rl.yaml", tmp_path / "sft.yaml"
    for path, config in zip(paths, (rl, sft), strict=True):
        path.write_text(yaml.safe_dump(config))
    return paths


def reported_error(args: list[str], capsys, status: int) -> str:
    """The one ``error: ...`` line of a CLI run that must fail with exit ``status``."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("lora", [{"rank": 4, "alpha": 8}, None], ids=["lora", "full"])
def test_the_rl_config_tests_the_sft_checkpoint_as_it_tests_its_own_and_resumes_no_fit_from_it(
    lora, tmp_path, capsys
):
    """The ft row's accuracy: ``rgra test`` with the RL config alone, named as the SFT run, takes that run's
    ``last.ckpt`` (``--ckpt_path last``) and evaluates exactly the SFT-trained policy (every key and value
    of the policy's state as trained: with LoRA the base weights reloaded and the trained adapters,
    unmerged), logging into the SFT run's directory, none into the RL run's. The SFT run's own validate
    from that checkpoint (SFTModule puts the base weights back) has the trained weights too. An RL fit
    resumed from the SFT checkpoint is refused in one line naming both kinds; with LoRA, a test whose
    alpha differs from the checkpoint's (same weights, another scale) is refused naming it."""
    rl, sft = rl_and_sft_configs(tmp_path, lora)
    fitted = main(["fit", "--config", str(rl), "--config", str(sft)])
    trained = {key: value.detach().clone() for key, value in fitted.model.policy.state_dict().items()}
    initial = SFTModule(model_path=str(TINY_POLICY), lora=LoraConfig(**lora) if lora else None)
    moved = [
        key for key, value in initial.policy.state_dict().items() if not torch.equal(value, trained[key])
    ]
    assert moved and all("lora_" in key for key in moved) == (lora is not None)
    validated = main(["validate", "--config", str(rl), "--config", str(sft), "--ckpt_path", "last"])
    named = ["--config", str(rl), "--trainer.logger.init_args.name=sft", "--ckpt_path", "last"]
    tested = main(["test", *named])  # the RL config alone, named as the SFT run
    assert type(validated.model) is SFTModule and type(tested.model) is RLModule
    for evaluated in (validated.model.policy.state_dict(), tested.model.policy.state_dict()):
        assert evaluated.keys() == trained.keys()
        assert all(torch.equal(evaluated[key], trained[key]) for key in trained)
    assert "val/loss" in scalar_tags(tmp_path / "runs" / "sft")
    assert list(scalars_by_step(tmp_path / "runs" / "sft", "test/accuracy")) == [3]  # the checkpoint's update
    assert not (tmp_path / "runs" / "rl").exists()
    checkpoint = tmp_path / "runs" / "sft" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)[PROCESSES] == 1  # its prompts per update: x 1
    assert reported_error(["fit", *named], capsys, RUN_REFUSED).startswith(
        f"error: checkpoint {checkpoint} holds a supervised (SFT) policy (SFTModule, "
        "configs/paper/gsm8k-sft.yaml); this config trains a policy (RLModule, configs/rgra.yaml): resume"
    )
    if lora:
        assert reported_error(
            ["test", *named, "--model.init_args.lora.alpha=16"], capsys, CONFIG_REFUSED
        ) == (
            f"error: checkpoint {checkpoint} was trained with other settings than this run's "
            "(model.lora.alpha: 8.0 in the checkpoint, 16.0 now): give the config it was trained with (saved "
            "as config.yaml in its log directory)"
        )


def documented_commands(path: Path) -> list[list[str]]:
    """The ``rgra`` commands the leading comment of the config at ``path`` shows (a line ending in ``\\``
    continued on the next), each as its arguments after ``rgra``."""
    commands, pending = [], ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if pending or text.startswith("rgra "):
            pending += " " + text.removesuffix("\\")
            if not text.endswith("\\"):
                commands.append(shlex.split(pending)[1:])
                pending = ""
    return commands


def printed(arguments: list[str]) -> dict:
    """What ``rgra <arguments> --print_config`` prints, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(out.getvalue())


def test_the_ft_presets_commands_give_each_models_run_its_name_and_test_it_from_its_checkpoints(monkeypatch):
    """The commands configs/paper/gsm8k-sft.yaml shows: each model's SFT fit has a run name of its own (the
    preset's, composed last, is every model's, and a second model's fit would be refused beside the first
    one's checkpoints), no RL run's; each test runs the RL config (RLModule) under the name of its model's
    SFT fit, so that ``--ckpt_path last`` is that fit's ``last.ckpt`` and its results go to that run."""
    monkeypatch.chdir(ROOT)
    fits, tests = {}, {}
    for command in documented_commands(ROOT / "configs/paper/gsm8k-sft.yaml"):
        config = printed(command)
        model, name = config["model"], config["trainer"]["logger"]["init_args"]["name"]
        if command[0] == "fit":
            assert model["class_path"] == "rgra_lightning.SFTModule" and "--ckpt_path" not in command
            fits[model["init_args"]["model_path"]] = name
        else:
            assert command[0] == "test" and command[-2:] == ["--ckpt_path", "last"]
            assert model["class_path"] == "rgra_lightning.RLModule"
            assert config["data"]["init_args"]["limit"] is None  # all 1,319 test problems, as the RL rows
            tests[model["init_args"]["model_path"]] = name
    assert len(fits) == 2 and len(set(fits.values())) == 2 and tests == fits
    rl_runs = [
        printed_config(*configs)["trainer"]["logger"]["init_args"]["name"]
        for configs in (
            ["configs/paper/gsm8k-rgra.yaml"],
            ["configs/paper/gsm8k-rgra.yaml", "configs/paper/models/llama-3.2-1b.yaml"],
        )
    ]
    assert not set(fits.values()) & set(rl_runs)


def test_a_row_of_exactly_max_length_tokens_keeps_its_eos_and_is_not_counted_as_cut():
    """``1+1=`` (4 tokens), ``2`` and the EOS fill ``max_length=6`` exactly: nothing is cut."""
    module = SFTModule(model_path=str(TINY_POLICY), max_length=6)
    rollout, cut = module.encode(["1+1="], ["2"])
    assert cut == 0
    eos = module.tokenizer.eos_token_id
    assert row_tokens(rollout) == (
        [[*token_ids(module.tokenizer, "1+1=2"), eos]],
        [[*token_ids(module.tokenizer, "2"), eos]],
    )


def test_a_prompt_of_max_length_tokens_leaves_no_room_for_a_target():
    """A row must keep at least one target token: a 7-token prompt under ``max_length=7`` is refused (an
    empty target would carry no loss, and a batch of such rows a 0/0 loss)."""
    module = SFTModule(model_path=str(TINY_POLICY), max_length=7)
    with pytest.raises(ConfigError) as error:
        module.encode(["6*(-2)="], ["\\boxed{-12}"])
    assert str(error.value) == (
        "model.max_length=7: a prompt of 7 tokens leaves no room for its target; raise model.max_length"
    )


def test_without_max_length_rows_are_cut_to_the_models_context_window():
    """The tiny policy's context is 64 positions (``max_position_embeddings``): ``1+1=`` and a 70-token
    target keep 60 target tokens, without the EOS, and count as cut."""
    module = SFTModule(model_path=str(TINY_POLICY))
    assert module.policy.config.max_position_embeddings == 64
    rollout, cut = module.encode(["1+1="], ["1" * 70])
    assert cut == 1
    assert row_tokens(rollout)[1] == [token_ids(module.tokenizer, "1" * 60)]
    assert rollout.input_ids.shape[1] == 64
