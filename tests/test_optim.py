"""The learning-rate schedule: warm-up, then constant, linear or cosine decay, by hand and through fit."""

import math
import sys

import pytest
import torch
from transformers.optimization import (
    _get_cosine_schedule_with_warmup_lr_lambda,
    _get_linear_schedule_with_warmup_lr_lambda,
)

from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.optim import lr_factor, warmup_schedule
from tests.conftest import FAST, one_line_error, scalar_tags


def test_factors_by_hand():
    # 2 warm-up updates of a 6-update run: 1/2, 1, then the decay from 1 at update 2 towards 0 at 6.
    assert [lr_factor(s, 2, "constant", 6) for s in range(6)] == [0.5, 1, 1, 1, 1, 1]
    assert [lr_factor(s, 2, "linear", 6) for s in range(6)] == [0.5, 1, 1, 0.75, 0.5, 0.25]
    cosine = [lr_factor(s, 2, "cosine", 6) for s in range(6)]
    quarter = math.cos(math.pi / 4)
    assert cosine == pytest.approx([0.5, 1, 1, (1 + quarter) / 2, 0.5, (1 - quarter) / 2])
    assert lr_factor(0, 0, "linear", 4) == 1  # no warm-up: the first update uses the peak rate


@pytest.mark.parametrize("warmup", [0, 3])
def test_decay_after_warmup_is_hugging_faces(warmup):
    """After warm-up the factors are those of transformers' schedules (TRL's ``lr_scheduler_type``)."""
    total = 20
    for step in range(warmup, total):
        options = {"num_warmup_steps": warmup, "num_training_steps": total}
        linear = _get_linear_schedule_with_warmup_lr_lambda(step, **options)
        cosine = _get_cosine_schedule_with_warmup_lr_lambda(step, num_cycles=0.5, **options)
        # factors <= 1, each side a few float64 operations in its own order: a few units of rounding apart
        rounding = 4 * sys.float_info.epsilon
        assert lr_factor(step, warmup, "linear", total) == pytest.approx(linear, rel=0, abs=rounding)
        assert lr_factor(step, warmup, "cosine", total) == pytest.approx(cosine, rel=0, abs=rounding)


def test_a_decaying_schedule_needs_the_run_length():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="model.lr_schedule=cosine decays over trainer.max_steps"):
        warmup_schedule(optimizer, 0, "cosine", total_steps=-1)


def test_fit_uses_the_linear_schedule_over_max_steps(small_config):
    config = small_config("rgra", **FAST, **{"model.init_args.learning_rate": 1e-4})
    main(["fit", "--config", str(config), "--model.lr_schedule=linear", "--model.warmup_steps=1"])
    # warm-up 1/1, then (4 - step) / 3 of the peak for updates 1, 2, 3
    rates = scalar_tags(config.parent / "runs")["train/learning_rate"]
    assert rates == pytest.approx([1e-4, 1e-4, 2e-4 / 3, 1e-4 / 3])


def test_a_decaying_schedule_without_max_steps_is_a_one_line_error(small_config, capsys):
    config = small_config("rgra", **FAST)
    args = ["fit", "--config", str(config), "--model.lr_schedule=cosine", "--trainer.max_steps=-1"]
    args += ["--trainer.max_epochs=1"]
    assert "model.lr_schedule=cosine decays over trainer.max_steps" in one_line_error(args, capsys)
