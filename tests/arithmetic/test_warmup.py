"""The recipe of the shipped policy runs and exports a loadable Hugging Face model."""

import yaml

from rgra_lightning.arithmetic.warmup import build_char_tokenizer
from rgra_lightning.cli import main
from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout import SamplingConfig
from tests.conftest import ROOT, TINY_POLICY
from tests.conftest import sample as sample_rollout


def test_char_tokenizer_round_trips_math_text():
    tokenizer = build_char_tokenizer()
    text = "-(6*2)=-12 \\boxed{-12}"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text


def test_warmup_recipe_trains_and_exports(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "warmup.yaml").read_text())
    config["trainer"].update(max_steps=3, enable_progress_bar=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / "policy")
    config["data"]["init_args"]["batch_size"] = 8
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])

    tokenizer, policy = load_tokenizer(str(tmp_path / "policy")), load_causal_lm(str(tmp_path / "policy"))
    assert policy.num_parameters() == load_causal_lm(str(TINY_POLICY)).num_parameters()
    rollout = sample_rollout(policy, tokenizer, ["1+2="], SamplingConfig(max_new_tokens=4), greedy=True)
    assert len(rollout.completions) == 1


def test_the_warmup_recipe_exports_beside_its_run_not_over_the_shipped_policy():
    """It exported to models/arith-tiny, a tracked file every run of configs/rgra.yaml starts from: a
    40-update try of the recipe replaced it without a word."""
    config = yaml.safe_load((ROOT / "configs" / "warmup.yaml").read_text())
    output = (ROOT / config["trainer"]["callbacks"][0]["init_args"]["output_dir"]).resolve()
    assert not output.is_relative_to((ROOT / "models").resolve())
    assert output.is_relative_to((ROOT / config["trainer"]["logger"]["init_args"]["save_dir"]).resolve())
