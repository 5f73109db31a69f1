"""TextDataModule: prompt building from templates (checked when the module is built), chat templates
(tokenized as ``apply_chat_template`` does: no second BOS; from the policy's vocabulary), system prompts
and few-shot examples."""

import datetime
import json
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

from rgra_lightning.arithmetic.warmup import WarmupDataModule
from rgra_lightning.data import ArithmeticDataModule, DatasetDataModule, JsonFilesDataModule
from rgra_lightning.data.base import ChatPrompt, question_label
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_tokenizer
from rgra_lightning.rollout import SamplingConfig
from rgra_lightning.rollout.base import tokenize_prompts
from tests.conftest import TINY_POLICY, one_line_error, shared_path
from tests.tiny_models import llama3_style_tokenizer, smollm2_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_prompts_have_system_prompt_few_shot_examples_and_generation_prompt():
    tokenizer = load_tokenizer(str(TINY_POLICY))
    tokenizer.chat_template = CHAT_TEMPLATE
    data = DatasetDataModule(
        preset="gsm8k",
        source=str(shared_path("datasets", "gsm8k")),
        prompt_format="chat",
        system_prompt="You are precise.",
        instruction="Put the answer in \\boxed{}.",
        few_shot=2,
        limit=3,
    )
    data.tokenizer = tokenizer
    data.setup()
    prompt = data.test_examples[0]["prompt"]
    assert prompt.startswith("<|system|>You are precise.\n<|user|>") and prompt.endswith("<|assistant|>")
    assert prompt.count("<|user|>") == 3 and prompt.count("The final answer is \\boxed{") == 2
    assert prompt.count("Put the answer in \\boxed{}.") == 3
    assert len(data.train_examples) == 7473 - 2  # the shots are not trained on


def test_chat_format_without_a_tokenizer_says_what_to_set():
    source = str(shared_path("datasets", "gsm8k"))
    data = DatasetDataModule(preset="gsm8k", source=source, prompt_format="chat")
    with pytest.raises(ConfigError, match="tokenizer_path"):
        data.setup()


def json_chat_module(tmp_path, **options) -> JsonFilesDataModule:
    rows = [{"question": "What is 2+2?", "answer": "4"}, {"question": "Compute 6*(-2).", "answer": "-12"}]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return JsonFilesDataModule(train_file=str(path), val_file=str(path), val_batch_size=2, **options)


@pytest.mark.parametrize("template", ["llama3", "chatml"])
def test_chat_prompts_reach_the_policy_as_apply_chat_template_encodes_them(tmp_path, template):
    """From the data loader to the prompt ids: one BOS with a Llama-3-style template (which writes it, and
    whose tokenizer would add another), none with SmolLM2's ChatML template."""
    tokenizer = llama3_style_tokenizer() if template == "llama3" else smollm2_tokenizer()
    pinned = {"date_string": "26 Jul 2024"}  # Llama 3.2's template writes the date
    data = json_chat_module(
        tmp_path,
        prompt_format="chat",
        system_prompt="Be precise.",
        instruction="Box the answer.",
        chat_template_kwargs=pinned,
    )
    data.tokenizer = tokenizer
    data.setup()
    prompts = next(iter(data.test_dataloader()))["prompt"]
    assert all(isinstance(prompt, ChatPrompt) for prompt in prompts)
    model = SimpleNamespace(device=torch.device("cpu"), config=SimpleNamespace())
    ids, mask, _ = tokenize_prompts(tokenizer, prompts, SamplingConfig(num_generations=2), model)
    for row, question in enumerate(["What is 2+2?", "Compute 6*(-2)."]):
        messages = [
            {"role": "system", "content": "Be precise."},
            {"role": "user", "content": f"{question}\nBox the answer."},
        ]
        expected = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, **pinned
        )
        assert ids[row][mask[row].bool()].tolist() == expected["input_ids"]
    bos_count = int((ids == tokenizer.bos_token_id).sum(dim=1)[0])
    assert bos_count == (1 if template == "llama3" else 3)  # ChatML's BOS <|im_start|> opens each turn


def test_a_chat_template_writing_todays_date_warns_unless_the_date_is_pinned(tmp_path):
    """Llama 3.x templates write today's date into every prompt, so a run's prompts change from day to day:
    without ``date_string`` a warning says how to pin it; ``data.chat_template_kwargs`` reaches the
    template, which then writes the given date."""
    before = datetime.date.today()
    data = json_chat_module(tmp_path, prompt_format="chat")
    data.tokenizer = llama3_style_tokenizer()
    with pytest.warns(UserWarning, match=r"^data: the chat template writes today's date into every prompt"):
        prompt = data.chat_prompt("What is 2+2?")
    dates = {f"Today Date: {day:%d %b %Y}\n" for day in (before, datetime.date.today())}
    assert any(date in prompt for date in dates)
    data = json_chat_module(
        tmp_path, prompt_format="chat", chat_template_kwargs={"date_string": "26 Jul 2024"}
    )
    data.tokenizer = llama3_style_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompt = data.chat_prompt("What is 2+2?")
    assert "Today Date: 26 Jul 2024\n" in prompt and prompt.endswith("<|end_header_id|>\n\n")


def test_plain_prompts_are_plain_strings(tmp_path):
    data = json_chat_module(tmp_path, prompt_template="Q: {question}\nA:")
    data.setup()
    prompt = data.test_examples[0]["prompt"]
    assert type(prompt) is str and prompt == "Q: What is 2+2?\nA:"


def test_chat_format_with_a_tokenizer_without_a_chat_template_is_a_config_error(tmp_path):
    data = json_chat_module(tmp_path, prompt_format="chat")
    data.tokenizer = load_tokenizer(str(TINY_POLICY))  # the shipped char tokenizer has no chat template
    with pytest.raises(
        ConfigError, match="the tokenizer has no chat template; use data.prompt_format=plain"
    ) as error:
        data.setup()
    assert "\n" not in str(error.value)


ESCAPE = "write {{ and }} for a literal brace"


@pytest.mark.parametrize(
    "template, expected",
    [
        (
            "Q: {question} put it in \\boxed{}",
            f" has the field {{}}, and the only field is {{question}}; {ESCAPE}",
        ),
        ("{level}: {question}", f" has the field {{level}}, and the only field is {{question}}; {ESCAPE}"),
        ("Q: {question} }", f": Single '}}' encountered in format string; {ESCAPE}"),
        ("Q: {{question}}", " must contain '{question}'"),
    ],
    ids=["literal-braces", "other-field", "lone-brace", "escaped-question"],
)
@pytest.mark.parametrize("module", [ArithmeticDataModule, JsonFilesDataModule, WarmupDataModule])
def test_a_prompt_template_with_braces_that_are_no_question_field_is_refused_when_built(
    tmp_path, module, template, expected
):
    """Such a template failed at the first prompt, after the model had loaded, with a traceback
    (``IndexError: Replacement index 0 out of range``, ``KeyError: 'level'``)."""
    files = {"train_file": str(tmp_path / "t.jsonl"), "val_file": str(tmp_path / "t.jsonl")}
    with pytest.raises(ConfigError) as error:
        module(prompt_template=template, **(files if module is JsonFilesDataModule else {}))
    assert str(error.value) == f"data.prompt_template{expected}, got {template!r}"


def test_doubled_braces_in_a_prompt_template_are_literal_braces(tmp_path):
    data = json_chat_module(tmp_path, prompt_template="Q: {question} Put it in \\boxed{{}}.")
    data.setup()
    assert data.test_examples[0]["prompt"] == "Q: What is 2+2? Put it in \\boxed{}."


def test_a_template_error_stops_the_cli_in_one_line(small_config, capsys):
    config = small_config("rgra")
    args = ["fit", "--config", str(config), "--data.prompt_template=Q: {question} put it in \\boxed{}"]
    assert one_line_error(args, capsys).startswith("error: data.prompt_template has the field {}, and")


def test_a_chat_tokenizer_with_another_vocabulary_than_the_policys_warns(tmp_path):
    """SmolLM2's ChatML prompts given to the character-level policy trained on prompts it cannot read,
    without a word. A tokenizer with the policy's vocabulary and a template of its own is meant."""
    policy = load_tokenizer(str(TINY_POLICY))
    tokenizer = load_tokenizer(str(TINY_POLICY))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp_path / "same")
    tokenizer.add_tokens(["<|im_start|>"], special_tokens=True)
    tokenizer.save_pretrained(tmp_path / "other")

    def setup(path: str) -> JsonFilesDataModule:
        data = json_chat_module(tmp_path, prompt_format="chat", tokenizer_path=path)
        data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(tokenizer=policy))
        data.setup()
        return data

    other = str(tmp_path / "other")
    expected = (
        f"data.tokenizer_path={other!r} is not the tokenizer of the policy {str(TINY_POLICY)!r}: their "
        f"vocabularies differ ({len(policy) + 1} and {len(policy)} tokens), so the policy reads these chat "
        "prompts as other tokens; leave data.tokenizer_path unset, or give one with the policy's vocabulary"
    )
    with pytest.warns(UserWarning, match=f"^{re.escape(expected)}$"):
        assert setup(other).test_examples[0]["prompt"] == "<|user|>What is 2+2?\n<|assistant|>"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(str(tmp_path / "same"))


@pytest.mark.parametrize(
    ("template", "label"),
    [
        ("Question: {question}\nAnswer:", "Question:"),
        ("Q: {question}\nA:", "Q:"),
        ("Solve it.\n  Problem: {question}", "Problem:"),
        ("{{Task}}: {question}", "{Task}:"),  # the label as the prompt writes it, braces unescaped
        ("{question}=", None),
        ("Compute {question}.", None),
        ("Question {question}", None),
    ],
)
def test_a_plain_template_that_labels_the_question_stops_completions_at_that_label(tmp_path, template, label):
    """A run-on completion of a labelled prompt starts an invented next problem with the label: it is
    the data's default stop string for plain prompts (lm-evaluation-harness stops GSM8K at Question:)."""
    assert question_label(template) == label
    plain = json_chat_module(tmp_path, prompt_template=template)
    assert plain.stop_strings == ((label,) if label else ())
    chat = json_chat_module(tmp_path, prompt_template=template, prompt_format="chat")
    assert chat.stop_strings == ()  # chat prompts end at the template's EOS token


def test_the_presets_stop_at_question_and_the_embedded_task_has_no_stop_string():
    source = str(shared_path("datasets", "gsm8k"))
    assert DatasetDataModule(preset="gsm8k", source=source).stop_strings == ("Question:",)
    assert ArithmeticDataModule().stop_strings == ()
    assert ArithmeticDataModule(prompt_template="Q: {question}\nA:").stop_strings == ("Q:",)


FEW_SHOT_ROWS = [
    {"question": "1+1", "answer": "2"},
    {"question": "2+2", "answer": "4"},
    {"question": "3+3", "answer": "6"},
]


def few_shot_module(tmp_path, few_shot: int = 2, **options) -> JsonFilesDataModule:
    """``FEW_SHOT_ROWS`` as training problems, ``few_shot`` of them shown as examples (two: the third is
    the one training problem left), and the validation problem ``5+5``."""
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in FEW_SHOT_ROWS))
    val.write_text(json.dumps({"question": "5+5", "answer": "10"}) + "\n")
    return JsonFilesDataModule(train_file=str(train), val_file=str(val), few_shot=few_shot, **options)


def shots_of(data: JsonFilesDataModule) -> list[dict[str, str]]:
    """The rows shown as examples: those no longer trained on, in file order."""
    [left] = data.records["train"]
    return [row for row in FEW_SHOT_ROWS if row["question"] != left["question"]]


def test_plain_few_shot_examples_are_solved_prompts_separated_by_a_blank_line(tmp_path):
    """Each example is the prompt (question and instruction) as the question's is written, a space and
    its boxed answer, then a blank line; the question's prompt comes last."""
    data = few_shot_module(tmp_path, prompt_template="Q: {question}\nA:", instruction="Box it.")
    data.setup()
    (first, second) = shots_of(data)
    expected = (
        f"Q: {first['question']}\nBox it.\nA: The final answer is \\boxed{{{first['answer']}}}.\n\n"
        f"Q: {second['question']}\nBox it.\nA: The final answer is \\boxed{{{second['answer']}}}.\n\n"
        "Q: 5+5\nBox it.\nA:"
    )
    assert data.val_examples == [{"prompt": expected, "reference": "10"}]


def test_chat_few_shot_examples_are_turns_before_the_question(tmp_path):
    """The system message, then each example as a user turn (question and instruction) answered by an
    assistant turn (its boxed answer), then the question's user turn and the assistant's generation
    prompt."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    tokenizer.chat_template = CHAT_TEMPLATE
    data = few_shot_module(tmp_path, prompt_format="chat", system_prompt="Be brief.", instruction="Box it.")
    data.tokenizer = tokenizer
    data.setup()
    (first, second) = shots_of(data)
    expected = (
        "<|system|>Be brief.\n"
        f"<|user|>{first['question']}\nBox it.\n"
        f"<|assistant|>The final answer is \\boxed{{{first['answer']}}}.\n"
        f"<|user|>{second['question']}\nBox it.\n"
        f"<|assistant|>The final answer is \\boxed{{{second['answer']}}}.\n"
        "<|user|>5+5\nBox it.\n<|assistant|>"
    )
    assert data.val_examples == [{"prompt": expected, "reference": "10"}]


def test_few_shot_examples_are_a_seeded_random_choice_of_the_training_problems(tmp_path):
    """The same ``seed`` shows the same examples; across seeds the choice moves (it is no fixed choice of
    the first rows). They are never trained on."""
    chosen = []
    for seed in range(8):
        data = few_shot_module(tmp_path, seed=seed)
        data.setup()
        again = few_shot_module(tmp_path, seed=seed)
        again.setup()
        assert again.records["train"] == data.records["train"]
        [left] = data.records["train"]
        assert left["question"] not in data.val_examples[0]["prompt"]
        chosen.append(left["question"])
    assert len(set(chosen)) > 1


def test_few_shot_needs_a_training_problem_left_to_train_on(tmp_path):
    """As many examples as training problems would leave none to train on."""
    data = few_shot_module(tmp_path, few_shot=3)
    with pytest.raises(ConfigError) as error:
        data.setup()
    assert str(error.value) == "data.few_shot=3 needs more than 3 training problems"
