"""Peak memory of one training step against ``model.micro_batch_size``, with a real-size vocabulary.

    python benchmarks/peak_memory.py                       # micro-batches of all rows, 16 and 8
    python benchmarks/peak_memory.py --micro 32 4 --tokens 128

The logits dominate an RL step's memory when the vocabulary is large: ``[rows, tokens, vocab]``, in fp32
for the log-softmax. The model here is a randomly initialised 2-layer Qwen2 with Qwen2.5's vocabulary
(151,936 tokens) and the tiny policy's tokenizer (its ids are a subset), so the logits weigh what they
would for Qwen2.5 while the layers cost next to nothing. Each setting runs one step (4 prompts x G = 8,
completions forced to ``--tokens`` new tokens, beta > 0 so the reference pass runs) in a fresh process
and reports its peak resident memory (on a GPU, ``torch.cuda.max_memory_allocated``) above what the
process held when training started.
"""

from __future__ import annotations

import argparse
import json
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


def peak_bytes(model_path: str, micro: int | None, tokens: int, device: str) -> int:
    """Peak memory (bytes) of one training step above the memory held when it started."""
    import torch
    from lightning import Callback, Trainer
    from torch.utils.data import DataLoader

    from rgra_lightning import RLModule
    from rgra_lightning.data.base import collate
    from rgra_lightning.rollout import SamplingConfig

    def current() -> int:
        if device == "cuda":
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    class Start(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.held = current()

    module = RLModule(
        model_path=model_path,
        sampling=SamplingConfig(num_generations=GROUP, max_new_tokens=tokens, min_new_tokens=tokens),
        micro_batch_size=micro,
        validate_before_training=False,
    )
    start = Start()
    trainer = Trainer(
        accelerator=device, devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[start],
    )  # fmt: skip
    loader = DataLoader(examples(PROMPTS), batch_size=PROMPTS, collate_fn=collate)
    trainer.fit(module, train_dataloaders=loader)
    return current() - start.held


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--micro", type=int, nargs="+", default=[0, 16, 8], help="0: no micro-batches")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per completion (forced)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MICRO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_path, micro = args.child
        print("RESULT", json.dumps(peak_bytes(model_path, int(micro) or None, args.tokens, args.device)))
        return
    rows = PROMPTS * GROUP
    logits_gb = rows * args.tokens * VOCAB * 4 / 1e9
    print(f"{rows} completions x {args.tokens} tokens x {VOCAB} vocabulary: {logits_gb:.2f} GB per fp32 copy")
    print("| micro_batch_size | peak above start (GB) |\n|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        save_random_qwen2(Path(directory), **TINY_QWEN2_WITH_REAL_VOCABULARY)
        for micro in args.micro:
            command = [sys.executable, __file__, "--tokens", str(args.tokens), "--device", args.device]
            done = subprocess.run(
                [*command, "--child", directory, str(micro)], cwd=ROOT, capture_output=True, text=True
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"micro_batch_size={micro} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            peak = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"| {micro or f'none ({rows} rows)'} | {peak / 1e9:.2f} |", flush=True)


if __name__ == "__main__":
    main()
