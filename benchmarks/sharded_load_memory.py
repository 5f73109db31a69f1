"""Host memory each process holds to load and shard a policy and its reference under FSDP2 (2 CPU
processes, gloo): every rank reading the weights whole, as before, against models built empty on every
rank and read by rank 0 alone, as ``RLCLI`` builds an ``RLModule`` under ``ModelParallelStrategy``
(``models.built_empty``, ``distributed.shard_model``).

    python benchmarks/sharded_load_memory.py                                  # SmolLM2-135M
    python benchmarks/sharded_load_memory.py --model models/arith-tiny

Both models are float32 (a trained policy must be), read from the model's files as they are stored and
from a bfloat16 copy of them (how Qwen2.5 and Llama 3.2 ship theirs), which the loader converts: a float32
file is mapped into memory, and the processes of a node share its pages, while a converted copy is each
process's own memory.

Each rank is a fresh process and reports how far its resident high-water mark (``ru_maxrss``) rose from the
moment its process group started (imports done) to the end of sharding both models; the parent imports no
more than the standard library, as Linux starts a child's ``ru_maxrss`` at its parent's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rank_main(args: argparse.Namespace) -> None:
    """One rank: build the policy and the reference (empty, or read whole), shard both, report."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    from rgra_lightning.distributed import ShardingConfig, shard_model
    from rgra_lightning.models import built_empty, load_causal_lm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    torch.distributed.init_process_group("gloo", rank=args.rank, world_size=2)
    start = peak_bytes()
    mesh = init_device_mesh("cpu", (2,))
    with built_empty(args.mode == "rank 0 reads"):
        models = [load_causal_lm(args.model) for _ in ("policy", "reference")]
    for model in models:
        shard_model(model, mesh, ShardingConfig())
    torch.distributed.barrier()
    shards = sum(p.to_local().numel() * p.element_size() for model in models for p in model.parameters())
    print(json.dumps({"rank": args.rank, "rise": peak_bytes() - start, "shards": shards}))
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_mode(model: str, mode: str) -> list[dict]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error")
    line = [sys.executable, __file__, "--model", model, "--mode", mode, "--port", str(port), "--rank"]
    ranks = [
        subprocess.Popen([*line, str(rank)], env=env, stdout=subprocess.PIPE, text=True) for rank in (0, 1)
    ]
    outputs = [rank.communicate()[0] for rank in ranks]
    if any(rank.returncode for rank in ranks):
        raise SystemExit(f"{mode}: a rank failed (exit codes {[rank.returncode for rank in ranks]})")
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def save_bfloat16_copy(model: str, directory: Path) -> None:
    """Write ``model``'s weights as bfloat16 into ``directory``, in a child process (see the docstring)."""
    code = (
        "import sys; from rgra_lightning.models import load_causal_lm, load_tokenizer; "
        "load_causal_lm(sys.argv[1], dtype='bfloat16').save_pretrained(sys.argv[2]); "
        "load_tokenizer(sys.argv[1]).save_pretrained(sys.argv[2])"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error")
    subprocess.run([sys.executable, "-c", code, model, str(directory)], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--mode", choices=["every rank reads", "rank 0 reads"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        rank_main(args)
        return
    print(f"policy + reference of {args.model} in float32, sharded over 2 processes: each rank's peak rise")
    print(f"{'stored':<10}{'':<18}{'rank 0 (GiB)':>13}{'rank 1 (GiB)':>13}{'its shards (GiB)':>17}")
    with tempfile.TemporaryDirectory() as temporary:
        bfloat16_copy = Path(temporary) / "bfloat16"
        save_bfloat16_copy(args.model, bfloat16_copy)
        for stored, model in (("as is", args.model), ("bfloat16", str(bfloat16_copy))):
            for mode in ("every rank reads", "rank 0 reads"):
                results = sorted(run_mode(model, mode), key=lambda result: result["rank"])
                rises = "".join(f"{result['rise'] / GB:>13.2f}" for result in results)
                print(f"{stored:<10}{mode:<18}{rises}{results[0]['shards'] / GB:>17.2f}")


if __name__ == "__main__":
    main()
