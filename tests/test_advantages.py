"""Advantages against hand-computed values on tiny reward tensors."""

import math

import pytest
import torch

from rgra_lightning.advantages import AdvantageConfig, group_advantages, zero_std_group_fraction

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
STD_ROW1 = math.sqrt((3 * 0.25**2 + 0.75**2) / 3)  # Bessel-corrected std of [1, 0, 0, 0]
EPS = 1e-4


def test_group_mean_group_std_matches_hand_computation():
    advantages = group_advantages(REWARDS)
    std_row0 = math.sqrt(4 * 0.25 / 3)
    expected = torch.tensor(
        [
            [
                0.5 / (std_row0 + EPS),
                -0.5 / (std_row0 + EPS),
                -0.5 / (std_row0 + EPS),
                0.5 / (std_row0 + EPS),
            ],
            [
                0.75 / (STD_ROW1 + EPS),
                -0.25 / (STD_ROW1 + EPS),
                -0.25 / (STD_ROW1 + EPS),
                -0.25 / (STD_ROW1 + EPS),
            ],
        ]
    )
    torch.testing.assert_close(advantages, expected)


def test_identical_rewards_give_zero_advantage_and_no_nan():
    for baseline in ("group_mean", "leave_one_out"):
        for scale in ("group_std", "batch_std", "none"):
            config = AdvantageConfig(baseline=baseline, scale=scale)
            advantages = group_advantages(torch.ones(3, 4), config)
            assert torch.isfinite(advantages).all()
            assert torch.equal(advantages, torch.zeros(3, 4))


def test_leave_one_out_baseline():
    config = AdvantageConfig(baseline="leave_one_out", scale="none")
    # row 1: 1 - mean(0,0,0) = 1; 0 - mean(1,0,0) = -1/3
    expected = torch.tensor([[1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3], [1.0, -1 / 3, -1 / 3, -1 / 3]])
    torch.testing.assert_close(group_advantages(REWARDS, config), expected)


def test_no_baseline_no_scale_is_raw_reward():
    config = AdvantageConfig(baseline="none", scale="none")
    torch.testing.assert_close(group_advantages(REWARDS, config), REWARDS)


def test_batch_std_scale_uses_one_std_for_all_groups():
    config = AdvantageConfig(scale="batch_std")
    batch_std = REWARDS.flatten().std().item()  # 8 values, three ones: sqrt(15/56)
    assert batch_std == pytest.approx(math.sqrt(15 / 56))
    expected = (REWARDS - REWARDS.mean(dim=1, keepdim=True)) / (batch_std + EPS)
    torch.testing.assert_close(group_advantages(REWARDS, config), expected)


def test_batch_std_of_a_split_batch_is_the_whole_batchs():
    """Two ranks holding one group each divide by the std of both groups' rewards, as one process does."""
    config = AdvantageConfig(scale="batch_std")
    whole = group_advantages(REWARDS, config)
    for rank in range(2):
        part = group_advantages(REWARDS[rank : rank + 1], config, batch_rewards=REWARDS)
        torch.testing.assert_close(part, whole[rank : rank + 1])
    # without every rank's rewards, a rank's own std (here 0.5774 and 0.5) would scale its group
    assert not torch.allclose(group_advantages(REWARDS[:1], config), whole[:1])


def test_sign_filters_keep_one_side():
    positive = group_advantages(REWARDS, AdvantageConfig(sign_filter="positive", scale="none"))
    negative = group_advantages(REWARDS, AdvantageConfig(sign_filter="negative", scale="none"))
    torch.testing.assert_close(positive, torch.tensor([[0.5, 0, 0, 0.5], [0.75, 0, 0, 0]]))
    torch.testing.assert_close(negative, torch.tensor([[0, -0.5, -0.5, 0], [0, -0.25, -0.25, -0.25]]))


def test_best_of_group_weighs_the_first_best_one_where_its_reward_is_positive():
    """RAFT: unweighted cross-entropy on each group's best completion (a format-only reward of 0.1 is
    imitated as fully as a correct answer's 1.1), nothing from a group with no rewarded completion."""
    rewards = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.1, 1.1, 0.1], [0.1, 0.0, 0.1], [-1, -2, -3]])
    config = AdvantageConfig(baseline="none", scale="none", selection="best_of_group")
    expected = torch.tensor([[0, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]).float()
    assert torch.equal(group_advantages(rewards, config), expected)


@pytest.mark.parametrize(
    "setting", [{"baseline": "group_mean"}, {"scale": "group_std"}, {"sign_filter": "positive"}]
)
def test_best_of_group_refuses_settings_it_would_ignore(setting):
    options = {"baseline": "none", "scale": "none", "selection": "best_of_group"} | setting
    ((name, value),) = setting.items()
    with pytest.raises(ValueError, match=f"best_of_group.*set {name}='{value}' back to"):
        AdvantageConfig(**options)


@pytest.mark.parametrize("baseline", ["group_mean", "leave_one_out"])
@pytest.mark.parametrize("scale", ["group_std", "batch_std"])
def test_equal_rewards_that_float32_cannot_hold_give_exactly_zero(baseline, scale):
    """The float32 mean of 24 copies of 4.27 was a rounding step off 4.27 (on the CPU this was found on;
    the summation order decides); divided by a std of ~1e-7 + epsilon, that gave every completion of the
    group an advantage of about -9e-3. Several such values, so that some round on any CPU."""
    tied = [4.27, 0.1, 1.1, 0.3, 2.2, 7.77]
    rewards = torch.tensor([[value] * 24 for value in tied] + [[0.1] * 12 + [1.1] * 12])
    advantages = group_advantages(rewards, AdvantageConfig(baseline=baseline, scale=scale))
    assert torch.equal(advantages[: len(tied)], torch.zeros(len(tied), 24))
    assert (advantages[-1, :12] < 0).all() and (advantages[-1, 12:] > 0).all()


def test_zero_std_group_fraction():
    assert zero_std_group_fraction(
        torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    ).item() == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"baseline": "median"}, "baseline"),
        ({"scale": "iqr"}, "scale"),
        ({"sign_filter": "pos"}, "sign_filter"),
        ({"selection": "top2"}, "selection"),
        ({"epsilon": 0.0}, "epsilon"),
    ],
)
def test_invalid_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^model.loss.advantage.{field}"):
        AdvantageConfig(**kwargs)


def test_rejects_groups_of_one():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(4, 1))


@pytest.mark.parametrize("scale", ["group_std", "batch_std"])
def test_no_baseline_with_a_std_scale_is_refused(scale):
    """Raw rewards over the std of a group of equal rewards are divided by epsilon: an audit's
    ``--model.loss.advantage.baseline=none`` (README: "REINFORCE") ran with advantages of 313 and 1251."""
    equal = torch.ones(1, 4)
    assert group_advantages(equal, AdvantageConfig(baseline="none", scale="none")).eq(1).all()
    with pytest.raises(ValueError, match=f"baseline='none' with scale='{scale}' .* set scale='none' too"):
        AdvantageConfig(baseline="none", scale=scale)
