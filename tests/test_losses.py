"""The loss against hand-computed values, and the GRPO/RGRA gradient identity at the first update."""

import math

import pytest
import torch

from rgra_lightning.errors import ConfigError
from rgra_lightning.losses import LossConfig, aggregate, kl_estimate, policy_term, rl_loss, sampler_weights

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([2.0, -1.0])


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])  # log(ref/pi) = -1
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert kl_estimate(logp, logp, "k3").item() == 0.0


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 100.0]])
    assert aggregate(values, MASK, "sequence_mean").item() == pytest.approx((2.0 + 5.0) / 2)
    assert aggregate(values, MASK, "token_mean").item() == pytest.approx(16.0 / 5)
    assert aggregate(values, MASK, "constant_sum", constant=4).item() == pytest.approx(16.0 / (2 * 4))
    with pytest.raises(ValueError, match="aggregation_constant"):
        aggregate(values, MASK, "constant_sum")


def test_reinforce_loss_by_hand():
    out = rl_loss(LOGP, ADV, MASK, LossConfig(policy_term="reinforce", beta=0.0))
    seq0 = (-1.0 - 2.0 - 0.5) / 3 * 2.0
    seq1 = (-0.2 - 0.3) / 2 * -1.0
    assert out.loss.item() == pytest.approx(-(seq0 + seq1) / 2)
    assert out.kl.item() == 0.0 and out.clip_fraction.item() == 0.0


def test_clipped_ratio_by_hand():
    old = LOGP - torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.0, 0.0]])  # ratios e^0.5, 1, e^-0.5 in row 0
    config = LossConfig(policy_term="clipped_ratio", eps_low=0.2, eps_high=0.2, beta=0.0)
    term, clipped, ratio = policy_term(LOGP, old, ADV, config)
    # A = 2 > 0: min(r A, clip(r) A) caps e^0.5 at 1.2 (clipped); e^-0.5 stays (unclipped is smaller)
    torch.testing.assert_close(term[0], torch.tensor([1.2 * 2, 2.0, math.exp(-0.5) * 2]))
    torch.testing.assert_close(clipped[0], torch.tensor([1.0, 0.0, 0.0]))
    out = rl_loss(LOGP, ADV, MASK, config, old_logp=old)
    assert out.clip_fraction.item() == pytest.approx(1 / 5)
    assert out.ratio_mean.item() == pytest.approx((math.exp(0.5) + 1 + math.exp(-0.5) + 2) / 5)


def test_the_clip_fraction_counts_real_tokens_only():
    """A padded position whose (meaningless) ratio is out of range is clipped in the per-token term but is
    no token of the batch: 1 of the 5 real tokens is clipped, whatever the padding holds."""
    old = LOGP - torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, -1.0]])  # ratios e^0.5 (A = 2), e^-1 (A = -1)
    config = LossConfig(policy_term="clipped_ratio", eps_low=0.2, eps_high=0.2, beta=0.0)
    _, clipped, _ = policy_term(LOGP, old, ADV, config)
    assert clipped.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # the padding's term is clipped too
    assert rl_loss(LOGP, ADV, MASK, config, old_logp=old).clip_fraction.item() == pytest.approx(1 / 5)
    # a micro-batch of the second row alone, of a batch of 5 tokens: none of its real tokens is clipped
    row = slice(1, 2)
    out = rl_loss(LOGP[row], ADV[row], MASK[row], config, old_logp=old[row], batch_tokens=torch.tensor(5.0))
    assert out.clip_fraction.item() == 0.0


def test_negative_advantage_clips_below():
    logp, old = torch.tensor([[-1.0]]), torch.tensor([[-0.5]])  # ratio e^-0.5 < 0.8
    config = LossConfig(policy_term="clipped_ratio", beta=0.0)
    term, clipped, _ = policy_term(logp, old, torch.tensor([-1.0]), config)
    assert term.item() == pytest.approx(-0.8) and clipped.item() == 1.0


def test_asymmetric_clip_range():
    logp, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]])  # ratio e
    config = LossConfig(policy_term="clipped_ratio", eps_low=0.2, eps_high=0.28, beta=0.0)
    assert policy_term(logp, old, torch.tensor([1.0]), config)[0].item() == pytest.approx(1.28)


def test_unclipped_ratio():
    logp, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]])
    config = LossConfig(policy_term="ratio", beta=0.0)
    assert policy_term(logp, old, torch.tensor([1.0]), config)[0].item() == pytest.approx(math.e)


def test_kl_term_enters_loss_with_beta():
    ref = LOGP - 0.1
    out = rl_loss(LOGP, torch.zeros(2), MASK, LossConfig(beta=0.5, kl_estimator="k3"), ref_logp=ref)
    per_token = math.exp(-0.1) + 0.1 - 1
    # exp(r) - r - 1 cancels from terms of size ~1 to 0.005: its float32 roundings (r's own, in ref = logp -
    # 0.1 with |logp| <= 2; the exponential; the subtraction) are each about eps or less, absolute.
    rounding = 4 * torch.finfo(torch.float32).eps
    assert out.kl.item() == pytest.approx(per_token, rel=0, abs=rounding)
    assert out.loss.item() == pytest.approx(0.5 * per_token, rel=0, abs=rounding)


def _gradient(config: LossConfig, old_logp: torch.Tensor | None) -> torch.Tensor:
    logits = torch.nn.Parameter(torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]]))
    logp = torch.nn.functional.logsigmoid(logits)
    ref = logp.detach() - 0.05
    rl_loss(logp, ADV, MASK, config, old_logp=old_logp, ref_logp=ref).loss.backward()
    return logits.grad


def test_grpo_and_rgra_share_the_gradient_at_the_first_update():
    """theta == theta_old: the ratio is 1, nothing is clipped and grad(ratio) = grad(log pi)."""
    fresh_old = torch.nn.functional.logsigmoid(torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]]))
    grpo = _gradient(LossConfig(policy_term="clipped_ratio"), fresh_old)
    rgra = _gradient(LossConfig(policy_term="reinforce"), None)
    torch.testing.assert_close(grpo, rgra)


def test_grpo_and_rgra_differ_once_the_policy_has_moved():
    """After an update (mu > 1 or a second mini-batch) pi_old != pi_theta and the gradients differ."""
    stale_old = torch.nn.functional.logsigmoid(torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, 0.0]]))
    grpo = _gradient(LossConfig(policy_term="clipped_ratio"), stale_old)
    rgra = _gradient(LossConfig(policy_term="reinforce"), None)
    assert not torch.allclose(grpo, rgra)


def test_ratio_terms_need_old_logprobs():
    with pytest.raises(ValueError, match="old log-probs"):
        rl_loss(LOGP, ADV, MASK, LossConfig(policy_term="clipped_ratio", beta=0.0))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"policy_term": "ppo"}, "policy_term"),
        ({"kl_estimator": "k4"}, "kl_estimator"),
        ({"aggregation": "max"}, "aggregation"),
        ({"beta": -0.1}, "beta"),
        ({"eps_low": 0.0}, "eps_low"),
        ({"eps_low": 1.0}, "eps_low"),
        ({"aggregation_constant": 0}, "aggregation_constant"),
    ],
)
def test_invalid_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^model.loss.{field}"):
        LossConfig(**kwargs)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant_sum"])
def test_micro_batch_losses_add_up_to_the_mini_batch_loss_and_gradient(aggregation):
    """Normalised by the mini-batch's rows and tokens, the slices' losses, diagnostics and gradients sum
    to the whole mini-batch's: gradient accumulation over micro-batches is the full update."""
    logits = torch.tensor([[0.3, -0.2, 0.1, 0.7], [0.0, 0.5, -0.4, 0.2], [1.0, -1.0, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    advantages = torch.tensor([1.5, -0.5, -1.0])
    old = torch.nn.functional.logsigmoid(logits - 1.0)  # moved: the positive row is clipped
    ref = torch.nn.functional.logsigmoid(logits + 0.2)
    config = LossConfig(
        policy_term="clipped_ratio", beta=0.1, aggregation=aggregation, aggregation_constant=4
    )

    def loss_and_gradient(parts: list[slice]) -> tuple[dict[str, float], torch.Tensor]:
        parameter = torch.nn.Parameter(logits.clone())
        logp = torch.nn.functional.logsigmoid(parameter)
        totals: dict[str, float] = {}
        for part in parts:
            out = rl_loss(
                logp[part], advantages[part], mask[part], config, old[part], ref[part],
                batch_rows=3, batch_tokens=mask.sum(),
            )  # fmt: skip
            out.loss.backward(retain_graph=True)
            for name in ("loss", "policy_loss", "kl", "clip_fraction", "ratio_mean"):
                totals[name] = totals.get(name, 0.0) + getattr(out, name).item()
        return totals, parameter.grad

    whole, whole_grad = loss_and_gradient([slice(0, 3)])
    split, split_grad = loss_and_gradient([slice(0, 1), slice(1, 3)])
    assert 0 < whole["clip_fraction"] < 1 and whole["kl"] > 0
    assert split == pytest.approx(whole, rel=1e-6)
    torch.testing.assert_close(split_grad, whole_grad)
    # Without batch sizes a slice is normalised by its own: the default, for a whole mini-batch.
    alone = rl_loss(torch.nn.functional.logsigmoid(logits), advantages, mask, config, old, ref)
    assert alone.loss.item() == pytest.approx(whole["loss"], rel=1e-6)


# Truncated importance sampling (TIS) of the sampler/trainer mismatch: two rows, the second one's last token
# is padding. log(pi_old / sampler) per token: 0.5, -1, 2 | 0, 1.5, (9: padding).
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -9.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -2.5], [-0.2, -1.8, -18.0]])
CAP = 2.0


def test_sampler_weights_by_hand():
    weights, cut = sampler_weights(OLD, SAMPLER, CAP)
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), CAP], [1.0, CAP, CAP]])
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(cut, torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))


def test_the_sampler_correction_weights_the_policy_term_by_hand():
    config = LossConfig(policy_term="reinforce", beta=0.0, sampler_correction_cap=CAP)
    out = rl_loss(LOGP, ADV, MASK, config, old_logp=OLD, sampler_logp=SAMPLER)
    seq0 = (-1.0 * math.exp(0.5) - 2.0 * math.exp(-1.0) - 0.5 * CAP) / 3 * 2.0
    seq1 = (-0.2 * 1.0 - 0.3 * CAP) / 2 * -1.0
    assert out.loss.item() == pytest.approx(-(seq0 + seq1) / 2)
    # Diagnostics over the 5 real tokens: |log(pi_old / sampler)| and the tokens cut to the cap
    assert out.sampler_logprob_diff.item() == pytest.approx((0.5 + 1.0 + 2.0 + 0.0 + 1.5) / 5)
    assert out.sampler_is_clipped_fraction.item() == pytest.approx(2 / 5)


def test_the_sampler_weight_is_detached_and_multiplies_the_clipped_term():
    """The gradient is the weighted policy gradient: no gradient flows through the weight, even when the
    old log-probs are the current ones (mu = 1: ``logp.detach()`` in the update, here not even detached)."""
    logp = LOGP.clone().requires_grad_(True)
    config = LossConfig(policy_term="reinforce", beta=0.0, sampler_correction_cap=CAP)
    rl_loss(logp, ADV, MASK, config, old_logp=logp, sampler_logp=SAMPLER).loss.backward()
    weights, _ = sampler_weights(LOGP, SAMPLER, CAP)
    lengths = MASK.sum(dim=1, keepdim=True)
    torch.testing.assert_close(logp.grad, -(ADV.unsqueeze(1) * weights * MASK / lengths) / 2)
    clipped = LossConfig(policy_term="clipped_ratio", beta=0.0, sampler_correction_cap=CAP)
    old = LOGP - 0.5  # ratio e^0.5 > 1.2: A = 2 is clipped, A = -1 is not
    term, _, _ = policy_term(LOGP, old, ADV, clipped)
    out = rl_loss(LOGP, ADV, MASK, clipped, old_logp=old, sampler_logp=SAMPLER)
    weights, _ = sampler_weights(old, SAMPLER, CAP)
    assert out.loss.item() == pytest.approx(-aggregate(term * weights, MASK, "sequence_mean").item())


def test_without_the_cap_the_sampler_log_probs_change_nothing():
    config = LossConfig(policy_term="reinforce", beta=0.0)
    out = rl_loss(LOGP, ADV, MASK, config, old_logp=OLD, sampler_logp=SAMPLER)
    assert out.loss.item() == rl_loss(LOGP, ADV, MASK, config).loss.item()
    assert out.sampler_logprob_diff is None and out.sampler_is_clipped_fraction is None
    assert not config.needs_old_logprobs
    assert LossConfig(sampler_correction_cap=CAP).needs_old_logprobs  # the weights need pi_old


def test_the_sampler_correction_needs_the_samplers_and_the_old_log_probs():
    config = LossConfig(beta=0.0, sampler_correction_cap=CAP)
    with pytest.raises(ConfigError, match="needs the sampler's log-probs, and the rollout has none"):
        rl_loss(LOGP, ADV, MASK, config, old_logp=OLD)
    with pytest.raises(ValueError, match="needs the trainer's old log-probs"):  # the trainer's to pass
        rl_loss(LOGP, ADV, MASK, config, sampler_logp=SAMPLER)
    with pytest.raises(
        ConfigError, match=r"^model.loss.sampler_correction_cap must be > 0 \(null: off\), got 0"
    ):
        LossConfig(sampler_correction_cap=0)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant_sum"])
def test_sampler_diagnostics_add_up_over_micro_batches(aggregation):
    config = LossConfig(beta=0.0, aggregation=aggregation, aggregation_constant=3, sampler_correction_cap=CAP)
    whole = rl_loss(LOGP, ADV, MASK, config, old_logp=OLD, sampler_logp=SAMPLER)
    parts = [
        rl_loss(
            LOGP[rows],
            ADV[rows],
            MASK[rows],
            config,
            OLD[rows],
            None,
            2,
            MASK.sum(),
            sampler_logp=SAMPLER[rows],
        )
        for rows in (slice(0, 1), slice(1, 2))
    ]
    for name in ("loss", "sampler_logprob_diff", "sampler_is_clipped_fraction"):
        total = sum(getattr(part, name) for part in parts)
        assert total.item() == pytest.approx(getattr(whole, name).item()), name


def test_padding_in_the_samplers_log_probs_reaches_no_sum():
    """An engine's NaN or -inf at padded positions (inf x 0 = NaN in the masked sums) leaves the loss and
    the diagnostics as with finite padding; a NaN on a real token still shows."""
    config = LossConfig(policy_term="reinforce", beta=0.0, sampler_correction_cap=CAP)
    expected = rl_loss(LOGP, ADV, MASK, config, old_logp=OLD, sampler_logp=SAMPLER)
    for padding in (float("nan"), float("-inf")):
        sampler = SAMPLER.clone()
        sampler[1, 2] = padding
        out = rl_loss(LOGP, ADV, MASK, config, old_logp=OLD, sampler_logp=sampler)
        assert out.loss.item() == expected.loss.item()
        assert out.sampler_logprob_diff.item() == expected.sampler_logprob_diff.item()
    sampler = SAMPLER.clone()
    sampler[0, 0] = float("nan")
    assert rl_loss(LOGP, ADV, MASK, config, old_logp=OLD, sampler_logp=sampler).loss.isnan()


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant_sum"])
def test_bfloat16_inputs_are_summed_in_float32(aggregation):
    """A 511-token completion counts as 512 tokens in bfloat16: the loss is computed in float32 whatever
    the inputs' dtype, so bf16 inputs give the loss of their float32 values."""
    generator = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 600, generator=generator).bfloat16()
    ref = -torch.rand(4, 600, generator=generator).bfloat16()
    mask = torch.zeros(4, 600)
    for row, length in enumerate((511, 600, 257, 3)):
        mask[row, :length] = 1
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5]).bfloat16()
    config = LossConfig(policy_term="reinforce", beta=0.04, aggregation=aggregation, aggregation_constant=600)
    out = rl_loss(logp, advantages, mask.bfloat16(), config, ref_logp=ref)
    full = rl_loss(logp.float(), advantages.float(), mask, config, ref_logp=ref.float())
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == full.loss.item() and out.kl.item() == full.kl.item()


def test_the_rloo_preset_weighs_every_token_of_a_completion_alike():
    """RLOO's action is the whole completion: the gradient on each token's log-prob is -A_i / (N x C)
    under ``constant_sum`` whatever the completion's length, where ``sequence_mean`` divides by it."""
    logp = LOGP.clone().requires_grad_(True)
    rloo = LossConfig(policy_term="reinforce", beta=0.0, aggregation="constant_sum", aggregation_constant=3)
    rl_loss(logp, ADV, MASK, rloo).loss.backward()
    torch.testing.assert_close(logp.grad, -ADV.unsqueeze(1) * MASK / (2 * 3))
    logp.grad = None
    rl_loss(logp, ADV, MASK, LossConfig(policy_term="reinforce", beta=0.0)).loss.backward()
    torch.testing.assert_close(logp.grad, -ADV.unsqueeze(1) * MASK / MASK.sum(dim=1, keepdim=True) / 2)
