"""The policy-gradient loss as one function of orthogonal options (GRPO, RGRA and the paper's ablations).

Shapes: N completions, T completion tokens (right-padded). ``mask`` is 1.0 on real completion tokens and
0.0 on padding. Log-probabilities are natural-log probabilities of the sampled tokens, ``[N, T]``;
``advantages`` are ``[N]``, one per completion. The loss is minimised.

    per-token objective  = w * policy_term(logp, old_logp, A) - beta * KL(logp, ref_logp)
    loss                 = - aggregate(per-token objective, mask)

where w = 1, or with ``sampler_correction_cap`` the truncated importance weight of the trainer's pi_old over
the rollout engine's sampling distribution (``sampler_weights``).

docs/algorithms.md gives the equations, each option's origin and how the options map to TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rgra_lightning.advantages import AdvantageConfig
from rgra_lightning.errors import ConfigError, require_one_of

PolicyTerm = Literal["reinforce", "ratio", "clipped_ratio"]
KLEstimator = Literal["k1", "k2", "k3"]
Aggregation = Literal["sequence_mean", "token_mean", "constant_sum"]


@dataclass(frozen=True)
class LossConfig:
    """The loss options; any combination is valid.

    Args:
        policy_term: ``reinforce`` (log pi * A: RGRA, arXiv 2603.18756; REINFORCE, Williams 1992; RAFT,
            arXiv 2304.06767), ``ratio`` (pi / pi_old * A: GRPO without clipping)
            or ``clipped_ratio`` (PPO's clipping, arXiv 1707.06347, as GRPO uses it, DeepSeekMath, arXiv
            2402.03300; with ``eps_low`` / ``eps_high``).
        eps_low: lower clip range, ratio >= 1 - eps_low (PPO's epsilon, 0.2). Used by ``clipped_ratio`` only.
        eps_high: upper clip range, ratio <= 1 + eps_high (DAPO's clip-higher when > eps_low, arXiv
            2503.14476).
        beta: KL coefficient (GRPO's KL to the reference policy in the loss, arXiv 2402.03300; the paper's
            0.005); 0 disables the KL term and the trainer then loads no reference model.
        kl_estimator: ``k1`` (log ratio), ``k2`` (half squared log ratio) or ``k3`` (GRPO's unbiased,
            non-negative estimator), all estimating KL(pi_theta || pi_ref) per token (Schulman 2020,
            "Approximating KL divergence").
        aggregation: ``sequence_mean`` (mean over each completion's tokens, then over completions: GRPO,
            arXiv 2402.03300, and the paper's Eq. 1), ``token_mean`` (mean over all tokens of the batch:
            DAPO, arXiv 2503.14476, and TRL's default) or ``constant_sum`` (sum over tokens divided by
            ``N * aggregation_constant``: Dr. GRPO, arXiv 2503.20783, no length bias).
        aggregation_constant: the divisor per completion for ``constant_sum``, in tokens; usually the
            maximum completion length (the trainer fills in max_new_tokens when it is None).
        mask_truncated_completions: leave completions cut at ``max_new_tokens`` (no stop token) out of the
            policy and KL terms, so an unfinished answer is neither rewarded nor punished for its text
            (DAPO's overlong filtering, Yu et al. 2025; TRL's option of the same name). They still count in
            their group's advantage baseline.
        advantage: how rewards become advantages (baseline, scale, sign filter, selection).
        sampler_correction_cap: truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL
            framework secretly brings you off-policy RL training") for an engine that samples with weights and
            kernels of its own (``VLLMEngine``), whose token probabilities differ from the trainer's even for
            the same weights: each token's policy term is multiplied by the detached weight
            ``min(exp(old - sampler), cap)``, the trainer's pi_old probability of the token over the
            sampler's, truncated at this cap (TRL 1.16: ``vllm_importance_sampling_correction=True``,
            ``vllm_importance_sampling_mode="token_truncate"``, ``vllm_importance_sampling_clip_max``; 2 to 3
            is usual). None (the default): no correction; the option is refused for an engine that returns
            no sampler log-probs (``HFEngine``, which samples with the trained policy itself). Logged:
            ``train/sampler_logprob_diff`` (token mean of ``|old - sampler|``) and
            ``train/sampler_is_clipped_fraction`` (tokens whose weight was cut to the cap).
    """

    policy_term: PolicyTerm = "reinforce"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.04
    kl_estimator: KLEstimator = "k3"
    aggregation: Aggregation = "sequence_mean"
    aggregation_constant: int | None = None
    mask_truncated_completions: bool = False
    advantage: AdvantageConfig = AdvantageConfig()
    sampler_correction_cap: float | None = None

    def __post_init__(self) -> None:
        require_one_of(
            "model.loss.",
            ("policy_term", self.policy_term, PolicyTerm),
            ("kl_estimator", self.kl_estimator, KLEstimator),
            ("aggregation", self.aggregation, Aggregation),
        )
        if self.eps_low <= 0 or self.eps_high <= 0:
            raise ConfigError(
                f"model.loss.eps_low and model.loss.eps_high must be > 0, got {self.eps_low}, {self.eps_high}"
            )
        if self.eps_low >= 1:
            raise ConfigError(
                f"model.loss.eps_low must be < 1 (the ratio's lower clip 1 - eps_low > 0), got {self.eps_low}"
            )
        if self.beta < 0:
            raise ConfigError(f"model.loss.beta must be >= 0, got {self.beta}")
        if self.aggregation_constant is not None and self.aggregation_constant < 1:
            raise ConfigError(
                f"model.loss.aggregation_constant must be >= 1 tokens, got {self.aggregation_constant}"
            )
        if self.sampler_correction_cap is not None and self.sampler_correction_cap <= 0:
            raise ConfigError(
                "model.loss.sampler_correction_cap must be > 0 (null: off), "
                f"got {self.sampler_correction_cap}"
            )

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether the loss uses pi_old: the ratio terms do, and so does the sampler correction."""
        return self.policy_term != "reinforce" or self.sampler_correction_cap is not None

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0


@dataclass(frozen=True)
class LossOutput:
    """The scalar loss and detached diagnostics, each a 0-dim tensor."""

    loss: Tensor
    policy_loss: Tensor  # minus the aggregated policy term
    kl: Tensor  # aggregated KL estimate (0 when beta == 0)
    clip_fraction: Tensor  # fraction of tokens whose clipped term was the active (smaller) one
    ratio_mean: Tensor  # token-mean of pi / pi_old (1 for reinforce)
    # With ``sampler_correction_cap`` only (else None): token means of |old - sampler| and of the tokens whose
    # importance weight was cut to the cap
    sampler_logprob_diff: Tensor | None = None
    sampler_is_clipped_fraction: Tensor | None = None


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled-token log-probs, ``[N, T]`` in nats."""
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    return torch.exp(log_ratio) - log_ratio - 1


def policy_term(
    logp: Tensor, old_logp: Tensor | None, advantages: Tensor, config: LossConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token policy objective ``[N, T]`` (to maximise), the clipped-token indicator and the ratio.

    ``advantages`` ``[N]`` is broadcast over tokens. ``old_logp`` may be None only for ``reinforce``.
    """
    advantages = advantages.unsqueeze(1)
    if config.policy_term == "reinforce":
        return logp * advantages, torch.zeros_like(logp), torch.ones_like(logp)
    if old_logp is None:
        raise ValueError(f"policy_term={config.policy_term!r} needs old log-probs (pi_old)")
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    if config.policy_term == "ratio":
        return unclipped, torch.zeros_like(logp), ratio
    clipped = torch.clamp(ratio, 1 - config.eps_low, 1 + config.eps_high) * advantages
    return torch.minimum(unclipped, clipped), (clipped < unclipped).float(), ratio


def sampler_weights(old_logp: Tensor, sampler_logp: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """Truncated importance weights ``[N, T]`` of the trainer's pi_old over the sampler's distribution,
    ``min(exp(old_logp - sampler_logp), cap)`` (detached), and the indicator of the tokens cut to ``cap``."""
    raw = torch.exp((old_logp - sampler_logp).detach())
    clipped = raw > cap
    return raw.clamp(max=cap), clipped.to(old_logp.dtype)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: Aggregation,
    constant: int | None = None,
    batch_rows: int | None = None,
    batch_tokens: Tensor | None = None,
) -> Tensor:
    """Reduce per-token ``values`` ``[N, T]`` over real tokens (``mask``) to a scalar.

    ``batch_rows`` and ``batch_tokens`` are the completions and real tokens of the whole batch that these N
    rows are a slice of (default: the N rows themselves). Every mode divides by them instead of by the
    slice's own counts, so the results of a batch's slices add up to the batch's result: gradient
    accumulation over micro-batches gives the full batch's gradient.
    """
    masked = values * mask
    rows = values.shape[0] if batch_rows is None else batch_rows
    if mode == "sequence_mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / rows
    if mode == "token_mean":
        tokens = mask.sum() if batch_tokens is None else batch_tokens
        return masked.sum() / tokens.clamp(min=1)
    if constant is None:
        raise ValueError("aggregation='constant_sum' needs aggregation_constant (tokens per completion)")
    return masked.sum() / (rows * constant)


def rl_loss(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: LossConfig,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    batch_rows: int | None = None,
    batch_tokens: Tensor | None = None,
    sampler_logp: Tensor | None = None,
) -> LossOutput:
    """The loss for one (mini-)batch of completions: minus the aggregated policy term plus beta times the
    aggregated KL; see the module docstring for shapes. ``LossOutput.policy_loss`` is the policy term's
    part alone (logged as ``train/policy_loss``), ``LossOutput.loss`` the whole (``train/loss``).

    For a micro-batch, ``batch_rows`` and ``batch_tokens`` give the size of the mini-batch it is a slice of
    (see ``aggregate``): the loss and every diagnostic then add up over the micro-batches to the
    mini-batch's values.

    ``sampler_logp`` ``[N, T]``: the rollout engine's log-probs of the tokens, used (and needed) only with
    ``config.sampler_correction_cap``, which also needs ``old_logp`` (pi_old: the trainer's log-probs before
    this batch's first update).
    """
    # In bfloat16 a sum over hundreds of tokens, or a count of them, is off by whole tokens.
    logp, advantages, mask = logp.float(), advantages.float(), mask.float()
    old_logp, ref_logp, sampler_logp = (
        None if values is None else values.float() for values in (old_logp, ref_logp, sampler_logp)
    )
    term, clipped, ratio = policy_term(logp, old_logp, advantages, config)
    tokens = mask.sum() if batch_tokens is None else batch_tokens.to(mask.dtype)
    sampler_diagnostics: dict[str, Tensor] = {}
    if config.sampler_correction_cap is not None:
        if sampler_logp is None:
            raise ConfigError(
                "model.loss.sampler_correction_cap needs the sampler's log-probs, and the rollout has none: "
                "use a rollout engine that returns them (VLLMEngine) or leave the option unset"
            )
        if old_logp is None:
            raise ValueError("model.loss.sampler_correction_cap needs the trainer's old log-probs (pi_old)")
        # What an engine puts at padded positions (NaN, -inf) must not reach the sums below as NaN
        sampler_logp = torch.where(mask > 0, sampler_logp, old_logp)
        weight, cut = sampler_weights(old_logp, sampler_logp, config.sampler_correction_cap)
        term = term * weight
        denominator = tokens.clamp(min=1)
        sampler_diagnostics = {
            "sampler_logprob_diff": (((old_logp - sampler_logp).abs() * mask).sum() / denominator).detach(),
            "sampler_is_clipped_fraction": ((cut * mask).sum() / denominator).detach(),
        }
    agg = (config.aggregation, config.aggregation_constant, batch_rows, tokens)
    policy_objective = aggregate(term, mask, *agg)
    if config.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = aggregate(kl_estimate(logp, ref_logp, config.kl_estimator), mask, *agg)
    else:
        kl = logp.new_zeros(())
    loss = -(policy_objective - config.beta * kl)
    tokens = tokens.clamp(min=1)
    return LossOutput(
        loss=loss,
        policy_loss=-policy_objective.detach(),
        kl=kl.detach(),
        clip_fraction=((clipped * mask).sum() / tokens).detach(),
        ratio_mean=((ratio * mask).sum() / tokens).detach(),
        **sampler_diagnostics,
    )
