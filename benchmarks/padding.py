"""Compute spent on padding by the log-prob passes: each micro-batch at the rollout's full width against each
at its own width, on real sampled completions.

    python benchmarks/padding.py                         # SmolLM2-135M-Instruct, GSM8K chat prompts
    python benchmarks/padding.py --tokens 256 --rounds 7 --token-budget 2048
    python benchmarks/padding.py --task arithmetic --prompts 4 --tokens 64

One rollout is sampled at temperature 1 (``--prompts`` chat prompts with the boxed-answer instruction of
``configs/smollm2-135m/gsm8k-rgra.yaml``: GSM8K training questions, or the embedded task's problems as
``Compute 6*(-2).``; G = ``--group``, at most ``--tokens`` new tokens), so completions end at different
lengths. Then the log-prob work of one training step on it (the reference pass without gradient, and the
policy's forward and backward, in micro-batches of ``--micro`` rows) is timed for each computation in
turn, ``--rounds`` times, alternating the order each round:

  before     the computation before issue 16 (as ``peak_memory.py``'s ``full``): every micro-batch at the
             rollout's width, the model's logits at every completion position, one fp32 log-softmax
  untrimmed  the chunked head on the real tokens only, micro-batches still at the rollout's width
  trimmed    what the trainer does: each micro-batch at its own width (``logprobs.trim_padding``)
  budget     with ``--token-budget``: rows sorted by length into micro-batches of at most that many tokens

It prints the token positions each computation runs through the decoder layers and through the output
head, the median time of each, and the per-round time ratios (the pairs cancel the machine's drift).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from peak_memory import full_vocabulary_token_logprobs
from throughput import ROOT

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def prompts_of(task: str, count: int, model_path: str) -> list[str]:
    """The first ``count`` training problems of ``task`` as chat prompts with the boxed-answer instruction:
    GSM8K questions (as ``configs/smollm2-135m/gsm8k-rgra.yaml`` renders them), or the embedded task's
    as ``Compute 6*(-2).``."""
    if task == "gsm8k":
        from rgra_lightning.data.hf_datasets import DatasetDataModule

        data = DatasetDataModule(
            preset="gsm8k",
            source=str(ROOT.parent / "shared" / "datasets" / "gsm8k"),
            prompt_format="chat",
            instruction=INSTRUCTION,
            tokenizer_path=model_path,
            batch_size=count,
            limit=8,
        )
        data.setup("fit")
        return next(iter(data.train_dataloader()))["prompt"]
    from rgra_lightning.arithmetic.problems import split_problems
    from rgra_lightning.data.base import ChatPrompt
    from rgra_lightning.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    problems = split_problems(val_size=128, seed=0)["train"][:count]
    return [
        ChatPrompt(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"Compute {problem.question}.\n{INSTRUCTION}"}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )
        for problem in problems
    ]


def rollout_of(model_path: str, task: str, prompts: int, group: int, tokens: int):
    """The policy, a rollout of ``prompts`` chat prompts of ``task`` at temperature 1, and its seconds."""
    import torch

    from rgra_lightning.models import load_causal_lm, load_tokenizer
    from rgra_lightning.rollout import HFEngine, SamplingConfig

    texts = prompts_of(task, prompts, model_path)
    policy, tokenizer = load_causal_lm(model_path), load_tokenizer(model_path)
    torch.manual_seed(0)
    sampling = SamplingConfig(num_generations=group, temperature=1.0, max_new_tokens=tokens)
    start = time.perf_counter()
    rollout = HFEngine().bind(policy, tokenizer).generate(texts, sampling)
    return policy, rollout, time.perf_counter() - start


def positions(rollout, parts, trim: bool) -> int:
    """Token positions the decoder layers run over in the micro-batches ``parts``: a micro-batch whose
    rows share prompts encodes each distinct prompt once (``logprobs.completion_features``)."""
    from rgra_lightning.logprobs import trim_padding
    from rgra_lightning.prompt_cache import distinct_prompts

    total = 0
    for part in parts:
        rows = rollout.select(part)
        rows = trim_padding(rows) if trim else rows
        count, prompt, completion = len(rows.completions), rows.prompt_length, rows.completion_mask.shape[1]
        shared = distinct_prompts(rows.input_ids[:, :prompt], rows.attention_mask[:, :prompt])
        prompts = count if shared is None else len(shared[0])
        total += prompts * prompt + count * completion
    return total


def logprob_work(policy, rollout, parts, compute) -> float:
    """Seconds for the reference pass (no gradient) and the policy's forward + backward over ``parts``."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for part in parts:
            compute(policy, rollout.select(part), 1.0, with_entropy=False)
    for part in parts:
        rows = rollout.select(part)
        logp, _ = compute(policy, rows, 1.0)
        weights = torch.linspace(-1, 1, len(rows.completions)).unsqueeze(1)
        (logp * weights * rows.completion_mask).sum().backward()
    policy.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    """The median and the range of ``values``."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--task", choices=("gsm8k", "arithmetic"), default="gsm8k")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens")
    parser.add_argument("--micro", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--token-budget", type=int, default=None, help="also time budget micro-batches")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from rgra_lightning.logprobs import micro_batches, row_slices, token_logprobs

    torch.set_num_threads(args.threads)
    if not Path(args.model).is_dir():
        raise SystemExit(f"{args.model} is not a model directory (see configs/smollm2-135m/gsm8k-rgra.yaml)")
    policy, rollout, generation_s = rollout_of(args.model, args.task, args.prompts, args.group, args.tokens)
    policy.train()
    rows = len(rollout.completions)
    lengths = rollout.completion_mask.sum(dim=1)
    prompt_lengths = rollout.attention_mask[:, : rollout.prompt_length].sum(dim=1)
    print(f"{rows} completions at temperature 1, up to {args.tokens} tokens: {sorted(lengths.tolist())}")
    print(
        f"prompts of {prompt_lengths.min().item()}-{prompt_lengths.max().item()} tokens (padded to "
        f"{rollout.prompt_length}); generation {generation_s:.1f} s"
    )
    slices = row_slices(slice(0, rows), args.micro)
    computations = {
        "before": (slices, full_vocabulary_token_logprobs, False),
        "untrimmed": (slices, lambda *a, **k: token_logprobs(*a, **k, trim=False), False),
        "trimmed": (slices, token_logprobs, True),
    }
    if args.token_budget:
        budget = micro_batches(rollout, slice(0, rows), None, args.token_budget)
        computations["budget"] = (budget, token_logprobs, True)
    full_layers, real = positions(rollout, slices, False), int(lengths.sum())
    print("\n| computation | micro-batches | decoder positions | saved | head positions | saved |")
    print("|---|---|---|---|---|---|")
    for name, (parts, _, trim) in computations.items():
        layers = positions(rollout, parts, trim)
        head = rollout.completion_mask.numel() if name == "before" else real
        print(
            f"| {name} | {len(parts)} | {layers} | {1 - layers / full_layers:.1%} | {head} | "
            f"{1 - head / rollout.completion_mask.numel():.1%} |"
        )
    times: dict[str, list[float]] = {name: [] for name in computations}
    logprob_work(policy, rollout, slices[:1], token_logprobs)  # warm-up
    for round_index in range(args.rounds):
        order = list(computations) if round_index % 2 == 0 else list(reversed(computations))
        for name in order:
            parts, compute, _ = computations[name]
            times[name].append(logprob_work(policy, rollout, parts, compute))
        print(
            f"round {round_index + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in computations),
            flush=True,
        )
    print("\n| computation | median s (reference + policy forward/backward) | per-round ratio to before |")
    print("|---|---|---|")
    for name in computations:
        ratios = [t / b for t, b in zip(times[name], times["before"], strict=True)]
        print(f"| {name} | {statistics.median(times[name]):.2f} | {spread(ratios)} |")
    trimmed = [t / u for t, u in zip(times["trimmed"], times["untrimmed"], strict=True)]
    print(f"\ntrimmed / untrimmed per round: {spread(trimmed)}")
    before, after = statistics.median(times["before"]), statistics.median(times["trimmed"])
    step_ratio = (generation_s + after) / (generation_s + before)
    print(
        f"a whole step (generation {generation_s:.1f} s + log-prob work): trimmed / before = {step_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
