"""Seconds per training step: our trainer against TRL's ``GRPOTrainer`` on the same model and prompts.

    python benchmarks/throughput.py                      # 5 alternating runs each, tiny shipped policy
    python benchmarks/throughput.py --runs 7 --threads 2
    python benchmarks/throughput.py --model models/smollm2-135m-instruct --lora 16 --tokens 48
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --random-init qwen2.5-0.5b
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --random-init qwen2.5-0.5b --engine vllm
    python benchmarks/throughput.py --device cuda --random-init qwen2.5-0.5b --engine hf-graphs

Both trainers get the same HF model directory, the same prompts in the same order (the embedded
arithmetic task, template ``{question}=``), 16 completions per step (2 prompts x G = 8), completions forced
to exactly ``--tokens`` new tokens (EOS suppressed, so lengths match), fp32 (``--dtype``; bfloat16 is
autocast in both, see ``weights_dtype``), AdamW at the same learning rate, beta = 0.04 (both run a
reference model), sampling from the full softmax at temperature 1 (no top-k: TRL's top_k=0), the same
torch thread count, no logging, no checkpoints.
TRL's default gradient checkpointing is switched off because ours is off by default. ``--model`` takes any
local HF directory. ``--lora RANK`` trains LoRA adapters instead of the whole model in both (alpha = 2 x
rank, every linear layer but the head, no dropout; ours ``model.lora``, TRL's ``peft_config``), and both
take the KL reference from the same weights with the adapters disabled. ``--engine hf-graphs`` (CUDA only)
has ours replay its decoding steps as CUDA graphs (``HFEngine(cuda_graphs=True)``), TRL sampling as with
``hf``. ``--engine vllm`` (CUDA and vllm
only) samples with vLLM colocated in the training process in both, set explicitly to the same work
(``our_rollout``, ``our_loss``, ``trl_vllm_options``): ours ``model.rollout`` ``VLLMEngine``, TRL's
``use_vllm=True, vllm_mode="colocate"``; each vLLM gets 0.3 of the GPU's memory (``gpu_memory_utilization``,
``vllm_gpu_memory_utilization``); neither sleeps between steps (ours ``sleep_level=None``, TRL's
``vllm_enable_sleep_mode=False``, its default; ours defaults to level 2); neither corrects for the sampler
(ours ``sampler_correction_cap=None``, its default; TRL's ``vllm_importance_sampling_correction=False``,
whose default True adds a no-grad forward for the old log-probs each step); both push the policy's weights
into vLLM before each step's rollout.
Each run is a fresh subprocess; runs alternate (ours, TRL, ours, ...), and each pair's ratio is printed
when its TRL run ends, so a comparison cut short by a time limit still reports its finished pairs. A step's
time is the wall time between consecutive step ends after ``--warmup`` steps, so it includes data loading
and every per-step overhead of each trainer. For ours the per-step split (generation / verification /
update) comes from the module's ``time/*`` metrics. TRL is a benchmark-only dependency: ``pip install -e
'.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the project need not be installed
PROMPTS_PER_STEP = 2
GROUP = 8
BETA = 0.04
LEARNING_RATE = 1e-4
PHASES = ("generation_s", "verification_s", "update_s")
VLLM_MEMORY = 0.3  # the share of the GPU's memory each trainer's vLLM takes (both defaults)
# Real architectures, randomly initialised (``--random-init``): the published configs' dimensions.
ARCHITECTURES = {
    "qwen2.5-0.5b": {
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151_936, "tie_word_embeddings": True,
        "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32_768,
    },
}  # fmt: skip


def save_random_qwen2(directory: Path, **dimensions: object) -> None:
    """A randomly initialised Qwen2 causal LM of ``dimensions`` in ``directory``, with the tiny policy's
    tokenizer (its ids are a subset of any vocabulary this large), so no download is needed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for path in (ROOT / "models" / "arith-tiny").iterdir():
        if "token" in path.name:
            shutil.copy(path, directory / path.name)
    torch.manual_seed(0)
    config = Qwen2Config(eos_token_id=1, pad_token_id=0, **dimensions)
    Qwen2ForCausalLM(config).save_pretrained(directory)


@contextmanager
def model_directory(model_path: str, random_init: str | None) -> Iterator[str]:
    """``model_path``, or (``random_init``: one of ``ARCHITECTURES``) a temporary directory holding a
    randomly initialised model of that architecture (``save_random_qwen2``), removed afterwards."""
    if random_init is None:
        yield model_path
        return
    with tempfile.TemporaryDirectory() as scratch:
        save_random_qwen2(Path(scratch), **ARCHITECTURES[random_init])
        yield scratch


def examples(count: int) -> list[dict[str, str]]:
    """The first ``count`` training problems of the embedded task, as prompt/reference pairs."""
    from rgra_lightning.arithmetic.problems import split_problems

    problems = split_problems(val_size=128, seed=0)["train"][:count]
    return [{"prompt": f"{p.question}=", "reference": p.answer} for p in problems]


def now() -> float:
    """The wall clock once queued GPU work has finished (on a GPU a step end may precede its kernels)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def intervals(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times[:-1], times[1:], strict=True)]


def weights_dtype(dtype: str, lora: int) -> str:
    """The dtype both trainers store the model in for compute in ``dtype``: bfloat16 compute is bf16
    autocast in both (ours ``trainer.precision=bf16-mixed``, TRL ``bf16=True``) over float32 trained weights
    (ours refuses to train weights stored in bfloat16, whose AdamW steps round away) or, with LoRA, over a
    bfloat16 base under float32 adapters."""
    return dtype if lora or dtype == "float32" else "float32"


def trained(model) -> int:
    """The number of trained parameters (with LoRA, the adapters')."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def our_rollout(engine: str):
    """Our rollout engine; vLLM's never sleeps between steps, as TRL's does not (``trl_vllm_options``)."""
    from rgra_lightning.rollout import HFEngine, VLLMEngine

    if engine == "vllm":
        return VLLMEngine(gpu_memory_utilization=VLLM_MEMORY, sleep_level=None)
    return HFEngine(cuda_graphs=engine == "hf-graphs")


def our_loss():
    """GRPO's clipped ratio with TRL's defaults, and no sampler correction (``trl_vllm_options``)."""
    from rgra_lightning.losses import LossConfig

    return LossConfig(
        policy_term="clipped_ratio",
        beta=BETA,
        kl_estimator="k3",
        aggregation="token_mean",
        sampler_correction_cap=None,
    )


def trl_vllm_options(engine: str) -> dict:
    """TRL's vLLM options, set to do what ours does (``our_rollout``, ``our_loss``)."""
    return {
        "use_vllm": engine == "vllm",
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": VLLM_MEMORY,
        "vllm_enable_sleep_mode": False,
        "vllm_importance_sampling_correction": False,
    }


def our_module(model_path: str, tokens: int, dtype: str, lora: int = 0, engine: str = "hf"):
    """Our ``RLModule`` set up for the comparison (see the module docstring)."""
    from rgra_lightning import RLModule
    from rgra_lightning.models import LoraConfig
    from rgra_lightning.rollout import SamplingConfig

    return RLModule(
        model_path=model_path,
        dtype=weights_dtype(dtype, lora),
        lora=LoraConfig(rank=lora, alpha=2.0 * lora) if lora else None,
        rollout=our_rollout(engine),
        loss=our_loss(),
        sampling=SamplingConfig(num_generations=GROUP, max_new_tokens=tokens, min_new_tokens=tokens),
        learning_rate=LEARNING_RATE,
        validate_before_training=False,
    )


def fit_ours(module, steps: int, device: str, dtype: str, callback) -> None:
    """``steps`` updates of ``module`` on the comparison's prompts with Lightning's ``Trainer``: no logger,
    checkpoints, progress bar or validation; ``callback`` times them."""
    from lightning import Trainer
    from torch.utils.data import DataLoader

    from rgra_lightning.data.base import collate

    trainer = Trainer(
        accelerator=device,
        devices=1,
        precision="bf16-mixed" if dtype == "bfloat16" else "32-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
    )
    loader = DataLoader(examples(steps * PROMPTS_PER_STEP), batch_size=PROMPTS_PER_STEP, collate_fn=collate)
    trainer.fit(module, train_dataloaders=loader)


def run_ours(
    model_path: str, steps: int, tokens: int, device: str, dtype: str, lora: int = 0, engine: str = "hf"
) -> dict:
    """Per-step wall times ``[steps]`` (s) and the module's per-step phase times."""
    from lightning import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.phases: list[dict[str, float]] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.ends.append(now())

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.ends.append(now())
            metrics = pl_module.latest_metrics
            self.phases.append({name: metrics[f"time/{name}"] for name in PHASES})

    module = our_module(model_path, tokens, dtype, lora, engine)
    clock = StepClock()
    with warnings.catch_warnings(record=True) as caught:  # the HF engine's, if it leaves the fast decoder
        warnings.simplefilter("always")
        fit_ours(module, steps, device, dtype, clock)
    slow = sorted({str(w.message) for w in caught if "not the fast decoder" in str(w.message)})
    graphs = ", its steps replayed as CUDA graphs" if engine == "hf-graphs" else ""
    return {
        "step_s": intervals(clock.ends),
        "phases": clock.phases,
        "trained": trained(module.policy),
        "decoding": ("; ".join(slow) or f"the fast decoder (LlamaDecoder){graphs}")
        if engine != "vllm"
        else engine,
    }


def run_trl(
    model_path: str, steps: int, tokens: int, device: str, dtype: str, lora: int = 0, engine: str = "hf"
) -> dict:
    """Per-step wall times ``[steps]`` (s) of TRL's GRPOTrainer under the same settings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import MathVerifier

    verifier = MathVerifier()

    def reward(prompts, completions, reference, **kwargs) -> list[float]:
        return [score.reward for score in verifier.score_batch(completions, reference)]

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs) -> None:
            self.ends.append(now())

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.ends.append(now())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
            num_generations=GROUP,
            max_completion_length=tokens,
            # the same option under vLLM's name when it samples
            generation_kwargs={"min_tokens" if engine == "vllm" else "min_new_tokens": tokens},
            **trl_vllm_options(engine),
            temperature=1.0,
            top_p=1.0,
            beta=BETA,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant",
            use_cpu=device == "cpu",
            bf16=dtype == "bfloat16",
            fp16=False,
            gradient_checkpointing=False,
            shuffle_dataset=False,
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
        )
        peft_config = None
        if lora:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=lora,
                lora_alpha=2.0 * lora,
                lora_dropout=0.0,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_path, dtype=weights_dtype(dtype, lora)),
            reward_funcs=reward,
            args=config,
            peft_config=peft_config,
            train_dataset=Dataset.from_list(examples(steps * PROMPTS_PER_STEP)),
            processing_class=AutoTokenizer.from_pretrained(model_path),
            callbacks=[clock],
        )
        trainer.train()
    return {"step_s": intervals(clock.ends), "trained": trained(trainer.model)}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    run = run_ours if args.only == "ours" else run_trl
    steps = args.warmup + args.steps
    result = run(args.model_path, steps, args.tokens, args.device, args.dtype, args.lora, args.engine)
    result["step_s"] = result["step_s"][args.warmup :]
    result["phases"] = result.get("phases", [])[args.warmup :]
    print("RESULT " + json.dumps(result))


def launch(args: argparse.Namespace, which: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="0")
    command = [sys.executable, __file__, "--only", which]
    for name in ("model_path", "steps", "warmup", "tokens", "threads", "device", "dtype", "lora", "engine"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{which} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv``: ``sys.argv[1:]``), checked as far as they can be without
    running; an error exits with argparse's usage line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        "--model-path",
        dest="model_path",
        default=str(ROOT / "models" / "arith-tiny"),
        help="a local Hugging Face model directory (default: the shipped tiny policy)",
    )
    parser.add_argument(
        "--random-init",
        choices=sorted(ARCHITECTURES),
        help="a randomly initialised real architecture instead",
    )
    parser.add_argument("--runs", type=int, default=5, help="alternating runs of each trainer")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per completion (forced)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute (bfloat16: autocast over float32 weights, or a bfloat16 base with --lora)",
    )
    parser.add_argument(
        "--lora",
        type=int,
        default=0,
        metavar="RANK",
        help="LoRA adapters of this rank in both (0: full fine-tuning)",
    )
    parser.add_argument(
        "--engine",
        choices=("hf", "hf-graphs", "vllm"),
        default="hf",
        help="hf: each trainer samples with its policy; hf-graphs: ours replays its decoding steps as CUDA "
        "graphs (CUDA only), TRL as for hf; vllm: both with vLLM colocated (CUDA only)",
    )
    parser.add_argument("--only", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lora < 0:
        parser.error(f"--lora must be >= 0, got {args.lora}")
    if args.engine != "hf" and args.device != "cuda":
        parser.error(f"--engine {args.engine} needs --device cuda")
    return args


def main() -> None:
    args = parse_arguments()
    if args.only:
        child(args)
        return
    with model_directory(args.model_path, args.random_init) as args.model_path:
        compare(args)


def compare(args: argparse.Namespace) -> None:
    """Alternating runs of both trainers; prints the table, the ratio and our phase split."""
    medians: dict[str, list[float]] = {"ours": [], "trl": []}
    trained: dict[str, int] = {}
    phase_fractions: list[dict[str, float]] = []
    phase_seconds: list[dict[str, float]] = []
    decoding: set[str] = set()
    for run in range(args.runs):
        for which in ("ours", "trl"):
            result = launch(args, which)
            medians[which].append(statistics.median(result["step_s"]))
            trained[which] = result["trained"]
            print(f"run {run + 1}/{args.runs} {which:>4}: {medians[which][-1]:.3f} s/step", flush=True)
            if which == "trl":
                pair = medians["ours"][-1] / medians["trl"][-1]
                print(f"run {run + 1}/{args.runs} pair: ours / TRL {pair:.2f}", flush=True)
            if which == "ours":  # per step, so a rare slow verification does not skew the typical split
                phase_fractions += [
                    {name: phases[name] / step for name in PHASES}
                    for phases, step in zip(result["phases"], result["step_s"], strict=True)
                ]
                phase_seconds += result["phases"]
                decoding.add(result["decoding"])
    ours, trl = statistics.median(medians["ours"]), statistics.median(medians["trl"])
    model = args.random_init or Path(args.model_path).name
    adapters = f"LoRA rank {args.lora}" if args.lora else "full fine-tuning"
    print(
        f"\n{model}, {adapters}, {args.dtype}, {args.engine} sampling: {args.runs} alternating runs each, "
        f"{args.steps} timed steps per run after {args.warmup} warm-up, "
        f"{PROMPTS_PER_STEP * GROUP} completions x {args.tokens} tokens per step, {args.threads} thread(s)"
    )
    print(f"trained parameters: ours {trained['ours']:,}, TRL {trained['trl']:,}")
    print("| trainer | median s/step | runs (median s/step each) |\n|---|---|---|")
    for name, value in (("rgra-lightning", ours), ("TRL GRPOTrainer", trl)):
        runs = ", ".join(f"{v:.3f}" for v in medians["ours" if name == "rgra-lightning" else "trl"])
        print(f"| {name} | {value:.3f} | {runs} |")
    paired = [o / t for o, t in zip(medians["ours"], medians["trl"], strict=True)]
    print(f"\nratio ours / TRL = {ours / trl:.2f} (ratio of the medians)")
    print(
        f"per-pair ratios (run i of ours / run i of TRL): median {statistics.median(paired):.2f}, "
        f"range {min(paired):.2f}-{max(paired):.2f}"
    )
    split = ", ".join(
        f"{name.removesuffix('_s')} {statistics.median(f[name] for f in phase_fractions):.0%} "
        f"({statistics.median(p[name] for p in phase_seconds):.3f} s)"
        for name in PHASES
    )
    print(f"ours, median fraction of a step's time: {split} (verification overlaps the update)")
    print(f"ours decoded with: {' | '.join(sorted(decoding))}")


if __name__ == "__main__":
    main()
