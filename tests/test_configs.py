"""Every shipped config parses, and the loss presets (``configs/loss/*.yaml`` fragments) compose with a base
config into the intended LossConfig; RAFT's composite loss matches a hand computation (every single option
is checked by hand in test_advantages.py and test_losses.py)."""

from pathlib import Path

import pytest
import torch
import yaml

from rgra_lightning import ablate, rehearsal
from rgra_lightning.ablation_benchmarks import benchmark_layer
from rgra_lightning.advantages import AdvantageConfig, group_advantages
from rgra_lightning.cli import main
from rgra_lightning.config_files import compose
from rgra_lightning.losses import LossConfig, rl_loss
from tests.conftest import ROOT, printed_config

GRPO = {"policy_term": "clipped_ratio", "eps_low": 0.2, "eps_high": 0.2, "beta": 0.04, "kl_estimator": "k3"}
RGRA = {"policy_term": "reinforce", "beta": 0.04, "kl_estimator": "k3"}
RAW_REWARD = AdvantageConfig(baseline="none", scale="none")

PRESETS = {
    "grpo": LossConfig(**GRPO),
    "rgra": LossConfig(**RGRA),
    "grpo-positive-only": LossConfig(**GRPO, advantage=AdvantageConfig(sign_filter="positive")),
    "rgra-positive-only": LossConfig(**RGRA, advantage=AdvantageConfig(sign_filter="positive")),
    "grpo-noclip": LossConfig(policy_term="ratio", beta=0.04, kl_estimator="k3"),
    "grpo-nostd": LossConfig(**GRPO, advantage=AdvantageConfig(scale="none")),
    "rgra-nokl": LossConfig(policy_term="reinforce", beta=0.0),
    "dr-grpo": LossConfig(
        **GRPO, aggregation="constant_sum", advantage=AdvantageConfig(baseline="group_mean", scale="none")
    ),
    "rloo": LossConfig(
        **RGRA, aggregation="constant_sum", advantage=AdvantageConfig(baseline="leave_one_out", scale="none")
    ),
    "reinforce": LossConfig(**RGRA, advantage=RAW_REWARD),
    "raft": LossConfig(
        policy_term="reinforce",
        beta=0.0,
        advantage=AdvantageConfig(baseline="none", scale="none", selection="best_of_group"),
    ),
}


def test_the_shipped_studies_run_only_presets_checked_here():
    studies = {
        name: set(yaml.safe_load((ROOT / "configs" / "ablations" / f"{name}.yaml").read_text())["presets"])
        for name in ("paper", "all-presets", "paper-gsm8k")
    }
    assert studies["all-presets"] == set(PRESETS)
    assert studies["paper"] == {"grpo", "rgra", "grpo-positive-only", "reinforce", "raft", "rgra-nokl"}
    table_1 = {"grpo", "grpo-positive-only", "rgra", "raft", "reinforce", "configs/paper/gsm8k-sft.yaml"}
    assert studies["paper-gsm8k"] == table_1  # the RL methods and the supervised ft row


def test_every_preset_has_a_fragment_and_every_fragment_is_checked_here():
    assert {path.stem for path in (ROOT / "configs" / "loss").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_with_a_base_config_into_its_loss_and_run_name(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name models/arith-tiny relative to the project root
    cli = main(["--config", "configs/rgra.yaml", "--config", f"configs/loss/{name}.yaml"], run=False)
    expected = PRESETS[name]
    if expected.aggregation == "constant_sum":  # the trainer fills in max_new_tokens
        assert cli.model.loss_config.aggregation_constant == cli.model.sampling.max_new_tokens
        cli.model.loss_config = LossConfig(**{**vars(cli.model.loss_config), "aggregation_constant": None})
    assert cli.model.loss_config == expected
    assert cli.trainer.logger.name == name  # its own run directory: runs/<name>/
    assert cli.model.reference is None  # loaded when fit starts, never for validate/test/predict
    cli.model.setup("fit")
    assert (cli.model.reference is None) == (expected.beta == 0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_holds_only_the_loss_block_and_the_run_name(name):
    fragment = yaml.safe_load((ROOT / "configs" / "loss" / f"{name}.yaml").read_text())
    assert fragment == {
        "trainer": {"logger": {"init_args": {"name": name}}},
        "model": {"init_args": {"loss": fragment["model"]["init_args"]["loss"]}},
    }


def test_grpo_yaml_is_rgra_yaml_with_the_grpo_preset(monkeypatch):
    """configs/grpo.yaml, a documented entry point, stays the composition written out."""
    monkeypatch.chdir(ROOT)
    assert printed_config("configs/grpo.yaml") == printed_config(
        "configs/rgra.yaml", "configs/loss/grpo.yaml"
    )


FRAGMENTS = {"loss", "reward"}  # folders of fragments, composed over configs/rgra.yaml
# Other configs that hold only what differs from another one, and that one.
COMPOSED_OVER = {
    "configs/smollm2-135m/arithmetic-rgra.yaml": "configs/smollm2-135m/gsm8k-rgra.yaml",
    **{run[1]: run[0] for run in rehearsal.GPU_RUNS if len(run) == 2},
}
FULL_CONFIGS = sorted(
    path.relative_to(ROOT)
    for path in (ROOT / "configs").rglob("*.yaml")
    if path.parent.name not in FRAGMENTS | {"ablations"} and str(path.relative_to(ROOT)) not in COMPOSED_OVER
)


@pytest.mark.parametrize("config", FULL_CONFIGS, ids=str)
def test_every_shipped_config_parses(config, monkeypatch):
    """Every full config names only options that exist (the GPU and hub ones are parsed, not run)."""
    monkeypatch.chdir(ROOT)
    assert "model" in printed_config(str(config))


@pytest.mark.parametrize(
    "fragment",
    sorted(p.relative_to(ROOT) for f in FRAGMENTS for p in (ROOT / "configs" / f).glob("*.yaml")),
    ids=str,
)
def test_every_fragment_composes_with_the_default_config(fragment, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert "model" in printed_config("configs/rgra.yaml", str(fragment))


@pytest.mark.parametrize(("config", "base"), sorted(COMPOSED_OVER.items()))
def test_every_config_composed_over_another_parses_with_it(config, base, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert "model" in printed_config(base, config)


@pytest.mark.parametrize(
    "study", sorted((ROOT / "configs" / "ablations").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_study_loads(study, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert set(ablate.load_study(study.relative_to(ROOT)).presets) - set(PRESETS) <= {
        "configs/paper/gsm8k-sft.yaml"
    }


@pytest.mark.parametrize("preset", ["grpo", "raft"])
def test_the_gsm8k_study_runs_the_paper_setting_with_each_method(preset, tmp_path, monkeypatch):
    """A run of the GPU study is the paper config with the method's loss, the paper's beta (RAFT: none) and
    the run's own directories."""
    monkeypatch.chdir(ROOT)
    study = ablate.load_study(Path("configs/ablations/paper-gsm8k.yaml"))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(ablate.run_config(study, preset, 1)))
    configs = ablate.run_command(study, preset, 1)[4:-1]  # the command's --config=... but the run's own
    config = printed_config(*(c.removeprefix("--config=") for c in configs), str(tmp_path / "run.yaml"))
    model = config["model"]["init_args"]
    assert model["model_path"] == "Qwen/Qwen2.5-0.5B-Instruct" and model["lora"]["rank"] == 128
    assert model["loss"]["beta"] == (0.0 if preset == "raft" else 0.005)
    assert model["loss"]["policy_term"] == PRESETS[preset].policy_term
    assert config["trainer"]["max_steps"] == 75 and config["seed_everything"] == 1
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(study.run_dir(preset, 1))


@pytest.mark.parametrize(("benchmark", "preset"), [("gsm8k", "gsm8k"), ("math500", "math500")])
def test_the_gsm8k_study_tests_each_run_on_the_whole_benchmark(benchmark, preset, tmp_path, monkeypatch):
    """Its benchmark tests are the run's config with every test problem of the benchmark (the runs validate
    on the first 500 GSM8K test problems), logged beside the run's own TensorBoard files."""
    monkeypatch.chdir(ROOT)
    study = ablate.load_study(Path("configs/ablations/paper-gsm8k.yaml"))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(ablate.run_config(study, "rgra", 0)))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(benchmark_layer(study, "rgra", 0, benchmark)))
    configs = ablate.run_command(study, "rgra", 0)[4:-1]
    config = printed_config(
        *(c.removeprefix("--config=") for c in configs),
        *(str(tmp_path / f) for f in ("run.yaml", "test.yaml")),
    )
    data = config["data"]["init_args"]
    assert data["preset"] == preset and data["limit"] is None
    assert config["model"]["init_args"]["model_path"] == "Qwen/Qwen2.5-0.5B-Instruct"
    logger = config["trainer"]["logger"]["init_args"]
    assert logger["save_dir"] == str(study.run_dir("rgra", 0) / "benchmarks" / benchmark)


def test_raft_is_unweighted_cross_entropy_on_the_best_completion():
    # 2 prompts x G = 3; prompt 0's best is completion 1 (reward 1.0), prompt 1 has no positive reward.
    rewards = torch.tensor([[0.1, 1.0, 1.0], [0.0, 0.0, 0.0]])
    config = PRESETS["raft"]
    advantages = group_advantages(rewards, config.advantage).view(-1)
    assert advantages.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5], [-3.0, -3.0], [-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    out = rl_loss(logp, advantages, mask, config)
    # Only completion 1 contributes: its mean token NLL (0.5, the padded token ignored) over 6 completions.
    assert out.loss.item() == pytest.approx(0.5 / 6)
    assert out.kl.item() == 0.0


@pytest.mark.parametrize("preset", sorted((ROOT / "configs" / "paper" / "models").glob("*.yaml")), ids=str)
def test_a_paper_model_preset_holds_only_the_model_and_the_run_name(preset):
    """The paper's setting is one file; each of its other models changes only the model and the run name,
    and for Llama 3.x the date its chat template writes into every prompt (else today's)."""
    fragment = yaml.safe_load(preset.read_text())
    model_path = fragment["model"]["init_args"]["model_path"]
    expected = {
        "trainer": {"logger": {"init_args": {"name": f"paper-{preset.stem}-rgra"}}},
        "model": {"init_args": {"model_path": model_path}},
    }
    if preset.stem.startswith("llama-3"):
        expected["data"] = {"init_args": {"chat_template_kwargs": {"date_string": "26 Jul 2024"}}}
    assert fragment == expected
    assert model_path.lower().endswith(f"{preset.stem}-instruct")


def test_the_multinode_preset_changes_only_the_layout_and_keeps_the_rollout_size():
    base = compose(["configs/distributed/fsdp2-1node-8gpu.yaml"])
    multinode = compose(
        ["configs/distributed/fsdp2-1node-8gpu.yaml", "configs/distributed/fsdp2-multinode.yaml"]
    )

    def completions(config: dict) -> int:
        trainer = config["trainer"]
        ranks = trainer["num_nodes"] * trainer["devices"]
        assert trainer["strategy"]["init_args"]["data_parallel_size"] == ranks
        group = config["model"]["init_args"]["sampling"]["num_generations"]
        return ranks * config["data"]["init_args"]["batch_size"] * group

    assert multinode["trainer"]["num_nodes"] == 2
    assert completions(multinode) == completions(base) == 512


def class_paths(entries: list[dict] | None) -> list[str]:
    return [entry["class_path"] for entry in entries or []]


@pytest.mark.parametrize("run", rehearsal.GPU_RUNS, ids=" + ".join)
def test_gpu_configs_carry_what_the_default_config_promises(run):
    """Atomic checkpoints, exact resume, periodic + last checkpoints, HF export of the final policy and sample
    logging, as configs/rgra.yaml has them; the paper configs decay the learning rate linearly after the
    warm-up (TRL's default; the paper states only the warm-up). Under FSDP2 the atomic plugin applies only
    to full checkpoints: Lightning writes sharded ones itself, in place."""
    default = yaml.safe_load((ROOT / "configs" / "rgra.yaml").read_text())["trainer"]
    parsed = compose(ROOT / path for path in run)
    trainer, model = parsed["trainer"], parsed["model"]["init_args"]
    assert class_paths(trainer.get("plugins")) == class_paths(default["plugins"])
    assert set(class_paths(default["callbacks"])) <= set(class_paths(trainer["callbacks"]))
    checkpoint = next(c for c in trainer["callbacks"] if c["class_path"].endswith("PeriodicModelCheckpoint"))
    assert checkpoint["init_args"]["save_last"] and checkpoint["init_args"]["every_n_train_steps"] >= 1
    strategy = trainer.get("strategy")
    if isinstance(strategy, dict) and strategy["class_path"].endswith("ModelParallelStrategy"):
        assert strategy["init_args"]["save_distributed_checkpoint"] is False
    if run[0].startswith("configs/paper/"):
        assert model["lr_schedule"] == "linear"


@pytest.mark.parametrize("config", ["configs/paper/gsm8k-rgra.yaml", "configs/smollm2-135m/gsm8k-rgra.yaml"])
def test_the_gsm8k_format_term_rewards_a_closed_box_with_an_answer_only(config):
    """The 0.1 format term: a bare ``\\boxed{`` (an empty box, a completion cut inside one) is a string a
    policy can learn to write for the reward without answering; a box holding an answer, braces nested in
    it too, earns it."""
    from rewards import FormatReward

    model = yaml.safe_load((ROOT / config).read_text())["model"]["init_args"]
    verifiers = model["verifier"]["init_args"]["verifiers"]
    (fmt,) = [
        verifier["init_args"] for verifier in verifiers if verifier["class_path"] == "rewards.FormatReward"
    ]
    format_reward = FormatReward(**fmt)
    boxed = [
        "so \\boxed{18}.",
        "\\boxed{ 18 }",
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{x^{2}+1} done",
        "\\boxed{$5}",
    ]
    unboxed = ["\\boxed{}", "\\boxed{ }", "so the answer is \\boxed{", "\\boxed{18", "boxed{18}", "18"]
    assert [format_reward.score(text, "18").reward for text in boxed] == [1.0] * len(boxed)
    assert [format_reward.score(text, "18").reward for text in unboxed] == [0.0] * len(unboxed)
