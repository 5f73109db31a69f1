"""The engine-independent rollout: prompts tokenized (no double BOS) and fitted to the context, stop tokens
and masks, grouping."""

import copy
import dataclasses
import warnings
from types import SimpleNamespace

import pytest
import torch

from rewards import MathVerifier
from rgra_lightning.cli import main
from rgra_lightning.data.base import ChatPrompt
from rgra_lightning.errors import ConfigError
from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout import HFEngine, SamplingConfig
from rgra_lightning.rollout.base import (
    Stops,
    adds_special_tokens,
    assemble_rollout,
    completion_ends,
    tokenize_prompts,
)
from tests.conftest import TINY_POLICY
from tests.conftest import sample as sample_rollout
from tests.tiny_models import PROMPTS, llama3_style_tokenizer, smollm2_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(str(TINY_POLICY)), load_tokenizer(str(TINY_POLICY))


def test_overlong_prompt_is_truncated_from_the_left_with_a_warning(tiny):
    policy, tokenizer = tiny  # context window: 64 tokens
    config = SamplingConfig(num_generations=2, max_new_tokens=8)
    long_prompt = "+".join(["1"] * 40) + "="  # 80 tokens
    with pytest.warns(UserWarning, match="1 of 2 prompts are longer than 56 tokens"):
        rollout = sample_rollout(policy, tokenizer, [long_prompt, "2+2="], config)
    assert rollout.truncated_prompts == 1
    assert rollout.prompt_length == 56
    kept = tokenizer.decode(rollout.input_ids[0, :56], skip_special_tokens=True)
    assert long_prompt.endswith(kept) and kept.endswith("1=")


def test_overlong_prompt_is_rejected_when_asked(tiny):
    policy, tokenizer = tiny
    config = SamplingConfig(num_generations=2, max_new_tokens=8, prompt_overflow="error")
    with pytest.raises(ConfigError, match="1 of 1 prompts are longer than 56 tokens .* longest has 80"):
        sample_rollout(policy, tokenizer, ["+".join(["1"] * 40) + "="], config)
    with pytest.raises(ConfigError, match="max_new_tokens=64 leaves no room"):
        sample_rollout(policy, tokenizer, ["1+1="], SamplingConfig(max_new_tokens=64))


def test_a_prompt_of_exactly_the_budget_fits_the_context():
    """56 tokens plus 8 new ones fill the 64-token window exactly: kept whole, neither refused nor counted as
    cut; one token more is over the budget."""
    tokenizer = load_tokenizer(str(TINY_POLICY))  # one token per character, no special tokens
    model = SimpleNamespace(device=torch.device("cpu"), config=SimpleNamespace(max_position_embeddings=64))
    config = SamplingConfig(num_generations=2, max_new_tokens=8, prompt_overflow="error")
    exact = "+".join(["1"] * 28) + "="  # 56 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "prompts are longer" warning either
        for overflow in ("error", "truncate"):
            settings = dataclasses.replace(config, prompt_overflow=overflow)
            ids, mask, cut = tokenize_prompts(tokenizer, [exact, "2+2="], settings, model)
            assert cut == 0 and ids.shape == (2, 56) and mask[0].sum().item() == 56
            assert tokenizer.decode(ids[0]) == exact
    with pytest.raises(ConfigError, match="1 of 2 prompts are longer than 56 tokens .* longest has 57"):
        tokenize_prompts(tokenizer, ["1" + exact, "2+2="], config, model)


def test_prompt_overflow_option_is_validated(small_config, capsys):
    args = ["--config", str(small_config("rgra")), "--model.sampling.prompt_overflow=drop"]
    with pytest.raises(SystemExit):
        main(args, run=False)
    error = capsys.readouterr().err
    assert "prompt_overflow" in error and "truncate" in error and "error" in error


def test_a_completion_ends_at_its_first_eos():
    ids = torch.tensor([[5, 6, 1, 7, 0], [1, 0, 0, 0, 0], [5, 5, 5, 5, 5]])
    assert completion_ends(None, ids, Stops((1,))) == [2, 0, None]  # no stop strings: no text needed
    assert completion_ends(None, ids, Stops(())) == [None, None, None]  # a model without any EOS id


def test_rollout_groups_samples_prompt_major():
    torch.manual_seed(0)
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    rollout = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(num_generations=4, max_new_tokens=28))
    assert rollout.input_ids.shape[0] == len(rollout.completions) == 12
    prompt_part = rollout.input_ids[:, : rollout.prompt_length]
    for row in range(12):  # rows 4k..4k+3 share prompt k
        assert torch.equal(prompt_part[row], prompt_part[(row // 4) * 4])
    assert all("boxed" in completion for completion in rollout.completions)
    assert policy.training  # sampling restores train mode


def test_a_completion_without_a_stop_token_within_the_limit_is_truncated():
    """At 14 new tokens some of the tiny policy's completions end with EOS (one exactly at the limit, at
    10 tokens) and some are cut; ``truncated`` marks exactly the rows with no stop token, and a selection
    of rows keeps their marks."""
    torch.manual_seed(0)
    tokenizer, policy = load_tokenizer(str(TINY_POLICY)), load_causal_lm(str(TINY_POLICY))
    for tokens in (10, 14, 28):
        config = SamplingConfig(num_generations=4, max_new_tokens=tokens)
        rollout = sample_rollout(policy, tokenizer, PROMPTS, config)
        has_stop = (rollout.completion_ids == tokenizer.eos_token_id).any(dim=1)
        assert torch.equal(rollout.truncated, ~has_stop)
        lengths = rollout.completion_mask.sum(dim=1)
        assert bool((lengths[rollout.truncated] == tokens).all())
        rows = torch.tensor([1, 5, 8])
        assert torch.equal(rollout.select(rows).truncated, rollout.truncated[rows])
    assert not rollout.truncated.any()  # 28 tokens: every completion finished
    assert rollout.select(slice(0, 4)).truncated.shape == (4,)


# ----------------------------------------------------------------------------------- prompt tokens

CHAT = [
    [{"role": "system", "content": "Be precise."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Compute 6*(-2).\nPut the answer in \\boxed{}."}],
]
CPU_MODEL = SimpleNamespace(device=torch.device("cpu"), config=SimpleNamespace())  # no context window


def chat_prompts(tokenizer) -> list[ChatPrompt]:
    return [
        ChatPrompt(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)) for m in CHAT
    ]


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[keep.bool()].tolist() for row, keep in zip(ids, mask, strict=True)]


def chat_tokenizer(template: str):
    if template == "llama3":
        return llama3_style_tokenizer()
    if template == "chatml":
        return smollm2_tokenizer()
    tokenizer = copy.deepcopy(llama3_style_tokenizer())  # adds a BOS that a ChatML template does not write
    tokenizer.chat_template = smollm2_tokenizer().chat_template
    return tokenizer


@pytest.mark.parametrize("template", ["llama3", "chatml", "chatml-bos-adding"])
def test_chat_prompts_are_tokenized_as_apply_chat_template_tokenizes_them(template):
    """No second BOS: the ids of a rendered chat prompt are ``apply_chat_template``'s, whether the template
    writes the BOS that the tokenizer would also add (Llama 3), there is none (ChatML, SmolLM2), or the
    tokenizer would add one that the template leaves out."""
    tokenizer = chat_tokenizer(template)
    expected = [
        tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True)["input_ids"] for m in CHAT
    ]
    config = SamplingConfig(num_generations=2)
    ids, mask, _ = tokenize_prompts(tokenizer, chat_prompts(tokenizer), config, CPU_MODEL)
    assert unpadded(ids, mask) == expected
    bos = tokenizer.bos_token_id
    if template == "chatml-bos-adding":
        assert tokenizer(str(chat_prompts(tokenizer)[0]))["input_ids"][0] == bos  # what is not wanted
        assert bos not in expected[0]
    if template == "llama3":
        # What the fix prevents: the tokenizer's own BOS before the template's.
        assert tokenizer(str(chat_prompts(tokenizer)[0]))["input_ids"][:2] == [bos, bos]
        assert [row[:2] for row in expected] == [
            [bos, tokenizer.convert_tokens_to_ids("<|start_header_id|>")]
        ] * 2


def test_plain_prompts_keep_the_tokenizers_bos_and_never_get_two():
    tokenizer = llama3_style_tokenizer()
    bos = tokenizer.bos_token_id
    text = tokenizer("What is 2+2?", add_special_tokens=False)["input_ids"]
    prompts = ["What is 2+2?", "<|begin_of_text|>What is 2+2?", chat_prompts(tokenizer)[1]]
    assert [adds_special_tokens(tokenizer, p) for p in prompts] == [True, False, False]
    ids, mask, _ = tokenize_prompts(tokenizer, prompts, SamplingConfig(num_generations=2), CPU_MODEL)
    rows = unpadded(ids, mask)
    assert rows[0] == rows[1] == [bos, *text]  # already rendered with its BOS: the same single BOS
    assert (
        rows[2]
        == tokenizer.apply_chat_template(CHAT[1], tokenize=True, add_generation_prompt=True)["input_ids"]
    )
    # Left padding of the mixed batch: each row's tokens end in the last column, pad before them.
    width = max(len(row) for row in rows)
    assert ids.shape == mask.shape == (3, width)
    for row, tokens in enumerate(rows):
        assert mask[row].tolist() == [0] * (width - len(tokens)) + [1] * len(tokens)
        assert (ids[row, : width - len(tokens)] == tokenizer.pad_token_id).all()


def test_prompts_of_the_tiny_policy_are_tokenized_as_before():
    """The shipped char tokenizer adds no special tokens: the ids and mask are those of one padded call."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    expected = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    ids, mask, _ = tokenize_prompts(tokenizer, PROMPTS, SamplingConfig(num_generations=2), CPU_MODEL)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])


# ------------------------------------------------------------------------------------- stop tokens


def test_a_completion_ends_at_the_first_of_several_stop_tokens():
    ids = torch.tensor([[5, 9, 6, 1, 0], [5, 1, 9, 0, 0], [9, 0, 0, 0, 0], [5, 5, 5, 5, 5]])
    assert completion_ends(None, ids, Stops((1, 9))) == [1, 1, 0, None]
    assert completion_ends(None, ids, Stops((9, 1))) == [1, 1, 0, None]


@pytest.mark.parametrize(
    ("generation_eos", "expected"),
    [(None, (1,)), (1, (1,)), (61, (1, 61)), ([61, 1], (1, 61)), ([1, 61, 96], (1, 61, 96))],
)
def test_stop_tokens_are_the_tokenizers_eos_and_every_generation_config_eos(
    tiny, generation_eos, expected, monkeypatch
):
    policy, tokenizer = tiny  # the tokenizer's EOS: 1
    monkeypatch.setattr(policy.generation_config, "eos_token_id", generation_eos)
    assert HFEngine().bind(policy, tokenizer).stop_ids == expected


@pytest.mark.parametrize("generation_eos", [[1, 97], -1])
def test_an_eos_id_outside_the_vocabulary_is_a_config_error(tiny, generation_eos, monkeypatch):
    policy, tokenizer = tiny  # 97 embedding rows
    monkeypatch.setattr(policy.generation_config, "eos_token_id", generation_eos)
    bad = 97 if generation_eos == [1, 97] else -1
    message = (
        rf"^EOS id {bad} \(generation_config.eos_token_id\) is outside the policy's vocabulary of 97 tokens"
    )
    with pytest.raises(ConfigError, match=message):
        HFEngine().bind(policy, tokenizer)


def test_an_engine_binds_a_policy_whose_embedding_has_a_lora_adapter(tiny):
    """peft wraps an adapted embedding in a layer without ``num_embeddings``; the vocabulary check reads
    the embedding weight's rows instead."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rgra_lightning.models import LoraConfig, add_lora

    tokenizer = tiny[1]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    policy = add_lora(LlamaForCausalLM(config), LoraConfig(rank=2, target_modules=["embed_tokens", "q_proj"]))
    assert not hasattr(policy.get_input_embeddings(), "num_embeddings")
    assert HFEngine().bind(policy, tokenizer).stop_ids == (tokenizer.eos_token_id,)


RUN_ON = " 18\n\nQuestion: Tom has 3 apples.\nAnswer: 3"  # a base model's answer, then an invented problem


def assembled(tokenizer, rows: list[list[int]], stops: Stops, lengths=None):
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    prompt = torch.ones(len(rows), 1, dtype=torch.long)
    return assemble_rollout(tokenizer, prompt, torch.ones_like(prompt), ids, 1, 0, stops, lengths)


def test_a_stop_string_ends_a_completion_at_the_token_that_completes_it():
    """SmolLM2's tokens " 18", "\\n", "\\n", "Question", ":" ...: "Question:" ends at token 6, which stays
    in the trained tokens; the scored text ends before it, so the invented problem's answer is not read."""
    tokenizer = smollm2_tokenizer()
    tokens = tokenizer.encode(RUN_ON)
    assert tokenizer.convert_ids_to_tokens(tokens[5:7]) == ["Question", ":"]
    eos = tokenizer.eos_token_id
    stops = Stops((eos,), ("Question:",))
    assert completion_ends(tokenizer, torch.tensor([tokens]), stops) == [6]
    rollout = assembled(tokenizer, [tokens], stops)
    assert rollout.completion_mask.tolist() == [[1] * 7 + [0] * (len(tokens) - 7)]
    assert rollout.completion_ids[0, 7:].eq(tokenizer.pad_token_id).all()
    assert rollout.completions == [" 18\n\n"] and rollout.truncated.tolist() == [False]
    assert MathVerifier().score(rollout.completions[0], "18").correct
    # Without the stop string the last number, the invented problem's answer, is what gets scored
    unstopped = assembled(tokenizer, [tokens], Stops((eos,)))
    assert unstopped.truncated.tolist() == [True]
    assert MathVerifier().score(unstopped.completions[0], "18").extracted == "3"


def test_a_stop_string_inside_a_token_a_stop_token_before_it_and_skipped_tokens():
    tokenizer = smollm2_tokenizer()
    tokens, eos = tokenizer.encode(RUN_ON), tokenizer.eos_token_id
    # "Quest" ends inside the token "Question" (5): that token ends the completion, the text before "Quest"
    inside = assembled(tokenizer, [tokens], Stops((eos,), ("Quest",)))
    assert inside.completion_mask.sum().item() == 6 and inside.completions == [" 18\n\n"]
    # A stop token before the stop string ends the completion first
    early = tokens[:3] + [eos] + tokens[3:]
    assert completion_ends(tokenizer, torch.tensor([early]), Stops((eos,), ("Question:",))) == [3]
    assert assembled(tokenizer, [early], Stops((eos,), ("Question:",))).completions == [" 18"]
    # Stop strings are looked for after the first ``skip`` tokens (min_new_tokens): the "\n" of token 3
    # does not count, the one of token 4 does, and the text is cut at it
    skipped = assembled(tokenizer, [tokens], Stops((eos,), ("\n",), skip=4))
    assert skipped.completion_mask.sum().item() == 5 and skipped.completions == [" 18\n"]
    # Rows of several lengths (vLLM's, each shorter than the batch): the tokens after a row's own are
    # padding, not part of it, whether or not it ended
    rows = [tokens[:3], tokens]
    short = assembled(tokenizer, rows, Stops((eos,), ("Answer:",)), lengths=[3, len(tokens)])
    assert short.completion_mask.sum(dim=1).tolist() == [3, 16] and short.truncated.tolist() == [True, False]
    assert short.completions == [" 18", RUN_ON[: RUN_ON.index("Answer:")]]


def test_the_text_ends_before_a_stop_token_the_tokenizer_does_not_call_special():
    """A generation config's extra EOS id can be an ordinary token (here SmolLM2's newline): decoding with
    ``skip_special_tokens`` would keep it, so the text must be cut before it explicitly."""
    tokenizer = smollm2_tokenizer()
    tokens, eos = tokenizer.encode(RUN_ON), tokenizer.eos_token_id
    newline = tokens[3]
    assert tokenizer.convert_ids_to_tokens(newline) == "\u010a" and newline not in tokenizer.all_special_ids
    rollout = assembled(tokenizer, [tokens, tokens[:3]], Stops((eos, newline)), lengths=[len(tokens), 3])
    assert rollout.completion_mask.sum(dim=1).tolist() == [4, 3]  # the stop token stays in the trained ones
    assert rollout.completions == [" 18", " 18"] and rollout.truncated.tolist() == [False, True]


@pytest.mark.parametrize(("stop", "skip", "end"), [(":", 7, 15), ("\n", 5, 13)])
def test_a_stop_string_within_the_skipped_tokens_does_not_end_the_completion(stop, skip, end):
    """min_new_tokens skips "Question:" (tokens 5-6) and the two newlines (3-4): the completion ends at the
    token completing the next occurrence, several tokens after the skipped ones (":" of "Answer:", 15, or
    the newline after "apples.", 13), not at the first token after the skip, whose text from the start
    holds the skipped occurrence."""
    tokenizer = smollm2_tokenizer()
    tokens, eos = tokenizer.encode(RUN_ON), tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(tokens[14:16]) == ["Answer", ":"]
    assert tokenizer.convert_ids_to_tokens(tokens[12:14]) == [".", "\u010a"]  # "\n" after "apples."
    stops = Stops((eos,), (stop,), skip=skip)
    assert completion_ends(tokenizer, torch.tensor([tokens]), stops) == [end]
    rollout = assembled(tokenizer, [tokens], stops)
    assert rollout.completion_mask.sum().item() == end + 1 and rollout.truncated.tolist() == [False]
    skipped = len(tokenizer.decode(tokens[:skip]))
    assert rollout.completions == [RUN_ON[: RUN_ON.index(stop, skipped)]]


def test_stop_strings_must_not_be_empty():
    with pytest.raises(ConfigError, match=r"stop_strings must not hold an empty string, got \['a', ''\]"):
        SamplingConfig(stop_strings=("a", ""))
