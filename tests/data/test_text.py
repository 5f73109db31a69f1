"""TextDataModule: prompt building from templates, chat templates, system prompts and few-shot examples."""

import pytest

from rgra_lightning.data import DatasetDataModule
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_tokenizer
from tests.conftest import TINY_POLICY, shared_path

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

