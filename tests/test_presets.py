"""The loss presets under configs/: each parses through the real CLI into the intended LossConfig, differs
from configs/rgra.yaml only in its loss block and run name, and RAFT's composite loss matches a hand
computation (every single option is checked by hand in test_advantages.py and test_losses.py)."""

import pytest
import torch
import yaml

from rgra_lightning.advantages import AdvantageConfig, group_advantages
from rgra_lightning.cli import main
from rgra_lightning.losses import LossConfig, policy_loss
from tests.conftest import ROOT

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
    "rloo": LossConfig(**RGRA, advantage=AdvantageConfig(baseline="leave_one_out", scale="none")),
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
        for name in ("paper", "all-presets")
    }
    assert studies["all-presets"] == set(PRESETS)
    assert studies["paper"] == {"grpo", "rgra", "grpo-positive-only", "reinforce", "raft", "rgra-nokl"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parses_through_the_cli_into_its_loss(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets name models/arith-tiny relative to the project root
    cli = main(["--config", f"configs/{name}.yaml"], run=False)
    expected = PRESETS[name]
    if expected.aggregation == "constant_sum":  # the trainer fills in max_new_tokens
        assert cli.model.loss_config.aggregation_constant == cli.model.sampling.max_new_tokens
        cli.model.loss_config = LossConfig(**{**vars(cli.model.loss_config), "aggregation_constant": None})
    assert cli.model.loss_config == expected
    assert cli.model.reference is None  # loaded when fit starts, never for validate/test/predict
    cli.model.setup("fit")
    assert (cli.model.reference is None) == (expected.beta == 0)


def _without_loss_and_run_name(config: dict) -> dict:
    del config["model"]["init_args"]["loss"]
    config["trainer"]["logger"]["init_args"].pop("name")
    for callback in config["trainer"]["callbacks"]:
        callback.get("init_args", {}).pop("dirpath", None)
    return config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_differs_from_rgra_only_in_loss_and_run_name(name):
    preset = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    rgra = yaml.safe_load((ROOT / "configs" / "rgra.yaml").read_text())
    assert preset["trainer"]["logger"]["init_args"]["name"] == name
    assert _without_loss_and_run_name(preset) == _without_loss_and_run_name(rgra)


def test_raft_is_reward_weighted_cross_entropy_on_the_best_completion():
    # 2 prompts x G = 3; prompt 0's best is completion 1 (reward 1.0), prompt 1 has no positive reward.
    rewards = torch.tensor([[0.1, 1.0, 1.0], [0.0, 0.0, 0.0]])
    config = PRESETS["raft"]
    advantages = group_advantages(rewards, config.advantage).view(-1)
    assert advantages.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5], [-3.0, -3.0], [-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    out = policy_loss(logp, advantages, mask, config)
    # Only completion 1 contributes: its mean token NLL (0.5, the padded token ignored) over 6 completions.
    assert out.loss.item() == pytest.approx(0.5 / 6)
    assert out.kl.item() == 0.0
