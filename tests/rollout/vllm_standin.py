"""A stand-in for the ``vllm`` module, for testing ``VLLMEngine`` without a GPU: it records every call the
engine makes (``calls``) and samples on the CPU with its own Hugging Face copy of the model, loaded from the
path the engine gives ``LLM`` and then changed only through ``load_weights`` (by vLLM's parameter names).

It behaves as vLLM does where the engine depends on it: ``SamplingParams`` refuses arguments vLLM does not
take; a request's ``n`` children sample with seeds ``seed + index``; temperature 0 is greedy; the sampling
order is temperature, stop tokens suppressed before ``min_tokens``, min-p, top-k, top-p (vLLM's sampler);
log-probs are those after temperature and filters (``logprobs_mode="processed_logprobs"``); a prompt
longer than ``max_model_len`` is refused and a completion ends there; a completion ends with its stop token
included, or with the token that completes a stop string (``stop``) in the text after ``min_tokens`` tokens,
which needs the tokenizer (``skip_tokenizer_init=False``: it loads the model's); the children come back in
reverse order (the engine must sort by ``index``). Sleep level 1 keeps a CPU copy of the weights that
``wake_up`` restores, level 2 discards them (NaN), and generating while asleep or with discarded weights
fails.

Where vLLM meets the trainer's process, so does the stand-in: ``LLM`` seeds python's, numpy's and torch's
generators with its ``seed`` (vLLM's worker calls ``set_random_seed``), sets torch's CPU threads to one, takes
only ``EngineArgs`` fields, and records ``LOCAL_RANK`` as it starts (``local_rank``: the GPU vLLM would take);
it records whether autocast was on as it starts, reads each pushed tensor and generates (``autocast``); and it
holds its weights in the ``dtype`` it was given (``llm_engine.model_config.dtype``; ``auto``: the
checkpoint's), recording the dtype of each pushed tensor.
"""

from __future__ import annotations

import dataclasses
import os
import random
import types
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from rgra_lightning.models import load_causal_lm, load_tokenizer
from rgra_lightning.rollout.sampling import filter_min_p, filter_top_k, filter_top_p

SAMPLING_ARGUMENTS = {
    "n",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "max_tokens",
    "min_tokens",
    "stop_token_ids",
    "stop",
    "logprobs",
    "detokenize",
    "seed",
}


@dataclasses.dataclass
class EngineArgs:
    """The ``vllm.LLM`` arguments the engine and its tests use (vLLM's has many more)."""

    model: str
    gpu_memory_utilization: float = 0.9
    enable_sleep_mode: bool = False
    dtype: str = "auto"
    enforce_eager: bool = False
    seed: int = 0
    distributed_executor_backend: str | None = None
    tensor_parallel_size: int = 1
    logprobs_mode: str = "raw_logprobs"
    skip_tokenizer_init: bool = False
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    load_format: str = "auto"


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - SAMPLING_ARGUMENTS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        self.kwargs = kwargs
        defaults = {"n": 1, "temperature": 1.0, "top_k": -1, "top_p": 1.0, "min_p": 0.0, "min_tokens": 0}
        defaults |= {"stop_token_ids": [], "logprobs": None, "seed": None, "max_tokens": 16}
        defaults |= {"stop": [], "detokenize": True}
        if kwargs.get("stop") and not kwargs.get("detokenize", True):
            raise ValueError("stop strings are only supported when detokenize is True.")
        for name, value in (defaults | kwargs).items():
            setattr(self, name, value)


def autocast_on() -> bool:
    """Whether autocast is on for the CPU or CUDA (the tests run under CPU autocast)."""
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


class StandInModel:
    """The model a worker holds: ``load_weights`` copies each named tensor into the HF copy, reading
    them one at a time as vLLM's loader does."""

    def __init__(self, model: torch.nn.Module, calls: list, autocast: list) -> None:
        self.hf = model
        self.parameters = dict(model.named_parameters())
        self.calls, self.autocast = calls, autocast

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(self.parameters.items())

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The names of the parameters it set, as vLLM 0.34's models return them."""
        self.calls.append(("load_weights",))
        loaded = set()
        for name, tensor in weights:
            if name not in self.parameters:
                raise KeyError(f"vLLM has no parameter {name!r}")
            self.parameters[name].copy_(tensor)
            loaded.add(name)
            self.calls.append(("weight", name, tensor.dtype))
            self.autocast.append(("load_weights", autocast_on()))
        return loaded


class StandInLLM:
    def __init__(self, calls: list, **kwargs: Any) -> None:
        calls.append(("LLM", kwargs))
        EngineArgs(**kwargs)  # a TypeError for another argument, as vLLM's
        self.calls, self.kwargs = calls, kwargs
        torch.set_num_threads(1)  # vLLM 0.34's worker, for the whole process
        self.local_rank = os.environ.get("LOCAL_RANK")
        self.autocast = [("LLM", autocast_on())]
        seed = kwargs["seed"]  # vLLM's set_random_seed, as its GPU worker starts
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        hf = load_causal_lm(kwargs["model"]).eval()
        self.tokenizer = None if kwargs.get("skip_tokenizer_init") else load_tokenizer(kwargs["model"])
        if kwargs.get("dtype", "auto") != "auto":
            hf = hf.to(getattr(torch, kwargs["dtype"]))
        self.model = StandInModel(hf, calls, self.autocast)
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        executor = SimpleNamespace(driver_worker=SimpleNamespace(worker=worker))
        model_config = SimpleNamespace(dtype=hf.dtype)
        self.llm_engine = SimpleNamespace(model_executor=executor, model_config=model_config)
        self.weights_awake = self.cache_awake = True
        self.offloaded: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def sleep(self, level: int = 1) -> None:
        assert self.kwargs.get("enable_sleep_mode"), "sleep() needs enable_sleep_mode=True"
        self.calls.append(("sleep", level))
        parameters = self.model.parameters
        self.offloaded = {name: p.clone() for name, p in parameters.items()} if level == 1 else None
        for parameter in parameters.values():
            parameter.fill_(float("nan"))
        self.weights_awake = self.cache_awake = False

    @torch.no_grad()
    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags or ("weights", "kv_cache"))))
        if tags is None or "weights" in tags:
            if self.offloaded is not None:
                for name, parameter in self.model.parameters.items():
                    parameter.copy_(self.offloaded[name])
                self.offloaded = None
            self.weights_awake = True
        if tags is None or "kv_cache" in tags:
            self.cache_awake = True

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    @torch.no_grad()
    def generate(self, prompts: list[dict], sampling_params, use_tqdm: bool = True) -> list:
        self.calls.append(("generate", len(prompts)))
        self.autocast.append(("generate", autocast_on()))
        if not (self.weights_awake and self.cache_awake):
            raise RuntimeError("generate() while the engine sleeps")
        if any(not bool(p.isfinite().all()) for p in self.model.parameters.values()):
            raise RuntimeError("generate() with discarded weights: they were not loaded again")
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            ids = list(prompt["prompt_token_ids"])
            limit = self.kwargs.get("max_model_len")
            if limit is not None and len(ids) > limit:
                raise ValueError(f"prompt of {len(ids)} tokens is longer than max_model_len={limit}")
            children = [self._complete(ids, params, index) for index in range(params.n)]
            outputs.append(SimpleNamespace(prompt_token_ids=ids, outputs=children[::-1]))
        return outputs

    def _complete(self, prompt: list[int], params: SamplingParams, index: int) -> SimpleNamespace:
        generator = torch.Generator()
        generator.manual_seed(params.seed + index if params.seed is not None else index)
        stop = torch.tensor(params.stop_token_ids, dtype=torch.long)
        ids, tokens, logprobs, reason = list(prompt), [], [], "length"
        limit = self.kwargs.get("max_model_len") or len(prompt) + params.max_tokens
        for step in range(min(params.max_tokens, limit - len(prompt))):
            logits = self.model.hf(input_ids=torch.tensor([ids])).logits[0, -1].float()
            if params.temperature == 0:
                token, logprob = int(logits.argmax()), logits.log_softmax(-1)[logits.argmax()]
            else:
                scores = logits.clone()
                if step < params.min_tokens:
                    scores[stop] = -float("inf")
                scores = (scores / params.temperature).unsqueeze(0)
                if params.min_p > 0:
                    scores = filter_min_p(scores, params.min_p)
                if params.top_k > 0:
                    scores = filter_top_k(scores, params.top_k)
                if params.top_p < 1:
                    scores = filter_top_p(scores, params.top_p)
                processed = scores[0].log_softmax(-1)
                token = int(torch.multinomial(processed.exp(), 1, generator=generator))
                logprob = processed[token]
            ids.append(token)
            tokens.append(token)
            logprobs.append({token: SimpleNamespace(logprob=float(logprob))})
            if token in params.stop_token_ids or self._stop_string_seen(tokens, params):
                reason = "stop"
                break
        return SimpleNamespace(
            index=index,
            token_ids=tokens,
            logprobs=logprobs if params.logprobs is not None else None,
            finish_reason=reason,
        )

    def _stop_string_seen(self, tokens: list[int], params: SamplingParams) -> bool:
        if not params.stop or len(tokens) <= params.min_tokens:
            return False
        if self.tokenizer is None:
            raise ValueError("stop strings need vLLM's tokenizer, and the engine started without one")
        text = self.tokenizer.decode(tokens[params.min_tokens :], skip_special_tokens=True)
        return any(stop in text for stop in params.stop)


def standin_vllm() -> tuple[types.ModuleType, list]:
    """A module with ``LLM``, ``EngineArgs``, ``SamplingParams`` and ``__version__``, and the list its engines
    record calls in: ``("LLM", kwargs)``, ``("sleep", level)``, ``("wake_up", tags)``, ``("load_weights",)``
    at each call and then ``("weight", name, dtype)`` for each tensor it reads, ``("reset_prefix_cache",)``,
    ``("generate", prompts)``."""
    calls: list = []
    module = types.ModuleType("vllm_standin")
    module.__version__ = "0.34.0"
    module.SamplingParams = SamplingParams
    module.EngineArgs = EngineArgs
    module.LLM = lambda **kwargs: StandInLLM(calls, **kwargs)
    return module, calls
