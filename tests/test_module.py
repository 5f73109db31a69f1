"""RLModule end to end."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rgra_lightning.cli import main
from rgra_lightning.errors import RUN_REFUSED
from rgra_lightning.models import is_activation_checkpointing, load_causal_lm
from rgra_lightning.module import RLModule
from rgra_lightning.rollout import HFEngine
from tests.conftest import FAST, TINY_POLICY, scalar_tags, scalars_by_step


def test_out_of_memory_suggests_what_to_reduce(small_config, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(HFEngine, "generate", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError) as error:
        main(["fit", "--config", str(small_config("rgra", **FAST))])
    message = str(error.value)
    for knob in ("model.micro_batch_size", "data.batch_size", "model.sampling.max_new_tokens", "bfloat16"):
        assert knob in message
    assert "Tried to allocate" in str(error.value.__cause__)


def text_tags(run_dir: Path) -> set[str]:
    tags: set[str] = set()
    for path in run_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags.update(accumulator.Tags()["tensors"])
    return tags


def logged_steps(run_dir: Path, tag: str) -> list[int]:
    """The x values (TensorBoard steps) at which ``tag``, a scalar or text, was written."""
    steps: list[int] = []
    for path in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags = accumulator.Tags()
        if tag in tags["scalars"]:
            steps += [event.step for event in accumulator.Scalars(tag)]
        elif tag in tags["tensors"]:
            steps += [event.step for event in accumulator.Tensors(tag)]
    return steps


def test_training_metrics_reach_the_loggers_at_lightnings_cadence(small_config, tmp_path):
    """Only the progress-bar metrics and ``step`` pay for ``self.log``; the rest are written straight to the
    loggers on the steps Lightning writes (``log_every_n_steps``), and every step's are on the module."""
    config = small_config("rgra", **FAST, **{"trainer.log_every_n_steps": 2})
    cli = main(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 4
    runs = tmp_path / "runs"
    for tag in ("train/reward", "train/accuracy", "train/kl", "train/loss", "time/step_s"):
        assert sorted(scalars_by_step(runs, tag)) == [2, 4], tag
    latest = cli.model.latest_metrics  # the last step's, as floats
    for tag in ("train/reward", "train/kl", "train/loss"):  # the same float32 values: equal
        assert scalars_by_step(runs, tag)[4] == [latest[tag]], tag
    assert {"train/reward", "train/accuracy", "step"} <= set(cli.trainer.callback_metrics)
    assert "train/kl" not in cli.trainer.callback_metrics  # not through Lightning's result collection


def test_fit_trains_logs_checkpoints_and_resumes(small_config, tmp_path):
    config = small_config("rgra")
    cli = main(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 4

    initial = load_causal_lm(str(TINY_POLICY)).state_dict()
    trained = cli.model.policy.state_dict()
    assert any(not torch.equal(initial[name], trained[name]) for name in initial), "no parameter changed"
    reference = cli.model.reference.state_dict()
    assert all(torch.equal(initial[name], reference[name]) for name in initial), "reference model moved"

    scalars = scalar_tags(tmp_path / "runs")
    for tag in (
        "train/reward",
        "train/accuracy",
        "train/loss",
        "train/kl",
        "train/entropy",
        "train/grad_norm",
        "train/completion_length_mean",
        "train/zero_std_group_fraction",
        "time/generation_s",
        "train/completion_tokens_per_s",
        "train/learning_rate",
        "val/accuracy",
    ):
        assert tag in scalars, f"{tag} was not logged; logged: {sorted(scalars)}"
    assert len(scalars["val/accuracy"]) >= 3  # step 0 plus two validations
    # the rate each update used: lr 1e-4 warmed up over 5 updates, (step + 1) / 5 of it
    assert scalars["train/learning_rate"] == pytest.approx([2e-5, 4e-5, 6e-5, 8e-5])
    assert any(tag.startswith("samples/completions") for tag in text_tags(tmp_path / "runs"))
    assert (tmp_path / "hf_model" / "config.json").is_file()

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, weights_only=False)
    assert not any(key.startswith("reference.") for key in checkpoint["state_dict"]), "reference was saved"

    resumed = main(["fit", "--config", str(config), "--trainer.max_steps=6", "--ckpt_path", str(last)])
    assert resumed.trainer.global_step == 6
    resumed_start = checkpoint["state_dict"]["policy.model.embed_tokens.weight"]
    assert not torch.equal(resumed.model.policy.model.embed_tokens.weight.detach(), resumed_start)

    # another run's settings (here another beta) are refused by name rather than resumed silently
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", str(config), "--model.loss.beta=0.0", "--ckpt_path", str(last)])
    assert refused.value.code == RUN_REFUSED  # the run's own checkpoint, not its config
    assert "model.loss.beta: 0.04 in the checkpoint, 0.0 now" in str(refused.value.__cause__)

    validated = main(["validate", "--config", str(config), "--ckpt_path", str(last)])
    assert validated.model.reference is None  # evaluation never loads the reference copy
    assert 0.0 <= validated.trainer.callback_metrics["val/accuracy"].item() <= 1.0
    # logged at the checkpoint's update (the resumed run's 6), not at validate's own step 0
    assert validated.trainer.callback_metrics["step"].item() == 6
    # the command line's evaluation settings apply to a checkpoint trained without them
    sampled = ["--model.evaluation.num_samples=2", "--model.evaluation.k=[1, 2]"]
    tested = main(["test", "--config", str(config), "--ckpt_path", str(last), *sampled])
    assert {"test/pass@2", "test/maj@2"} <= set(tested.trainer.callback_metrics)
    assert tested.trainer.callback_metrics["step"].item() == 6
    predicted = main(["predict", "--config", str(config), "--ckpt_path", str(last)])
    assert predicted.trainer.predict_loop.predictions  # one record per validation prompt
    written = Path(predicted.trainer.log_dir) / "predict_samples.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(8))  # the 8 validation prompts, greedy, in order


def test_grpo_with_two_iterations_stores_old_logprobs_and_logs_clipping(small_config, tmp_path):
    config = small_config(
        "grpo", **{"model.init_args.num_iterations": 2, "model.init_args.num_minibatches": 2}
    )
    cli = main(["fit", "--config", str(config)])
    assert cli.model.updater.stores_old_logprobs
    assert cli.trainer.global_step == 4  # one rollout batch -> 2 iterations x 2 mini-batches
    scalars = scalar_tags(tmp_path / "runs")
    assert "train/clip_fraction" in scalars and "train/ratio_mean" in scalars
    # One x axis, optimizer updates, for the scalars, the samples and the initial validation (step 0)
    assert logged_steps(tmp_path / "runs", "train/loss") == [4]
    assert logged_steps(tmp_path / "runs", "samples/completions/text_summary") == [4]
    assert logged_steps(tmp_path / "runs", "val/accuracy") == [0]


def test_beta_zero_loads_no_reference_model(small_config):
    cli = main(["--config", str(small_config("rgra")), "--model.loss.beta=0.0"], run=False)
    cli.model.setup("fit")
    assert cli.model.reference is None
    assert not cli.model.updater.stores_old_logprobs  # reinforce never needs pi_old


def test_single_update_grpo_does_not_store_old_logprobs(small_config):
    cli = main(["--config", str(small_config("grpo"))], run=False)
    cli.model.setup("fit")
    assert cli.model.reference is not None and not cli.model.reference.training
    assert all(not p.requires_grad for p in cli.model.reference.parameters())
    assert not cli.model.updater.stores_old_logprobs  # mu = 1, one mini-batch: pi_old == pi_theta


def test_print_config_shows_every_loss_option(small_config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(small_config("rgra")), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for option in (
        "policy_term: reinforce",
        "kl_estimator: k3",
        "baseline: group_mean",
        "class_path: rewards.",
    ):
        assert option in printed


def test_unknown_loss_name_is_rejected_with_the_allowed_values(small_config, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(small_config("rgra")), "--model.loss.policy_term=ppo"], run=False)
    error = capsys.readouterr().err
    assert "policy_term" in error and "clipped_ratio" in error


class RecordingEngine(HFEngine):
    """The default engine, counting the rollouts it makes and the weight updates it is told of."""

    def __init__(self, label: str = "recording") -> None:
        self.label = label
        self.calls: list[str] = []

    def generate(self, prompts, sampling, greedy=False):
        self.calls.append("greedy" if greedy else "sample")
        return super().generate(prompts, sampling, greedy)

    def update_weights(self) -> None:
        self.calls.append("update_weights")


def test_the_rollout_engine_is_chosen_in_yaml_and_told_of_every_weight_update(small_config):
    engine = {"class_path": "tests.test_module.RecordingEngine", "init_args": {"label": "x"}}
    fast = {"trainer.limit_val_batches": 0, "model.init_args.validate_before_training": False}
    config = small_config("rgra", **fast, **{"model.init_args.rollout": engine})
    cli = main(["fit", "--config", str(config), "--trainer.max_steps=2"])
    engine = cli.model.rollout
    assert isinstance(engine, RecordingEngine) and engine.label == "x"
    assert engine.policy is cli.model.policy and engine.tokenizer is cli.model.tokenizer
    assert engine.calls == ["sample", "update_weights", "sample", "update_weights"]


def test_binding_an_engine_leaves_the_given_one_untouched(small_config):
    """A default engine instance is shared by every module built with the default: each module binds its
    own copy to its own policy."""
    first = main(["--config", str(small_config("rgra"))], run=False).model
    second = main(["--config", str(small_config("rgra"))], run=False).model
    assert first.rollout is not second.rollout and first.rollout.policy is first.policy
    assert second.rollout.policy is second.policy


LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}


def out_of_memory_message(small_config, monkeypatch, *args: str) -> str:
    def out_of_memory(*_, **__):
        raise torch.OutOfMemoryError("CPU out of memory")

    monkeypatch.setattr(HFEngine, "generate", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError) as error:
        main(["fit", "--config", str(small_config("rgra", **FAST)), *args])
    return str(error.value)


def test_out_of_memory_advice_names_only_options_that_work_in_the_setting(small_config, monkeypatch):
    # one device, full fine-tuning, float32: a reference copy; bf16 weights would be refused
    message = out_of_memory_message(small_config, monkeypatch)
    for option in (
        "model.gradient_checkpointing=true",
        "trainer.precision=bf16-mixed",
        "model.lora",
        "beta=0",
    ):
        assert option in message
    assert "model.dtype" not in message and "model.sharding" not in message
    assert "ModelParallelStrategy" not in message  # one device: nothing to shard over

    # LoRA with checkpointing under bf16-mixed: no reference copy, and what is on is not advised again
    lora = [
        "--model.lora",
        json.dumps(LORA),
        "--model.gradient_checkpointing=true",
        "--trainer.precision=bf16-mixed",
    ]
    message = out_of_memory_message(small_config, monkeypatch, *lora)
    assert "model.dtype=bfloat16 (the frozen base in bfloat16; the adapters stay float32)" in message
    for option in ("gradient_checkpointing", "trainer.precision", "model.lora", "beta=0", "model.sharding"):
        assert option not in message
    assert "model.micro_batch_size" in message


def test_gradient_checkpointing_trains_lora_on_one_device_and_is_not_a_setting_of_the_run(small_config):
    config = small_config("rgra", **FAST, **{"model.init_args.lora": LORA, "trainer.max_steps": 2})
    cli = main(["fit", "--config", str(config), "--model.gradient_checkpointing=true"])
    policy = cli.model.policy
    assert is_activation_checkpointing(policy)
    assert all(p.abs().sum() > 0 for name, p in policy.named_parameters() if "lora_B" in name)
    # A memory option: the checkpoint does not record it, so a run resumes with it switched off
    assert "gradient_checkpointing" not in cli.model.hparams
    last = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resumed = main(["fit", "--config", str(config), "--trainer.max_steps=3", "--ckpt_path", str(last)])
    assert resumed.trainer.global_step == 3 and not is_activation_checkpointing(resumed.model.policy)


def test_the_policy_has_no_dropout_in_train_mode(tmp_path):
    """Sampled in eval mode and trained in train mode, a policy with attention dropout gave the update other
    log-probs than the sampler's (an audit: |log ratio| up to 9.7 at the first update). The export keeps
    the model's own setting."""
    model_dir = tmp_path / "with-dropout"
    model = load_causal_lm(str(TINY_POLICY))
    model.config.attention_dropout = 0.5
    model.save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_POLICY / name, model_dir)
    ids = torch.arange(1, 21).unsqueeze(0)
    plain = load_causal_lm(str(model_dir)).train()
    torch.manual_seed(0)
    assert not torch.equal(plain(ids).logits, plain(ids).logits)  # dropout is on, as saved
    policy = RLModule(model_path=str(model_dir)).policy.train()
    torch.testing.assert_close(policy(ids).logits, policy.eval()(ids).logits, rtol=0, atol=0)
    assert policy.config.attention_dropout == 0.5


@pytest.mark.parametrize(("configured", "expected"), [(None, ("Q:",)), ([], ()), (["\n\n"], ("\n\n",))])
def test_unset_stop_strings_are_the_data_modules_for_training_and_evaluation(
    small_config, configured, expected, caplog
):
    """Plain prompts labelled "Q:" stop at "Q:" unless the config says otherwise; the evaluation rollouts
    (greedy and sampled) use the same stop strings."""
    overrides = {
        **FAST,
        "trainer.max_steps": 1,
        "data.init_args.prompt_template": "Q: {question}\nA:",
        "model.init_args.sampling.stop_strings": configured,
        "model.init_args.evaluation.num_samples": 2,
    }
    with caplog.at_level("INFO"):
        cli = main(["fit", "--config", str(small_config("rgra", **overrides))])
    module = cli.model
    assert module.sampling.stop_strings == expected
    assert module.evaluation.sampling(module.sampling).stop_strings == expected
    assert ("stop_strings: ['Q:'], the data module's" in caplog.text) == (configured is None)
