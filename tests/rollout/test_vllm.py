"""VLLMEngine's adapter logic without a GPU: the one-line error where vLLM cannot run, vLLM's parameter
names, the merged LoRA weights, the calls that push weights (their number, dtypes and order around sleep),
the trainer's state around vLLM (random generators, LOCAL_RANK, autocast), the ``SamplingParams`` it asks
for, per-prompt seeds, and vLLM's outputs as a ``Rollout``. The sampling itself is checked by the engine
contract (tests/rollout/test_engine_contract.py)."""

import copy
import importlib.util
import os
import random
import sys
import types
import warnings
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rgra_lightning.cli import main
from rgra_lightning.errors import ConfigError
from rgra_lightning.evaluation import EvaluationConfig
from rgra_lightning.losses import LossConfig
from rgra_lightning.models import load_tokenizer
from rgra_lightning.module import check_options
from rgra_lightning.rollout import SamplingConfig, VLLMEngine
from rgra_lightning.rollout import vllm as vllm_engine
from rgra_lightning.rollout.base import prompt_token_ids
from rgra_lightning.rollout.vllm import (
    completion_tensors,
    request_seeds,
    sampling_kwargs,
    vllm_name,
    vllm_weights,
)
from tests.conftest import FAST, TINY_POLICY, one_line_error, scalar_tags
from tests.rollout.vllm_standin import standin_vllm
from tests.tiny_models import PROMPTS, tiny_policy

VLLM_RUNS_HERE = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY_POLICY))


@pytest.fixture
def standin(monkeypatch):
    """The stand-in ``vllm`` module in place of the real one, and the list of calls its engines record."""
    module, calls = standin_vllm()
    monkeypatch.setattr(vllm_engine, "_load_vllm", lambda: module)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # restored after the test: the engine sets them for vLLM
        monkeypatch.delenv(name)
    return module, calls


# ------------------------------------------------------------------------- where vLLM cannot run


@pytest.mark.skipif(VLLM_RUNS_HERE, reason="CUDA and vllm are present: the engine can be chosen")
def test_choosing_the_vllm_engine_without_cuda_or_vllm_is_a_one_line_error(small_config, capsys):
    config = small_config("rgra")
    line = one_line_error(
        ["fit", "--config", str(config), "--model.rollout=rgra_lightning.rollout.VLLMEngine"], capsys
    )
    assert "VLLMEngine needs a CUDA GPU and vllm>=0.34,<0.35 (pip install -e '.[vllm]')" in line


def test_the_error_says_what_is_missing(monkeypatch, tokenizer):
    policy = tiny_policy("llama", tokenizer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="this machine has no CUDA device"):
        VLLMEngine().bind(policy, tokenizer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match="vllm is not installed"):
        VLLMEngine().bind(policy, tokenizer)
    for version in ("0.31.0", "0.35.0"):  # below the floor; a release laid out otherwise, perhaps
        installed = types.ModuleType("vllm")
        installed.__version__ = version
        monkeypatch.setitem(sys.modules, "vllm", installed)
        with pytest.raises(ConfigError, match=f"vllm>=0.34,<0.35 .*: vllm {version} is installed$"):
            VLLMEngine().bind(policy, tokenizer)


def test_an_engine_argument_vllm_does_not_take_is_refused_when_the_engine_is_bound(standin, tokenizer):
    """A typo in engine_kwargs would otherwise stop the run at the first rollout, in vLLM's traceback."""
    policy = tiny_policy("llama", tokenizer)
    with pytest.raises(
        ConfigError,
        match=r"^model.rollout.engine_kwargs: vllm.LLM takes no argument 'max_model_lenn'; "
        r"did you mean 'max_model_len'\?$",
    ):
        VLLMEngine(engine_kwargs={"max_model_lenn": 64}).bind(policy, tokenizer)
    VLLMEngine(engine_kwargs={"max_model_len": 64, "load_format": "dummy"}).bind(policy, tokenizer)


def test_engine_options_are_checked():
    with pytest.raises(ConfigError, match="gpu_memory_utilization must be in"):
        VLLMEngine(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="sleep_level must be 1, 2 or null"):
        VLLMEngine(sleep_level=3)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("logprobs_mode", "the sampler correction needs"),
        ("seed", "each request carries its own seed"),
        ("dtype", "use model.rollout.dtype"),
    ],
)
def test_engine_kwargs_the_engine_sets_itself_are_refused(key, why):
    """``engine_kwargs`` go over the engine's own arguments: ``logprobs_mode: raw_logprobs`` would silently
    hand the sampler correction log-probs of another distribution than the one sampled from."""
    with pytest.raises(
        ConfigError, match=rf"^model.rollout.engine_kwargs.{key}: VLLMEngine sets it itself \({why}"
    ):
        VLLMEngine(engine_kwargs={key: "x"})


def test_a_policy_with_modules_to_save_is_refused_when_the_engine_is_bound(standin, tokenizer):
    """peft's modules_to_save copies have names vLLM does not know and are not LoRA merges: refused at
    bind, not in vLLM's loader at the first push."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    policy = get_peft_model(
        tiny_policy("llama", tokenizer),
        PeftLoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    with pytest.raises(ConfigError, match=r"^VLLMEngine cannot push peft's ModulesToSaveWrapper \(.*lm_head"):
        VLLMEngine().bind(policy, tokenizer)


def test_min_p_with_top_p_is_refused():
    """vLLM applies min-p before top-p, HFEngine after it: the pair is refused. With top-k the order does
    not matter (neither drops the most probable token, which min-p's cut is relative to)."""
    engine = VLLMEngine()
    with pytest.raises(ConfigError, match=r"^model.sampling: min_p=0.1 with top_p=0.9: .*not both$"):
        engine.check_sampling(SamplingConfig(min_p=0.1, top_p=0.9))
    engine.check_sampling(SamplingConfig(min_p=0.1))
    engine.check_sampling(SamplingConfig(min_p=0.1, top_k=20))
    engine.check_sampling(SamplingConfig(top_p=0.9, top_k=20))


def test_vllm_names_drop_peft_levels():
    assert vllm_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    peft = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert vllm_name(peft) == "model.layers.0.self_attn.q_proj.weight"
    assert vllm_name("model.layers.1._checkpoint_wrapped_module.mlp.down_proj.weight") == (
        "model.layers.1.mlp.down_proj.weight"
    )


def test_a_full_policy_is_pushed_as_its_parameters(tokenizer):
    policy = tiny_policy("llama", tokenizer)
    pushed = list(vllm_weights(policy))
    expected = list(policy.named_parameters())  # tied embeddings: once
    assert [name for name, _ in pushed] == [name for name, _ in expected]
    assert "lm_head.weight" not in dict(pushed)
    for (_, tensor), (_, parameter) in zip(pushed, expected, strict=True):
        assert torch.equal(tensor, parameter)


def test_a_lora_policy_is_pushed_merged_under_the_base_names_and_left_unchanged(tokenizer):
    policy = tiny_policy("llama-lora", tokenizer)
    state = {name: value.clone() for name, value in policy.state_dict().items()}
    pushed = dict(vllm_weights(policy))
    plain = tiny_policy("llama", tokenizer)
    assert list(pushed) == [name for name, _ in plain.named_parameters()]  # no lora_ names
    merged = copy.deepcopy(policy).merge_and_unload()  # peft's own merge, on a copy
    # Equal, not close: a float32 policy is merged as peft merges it, W + get_delta_weight (B @ A, then
    # the scaling), the same multiply and addition on the same shapes, hence the same roundings.
    for name, parameter in merged.named_parameters():
        assert torch.equal(pushed[name], parameter), name
    # By hand for one layer: W + (alpha / r) B A. The scaling, 32 / 4 = 8, is a power of two: scaling B
    # before the multiply rounds nothing, so this order gives the same bits.
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    scaling = layer.scaling["default"]
    assert scaling == 8
    by_hand = (
        layer.base_layer.weight + scaling * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    assert torch.equal(pushed["model.layers.0.self_attn.q_proj.weight"], by_hand)
    assert not torch.equal(by_hand, layer.base_layer.weight)
    for name, value in policy.state_dict().items():  # the policy itself: not merged, not changed
        assert torch.equal(value, state[name]), name
    assert not layer.merged
    with policy.disable_adapter():  # adapters off (the KL reference): the base weights
        assert torch.equal(
            dict(vllm_weights(policy))["model.layers.0.self_attn.q_proj.weight"], layer.base_layer.weight
        )


# --------------------------------------------------------------------------------- weight pushes


def pushes_and_lifecycle(calls):
    """The recorded calls with each ``load_weights`` call and the tensors it read folded into
    ("load_weights", count of tensors)."""
    folded = []
    for call in calls:
        if call[0] == "weight":
            folded[-1] = ("load_weights", folded[-1][1] + 1)
        elif call[0] == "load_weights":
            folded.append(("load_weights", 0))
        else:
            folded.append(call if call[0] != "LLM" else ("LLM",))
    return folded


@pytest.mark.parametrize("kind", ["llama", "llama-lora"])
def test_level_2_sleep_pushes_the_weights_before_every_rollout_and_evaluation_loop(standin, tokenizer, kind):
    """As the module drives it: a training rollout is released at once; an evaluation loop of two
    batches keeps the engine awake between them, so its weights go over once, and is released at its end."""
    _, calls = standin
    policy = tiny_policy(kind, tokenizer)
    engine = VLLMEngine().bind(policy, tokenizer)
    tensors = len(list(vllm_weights(policy)))  # 29 for the tiny Llama, LoRA or not
    config = SamplingConfig(num_generations=2, max_new_tokens=4)
    engine.generate(PROMPTS, config)
    engine.release()
    engine.update_weights()
    engine.generate(PROMPTS, config)
    engine.release()
    engine.generate(PROMPTS, config, greedy=True)  # no update before it: pushed all the same
    engine.generate(PROMPTS, config, greedy=True)
    engine.release()
    engine.release()  # already asleep: nothing to do
    woken = [
        ("wake_up", ("weights",)),
        ("load_weights", tensors),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
    ]
    start = [("LLM",), ("load_weights", tensors), ("reset_prefix_cache",), ("generate", 3), ("sleep", 2)]
    training = [*woken, ("generate", 3), ("sleep", 2)]
    evaluation = [*woken, ("generate", 3), ("generate", 3), ("sleep", 2)]
    assert pushes_and_lifecycle(calls) == start + training + evaluation


def test_a_push_that_leaves_a_vllm_parameter_unset_is_an_error(standin, tokenizer, monkeypatch):
    """After a level-2 sleep a parameter the push left out holds garbage: the first push names it."""
    pushed = vllm_engine.vllm_weights
    monkeypatch.setattr(
        vllm_engine,
        "vllm_weights",
        lambda policy, dtype=None: ((n, t) for n, t in pushed(policy, dtype) if "layers.1.mlp" not in n),
    )
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    with pytest.raises(
        ConfigError,
        match=r"^VLLMEngine: the policy's weights left 3 of vLLM's parameters "
        r"unset \(model.layers.1.mlp.down_proj.weight, .*\): vLLM's model",
    ):
        engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=4))


def test_torchs_cached_memory_goes_back_before_vllm_wakes_up(standin, tokenizer, monkeypatch):
    """vLLM's sleep-mode allocator takes memory from CUDA, not from torch's cache, and vLLM checks at start
    that its share is free: torch's cache is emptied before it starts and before each wake-up."""
    _, calls = standin
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    config = SamplingConfig(num_generations=2, max_new_tokens=4)
    for _ in range(2):
        engine.generate(PROMPTS, config)
        engine.release()
    names = [call[0] for call in calls if call[0] in ("empty_cache", "LLM", "wake_up", "sleep")]
    assert names == ["empty_cache", "LLM", "sleep", "empty_cache", "wake_up", "wake_up", "sleep"]


@pytest.mark.parametrize("kind", ["llama", "llama-lora"])
def test_a_push_is_one_load_weights_call_of_tensors_in_vllms_dtype(standin, tokenizer, kind):
    """vLLM warns for every tensor it narrows into its own dtype (about 290 lines per push for Qwen2.5-0.5B)
    and builds its weight loader again at every call: a push is one call, of tensors already in vLLM's dtype
    (a LoRA weight merged in float32 and rounded once)."""
    _, calls = standin
    policy = tiny_policy(kind, tokenizer)  # float32
    engine = VLLMEngine(dtype="bfloat16", sleep_level=None).bind(policy, tokenizer)
    engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
    assert [call for call in calls if call[0] == "load_weights"] == [("load_weights",)]
    expected = [(name, tensor.to(torch.bfloat16)) for name, tensor in vllm_weights(policy)]
    received = [call[1:] for call in calls if call[0] == "weight"]  # (name, dtype)
    assert received == [(name, torch.bfloat16) for name, _ in expected]
    for name, tensor in expected:
        assert torch.equal(engine._llm.model.parameters[name], tensor), name


def test_a_push_gathers_each_tensor_only_as_vllm_reads_it(standin, tokenizer, monkeypatch):
    """One streamed call, not a list: only one gathered FSDP2 tensor is alive at a time, as with one call
    per tensor."""
    _, calls = standin
    gather = vllm_engine._full

    def recording(tensor):
        calls.append(("gather",))
        return gather(tensor)

    monkeypatch.setattr(vllm_engine, "_full", recording)
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
    push = [call[0] for call in calls if call[0] in ("load_weights", "gather", "weight")]
    assert push == ["load_weights"] + ["gather", "weight"] * 29


def test_level_1_sleep_pushes_only_after_an_update(standin, tokenizer):
    _, calls = standin
    engine = VLLMEngine(sleep_level=1).bind(tiny_policy("llama", tokenizer), tokenizer)
    config = SamplingConfig(num_generations=2, max_new_tokens=4)
    for update in (False, False, True):
        if update:
            engine.update_weights()
        engine.generate(PROMPTS, config)
        engine.release()
    woken = [("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), ("generate", 3), ("sleep", 1)]
    pushed = [("wake_up", ("weights",)), ("load_weights", 29), ("reset_prefix_cache",)]
    assert pushes_and_lifecycle(calls) == [
        ("LLM",),
        ("load_weights", 29),
        ("reset_prefix_cache",),
        ("generate", 3),
        ("sleep", 1),
        *woken,
        *pushed,
        *woken[1:],
    ]


def test_without_sleep_the_engine_keeps_its_memory_and_pushes_after_updates(standin, tokenizer):
    _, calls = standin
    engine = VLLMEngine(sleep_level=None).bind(tiny_policy("llama", tokenizer), tokenizer)
    config = SamplingConfig(num_generations=2, max_new_tokens=4)
    for update in (False, False, True):
        if update:
            engine.update_weights()
        engine.generate(PROMPTS, config)
        engine.release()
    push = [("load_weights", 29), ("reset_prefix_cache",)]
    assert pushes_and_lifecycle(calls) == [
        ("LLM",),
        *push,
        ("generate", 3),
        ("generate", 3),
        *push,
        ("generate", 3),
    ]
    assert calls[0][1]["enable_sleep_mode"] is False


def test_the_engine_starts_vllm_colocated_with_the_options_given(standin, tokenizer):
    _, calls = standin
    options = {"gpu_memory_utilization": 0.45, "dtype": "bfloat16", "enforce_eager": True}
    engine = VLLMEngine(**options, engine_kwargs={"max_model_len": 64}).bind(
        tiny_policy("llama-lora", tokenizer), tokenizer
    )
    assert calls == []  # started by the first rollout, not by bind
    engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
    name, arguments = calls[0]
    assert name == "LLM" and arguments == {
        "model": str(TINY_POLICY),  # a LoRA policy's base
        **options,
        "enable_sleep_mode": True,
        "seed": 0,
        "distributed_executor_backend": "external_launcher",
        "tensor_parallel_size": 1,
        "logprobs_mode": "processed_logprobs",
        "skip_tokenizer_init": True,
        "max_num_batched_tokens": 4096,  # TRL's value: a smaller memory-profiling batch than vLLM's own
        "max_model_len": 64,
    }


def test_vllm_loads_its_tokenizer_and_stops_at_stop_strings_only_when_a_rollout_has_them(
    standin, tokenizer, monkeypatch
):
    """Token ids in and out; vLLM finds stop strings in its own text, so an engine whose first rollout has
    them starts with the model's tokenizer and passes them on, and vLLM stops there itself (the rollout is
    as long as the longest completion up to its stop string). Started without, it decodes on and the
    rollout still ends each completion at its stop string."""
    module, calls = standin
    requested, build = [], module.SamplingParams
    monkeypatch.setattr(
        module, "SamplingParams", lambda **kwargs: requested.append(kwargs) or build(**kwargs)
    )
    sampling = SamplingConfig(num_generations=2, max_new_tokens=12, stop_strings=("ed{",))
    for first in (sampling, replace(sampling, stop_strings=None)):
        calls.clear()
        requested.clear()
        engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
        engine.generate(PROMPTS, first, greedy=True)
        rollout = engine.generate(PROMPTS, sampling, greedy=True)
        with_tokenizer = bool(first.stop_strings)
        assert calls[0][1]["skip_tokenizer_init"] is not with_tokenizer
        assert [kwargs.get("stop") for kwargs in requested[-3:]] == [["ed{"] if with_tokenizer else None] * 3
        assert rollout.completions == ["\\box"] * 3 and not rollout.truncated.any()
        assert rollout.completion_ids.shape[1] == (7 if with_tokenizer else 12)  # "\\boxed{": 7 tokens


def test_engine_kwargs_override_the_default_engine_arguments(standin, tokenizer):
    _, calls = standin
    engine = VLLMEngine(engine_kwargs={"max_num_batched_tokens": 8192}).bind(
        tiny_policy("llama", tokenizer), tokenizer
    )
    engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
    assert calls[0][1]["max_num_batched_tokens"] == 8192


# --------------------------------------------------------------------- the trainer's state around vLLM


def draws():
    return random.random(), float(np.random.random()), torch.rand(2).tolist()


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_starting_vllm_leaves_torchs_thread_count_as_it_was(standin, tokenizer):
    """vLLM 0.34's worker sets torch's CPU threads to one for the whole process, and so does the
    stand-in: the trainer's own count is put back."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
        engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
        assert engine._llm is not None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_prompts_are_cut_to_fit_vllms_max_model_len(standin, tokenizer):
    """vLLM refuses a prompt longer than its max_model_len and ends a completion there, and so does the
    stand-in: set below the policy's window, it is the window prompts are cut to (with a warning and a
    count), so that every prompt and its max_new_tokens fit."""
    longest = max(len(ids) for ids in prompt_token_ids(tokenizer, PROMPTS))
    config = SamplingConfig(num_generations=2, max_new_tokens=4, min_new_tokens=4)
    engine = VLLMEngine(engine_kwargs={"max_model_len": longest - 1 + 4})
    engine = engine.bind(tiny_policy("llama", tokenizer), tokenizer)
    with pytest.warns(UserWarning, match=f"prompts are longer than {longest - 1} tokens"):
        rollout = engine.generate(PROMPTS, config)
    assert rollout.prompt_length == longest - 1 and rollout.truncated_prompts >= 1
    assert rollout.completion_mask.sum(dim=1).tolist() == [4] * 2 * len(PROMPTS)


def test_the_sampler_correction_with_sampling_filters_warns_what_its_weights_then_measure():
    """vLLM's log-probs are of the filtered distribution, pi_old of the full softmax: each weight is then
    at most 1, whatever the sampler's precision."""
    loss = LossConfig(sampler_correction_cap=2.0)
    for sampling, names in (
        (SamplingConfig(top_p=0.9), "model.sampling.top_p"),
        (SamplingConfig(top_k=5, min_new_tokens=2), "model.sampling.top_k and model.sampling.min_new_tokens"),
    ):
        with pytest.warns(UserWarning, match=f"^model.loss.sampler_correction_cap with {names}: the sampler"):
            check_options(1e-5, 0.0, 0, 0, loss, sampling, VLLMEngine(), EvaluationConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_options(1e-5, 0.0, 0, 0, loss, SamplingConfig(), VLLMEngine(), EvaluationConfig())


def test_starting_vllm_leaves_the_trainers_random_generators_as_they_were(standin, tokenizer):
    """vLLM's worker seeds python's, numpy's, torch's and CUDA's generators with the engine's seed (the
    rank) as it starts, and so does the stand-in: put back, the draws after the engine's start (the next
    rollout's sampling seeds among them) continue the run's own streams."""
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    seed_all(7)
    engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))  # starts vLLM
    after_start = draws(), request_seeds(len(PROMPTS))
    seed_all(7)
    request_seeds(len(PROMPTS))  # the first rollout's draw, before vLLM started
    assert after_start == (draws(), request_seeds(len(PROMPTS)))


@pytest.mark.parametrize("launcher", ["3", None])
def test_vllm_starts_with_local_rank_naming_the_policys_device_then_it_is_put_back(
    standin, tokenizer, monkeypatch, launcher
):
    """vLLM takes its GPU from LOCAL_RANK, and a launcher's value need not be the policy's device index (one
    visible GPU per task: LOCAL_RANK=3 on cuda:0); Lightning reads it too. On the CPU the index is the
    rank."""
    if launcher is not None:
        monkeypatch.setenv("LOCAL_RANK", launcher)
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
    assert engine._llm.local_rank == "0"
    assert os.environ.get("LOCAL_RANK") == launcher


def test_vllm_starts_takes_weights_and_generates_outside_the_trainers_autocast(standin, tokenizer):
    """Rollouts run inside training_step, under Lightning's autocast with bf16-mixed: vLLM compiles and
    captures its graphs, and a LoRA weight is merged, outside it (here CPU autocast, the policy's device)."""
    policy = tiny_policy("llama-lora", tokenizer)
    engine = VLLMEngine(sleep_level=None).bind(policy, tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2))
        assert torch.is_autocast_enabled("cpu")  # the trainer's own, back after the rollout
    llm = engine._llm
    assert {call for call, _ in llm.autocast} == {"LLM", "load_weights", "generate"}
    assert not any(enabled for _, enabled in llm.autocast)
    for name, tensor in vllm_weights(policy):  # B A in float32, not in autocast's bfloat16
        assert torch.equal(llm.model.parameters[name], tensor), name


# ------------------------------------------------------------------------------------ sampling


def test_sampling_options_map_onto_sampling_params_exactly():
    config = SamplingConfig(
        num_generations=6,
        temperature=0.7,
        top_k=0,
        top_p=0.9,
        min_p=0.05,
        max_new_tokens=30,
        min_new_tokens=3,
    )
    assert sampling_kwargs(config, greedy=False, stop_ids=(1, 7, 9)) == {
        "n": 6,
        "temperature": 0.7,
        "top_k": -1,  # off
        "top_p": 0.9,
        "min_p": 0.05,
        "max_tokens": 30,
        "min_tokens": 3,
        "stop_token_ids": [1, 7, 9],
        "logprobs": 0,  # the sampled token's
        "detokenize": False,
    }
    assert sampling_kwargs(SamplingConfig(top_k=5), False, (1,))["top_k"] == 5
    assert sampling_kwargs(config, greedy=True, stop_ids=(1, 7)) == {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 30,
        "stop_token_ids": [1, 7],
        "detokenize": False,
    }
    # Stop strings: vLLM looks for them in its text, so it detokenizes
    with_stops = sampling_kwargs(config, greedy=True, stop_ids=(1,), stop_strings=("Question:", "\n\n"))
    assert with_stops["stop"] == ["Question:", "\n\n"] and with_stops["detokenize"] is True


def test_each_prompt_gets_a_seed_from_torchs_generator_and_each_rank_its_own(monkeypatch):
    torch.manual_seed(5)
    seeds = request_seeds(3)
    torch.manual_seed(5)
    assert seeds == torch.randint(0, 2**31 - 1, (1, 3))[0].tolist() and len(set(seeds)) == 3
    monkeypatch.setattr(vllm_engine, "_rank_and_world", lambda: (1, 2))
    torch.manual_seed(5)
    second_rank = request_seeds(3)
    torch.manual_seed(5)
    assert second_rank == torch.randint(0, 2**31 - 1, (2, 3))[1].tolist() != seeds


def test_a_rollout_asks_for_the_mapped_params_with_one_seed_per_prompt(standin, tokenizer, monkeypatch):
    module, _ = standin
    made = []
    original = module.SamplingParams

    def recording(**kwargs):
        made.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(module, "SamplingParams", recording)
    policy = tiny_policy("llama", tokenizer)
    engine = VLLMEngine().bind(policy, tokenizer)
    config = SamplingConfig(num_generations=3, max_new_tokens=5, temperature=1.3)
    torch.manual_seed(0)
    engine.generate(PROMPTS, config)
    torch.manual_seed(0)
    seeds = request_seeds(len(PROMPTS))
    mapped = sampling_kwargs(config, False, (tokenizer.eos_token_id,))
    assert made == [{**mapped, "seed": seed} for seed in seeds]
    made.clear()
    numpy_state = np.random.get_state()[1].copy()
    engine.generate(PROMPTS, config, greedy=True)
    # a fixed seed: with None, vLLM would draw one from numpy's generator, the trainer's
    assert made == [{**sampling_kwargs(config, True, (tokenizer.eos_token_id,)), "seed": 0}] * 3
    assert np.array_equal(np.random.get_state()[1], numpy_state)


# -------------------------------------------------------------------------------------- outputs


def completion(index, tokens, logprobs):
    steps = [{token: SimpleNamespace(logprob=value)} for token, value in zip(tokens, logprobs, strict=True)]
    return SimpleNamespace(index=index, token_ids=tokens, logprobs=steps)


def test_outputs_become_prompt_major_right_padded_completions_with_their_log_probs():
    outputs = [  # children out of order, as the engine must not assume
        SimpleNamespace(
            outputs=[completion(1, [5, 1], [-0.5, -0.25]), completion(0, [4, 6, 7], [-1.0, -2.0, -3.0])]
        ),
        SimpleNamespace(outputs=[completion(0, [8], [-0.125]), completion(1, [9, 9, 1], [-4.0, -5.0, -6.0])]),
    ]
    ids, lengths, logprobs = completion_tensors(outputs, repeats=2, pad_id=0, with_logprobs=True)
    assert ids.tolist() == [[4, 6, 7], [5, 1, 0], [8, 0, 0], [9, 9, 1]]
    assert lengths == [3, 2, 1, 3]
    assert logprobs.tolist() == [
        [-1.0, -2.0, -3.0],
        [-0.5, -0.25, 0.0],
        [-0.125, 0.0, 0.0],
        [-4.0, -5.0, -6.0],
    ]
    ids, _, none = completion_tensors(outputs, repeats=2, pad_id=0, with_logprobs=False)
    assert none is None and ids.shape == (4, 3)
    with pytest.raises(RuntimeError, match="returned 2 completions of a prompt, not 3"):
        completion_tensors(outputs, repeats=3, pad_id=0, with_logprobs=True)


def test_a_rollout_carries_the_sampler_log_probs_of_its_tokens(standin, tokenizer):
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    torch.manual_seed(0)
    rollout = engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=12, temperature=1.5))
    selected = rollout.select(slice(2, 4))
    assert torch.equal(selected.sampler_logprobs, rollout.sampler_logprobs[2:4])
    assert rollout.select(torch.tensor([5, 0])).sampler_logprobs.shape == (
        2,
        rollout.completion_mask.shape[1],
    )
    greedy = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=4), greedy=True)
    assert greedy.sampler_logprobs is None


@pytest.mark.parametrize("temperature", [0.005, 2.5])
def test_a_temperature_vllm_would_change_or_refuse_is_a_config_error(standin, tokenizer, temperature):
    """vLLM refuses temperatures above 2 and samples below 0.01 at 0.01, away from the loss's log-probs."""
    engine = VLLMEngine().bind(tiny_policy("llama", tokenizer), tokenizer)
    config = SamplingConfig(num_generations=2, max_new_tokens=2, temperature=temperature)
    with pytest.raises(
        ConfigError, match=rf"model.sampling.temperature={temperature} is outside \[0.01, 2.0\]"
    ):
        engine.generate(PROMPTS, config)
    assert standin[1] == []  # refused before vLLM started
    engine.generate(PROMPTS, config, greedy=True)  # greedy decoding has no temperature
    for edge in (0.01, 2.0):
        engine.generate(PROMPTS, SamplingConfig(num_generations=2, max_new_tokens=2, temperature=edge))


# ----------------------------------------------------------------------------- in the training loop

VLLM_ROLLOUT = {"model.init_args.rollout": {"class_path": "rgra_lightning.rollout.VLLMEngine"}}


def test_the_sampler_correction_is_refused_for_an_engine_without_sampler_log_probs(small_config, capsys):
    config = small_config("rgra", **FAST)
    line = one_line_error(["fit", "--config", str(config), "--model.loss.sampler_correction_cap=2.0"], capsys)
    assert "model.rollout (HFEngine) returns no sampler log-probs" in line


def test_the_training_and_evaluation_temperatures_are_checked_when_the_module_is_built(small_config, capsys):
    """Before the policy loads and before vLLM is imported: the first line names the bad field."""
    config = small_config("rgra", **FAST, **VLLM_ROLLOUT)
    arguments = ["fit", "--config", str(config)]
    line = one_line_error([*arguments, "--model.sampling.temperature=3.0"], capsys)
    assert "model.sampling.temperature=3.0 is outside [0.01, 2.0]" in line
    evaluation = ["--model.evaluation.num_samples=4", "--model.evaluation.temperature=2.5"]
    line = one_line_error([*arguments, *evaluation], capsys)
    assert "model.evaluation.temperature=2.5 is outside [0.01, 2.0]" in line


def test_with_the_correction_several_updates_store_pi_old(small_config, standin):
    config = small_config("rgra", **FAST, **VLLM_ROLLOUT)
    options = ["--model.loss.sampler_correction_cap=2.0", "--model.num_iterations=2"]
    cli = main(["--config", str(config), *options], run=False)
    assert cli.model.updater.stores_old_logprobs  # reinforce, but the weights need pi_old


def test_fit_with_the_vllm_engine_pushes_each_update_and_logs_the_sampler_mismatch(
    small_config, standin, tmp_path
):
    """Two rollout batches of one update each: the policy's weights go to the engine before each, and the
    sampler's log-probs (the stand-in's fp32 copy of the same weights) equal the trainer's, so no weight
    hits the cap."""
    _, calls = standin
    overrides = {
        **FAST,
        **VLLM_ROLLOUT,
        "trainer.max_steps": 2,
        "model.init_args.loss.sampler_correction_cap": 2.0,
    }
    cli = main(["fit", "--config", str(small_config("rgra", **overrides))])
    assert cli.trainer.global_step == 2
    push = [("load_weights", 29), ("reset_prefix_cache",)]
    first = [("LLM",), *push, ("generate", 4), ("sleep", 2)]
    second = [("wake_up", ("weights",)), *push, ("wake_up", ("kv_cache",)), ("generate", 4), ("sleep", 2)]
    assert pushes_and_lifecycle(calls) == first + second
    scalars = scalar_tags(tmp_path / "runs")
    assert scalars["train/sampler_logprob_diff"][-1] < 1e-4
    assert scalars["train/sampler_is_clipped_fraction"] == [0.0, 0.0]


def test_fit_pushes_the_weights_once_per_validation_loop(small_config, standin):
    """Validation batches of 4 of 8 problems: the step-0 validation and the one after update 2 keep the
    engine awake between their two batches (one push each) and put it to sleep at their end."""
    _, calls = standin
    overrides = {**VLLM_ROLLOUT, "trainer.max_steps": 2, "data.init_args.val_batch_size": 4}
    main(["fit", "--config", str(small_config("rgra", **overrides))])
    push = [("load_weights", 29), ("reset_prefix_cache",)]
    woken = [("wake_up", ("weights",)), *push, ("wake_up", ("kv_cache",))]
    validation = [("generate", 4), ("generate", 4), ("sleep", 2)]
    training = [("generate", 4), ("sleep", 2)]
    assert pushes_and_lifecycle(calls) == [
        ("LLM",),
        *push,
        *validation,  # step 0
        *woken,
        *training,
        *woken,
        *training,
        *woken,
        *validation,  # after update 2
    ]
