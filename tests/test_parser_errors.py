"""Which source of a command line a config mistake is reported in: the first, in the parser's order, that
sets the option (to the refused value, where the parser names one)."""

from rgra_lightning.parser_errors import Mistake, where_set


def test_the_first_source_that_sets_the_refused_value_is_named(tmp_path):
    base, preset = tmp_path / "base.yaml", tmp_path / "preset.yaml"
    base.write_text("model:\n  init_args:\n    lora:\n      rank: 8\n")
    preset.write_text("model:\n  init_args:\n    lora:\n      rank: eight\n")
    rank = Mistake("model.lora.rank", "...", "eight")
    assert where_set(rank, ["fit", "--config", str(base), "--config", str(preset)]) == f"{preset}:4"
    # the base sets the option too, to a value the parser took
    assert where_set(rank, ["--config", str(preset), "--config", str(base)]) == f"{preset}:4"
    assert where_set(rank, ["--model.lora.rank=eight", "--config", str(preset)]) is None  # the command line
    assert where_set(rank, ["--model.lora", "{rank: eight}", "--config", str(preset)]) is None
    assert where_set(rank, ["--config", str(base)]) is None  # named nowhere


def test_an_unknown_key_is_named_where_it_is_first_set(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("trainer:\n  max_steps: 3\n  max_step: 4\n")
    mistake = Mistake("trainer.max_step", "...")
    assert where_set(mistake, ["--config", str(config), "--trainer.max_step=5"]) == f"{config}:3"
    assert where_set(mistake, ["--trainer.max_step", "5", f"--config={config}"]) is None
    # an option appended to on the command line (``+=``) is the option itself
    callbacks = Mistake("trainer.callbacks", "...", "Foo")
    assert where_set(callbacks, ["--config", str(config), "--trainer.callbacks+=Foo"]) is None
