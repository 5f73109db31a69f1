"""Where the rollout time of our training loop goes, and whether being inside the loop costs it.

    python benchmarks/rollout_profile.py --device cuda --random-init qwen2.5-0.5b --lora 128 --dtype bfloat16
    python benchmarks/rollout_profile.py --lora 16 --trace /tmp/rollout.json   # the tiny policy, on the CPU

On an H100 the LoRA throughput run (``throughput.py --lora 128``) decoded at 42 ms a step where
``rollout_speed.py``'s fast decoder, same model shape, adapters and autocast, took 9.7 ms (docs/scaling.md).
This script times rollouts of ``--prompts`` x G = 8 completions of exactly ``--tokens`` new tokens three
ways in one process:

  loop   inside Lightning's fit of the module ``throughput.py`` trains (``our_module``): the rollouts of
         updates 2 to ``--steps`` - 1 (the first is warm-up, the last is profiled);
  after  the same module's engine and policy after that fit, under the autocast the fit used;
  fresh  a policy built as ``rollout_speed.py`` builds it (the same base weights, new adapters whose B is
         random), sampled by a new ``HFEngine`` under that autocast.

The last in-loop rollout runs under ``torch.profiler``, and its profile is printed first (what a time limit
must not cut off): the threads alive, the time and calls of each phase (prefill, decoder set-up, decoding
steps, sampling, assembly), how often the host waited for the device, and the operators that took the most
host and device time; ``--trace`` also writes it as a Chrome trace. Then, as each way finishes, its seconds
per rollout, milliseconds per decoding step and CPU seconds per wall second (about 1 where one thread
launches the work; more where another thread is busy too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the project need not be installed

# The host calls after which it waits for the device (or copies from it) on CUDA.
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync")
# The rollout's phases, as profiler ranges: attribute of ``rgra_lightning.rollout.hf``, range name.
PHASES = {
    "encode_prompts": "rollout/prefill",
    "repeat_encoded": "rollout/prefill repeated",
    "next_tokens": "rollout/sampling",
    "assemble_rollout": "rollout/assembly",
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv``: ``sys.argv[1:]``); an error exits with the usage line."""
    from benchmarks.rollout_speed import add_policy_options

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_policy_options(parser, tokens=64)
    parser.add_argument("--steps", type=int, default=5, help="updates of the fit (at least 3)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rollouts after the fit, each way")
    parser.add_argument("--trace", type=Path, help="write the profiled rollout as a Chrome trace here")
    args = parser.parse_args(argv)
    if args.lora < 1:
        parser.error(f"--lora must be >= 1, got {args.lora}")
    if args.steps < 3:
        parser.error(f"--steps must be >= 3 (a warm-up, a timed and a profiled rollout), got {args.steps}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def main() -> None:
    from benchmarks.rollout_speed import on_model

    on_model(parse_arguments(), measure)


def labelled(function: Callable, name: str) -> Callable:
    """``function`` run inside a profiler range called ``name``."""
    import torch

    def run(*args, **kwargs):
        with torch.profiler.record_function(name):
            return function(*args, **kwargs)

    return run


def label_phases() -> None:
    """Put each rollout phase (``PHASES``, the decoder's set-up and steps) in a profiler range of its own."""
    from rgra_lightning.rollout import hf

    for attribute, name in PHASES.items():
        setattr(hf, attribute, labelled(getattr(hf, attribute), name))
    hf.LlamaDecoder.__init__ = labelled(hf.LlamaDecoder.__init__, "rollout/decoder set-up")
    hf.LlamaDecoder.step = labelled(hf.LlamaDecoder.step, "rollout/decoding step")


class TimedEngine:
    """Wraps an engine's ``generate``: each call's wall and CPU seconds are kept under the current ``way``,
    and the call numbered ``profile_call`` (from 0) runs under ``torch.profiler`` instead."""

    def __init__(self, engine, device: str, profile_call: int | None = None) -> None:
        self.generate, self.device, self.profile_call = engine.generate, device, profile_call
        self.calls, self.way = 0, "loop"
        self.seconds: dict[str, list[float]] = {}
        self.cpu_seconds: dict[str, list[float]] = {}
        self.profile = None
        self.threads: list[str] = []
        engine.generate = self

    def __call__(self, *args, **kwargs):
        import torch

        from benchmarks.throughput import now

        call, self.calls = self.calls, self.calls + 1
        if call == self.profile_call:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.threads = sorted(thread.name for thread in threading.enumerate())
            with torch.profiler.profile(activities=activities) as self.profile:
                return self.generate(*args, **kwargs)
        start, cpu_start = now(), time.process_time()
        rollout = self.generate(*args, **kwargs)
        self.seconds.setdefault(self.way, []).append(now() - start)
        self.cpu_seconds.setdefault(self.way, []).append(time.process_time() - cpu_start)
        return rollout


def measure(args: argparse.Namespace) -> None:
    """Time the three ways, profile one in-loop rollout and print it all (see the module docstring)."""
    import torch
    from lightning import Callback

    from benchmarks.rollout_speed import lora_policy
    from benchmarks.throughput import PROMPTS_PER_STEP, examples, fit_ours, our_module
    from rgra_lightning.models import load_tokenizer
    from rgra_lightning.rollout import HFEngine

    torch.set_num_threads(args.threads)
    label_phases()
    module = our_module(args.model, args.tokens, args.dtype, args.lora)

    class Wrap(Callback):  # the engine is bound to the policy when the fit sets the module up
        def on_train_start(self, trainer, pl_module) -> None:
            self.timed = TimedEngine(pl_module.rollout, args.device, profile_call=args.steps - 1)

    wrap = Wrap()
    fit_ours(module, args.steps, args.device, args.dtype, wrap)
    timed = wrap.timed
    for times in (timed.seconds, timed.cpu_seconds):
        times["loop"] = times["loop"][1:]  # the first rollout warms up
    # The profile first: it is what a time limit must not cut off.
    report_profile(timed.profile, timed.threads, args.device)
    if args.trace:
        timed.profile.export_chrome_trace(str(args.trace))
        print(f"\nChrome trace of the profiled in-loop rollout: {args.trace}")
    shape = args.random_init or Path(args.model).name
    print(
        f"\n{shape}, LoRA rank {args.lora}, {args.dtype}, {PROMPTS_PER_STEP} prompts x G=8 x {args.tokens} "
        f"tokens per rollout, {args.threads} thread(s), {args.device}"
    )
    print("| way | rollouts | median s per rollout (range) | ms per decoding step | CPU s per wall s |")
    print("|---|---|---|---|---|", flush=True)
    print_way(timed, "loop", args.tokens)
    module.to(args.device)  # the fit's teardown moved it to the CPU
    prompts = [example["prompt"] for example in examples(PROMPTS_PER_STEP)]
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    fresh = lora_policy(args.model, args.dtype, args.lora)
    fresh_timed = TimedEngine(HFEngine().bind(fresh.to(args.device), load_tokenizer(args.model)), args.device)
    for way, engine in (("after", timed), ("fresh", fresh_timed)):
        engine.way = way
        for round_index in range(args.rounds + 1):
            with autocast:
                engine(prompts, module.sampling)
            if round_index == 0:  # warm-up
                engine.seconds[way].pop(), engine.cpu_seconds[way].pop()
        print_way(engine, way, args.tokens)


def print_way(engine: TimedEngine, way: str, tokens: int) -> None:
    """The table row of ``way``'s timed rollouts."""
    wall = engine.seconds[way]
    median = statistics.median(wall)
    busy = statistics.median(c / w for c, w in zip(engine.cpu_seconds[way], wall, strict=True))
    print(
        f"| {way} | {len(wall)} | {median:.3f} ({min(wall):.3f}-{max(wall):.3f}) | "
        f"{1000 * median / tokens:.2f} | {busy:.2f} |",
        flush=True,
    )


def report_profile(profile, threads: list[str], device: str) -> None:
    """The profiled rollout's threads, phases, host waits for the device and top operators."""
    averages = profile.key_averages()
    by_name = {event.key: event for event in averages}
    print(f"\nthe profiled in-loop rollout; threads alive: {', '.join(threads)}")
    print("| phase | calls | host ms (total) | device ms (total) |\n|---|---|---|---|")
    for name in [*PHASES.values(), "rollout/decoder set-up", "rollout/decoding step"]:
        event = by_name.get(name)
        if event is not None:
            device_ms = event.device_time_total / 1000 if device == "cuda" else 0.0
            print(f"| {name} | {event.count} | {event.cpu_time_total / 1000:.1f} | {device_ms:.1f} |")
    waits = {name: by_name[name].count for name in SYNCS if name in by_name}
    print("host waits for the device: " + (", ".join(f"{n} x{c}" for n, c in waits.items()) or "none"))
    print("\nby host time (self):")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    if device == "cuda":
        print("by device time (self):")
        print(averages.table(sort_by="self_device_time_total", row_limit=15), flush=True)


if __name__ == "__main__":
    main()
