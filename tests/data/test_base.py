"""PromptDataModule: options each source takes, validation sizes, full batches on every rank."""

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml

from rgra_lightning.cli import main
from rgra_lightning.data import ArithmeticDataModule, JsonFilesDataModule
from rgra_lightning.data.base import check_val_size
from rgra_lightning.errors import ConfigError
from tests.conftest import one_line_error


@pytest.mark.parametrize(
    "data_module, option",
    [
        ("ArithmeticDataModule", "--data.few_shot=2"),
        ("ArithmeticDataModule", "--data.reference_format=answer"),
        ("ArithmeticDataModule", "--data.source=../shared/datasets/gsm8k"),
        ("JsonFilesDataModule", "--data.val_split=test"),
        ("JsonFilesDataModule", "--data.val_size=10"),
        ("DatasetDataModule", "--data.val_file=v.jsonl"),
    ],
)
def test_a_data_module_rejects_the_options_of_other_sources(small_config, capsys, data_module, option):
    """The config parser refuses an option the chosen source does not read (it would be ignored)."""
    config = small_config("rgra", data_module=None if data_module == "ArithmeticDataModule" else data_module)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), option], run=False)
    assert exit_info.value.code == 2
    assert option.split("=")[0].removeprefix("--data.") in capsys.readouterr().err


@pytest.mark.parametrize(
    "task, replacement",
    [
        ("arithmetic", "rgra_lightning.ArithmeticDataModule"),
        ("files", "rgra_lightning.JsonFilesDataModule"),
        ("dataset", "rgra_lightning.DatasetDataModule"),
    ],
)
def test_a_config_with_the_old_data_module_says_what_to_write_instead(tmp_path, capsys, task, replacement):
    config = tmp_path / "old.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {"class_path": "rgra_lightning.MathPromptDataModule", "init_args": {"task": task}}}
        )
    )
    error = one_line_error(["fit", "--config", str(config)], capsys)
    assert f"write class_path: {replacement} and remove init_args.task" in error and str(config) in error


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"val_size": -1}, "data.val_size must be >= 1, got -1"),
        ({"val_size": 0}, "data.val_size must be >= 1, got 0"),
        ({"val_size": 1287}, "data.val_size=1287 must be between 1 and 1286: it holds out validation"),
        ({"val_size": 2000}, "data.val_size=2000 must be between 1 and 1286: it holds out validation"),
    ],
)
def test_val_size_must_leave_training_problems(options, expected):
    with pytest.raises(ConfigError, match=f"^{expected}"):
        ArithmeticDataModule(**options).setup()


def test_training_loader_needs_one_full_batch_on_every_rank(tmp_path):
    exact = ArithmeticDataModule(val_size=1287 - 32, batch_size=32)
    exact.setup()
    assert len(exact.train_examples) == 32 and len(exact.train_dataloader()) == 1
    short = ArithmeticDataModule(val_size=1287 - 31, batch_size=32)
    short.setup()
    with pytest.raises(
        ConfigError,
        match=r"^data.batch_size=32 is larger than the 31 training problems, so there is no full training "
        r"batch; data.val_size=1256 holds out too many, use 1 to 1255$",
    ):
        short.train_dataloader()
    file = tmp_path / "train.jsonl"
    file.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(10))
    )
    data = JsonFilesDataModule(train_file=str(file), val_file=str(file), batch_size=5)
    data.setup()
    data.trainer = SimpleNamespace(world_size=2)  # each rank's DistributedSampler yields 5
    assert len(data.train_dataloader()) == 2
    data = JsonFilesDataModule(train_file=str(file), val_file=str(file), batch_size=6)
    data.setup()
    data.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(
        ConfigError, match=r"than the 5 training problems per rank \(10 on 2 ranks\), so .* batch$"
    ):
        data.train_dataloader()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--data.batch_size=2000"], "data.batch_size=2000 is larger than the 1279 training problems"),
        (["--data.val_size=2000"], "data.val_size=2000 must be between 1 and 1286"),
        (
            ["--data.batch_size=32", "--data.val_size=1280"],
            "no full training batch; data.val_size=1280 holds out too many, use 1 to 1255",
        ),
        (["files"], "data.batch_size=4 is larger than the 2 training problems"),
    ],
    ids=["batch-size", "val-size-beyond-all", "val-size-beyond-a-batch", "two-row-file"],
)
def test_fit_without_a_training_batch_is_a_one_line_error(small_config, tmp_path, capsys, extra, expected):
    file = tmp_path / "two.jsonl"
    file.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n')
    if extra == ["files"]:
        config = small_config("rgra", data_module="JsonFilesDataModule")
        extra = [f"--data.train_file={file}", f"--data.val_file={file}"]
    else:
        config = small_config("rgra")
    args = ["fit", "--config", str(config), "--trainer.logger=false", *extra]
    error = one_line_error(args, capsys)
    assert expected in error
    assert not (tmp_path / "hf_model").exists()  # the untrained policy is not exported


def test_a_train_size_larger_than_the_training_split_warns_and_trains_on_all(tmp_path):
    """The run then has fewer updates per epoch than the config's sizes suggest (75 batches of the paper's
    1,800 problems), so it is said, not silent."""
    file = tmp_path / "train.jsonl"
    file.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(10))
    )
    data = JsonFilesDataModule(train_file=str(file), val_file=str(file), batch_size=5, train_size=12)
    with pytest.warns(
        UserWarning, match=r"^data.train_size=12, and the training split has 10 problems: training"
    ):
        data.setup()
    assert len(data.train_examples) == 10
    data = JsonFilesDataModule(train_file=str(file), val_file=str(file), batch_size=5, train_size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.setup()


def test_chat_only_options_given_for_plain_prompts_warn(tmp_path):
    """A system prompt would otherwise be dropped from every prompt without a word."""
    file = tmp_path / "train.jsonl"
    file.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    files = {"train_file": str(file), "val_file": str(file)}
    with pytest.warns(UserWarning, match=r"^data.system_prompt: used with data.prompt_format=chat only"):
        JsonFilesDataModule(**files, system_prompt="Be brief.")
    with pytest.warns(UserWarning, match=r"^data.chat_template_kwargs: used with data.prompt_format=chat"):
        JsonFilesDataModule(**files, chat_template_kwargs={"date_string": "26 Jul 2024"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        JsonFilesDataModule(**files, system_prompt="Be brief.", prompt_format="chat")
        JsonFilesDataModule(**files)


def numbered_problems(tmp_path, count: int) -> str:
    """A JSON Lines file of ``count`` problems ``i+1`` (answer ``i + 1``), in order."""
    file = tmp_path / "problems.jsonl"
    file.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(count))
    )
    return str(file)


def test_the_training_loader_shuffles_in_an_order_that_data_seed_alone_sets(tmp_path):
    """Full batches of all the problems in a shuffled order (not the file's), the same for the same
    ``data.seed`` whatever the global torch seed, and another for another ``data.seed``."""
    file = numbered_problems(tmp_path, 12)

    def order(seed: int, global_seed: int) -> list[str]:
        data = JsonFilesDataModule(train_file=file, val_file=file, batch_size=4, seed=seed)
        data.setup()
        torch.manual_seed(global_seed)  # the global generator must play no part
        batches = list(data.train_dataloader())
        assert [len(batch["prompt"]) for batch in batches] == [4, 4, 4]
        return [prompt for batch in batches for prompt in batch["prompt"]]

    in_file_order = [f"{i}+1=" for i in range(12)]
    first = order(0, global_seed=1)
    assert sorted(first) == sorted(in_file_order) and first != in_file_order
    assert order(0, global_seed=2) == first
    assert order(1, global_seed=1) != first


def test_evaluation_batches_keep_the_split_order_and_number_each_problem_in_it(tmp_path):
    """Validation and test batches are the split in order, ``val_batch_size`` at a time (the last one
    short), each problem with its 0-based ``index`` in the split: the index ``distributed.counted_on_rank``
    counts by."""
    file = numbered_problems(tmp_path, 5)
    data = JsonFilesDataModule(train_file=file, val_file=file, test_file=file, val_batch_size=2)
    data.setup()
    for loader in (data.val_dataloader(), data.test_dataloader()):
        batches = list(loader)
        assert [batch["index"] for batch in batches] == [[0, 1], [2, 3], [4]]
        assert [batch["prompt"] for batch in batches] == [["0+1=", "1+1="], ["2+1=", "3+1="], ["4+1="]]
        assert [batch["reference"] for batch in batches] == [["1", "2"], ["3", "4"], ["5"]]


def test_a_training_split_that_fills_a_batch_on_every_rank_with_a_repeat_is_accepted(tmp_path):
    """9 problems on 2 ranks: each rank's sampler yields ceil(9 / 2) = 5, a full batch of 5 (one rank's
    fifth a repeat), so ``batch_size=5`` trains; 10 would be needed only without the padding."""
    file = numbered_problems(tmp_path, 9)
    data = JsonFilesDataModule(train_file=file, val_file=file, batch_size=5)
    data.setup()
    data.trainer = SimpleNamespace(world_size=2)
    assert len(data.train_dataloader()) == 1  # the single-process loader's view: 9 // 5


def test_a_val_size_with_fewer_than_two_problems_says_to_give_a_validation_split():
    with pytest.raises(ConfigError) as error:
        check_val_size(1, 1, "usable rows of one.jsonl")
    assert str(error.value) == (
        "data.val_size=1: the 1 usable rows of one.jsonl are too few to hold out validation problems from; "
        "give a validation split"
    )


def test_train_size_takes_a_seeded_random_subset_of_the_training_problems(tmp_path):
    """The same ``data.seed`` trains on the same problems; across seeds the subset moves (it is no fixed
    choice of the first rows of the file), and every problem in it is a training problem."""
    file = numbered_problems(tmp_path, 20)
    subsets = []
    for seed in range(4):
        chosen = []
        for _ in range(2):
            data = JsonFilesDataModule(train_file=file, val_file=file, train_size=5, seed=seed)
            data.setup()
            chosen.append(sorted(e["prompt"] for e in data.train_examples))
        assert chosen[0] == chosen[1] and len(set(chosen[0])) == 5
        assert set(chosen[0]) <= {f"{i}+1=" for i in range(20)}
        subsets.append(tuple(chosen[0]))
    assert len(set(subsets)) > 1
