"""A few updates of a paper config on the weights at hand: step-time split, peak memory, adapters moved.

    python benchmarks/paper_step.py --gguf /tmp/qwen2.5-coder-0.5b/model.gguf     # real weights (GPU)
    python benchmarks/paper_step.py --random-init qwen2.5-0.5b                   # the architecture only
    python benchmarks/paper_step.py --random-init tiny --device cpu --tokens 16  # a smoke run on a CPU

It runs ``configs/paper/gsm8k-rgra.yaml`` (``--config``, repeatable: a model preset over it) unchanged
except for the model (``--gguf``: a GGUF converted once to a HF directory, e.g. the
Qwen2.5-Coder-0.5B-Instruct that ``benchmarks/qwen_gguf.py`` rejoins; ``--random-init``: a randomly
initialised model of that shape with the tokenizer of the shipped tiny policy), the data when
``../shared/datasets/gsm8k`` is absent (then the embedded arithmetic task as chat prompts with the config's
instruction), ``--steps`` updates, no validation, logs and checkpoints in a temporary directory, and
optionally ``--tokens`` / ``--batch`` and further overrides (``--cli``).

It prints, per update, the time split (``time/generation_s``, ``verification_s``, ``update_s``,
``step_s``), the reward and KL; then the peak accelerator memory (CUDA: ``max_memory_allocated``) and, for
the last update, the fraction of LoRA ``lora_A`` / ``lora_B`` entries that changed (at lr 1e-5 under
bf16-true this was 2.4 %: adapters stored in bf16 round the steps away; issue 16).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the project need not be installed
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED_GSM8K = ROOT.parent / "shared" / "datasets" / "gsm8k"
TIMES = ("time/generation_s", "time/verification_s", "time/update_s", "time/step_s")


def model_directory(options: argparse.Namespace, workdir: Path) -> Path:
    """The HF directory of the policy: the converted GGUF or a random model of ``--random-init``'s shape."""
    if options.gguf:
        from rgra_lightning.export import gguf_to_hf

        gguf = Path(options.gguf)
        return gguf_to_hf(str(gguf.parent), gguf.name, str(workdir / "model"), "bfloat16")
    from throughput import ARCHITECTURES, save_random_qwen2

    dimensions = ARCHITECTURES.get(options.random_init)
    if options.random_init == "tiny":
        dimensions = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 151_936}  # fmt: skip
    if dimensions is None:
        sys.exit(f"error: --random-init {options.random_init!r}: choose tiny or {', '.join(ARCHITECTURES)}")
    directory = workdir / "model"
    directory.mkdir()
    save_random_qwen2(directory, **dimensions)
    return directory


def overrides(options: argparse.Namespace, model: Path, workdir: Path) -> list[str]:
    """The command-line overrides of the paper config: model, place, size; nothing about the method."""
    args = []
    if not SHARED_GSM8K.is_dir():
        print(f"{SHARED_GSM8K} is absent: training on the embedded arithmetic task instead")
        args += [
            "--data=rgra_lightning.ArithmeticDataModule",
            "--data.init_args.prompt_template=Compute {question}.",
        ]
    else:
        args.append(f"--data.init_args.source={SHARED_GSM8K}")
    if options.random_init:  # the tiny policy's tokenizer has no chat template: plain prompts
        args.append("--data.init_args.prompt_format=plain")
    if options.batch:
        args.append(f"--data.init_args.batch_size={options.batch}")
    if options.tokens:
        args.append(f"--model.init_args.sampling.max_new_tokens={options.tokens}")
    return args + [
        f"--model.init_args.model_path={model}",
        f"--trainer.max_steps={options.steps}",
        f"--trainer.accelerator={'gpu' if options.device == 'cuda' else 'cpu'}",
        "--trainer.limit_val_batches=0",
        "--model.init_args.validate_before_training=false",
        f"--trainer.logger.init_args.save_dir={workdir / 'runs'}",
        f"--trainer.default_root_dir={workdir}",
        "--trainer.enable_progress_bar=false",
        *options.cli,
    ]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv``: ``sys.argv[1:]``); an error exits with the usage line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", action="append", help="configs composed in order (default: configs/paper/gsm8k-rgra.yaml)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", help="a GGUF file of the config's model family (converted to bf16)")
    source.add_argument("--random-init", help="tiny or an architecture of benchmarks/throughput.py")
    parser.add_argument("--steps", type=int, default=3, help="optimizer updates (default 3)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tokens", type=int, help="max_new_tokens (default: the config's)")
    parser.add_argument("--batch", type=int, help="prompts per step (default: the config's)")
    parser.add_argument(
        "--cli",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a further command-line override of the config, after all others, e.g. "
        "--cli=--model.init_args.rollout.init_args.cuda_graphs=true (repeatable)",
    )
    return parser.parse_args(argv)


def main() -> None:
    options = parse_arguments()

    import torch
    from lightning import Callback

    from rgra_lightning.cli import main as cli_main

    class AdapterWatch(Callback):
        """The LoRA weights before the last update, and each update's logged metrics."""

        def __init__(self) -> None:
            self.before: dict[str, torch.Tensor] = {}
            self.metrics: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == trainer.max_steps - 1:
                self.before = {
                    name: p.detach().float().cpu().clone()
                    for name, p in pl_module.named_parameters()
                    if p.requires_grad and ("lora_A" in name or "lora_B" in name)
                }

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.metrics.append(dict(pl_module.latest_metrics))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = model_directory(options, workdir)
        configs = [f"--config={ROOT / path}" for path in options.config or ["configs/paper/gsm8k-rgra.yaml"]]
        cli = cli_main([*configs, *overrides(options, model, workdir)], run=False)
        watch = AdapterWatch()
        cli.trainer.callbacks.append(watch)
        if options.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        for update, metrics in enumerate(watch.metrics, start=1):
            split = "  ".join(
                f"{name.removeprefix('time/')} {metrics.get(name, float('nan')):7.2f}" for name in TIMES
            )
            print(f"update {update}: {split}  reward {metrics.get('train/reward', float('nan')):.3f}  "
                  f"kl {metrics.get('train/kl', float('nan')):.2e}")  # fmt: skip
        if options.device == "cuda":
            print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
                  f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")  # fmt: skip
        if watch.metrics and watch.metrics[-1].get("train/zero_std_group_fraction") == 1.0:
            print("the last update's groups all had equal rewards: no advantage, so only the KL term moved")
        after = dict(cli.model.named_parameters())
        for kind in ("lora_A", "lora_B"):
            names = [name for name in watch.before if kind in name]
            if not names:
                print(f"{kind}: none (no LoRA in this config)")
                continue
            moved = sum(int((after[n].detach().float().cpu() != watch.before[n]).sum()) for n in names)
            total = sum(watch.before[n].numel() for n in names)
            print(f"{kind} entries changed by the last update: {moved / total:.2%} of {total:,}")


if __name__ == "__main__":
    main()
