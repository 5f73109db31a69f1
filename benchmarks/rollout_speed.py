"""Decoding speed of the default rollout engine (``HFEngine``), in new tokens per second, by decoding path.

    python benchmarks/rollout_speed.py --model models/smollm2-135m-instruct --lora 16
    python benchmarks/rollout_speed.py --lora 16 --paths forward decoder plain --rounds 7
    python benchmarks/rollout_speed.py --device cuda --random-init qwen2.5-0.5b --lora 128 --dtype bfloat16

Paths, timed in alternation in one process (round 1 untimed):
  forward  the policy's forward (with peft, its LoRA layers) for every new token (``LlamaDecoder.unsupported``
           forced): how other adapters (DoRA, ...) decode;
  decoder  the fast decoder (``LlamaDecoder``): the LoRA adapters folded into float32 weights, else
           applied as peft applies them, stacked (bfloat16 weights, or autocast);
  plain    the fast decoder on the model without adapters;
  unpacked the fast decoder as ``decoder``, with no weight reordered for oneDNN (``PACK_MIN_ENTRIES``
           out of reach): what the reordering of large float32 CPU weights gains;
  graphed  the fast decoder as ``decoder``, each step replayed as one CUDA graph (``cuda_graphs=True``;
           CUDA only).
Every rollout samples ``--prompts`` x G = ``--group`` completions of exactly ``--tokens`` new tokens (stop
tokens suppressed) at temperature 1 from the same seed, in float32 (``--dtype``; ``--autocast``: under
bfloat16 autocast, as ``bf16-mixed`` samples) with ``--threads`` torch threads, on ``--device``
(``--random-init``: a randomly initialised model of an architecture of ``benchmarks/throughput.py``). The
LoRA updates are random and non-zero (peft starts B at zero), so the adapters change the logits as trained
ones do. Rates are given per second of wall time and per second of this process's CPU time: on a machine
shared with other work the second varies far less (it still counts the memory bandwidth and caches that
others share). On a GPU the two rates are close where decoding is bound by the host launching kernels, not
by the GPU running them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the project need not be installed


def add_policy_options(parser: argparse.ArgumentParser, tokens: int) -> None:
    """The options that say which policy decodes where (shared with ``rollout_profile.py``)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=str(ROOT / "models" / "arith-tiny"), help="a local HF directory")
    source.add_argument("--random-init", choices=("qwen2.5-0.5b",), help="a random model of that shape")
    parser.add_argument(
        "--lora", type=int, default=16, help="LoRA rank (alpha = 2 x rank), all linear layers"
    )
    parser.add_argument("--tokens", type=int, default=tokens, help="new tokens per completion (forced)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def lora_policy(model: str, dtype: str, rank: int):
    """The model at ``model`` under LoRA adapters of ``rank`` (alpha 2 x rank) whose B matrices are random
    and non-zero (peft starts them at zero), so that the adapters change the logits as trained ones do."""
    import torch

    from rgra_lightning.models import LoraConfig, add_lora, load_causal_lm

    policy = add_lora(load_causal_lm(model, dtype=dtype), LoraConfig(rank, 2.0 * rank))
    torch.manual_seed(0)
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.01)
    return policy


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv``: ``sys.argv[1:]``); an error exits with the usage line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_policy_options(parser, tokens=32)
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=("forward", "decoder", "plain", "unpacked", "graphed"),
        default=["forward", "decoder"],
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one rollout per path each)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    parser.add_argument(
        "--autocast", action="store_true", help="under bfloat16 autocast, as `bf16-mixed` samples"
    )
    args = parser.parse_args(argv)
    if "graphed" in args.paths and args.device != "cuda":
        parser.error("--paths graphed needs --device cuda")
    if args.lora < 1 and set(args.paths) != {"plain"}:  # every path but plain times the LoRA policy
        parser.error(f"--lora must be >= 1 for the paths {', '.join(args.paths)}, got {args.lora}")
    return args


def main() -> None:
    on_model(parse_arguments(), measure)


def on_model(args: argparse.Namespace, measure_with: Callable[[argparse.Namespace], None]) -> None:
    """``measure_with(args)`` with ``args.model`` the model's directory (for ``--random-init``, a random
    model of that shape, removed afterwards); shared with ``rollout_profile.py``."""
    from benchmarks.throughput import model_directory

    with model_directory(args.model, args.random_init) as args.model:
        measure_with(args)


def measure(args: argparse.Namespace) -> None:
    """Time each path's rollouts in alternation and print the rates (see the module docstring)."""
    import torch

    from benchmarks.throughput import examples, now
    from rgra_lightning.models import load_causal_lm, load_tokenizer
    from rgra_lightning.rollout import HFEngine, SamplingConfig, llama_decode
    from rgra_lightning.rollout.llama_decode import LlamaDecoder

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    plain = load_causal_lm(args.model, dtype=args.dtype).to(args.device)
    policies = {"plain": plain}
    if {"forward", "decoder", "unpacked", "graphed"} & set(args.paths):
        lora = lora_policy(args.model, args.dtype, args.lora).to(args.device)
        policies["forward"] = policies["decoder"] = policies["unpacked"] = policies["graphed"] = lora
    prompts = [example["prompt"] for example in examples(args.prompts)]
    sampling = SamplingConfig(
        num_generations=args.group, max_new_tokens=args.tokens, min_new_tokens=args.tokens
    )
    unsupported, pack_min_entries = LlamaDecoder.unsupported, llama_decode.PACK_MIN_ENTRIES
    rates: dict[str, list[float]] = {path: [] for path in args.paths}
    cpu_rates: dict[str, list[float]] = {path: [] for path in args.paths}
    for round_index in range(args.rounds + 1):
        for path in args.paths:
            LlamaDecoder.unsupported = (
                staticmethod(lambda model, cache: "forced") if path == "forward" else unsupported
            )
            llama_decode.PACK_MIN_ENTRIES = sys.maxsize if path == "unpacked" else pack_min_entries
            engine = HFEngine(cuda_graphs=path == "graphed").bind(policies[path], tokenizer)
            torch.manual_seed(round_index)
            start, cpu_start = now(), time.process_time()
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.autocast):
                rollout = engine.generate(prompts, sampling)
            seconds, cpu_seconds = now() - start, time.process_time() - cpu_start
            new_tokens = int(rollout.completion_mask.sum())
            assert new_tokens == args.prompts * args.group * args.tokens
            if round_index:
                rates[path].append(new_tokens / seconds)
                cpu_rates[path].append(new_tokens / cpu_seconds)
                print(
                    f"round {round_index}/{args.rounds} {path:>7}: {new_tokens / seconds:8.1f} tokens/s, "
                    f"{new_tokens / cpu_seconds:8.1f} tokens per CPU second",
                    flush=True,
                )
    LlamaDecoder.unsupported, llama_decode.PACK_MIN_ENTRIES = unsupported, pack_min_entries
    print(
        f"\n{args.random_init or Path(args.model).name}, LoRA rank {args.lora}, {args.prompts} prompts x "
        f"G={args.group} x {args.tokens} tokens per rollout, {args.dtype}"
        f"{' under bfloat16 autocast' * args.autocast}, "
        f"{args.threads} thread(s), {args.rounds} rounds, {args.device}"
    )
    print("| path | median tokens/s (range) | median tokens per CPU second (range) |\n|---|---|---|")
    for path in args.paths:
        wall, cpu = rates[path], cpu_rates[path]
        print(
            f"| {path} | {statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f}) | "
            f"{statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) |"
        )
    pairs = (("decoder", "forward"), ("plain", "forward"), ("decoder", "unpacked"), ("graphed", "decoder"))
    for fast, slow in pairs:
        if slow in rates and fast in rates:
            for name, values in (("wall", rates), ("CPU", cpu_rates)):
                paired = [f / s for f, s in zip(values[fast], values[slow], strict=True)]
                print(
                    f"{fast} / {slow} ({name} time): median {statistics.median(paired):.2f}x, "
                    f"range {min(paired):.2f}-{max(paired):.2f}x (per round)"
                )


if __name__ == "__main__":
    main()
