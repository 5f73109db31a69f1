"""The default rollout engine: samples from the training policy itself with Hugging Face models.

Prompts are encoded once per group (``prompt_cache.encode_prompts``), then each step feeds the previous token
through a ``LlamaDecoder`` where it supports the policy (the same logits in a third of the time on the tiny
policy; LoRA adapters folded into float32 weights once per rollout, else applied as peft applies them),
else through the policy's forward with the cache: other architectures, other adapters (DoRA, ...),
FSDP2-sharded policies (whose forward hooks gather the parameters).

Whether every row has finished is asked every ``finished_check_interval`` tokens: the answer is a host
sync, which on an accelerator stalls the queue of the next step's kernels. Rows that finished get pad, the
columns decoded after the last row finished are dropped and the random generator is put back where it was
after the last needed draw, so the tokens (and every later draw) are those of a check after every token.
Stop strings are looked for at the same checks, in the text of each unfinished row's latest tokens.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rgra_lightning.distributed import gathered_for_generation, is_sharded, without_autograd
from rgra_lightning.errors import ConfigError
from rgra_lightning.prompt_cache import encode_prompts, repeat_encoded
from rgra_lightning.rollout.base import (
    Rollout,
    RolloutEngine,
    Stops,
    assemble_rollout,
    completion_ends,
    first_stop_string,
    tokenize_prompts,
)
from rgra_lightning.rollout.cuda_graph import GraphedStep
from rgra_lightning.rollout.llama_decode import LlamaDecoder
from rgra_lightning.rollout.sampling import SamplingConfig, next_tokens
from rgra_lightning.versions import CACHE

# The default finished_check_interval on an accelerator: every step there waits for the host otherwise.
ACCELERATOR_CHECK_INTERVAL = 8
# Devices whose decoding steps ``cuda_graphs`` replays as graphs (``GraphedStep``).
GRAPH_DEVICES = ("cuda",)


class HFEngine(RolloutEngine):
    """Samples from the bound policy with a KV-cache decoding loop; it needs no weight updates, since
    it reads the policy's own parameters.

    Args:
        finished_check_interval: decoding steps between checks that every row has finished (k >= 1; the
            same tokens whatever k). None: every step on the CPU, where the check costs nothing and the up
            to k - 1 steps decoded after the last row finished would; 8 on an accelerator. Sampling on a
            device whose random generator cannot be saved and restored (neither CPU nor CUDA) checks every
            step.
        cuda_graphs: on a CUDA device, replay each decoding step of the fast decoder as one CUDA graph
            captured at the start of the rollout (``rollout.cuda_graph``), where a step is bound by
            launching kernels; the logits within rounding of the steps without it. Ignored elsewhere and
            where the policy decodes through its forward. Off by default: not yet run on a GPU.
    """

    finished_check_interval: int | None = None  # also for subclasses that do not call this __init__
    cuda_graphs: bool = False

    def __init__(self, finished_check_interval: int | None = None, cuda_graphs: bool = False) -> None:
        super().__init__()
        if finished_check_interval is not None and finished_check_interval < 1:
            raise ConfigError(
                f"model.rollout.finished_check_interval must be >= 1, got {finished_check_interval}"
            )
        self.finished_check_interval = finished_check_interval
        self.cuda_graphs = cuda_graphs

    def generate(self, prompts: list[str], sampling: SamplingConfig, greedy: bool = False) -> Rollout:
        """``sampling.num_generations`` completions for each prompt (one when ``greedy``).

        Sampling runs in eval mode without autograd; the returned tensors are built after it, as ordinary
        tensors that the update's forward pass may save for backward.
        """
        policy, tokenizer = self.policy, self.tokenizer
        prompt_ids, prompt_mask, truncated = tokenize_prompts(tokenizer, prompts, sampling, policy)
        repeats = 1 if greedy else sampling.num_generations
        stops = Stops.of(self.stop_ids, sampling, greedy)
        was_training = policy.training
        policy.eval()
        with gathered_for_generation(policy), without_autograd(policy):
            completion_ids = _decode(
                policy,
                prompt_ids,
                prompt_mask,
                repeats,
                sampling,
                greedy,
                stops,
                tokenizer,
                self.finished_check_interval,
                self.cuda_graphs,
            )
        policy.train(was_training)
        return assemble_rollout(tokenizer, prompt_ids, prompt_mask, completion_ids, repeats, truncated, stops)


def _default_generator(device: torch.device) -> torch.Generator | None:
    """The generator ``torch.multinomial`` draws from on ``device`` when given none, or None when it is
    neither the CPU's nor a CUDA device's."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else 0]
    return None


def _decode(
    policy: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    repeats: int,
    config: SamplingConfig,
    greedy: bool,
    stops: Stops,
    tokenizer: PreTrainedTokenizerBase,
    check_interval: int | None = 1,
    cuda_graphs: bool = False,
) -> Tensor:
    """Completion tokens ``[B * repeats, T]`` (``T <= max_new_tokens``) for left-padded prompts ``[B, P]``.

    A row that has produced one of the stop tokens or completed a stop string (``stops``) gets pad from
    then on, and decoding stops once every row has ended: T is the step at which the last row ended,
    whether that is seen at once or at the next of the checks every ``check_interval`` steps (None: see
    ``HFEngine``). A row's tokens between a stop string and the check that saw it are left for
    ``assemble_rollout`` to mask. ``cuda_graphs``: replay the fast decoder's steps as a CUDA graph on a
    CUDA device (see ``HFEngine``).
    """
    logits, cache = encode_prompts(policy, prompt_ids, prompt_mask)
    rows, prompt_length = logits.shape[0] * repeats, prompt_ids.shape[1]
    pad_id = tokenizer.pad_token_id
    stop_ids = torch.as_tensor(stops.token_ids, dtype=torch.long, device=logits.device)
    # Generated tokens are all attended to, as in ``generate``: a row's tokens after its EOS are ignored.
    attention_mask = torch.ones(
        rows, prompt_length + config.max_new_tokens, dtype=prompt_mask.dtype, device=prompt_mask.device
    )
    attention_mask[:, :prompt_length] = prompt_mask.repeat_interleave(repeats, dim=0)
    positions = prompt_mask.sum(dim=1, keepdim=True).repeat_interleave(repeats, dim=0)  # [N, 1]
    decoder = None
    if not is_sharded(policy):  # a sharded policy's forward gathers its parameters: the decoder cannot
        unsupported = LlamaDecoder.unsupported(policy, cache)
        if unsupported is None:
            padded = not bool(prompt_mask.all())
            decoder = LlamaDecoder(
                policy, cache, repeats, positions, attention_mask if padded else None, config.max_new_tokens
            )
            cache = None  # the decoder holds the prompts' keys and values, repeated
        else:  # once per reason; on a GPU the forward is about 2.5 times slower (docs/scaling.md)
            warnings.warn(
                f"HFEngine decodes through the policy's forward, not the fast decoder: {unsupported}",
                stacklevel=2,
            )
    if decoder is None:
        logits, cache = repeat_encoded(policy, logits, cache, prompt_ids, prompt_mask, repeats)
    else:
        logits = logits.repeat_interleave(repeats, dim=0)
        decode_step = decoder.step
        if cuda_graphs and logits.device.type in GRAPH_DEVICES:
            decode_step = GraphedStep(decoder, rows, logits.device)
    if check_interval is None:
        check_interval = 1 if logits.device.type == "cpu" else ACCELERATOR_CHECK_INTERVAL
    # Draws after the last row finished must not advance the generator: its state after each draw since
    # the last check is kept, to be put back.
    generator = None if greedy or check_interval == 1 else _default_generator(logits.device)
    if not greedy and generator is None:
        check_interval = 1
    states: list[Tensor] = []  # the generator's state after each step since the last check
    finished = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    tokens = []
    for step in range(config.max_new_tokens):
        token = next_tokens(logits, None if greedy else config, stop_ids, step).masked_fill(finished, pad_id)
        tokens.append(token)
        if generator is not None:
            states.append(generator.get_state())
        finished |= torch.isin(token, stop_ids)
        if step + 1 == config.max_new_tokens:
            break
        if (step + 1) % check_interval == 0:
            if stops.strings:
                finished |= _stop_string_seen(tokenizer, tokens, finished, stops, check_interval)
            if bool(finished.all()):
                break
            states.clear()
        if decoder is not None:
            logits = decode_step(token, step)
        else:
            logits = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask[:, : prompt_length + step + 1],
                position_ids=positions + step,
                use_cache=True,
                **{CACHE: cache},
            ).logits[:, -1]
    completion = torch.stack(tokens, dim=1)
    if check_interval == 1 and not stops.strings:
        return completion
    # Decoding stopped at a check or at max_new_tokens; with every row ended, the steps after the last
    # row's end decoded nothing that counts.
    ends = completion_ends(tokenizer, completion, stops)
    if any(end is None for end in ends):
        return completion
    length = max(ends) + 1
    kept = length - 1 - (len(tokens) - len(states))  # the state after the last needed draw, if still held
    if generator is not None and length < len(tokens) and kept >= 0:
        generator.set_state(states[kept])
    return completion[:, :length]


def _stop_string_seen(
    tokenizer: PreTrainedTokenizerBase, tokens: list[Tensor], finished: Tensor, stops: Stops, new: int
) -> Tensor:
    """``[N]`` bool: the unfinished rows whose text of the latest tokens (the ``new`` ones since the last
    check and enough before them to hold the longest stop string, after the first ``stops.skip``) holds a
    stop string."""
    window = new + max(len(stop) for stop in stops.strings)  # a token decodes to one character or more
    start = max(stops.skip, len(tokens) - window)
    seen = torch.zeros_like(finished)
    rows = (~finished).nonzero().flatten().tolist()
    if start >= len(tokens) or not rows:
        return seen
    recent = torch.stack(tokens[start:], dim=1)[rows].tolist()
    texts = tokenizer.batch_decode(recent, skip_special_tokens=True)
    hits = [first_stop_string(text, stops.strings) is not None for text in texts]
    seen[rows] = torch.tensor(hits, device=seen.device)
    return seen
