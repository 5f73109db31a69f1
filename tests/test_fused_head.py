"""The output head fused with the log-softmax: hand-computed values, agreement with the straightforward
computation (float32, bfloat16 autocast and bfloat16 weights, on CPU and, where present, CUDA; several
chunks, frozen or trained head; logits large enough to overflow ``exp``), the multiply's rounding under
autocast, and which heads take it."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgra_lightning import fused_head
from rgra_lightning.fused_head import head_token_logprobs
from rgra_lightning.logprobs import fusable_head
from tests.conftest import assert_close_normwise, rounding_rtol


def test_log_prob_entropy_and_gradients_of_a_hand_computed_case():
    """Features [1, 0] and weight rows [0, 0], [ln 3, 0]: logits [0, ln 3], softmax [1/4, 3/4]. Target 1:
    log-prob ln 3/4, entropy -(1/4 ln 1/4 + 3/4 ln 3/4). The log-prob's gradient on the logits is
    onehot - softmax = [-1/4, 1/4], so on the features [-1/4, 1/4] @ W = [ln 3 / 4, 0] and on the weight
    the outer product [-1/4, 1/4]^T [1, 0]."""
    features = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], requires_grad=True)
    logp, entropy = head_token_logprobs(features, weight, torch.tensor([1]), 1.0, 4, True)
    logp.sum().backward()
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    assert torch.allclose(features.grad, torch.tensor([[math.log(3) / 4, 0.0]]), atol=1e-6)
    assert torch.allclose(weight.grad, torch.tensor([[-0.25, 0.0], [0.25, 0.0]]), atol=1e-6)


def straightforward(features, weight, targets, temperature):
    """The head, float32 logits, the full log-softmax, the targets' entries and the entropy."""
    log_probs = torch.log_softmax(F.linear(features, weight).float() / temperature, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return log_probs.gather(-1, targets[:, None]).squeeze(-1), entropy.detach()


def on_a_grid(*shape):
    """Normal samples rounded to multiples of 1/8 (|x| < 8 in practice): exact in bfloat16, and the
    products of two of them (multiples of 1/64) summed in float32 exactly in any order while the sums stay
    below 2^18. So the fused and the unfused head's multiplies give the same logits, in float32 or rounded
    once to bfloat16, whatever order the kernels sum in, and the two paths differ only by the float32
    rounding of the log-softmax."""
    return (torch.randn(*shape) * 8).round() / 8


def logprob_atol(features, weight, temperature):
    """An absolute tolerance for log-probs and entropies that the fused and the unfused log-softmax compute
    in float32 from the same logits: the sum of ``vocabulary`` exponentials in another order, and
    subtractions and products of entries up to the largest logit's magnitude, each rounding relative to
    that magnitude (see ``rounding_rtol``)."""
    logits = features.detach().double() @ weight.detach().double().T / temperature
    return rounding_rtol(torch.float32, weight.shape[0]) * (1 + logits.abs().max().item())


def assert_close_maxabs(actual, expected, atol, what):
    """Every entry within ``atol`` (NaN fails)."""
    error = (actual - expected).abs().max().item()
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol:.3g}"


def fused_and_straightforward(features, weight, targets, temperature, chunk_tokens, autocast):
    """(log-probs, entropy, features' gradient, weight's gradient) of the fused head, then of the unfused
    one, for a weighted sum of the log-probs of both signs as the loss."""
    device = features.device.type
    loss_weights = torch.linspace(-1, 1, len(targets), device=features.device)
    results = []
    for fused in (True, False):
        features.grad = weight.grad = None
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            if fused:
                logp, entropy = head_token_logprobs(
                    features, weight, targets, temperature, chunk_tokens, True
                )
            else:
                logp, entropy = straightforward(features, weight, targets, temperature)
        (logp * loss_weights).sum().backward()
        gradients = [None if g is None else g.float() for g in (features.grad, weight.grad)]
        results.append((logp.detach(), entropy, *gradients))
    return results


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gpu_check.sh runs it)"),
    ),
]


@pytest.mark.parametrize("trained_head", [True, False])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["float32", "autocast", "bfloat16"])
def test_fused_log_probs_and_gradients_equal_the_straightforward_computation(
    precision, trained_head, device, monkeypatch
):
    """11 tokens in chunks of 4 (the last one short), temperature 0.7, a weighted sum of both signs as the
    loss: log-probs, entropy and gradients agree with the unfused computation, in float32, under bfloat16
    autocast and with bfloat16 features and weight (in both, the two multiply in bfloat16 and normalise in
    float32). In bfloat16 the weight's gradient is added to its float32 sum 7 rows at a time (the last
    block short)."""
    monkeypatch.setattr(fused_head, "_CAST_BLOCK_ELEMENTS", 7 * 16)
    torch.manual_seed(0)
    tokens, hidden, vocabulary = 11, 16, 50
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    features = on_a_grid(tokens, hidden).to(device, dtype).requires_grad_()
    weight = on_a_grid(vocabulary, hidden).to(device, dtype).requires_grad_(trained_head)
    targets = torch.randint(0, vocabulary, (tokens,)).to(device)
    results = fused_and_straightforward(features, weight, targets, 0.7, 4, precision == "autocast")
    (logp, entropy, grad_features, grad_weight), (logp_0, entropy_0, grad_features_0, grad_weight_0) = results
    assert logp.dtype == entropy.dtype == torch.float32 and not entropy.requires_grad
    # the same logits in every precision (``on_a_grid``), then float32: an error of the order of
    # bfloat16's rounding (dividing by the temperature before the cast, say) fails in every precision
    atol = logprob_atol(features, weight, 0.7)
    assert_close_maxabs(logp, logp_0, atol, "log-probs")
    assert_close_maxabs(entropy, entropy_0, atol, "entropy")
    # gradients, float32: sums of 16 products and of 50 softmax terms in other orders; bfloat16: the
    # logits' gradient rounded to bfloat16 before both multiply (the weight's sums each chunk's product)
    if precision == "float32":
        rtol = rounding_rtol(torch.float32, hidden * vocabulary)
    else:
        rtol = torch.finfo(torch.bfloat16).eps
    assert_close_normwise(grad_features, grad_features_0, rtol, "feature gradient")
    assert (grad_weight is None) == (not trained_head)
    if trained_head:
        assert_close_normwise(grad_weight, grad_weight_0, rtol, "weight gradient")


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize(("scale", "temperature"), [(128.0, 1.0), (1.0, 1e-3)])
def test_logits_whose_exponential_overflows_float32(scale, temperature, autocast):
    """Logits / temperature in the thousands (features on the grid times 128, or temperature 1e-3), where exp
    overflows float32 beyond 88: subtracting each token's largest logit first keeps the log-probs, the
    entropy and the gradients finite and equal to the unfused log-softmax's."""
    torch.manual_seed(0)
    tokens, hidden, vocabulary = 7, 16, 50
    features = (on_a_grid(tokens, hidden) * scale).requires_grad_()
    weight = on_a_grid(vocabulary, hidden).requires_grad_()
    targets = torch.randint(0, vocabulary, (tokens,))
    targets[0] = (features[0].detach() @ weight.detach().T).argmax()  # a log-prob near 0 among the others
    logits = features.detach() @ weight.detach().T / temperature
    assert logits.abs().max() > 1000
    results = fused_and_straightforward(features, weight, targets, temperature, 3, autocast)
    (logp, entropy, grad_features, grad_weight), (logp_0, entropy_0, grad_features_0, grad_weight_0) = results
    for value in (logp, entropy, grad_features, grad_weight):
        assert torch.isfinite(value).all()
    atol = logprob_atol(features, weight, temperature)
    assert_close_maxabs(logp, logp_0, atol, "log-probs")
    assert_close_maxabs(entropy, entropy_0, atol, "entropy")
    rtol = (
        rounding_rtol(torch.float32, hidden * vocabulary) if not autocast else torch.finfo(torch.bfloat16).eps
    )
    assert_close_normwise(grad_features, grad_features_0, rtol, "feature gradient")
    assert_close_normwise(grad_weight, grad_weight_0, rtol, "weight gradient")


def test_under_autocast_the_multiply_rounds_as_autocast_rounds_it():
    """Weight rows [1, 0] and [1 + 2^-10, 0]: in float32 the two logits differ by 2^-10, so the target's
    log-prob is ln(1/2) + about 2^-11; in bfloat16 the second row rounds to 1 and it is ln(1/2) exactly,
    as under the unfused head."""
    features, targets = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    weight = torch.tensor([[1.0, 0.0], [1.0 + 2**-10, 0.0]])
    full, _ = head_token_logprobs(features, weight, targets, 1.0, 1, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded, _ = head_token_logprobs(features, weight, targets, 1.0, 1, False)
        unfused, _ = straightforward(features, weight, targets, 1.0)
    assert full.item() == pytest.approx(math.log(0.5) + 2**-11, abs=1e-6)
    assert rounded.item() == unfused.item() == pytest.approx(math.log(0.5), abs=1e-7)


def test_without_entropy_or_gradient():
    """``with_entropy=False`` gives None; without gradient the log-probs are the same."""
    torch.manual_seed(0)
    features, weight, targets = torch.randn(5, 8), torch.randn(30, 8), torch.randint(0, 30, (5,))
    logp, entropy = head_token_logprobs(features, weight, targets, 1.0, 2, False)
    with torch.no_grad():
        again, _ = head_token_logprobs(features, weight, targets, 1.0, 3, True)
    assert entropy is None and not logp.requires_grad
    assert_close_normwise(logp, straightforward(features, weight, targets, 1.0)[0], 1e-5)
    assert_close_normwise(again, logp, 1e-6)


def test_only_a_plain_bias_free_linear_head_without_hooks_is_fused():
    """A LoRA-wrapped head, a head with a bias and one with a forward hook run through their forward."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    assert fusable_head(model, model[0])
    assert not fusable_head(model, nn.Linear(4, 4))
    assert not fusable_head(model, None)
    hooked = nn.Linear(4, 4, bias=False)
    hooked.register_forward_pre_hook(lambda module, args: args)
    assert not fusable_head(model, hooked)
    peft_model = get_peft_model(
        nn.Sequential(nn.Linear(4, 4, bias=False)), PeftLoraConfig(target_modules=["0"])
    )
    assert not fusable_head(peft_model, peft_model.base_model.model[0])
