"""Peak memory of one training step against ``model.micro_batch_size``, with a real-size vocabulary, for the
chunked log-probs and for the full-vocabulary computation they replaced.

    python benchmarks/peak_memory.py                            # 64 tokens, micro-batches of all rows, 16, 8
    python benchmarks/peak_memory.py --tokens 512 --micro 8 4   # both computations at 512 tokens
    python benchmarks/peak_memory.py --paths chunked --micro 0 16

The logits dominate an RL step's memory when the vocabulary is large: ``[rows, tokens, vocab]``, in fp32
for the log-softmax. The model here is a randomly initialised 2-layer Qwen2 with Qwen2.5's vocabulary
(151,936 tokens) and the tiny policy's tokenizer (its ids are a subset), so the logits weigh what they
would for Qwen2.5 while the layers cost next to nothing. Each setting runs one step (4 prompts x G = 8,
completions forced to ``--tokens`` new tokens, beta > 0 so the reference pass runs) in a fresh process
and reports the step's peak memory above what the process held when training started (``StepMemory``).
On a GPU that is exact: the allocator's peak is reset when training starts
(``torch.cuda.reset_peak_memory_stats``) and the memory allocated then is subtracted from
``torch.cuda.max_memory_allocated``. On CPU the only peak the kernel keeps is the process's resident
high-water mark (``ru_maxrss``), which cannot be reset: the figure is its rise during training. That is the
step's peak above the memory held at the start whenever the step's peak exceeds every earlier one (model
loading included; Linux also starts a process's ``ru_maxrss`` at its parent's peak, so the parent that
starts the children imports no more than the standard library), and otherwise reads low, by at most how
far the earlier peak stood above the memory held at the start; the script prints that gap below the
table. On CPU the children run with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``):
with glibc's default, which rises to the size of each freed block, the decoding loop's freed ``[rows,
vocab]`` blocks stay in the heap, and resident memory grew by 3 GB over 256 decoding steps of memory that
was no longer in use, more than the log-probs' own peak. (With the variable set, the trainer leaves the
allocator as it is: ``rgra_lightning.host_memory``.)

Two computations of the log-probs (``--paths``):
  chunked  what the trainer does (``rgra_lightning.logprobs.token_logprobs``): the forward stops before the
           output head; the head, the fp32 log-softmax, the gather and the entropy run on chunks of
           tokens, each recomputed in the backward pass.
  full     the computation before it (commit b973f80): the model's logits for every completion position,
           then one fp32 log-softmax ``[rows, tokens, vocab]`` (and the entropy's product beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from throughput import ROOT, examples, save_random_qwen2

VOCAB = 151_936  # Qwen2.5's
TINY_QWEN2_WITH_REAL_VOCABULARY = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
}  # fmt: skip
PROMPTS, GROUP = 4, 8
PATHS = ("full", "chunked")


def full_vocabulary_token_logprobs(model, rollout, temperature=1.0, with_entropy=True, **unused):
    """``token_logprobs`` as it was before chunking (commit b973f80): the model computes the logits of
    every completion position at the rollout's full width (the head stays in the forward), then one fp32
    log-softmax ``[N, T, V]`` over all of them, and the entropy's product beside it."""
    from unittest import mock

    import torch

    import rgra_lightning.logprobs as logprobs

    with mock.patch.object(logprobs, "output_head", lambda model: None):
        logits, _ = logprobs.completion_features(model, rollout)
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    token_logp = log_probs.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return token_logp, None
    with torch.no_grad():
        entropy = -log_probs.exp().mul_(log_probs).sum(dim=-1)
    return token_logp, entropy


def use_full_vocabulary_logprobs() -> None:
    """Make the trainer take its log-probs with ``full_vocabulary_token_logprobs``."""
    import rgra_lightning.logprobs as logprobs
    import rgra_lightning.update as update

    logprobs.token_logprobs = update.token_logprobs = full_vocabulary_token_logprobs


def high_water_mark() -> int:
    """The process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident() -> int:
    """The process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class StepMemory:
    """The peak memory of what runs between ``start`` and ``read``, above the memory held at ``start``.

    CUDA: exact (the allocator's peak is reset at ``start``). CPU: the rise of the unresettable
    ``ru_maxrss``, ``max(0, peak - earlier peak)``, which reads low by at most ``gap``, the bytes by which the
    earlier peak exceeded the memory held at ``start`` (0 on CUDA).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.base = self.gap = 0

    def start(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = high_water_mark()
            self.gap = max(0, self.base - resident())

    def read(self) -> int:
        if self.device == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() - self.base
        return high_water_mark() - self.base


def peak_bytes(model_path: str, micro: int | None, tokens: int, device: str, path: str) -> dict[str, int]:
    """Peak memory (bytes) of one training step above the memory held when it started, and how much a CPU
    figure may read low (``StepMemory``)."""
    from lightning import Callback, Trainer
    from torch.utils.data import DataLoader

    from rgra_lightning import RLModule
    from rgra_lightning.data.base import collate
    from rgra_lightning.rollout import SamplingConfig

    if path == "full":
        use_full_vocabulary_logprobs()
    memory = StepMemory(device)

    class Start(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            memory.start()

    module = RLModule(
        model_path=model_path,
        sampling=SamplingConfig(num_generations=GROUP, max_new_tokens=tokens, min_new_tokens=tokens),
        micro_batch_size=micro,
        validate_before_training=False,
    )
    trainer = Trainer(
        accelerator=device, devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Start()],
    )  # fmt: skip
    loader = DataLoader(examples(PROMPTS), batch_size=PROMPTS, collate_fn=collate)
    trainer.fit(module, train_dataloaders=loader)
    return {"peak": memory.read(), "gap": memory.gap}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv``: ``sys.argv[1:]``); an error exits with the usage line."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--micro", type=int, nargs="+", default=[0, 16, 8], help="0: no micro-batches")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per completion (forced)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="see above")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MICRO", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--save-model", metavar="DIRECTORY", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    if args.save_model:
        save_random_qwen2(Path(args.save_model), **TINY_QWEN2_WITH_REAL_VOCABULARY)
        return
    if args.child:
        model_path, micro, path = args.child
        peak = peak_bytes(model_path, int(micro) or None, args.tokens, args.device, path)
        print("RESULT", json.dumps(peak))
        return
    rows = PROMPTS * GROUP
    logits_gb = rows * args.tokens * VOCAB * 4 / 1e9
    print(f"{rows} completions x {args.tokens} tokens x {VOCAB} vocabulary: {logits_gb:.2f} GB per fp32 copy")
    print(f"| micro_batch_size | {' | '.join(f'{path} (GB)' for path in args.paths)} |")
    print(f"|---|{'---|' * len(args.paths)}")
    # Large blocks go back to the OS when freed, so resident memory follows the memory in use
    environment = os.environ | ({"MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if args.device == "cpu" else {})
    gaps = []
    with tempfile.TemporaryDirectory() as directory:
        # In a process of its own: Linux starts a child's ru_maxrss at its parent's peak resident memory, so
        # this process stays small (standard library only) for the children it starts to measure.
        subprocess.run([sys.executable, __file__, "--save-model", directory], cwd=ROOT, check=True)
        for micro in args.micro:
            peaks = []
            for path in args.paths:  # one fresh process each, in turn
                command = [sys.executable, __file__, "--tokens", str(args.tokens), "--device", args.device]
                done = subprocess.run(
                    [*command, "--child", directory, str(micro), path],
                    cwd=ROOT,
                    env=environment,
                    capture_output=True,
                    text=True,
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    failure = f"{path}, micro_batch_size={micro} failed (exit {done.returncode})"
                    sys.exit(f"{failure}:\n{done.stderr[-3000:]}")
                result = json.loads(lines[-1].removeprefix("RESULT "))
                peaks.append(result["peak"] / 1e9)
                gaps.append(result["gap"] / 1e9)
            cells = " | ".join(f"{peak:.2f}" for peak in peaks)
            print(f"| {micro or f'none ({rows} rows)'} | {cells} |", flush=True)
    if args.device == "cpu":
        print(
            f"CPU: the rise of ru_maxrss during training, which reads low by at most {max(gaps):.2f} GB "
            "(the most its earlier peak stood above the memory held when training started)"
        )


if __name__ == "__main__":
    main()
