"""ArithmeticDataModule: the embedded task's sizes and limits, and its plain and chat prompts."""

from rgra_lightning.data import ArithmeticDataModule
from rgra_lightning.data.base import ChatPrompt
from tests.conftest import printed_config
from tests.tiny_models import smollm2_tokenizer


def test_arithmetic_task_applies_limit_and_train_size():
    full = ArithmeticDataModule(val_size=128)
    full.setup()
    data = ArithmeticDataModule(val_size=128, limit=3, train_size=50)
    data.setup()
    assert data.val_examples == data.test_examples == full.val_examples[:3]
    assert len(data.train_examples) == 50 and len(full.train_examples) == 1287 - 128
    assert all(e in full.train_examples for e in data.train_examples)
    again = ArithmeticDataModule(val_size=128, limit=3, train_size=50)
    again.setup()
    assert again.train_examples == data.train_examples
    assert len(data.train_dataloader()) == 50 // 8


def test_the_defaults_keep_the_warm_up_prompts():
    data = ArithmeticDataModule(val_size=100)
    data.setup()
    assert data.val_examples[0] == {"prompt": "6*(-2)=", "reference": "-12"}
    assert not isinstance(data.val_examples[0]["prompt"], ChatPrompt)


def test_another_data_seed_validates_on_the_problems_the_warm_up_held_out():
    """``data.seed=1`` moved the split: 118 of its 128 validation problems were warm-up training problems of
    the shipped policy (an audit). The split follows ``split_seed``, the warm-up's, alone."""
    from rgra_lightning.arithmetic.warmup import WorkedAnswers

    warmed_up = {p.question for p in WorkedAnswers("{question}=", 0.35, 0.7, 128, 0, 0).problems}
    for seed in (0, 1):
        data = ArithmeticDataModule(seed=seed)
        data.setup()
        questions = {example["prompt"].removesuffix("=") for example in data.val_examples}
        assert len(questions) == 128 and not questions & warmed_up
    moved = ArithmeticDataModule(split_seed=1)
    moved.setup()
    assert {example["prompt"].removesuffix("=") for example in moved.val_examples} & warmed_up


def test_chat_prompts_ask_the_question_in_the_user_message_with_the_instruction():
    """The chat rendering is the tokenizer's template over ``prompt_template``'s question and the
    instruction on the next line; plain prompts take the instruction the same way."""
    tokenizer = smollm2_tokenizer()
    options = {"prompt_template": "Compute {question}.", "instruction": "Box it.", "val_size": 100}
    chat = ArithmeticDataModule(prompt_format="chat", system_prompt="Be brief.", **options)
    chat.tokenizer = tokenizer
    chat.setup()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compute 6*(-2).\nBox it."},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.val_examples[0] == {"prompt": expected, "reference": "-12"}
    assert isinstance(chat.val_examples[0]["prompt"], ChatPrompt)
    plain = ArithmeticDataModule(**options)
    plain.setup()
    assert plain.val_examples[0]["prompt"] == "Compute 6*(-2).\nBox it."


def test_the_shipped_chat_config_renders_the_problems_through_the_policys_template():
    """configs/smollm2-135m/arithmetic-rgra.yaml over the GSM8K config chooses this module; its options,
    given SmolLM2's tokenizer as the policy's, render the held-out problems as chat prompts."""
    data = printed_config(
        "configs/smollm2-135m/gsm8k-rgra.yaml", "configs/smollm2-135m/arithmetic-rgra.yaml"
    )["data"]
    assert data["class_path"] == "rgra_lightning.ArithmeticDataModule"
    module = ArithmeticDataModule(**data["init_args"])
    module.tokenizer = smollm2_tokenizer()
    module.setup()
    assert len(module.val_examples) == 100 and len(module.train_examples) == 1187
    assert "Compute 6*(-2).\nPut your final answer within \\boxed{}." in module.val_examples[0]["prompt"]
