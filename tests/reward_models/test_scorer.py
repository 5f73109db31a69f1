"""RewardModelScorer: classifier and LM-judge scores, transforms, and weighting with verifiers inside RL
training."""

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from rewards import FormatReward, NumericVerifier, Score, WeightedSum
from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_causal_lm, load_sequence_classifier, load_tokenizer, reads_last_token
from rgra_lightning.reward_models.scorer import (
    RewardModelScorer,
    encode,
    judge_log_odds,
    pair_text,
    transform_scores,
)
from rgra_lightning.scoring import reward_components, robust_score_batch
from tests.conftest import (
    LOGPROB_RTOL,
    TINY_POLICY,
    assert_close_normwise,
    head_input_layouts,
    scalar_tags,
)
from tests.reward_models.conftest import save_classifier, verifier_plus_reward_model
from tests.tiny_models import llama3_style_tokenizer


def test_transforms_match_hand_computed_values():
    raw = torch.tensor([0.0, 2.0, -2.0])
    assert torch.allclose(transform_scores(raw, "sigmoid"), torch.tensor([0.5, 0.880797, 0.119203]))
    # mean 0, biased std sqrt(8/3)
    assert torch.allclose(transform_scores(raw, "standardize"), raw / math.sqrt(8 / 3))
    assert torch.equal(transform_scores(raw, "none"), raw)
    assert torch.equal(transform_scores(raw, "none", clip=(-1.0, 1.5)), torch.tensor([0.0, 1.5, -1.0]))
    assert torch.equal(transform_scores(torch.tensor([3.0, 3.0]), "standardize"), torch.zeros(2))
    assert torch.equal(transform_scores(torch.tensor([3.0]), "standardize"), torch.zeros(1))


def test_classifier_scores_do_not_depend_on_batch_padding(classifier_dir):
    """So the batch size is a runtime option: a resume may change it (it is left out of ``settings``)."""
    scorer = RewardModelScorer(str(classifier_dir), transform="none", max_length=64)
    assert "batch_size" not in scorer.settings()["init_args"]
    assert scorer.settings()["init_args"]["model_path"] == str(classifier_dir)
    prompts = ["1+2=", "-7*5="]
    completions = ["\\boxed{3}", "-(7*5)=-35 \\boxed{-35}"]
    together = scorer.raw_scores(prompts, completions)
    alone = torch.cat([scorer.raw_scores([p], [c]) for p, c in zip(prompts, completions, strict=True)])
    # Padding changes the shapes, hence the kernels' summation order: a rounding bound, not equality.
    assert_close_normwise(together, alone, LOGPROB_RTOL, "padded vs alone")
    # and equal to the model's logit on the unpadded text
    ids = scorer.tokenizer(prompts[0] + completions[0], return_tensors="pt")
    unpadded = scorer.model(**ids).logits[0, 0]
    assert_close_normwise(together[0], unpadded, LOGPROB_RTOL, "padded vs unpadded")
    assert together[0] != together[1]
    scores = scorer.score_batch(completions, ["3", "-35"], prompts)
    assert [s.reward for s in scores] == pytest.approx(together.tolist())
    assert not any(s.correct for s in scores)  # a learned score is no verdict


def test_two_label_classifier_scores_the_log_odds_of_class_one(tmp_path):
    scorer = RewardModelScorer(str(save_classifier(tmp_path, num_labels=2)), transform="sigmoid")
    ids = scorer.tokenizer("1+1=\\boxed{2}", return_tensors="pt")
    probabilities = torch.softmax(scorer.model(**ids).logits[0], dim=-1)
    reward = scorer.score_batch(["\\boxed{2}"], ["2"], ["1+1="])[0].reward
    # The same forward (one text: no padding), then two float32 routes to one probability: sigmoid of the
    # logits' difference, or softmax's two exponentials, their sum and a division. Each rounds a few times,
    # so they agree to within 8 units of float32 rounding of the probability.
    assert reward == pytest.approx(probabilities[1].item(), rel=8 * torch.finfo(torch.float32).eps)


def test_judge_scores_the_log_odds_of_its_token():
    scorer = RewardModelScorer(
        str(TINY_POLICY),
        kind="judge",
        transform="none",
        judge_template="{prompt}{completion} ",
        judge_token="1",
    )
    model = load_causal_lm(str(TINY_POLICY)).eval()
    ids = scorer.tokenizer("2-1=\\boxed{1} ", return_tensors="pt")
    p = torch.softmax(model(**ids).logits[0, -1], dim=-1)[scorer.judge_token_id].item()
    raw = scorer.raw_scores(["2-1="], ["\\boxed{1}"]).item()
    assert raw == pytest.approx(math.log(p / (1 - p)), rel=LOGPROB_RTOL)


def test_a_judge_reads_its_last_positions_contiguous():
    """The judge's frozen head gets the kept positions as one contiguous [N, 1, H] (a strided slice makes
    ``torch.matmul`` copy the head's weight per row on the CPU in bfloat16), and the scores are those of
    each text alone."""
    scorer = RewardModelScorer(str(TINY_POLICY), kind="judge", transform="none", judge_token="1")
    prompts, completions = ["2-1=", "10-3="], ["\\boxed{1}", "the answer is \\boxed{7}"]
    with head_input_layouts(scorer.model) as layouts:
        batched = scorer.raw_scores(prompts, completions)
    assert layouts == [True]
    alone = torch.cat([scorer.raw_scores([p], [c]) for p, c in zip(prompts, completions, strict=True)])
    torch.testing.assert_close(batched, alone, rtol=LOGPROB_RTOL, atol=0.0)


def test_a_confident_judges_log_odds_stay_finite_and_exact():
    """log p - log(1 - p) = z_token - log(sum of exp z over the other tokens), here by hand. Where the
    judge's token beats the rest of a 32,000-token vocabulary by 40 logits, p rounds to 1 in float32 and the
    score through ``log_softmax`` was +inf (a standardized batch then became all zeros)."""
    logits = torch.zeros(3, 32_000)
    logits[0, 7] = 40.0
    logits[1, 7], logits[1, 3] = 2.0, 1.0
    logits[2, 7] = -5.0
    expected = torch.tensor(
        [40 - math.log(31_999), 2 - math.log(math.e + 31_998), -5 - math.log(31_999)], dtype=torch.float32
    )
    torch.testing.assert_close(judge_log_odds(logits, 7), expected)  # float32: default tolerances
    log_p = logits.log_softmax(dim=-1)[0, 7]
    assert torch.isinf(log_p - torch.log(-torch.expm1(log_p)))  # the former formula


def test_an_encoder_reward_model_is_refused(tmp_path):
    """BERT-like classifiers pool their first token, which the scorer's left padding makes a pad token in
    every row but the longest: a wrong, batch-dependent reward."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(
        ConfigError, match=r"is a BertForSequenceClassification, which scores from a position"
    ):
        RewardModelScorer(str(tmp_path))
    assert reads_last_token(load_sequence_classifier(str(TINY_POLICY), num_labels=1))


def test_the_default_max_length_is_the_reward_models_own(tmp_path):
    """Unset, the scorer cuts texts where the reward model's tokenizer says (a trained one saves its
    training max_length there), else at 512; a given max_length wins."""
    directory = save_classifier(tmp_path, num_labels=1)
    assert RewardModelScorer(str(directory)).max_length == 512  # the tiny tokenizer saves none
    tokenizer = load_tokenizer(str(directory))
    tokenizer.model_max_length = 40
    tokenizer.save_pretrained(directory)
    assert RewardModelScorer(str(directory)).max_length == 40
    assert RewardModelScorer(str(directory), max_length=24).max_length == 24


def test_scorer_configuration_errors_name_the_field(classifier_dir, tmp_path):
    with pytest.raises(ConfigError, match="judge_token 'ab' is 2 tokens"):
        RewardModelScorer(str(TINY_POLICY), kind="judge", judge_token="ab")
    with pytest.raises(ConfigError, match="transform must be"):
        RewardModelScorer(str(classifier_dir), transform="softmax")
    with pytest.raises(ConfigError, match="clip"):
        RewardModelScorer(str(classifier_dir), clip=(1.0, 0.0))
    with pytest.raises(ConfigError, match="3 labels"):
        RewardModelScorer(str(save_classifier(tmp_path, num_labels=3)))
    with pytest.raises(ConfigError, match="LlamaForCausalLM without a trained score head"):
        RewardModelScorer(str(TINY_POLICY))  # a policy: its score head would be random
    with pytest.raises(ConfigError, match="model directory 'runs/missing/hf_model' does not exist") as caught:
        RewardModelScorer("runs/missing/hf_model")  # a relative path, never mistaken for a hub name
    assert str(caught.value).startswith("reward model: ")  # and where one comes from:
    assert str(caught.value).endswith("trained with configs/reward_model.yaml (docs/reward-models.md)")
    with pytest.raises(ValueError, match="needs prompts"):
        RewardModelScorer(str(classifier_dir)).score_batch(["x"], ["1"])


def test_weighted_sum_keeps_named_unweighted_components(classifier_dir):
    scorer = RewardModelScorer(str(classifier_dir), max_length=64)
    combined = WeightedSum([NumericVerifier(), scorer, FormatReward()], [1.0, 0.2, 0.1])
    assert combined.names == ["numeric_verifier", "reward_model_scorer", "format_reward"]
    prompts, completions, references = ["1+2=", "1+2="], ["\\boxed{3}", "\\boxed{4}"], ["3", "3"]
    learned = scorer.score_batch(completions, references, prompts)
    scores = combined.score_batch(completions, references, prompts)
    for score, model_score, verdict in zip(scores, learned, [1.0, 0.0], strict=True):
        assert score.components == pytest.approx(
            {"numeric_verifier": verdict, "reward_model_scorer": model_score.reward, "format_reward": 1.0}
        )
        assert score.reward == pytest.approx(verdict + 0.2 * model_score.reward + 0.1)
    assert [s.correct for s in scores] == [True, False]  # only the numeric verifier judges correctness
    assert WeightedSum([NumericVerifier(), NumericVerifier()], [1, 1]).names == [
        "numeric_verifier",
        "numeric_verifier_2",
    ]
    with pytest.raises(ValueError, match="distinct name"):
        WeightedSum([NumericVerifier(), FormatReward()], [1, 1], names=["a", "a"])


def test_rl_training_with_verifier_plus_reward_model_logs_each_component(
    small_config, classifier_dir, tmp_path
):
    verifier = verifier_plus_reward_model(classifier_dir)
    config = small_config("rgra", **{"model.init_args.verifier": verifier})
    cli = main(["fit", "--config", str(config)])
    module = cli.model
    assert len(module.reward_models) == 1
    reward_model = module.reward_models[0]
    assert not reward_model.training and not any(p.requires_grad for p in reward_model.parameters())
    initial = load_sequence_classifier(str(classifier_dir)).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in reward_model.state_dict().items()), "reward model moved"
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in reward_model.parameters()}

    scalars = scalar_tags(tmp_path / "runs")
    math_part, model_part = (
        scalars["train/rewards/math_verifier"],
        scalars["train/rewards/reward_model_scorer"],
    )
    assert len(math_part) == len(model_part) == len(scalars["train/reward"]) == 4
    # Each logged value is a float32 mean over the step's 4 x 4 completions, which rounds by at most 16
    # units of float32 rounding (eps / 2) of its largest term: a total (up to 1 + 0.2 x 1), a verdict (up
    # to 1), a learned score (up to 1, weighted 0.2 here). Twice their sum: the rewards' own rounding too.
    tolerance = 16 * torch.finfo(torch.float32).eps * (1.2 + 1 + 0.2)
    for total, verdict, learned in zip(scalars["train/reward"], math_part, model_part, strict=True):
        assert 0 < learned < 1  # sigmoid
        assert total == pytest.approx(verdict + 0.2 * learned, rel=0, abs=tolerance)

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(key.startswith("reward_models.") for key in checkpoint["state_dict"])
    resumed = main(["fit", "--config", str(config), "--trainer.max_steps=5", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 5


def test_component_rewards_count_a_failed_row_as_zero_and_take_names_from_the_verifier():
    combined = WeightedSum([NumericVerifier(), FormatReward()], [1.0, 0.1])
    failed = Score(0.0, False, None, "verifier raised", error="boom")  # robust fallback: no components
    scored = combined.score_batch(["\\boxed{3}"], ["3"])[0]
    rewards = reward_components(combined, [failed, scored])
    assert {name: value.tolist() for name, value in rewards.items()} == {
        "numeric_verifier": [0.0, 1.0],
        "format_reward": [0.0, 1.0],
    }
    assert reward_components(NumericVerifier(), [scored]) == {}


def test_a_pair_that_starts_with_the_bos_token_gets_no_second_one():
    """A chat prompt of a Llama-3-style template already writes BOS: the reward model reads it once; a
    plain text gets the tokenizer's BOS; a long text keeps its end; rows are left-padded."""
    tokenizer = llama3_style_tokenizer()
    bos = tokenizer.bos_token_id
    device_holder = torch.nn.Linear(1, 1)
    chat = pair_text(tokenizer.bos_token + "<|start_header_id|>user", " 4")
    encoded = encode(tokenizer, [chat, "plain 4", "x " * 50], 16, device_holder)
    pairs = zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    rows = [ids[mask.bool()].tolist() for ids, mask in pairs]
    assert rows[0] == tokenizer(chat, add_special_tokens=False)["input_ids"] and rows[0].count(bos) == 1
    assert rows[1] == tokenizer("plain 4")["input_ids"] and rows[1].count(bos) == 1
    assert rows[2] == tokenizer("x " * 50)["input_ids"][-16:]
    assert bool(encoded["attention_mask"][:, -1].all())  # every row ends in the last column


def test_a_standardizing_scorer_that_fails_on_a_batch_is_not_scored_one_at_a_time(
    classifier_dir, monkeypatch
):
    """Standardized alone, every completion would score 0 with no error: an out-of-memory batch would train
    on flat rewards. The batch fails as a whole instead, and a batch of such failures stops the run in one
    line naming the error; other transforms are still scored one at a time."""
    prompts, completions = ["1+2=", "-7*5=", "2*2="], ["\\boxed{3}", "\\boxed{-35}", "\\boxed{5}"]
    raw_scores = RewardModelScorer.raw_scores

    def out_of_memory_above_one(scorer, prompts, completions):
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return raw_scores(scorer, prompts, completions)

    monkeypatch.setattr(RewardModelScorer, "raw_scores", out_of_memory_above_one)
    standardize = RewardModelScorer(str(classifier_dir), transform="standardize", max_length=64)
    assert standardize.scored_in_whole_batches
    with pytest.raises(ConfigError, match=r"RewardModelScorer failed on all 3 .*CUDA out of memory"):
        robust_score_batch(standardize, completions, ["3", "-35", "4"], prompts)
    sigmoid = RewardModelScorer(str(classifier_dir), max_length=64)
    assert not sigmoid.scored_in_whole_batches
    with pytest.warns(UserWarning, match="scoring one at a time"):
        scores = robust_score_batch(sigmoid, completions, ["3", "-35", "4"], prompts)
    assert all(0 < score.reward < 1 and score.error is None for score in scores)
