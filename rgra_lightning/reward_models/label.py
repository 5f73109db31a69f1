"""Label sampled completions with the verifier: the training data of an outcome reward model.

    rgra label --config configs/rgra.yaml --split train --limit 512 --output runs/orm/train.jsonl
    rgra label --config configs/rgra.yaml --split val --output runs/orm/val.jsonl \\
        -- --model.sampling.temperature=0.8

Any fit config works: its policy, data module, sampling settings and verifier are built exactly as for
``fit`` (several ``--config`` apply in order, as ``fit`` applies them, e.g. a loss or reward preset over a
base config; options after ``--`` override the config like on the ``fit`` command line; ``--ckpt-path``
loads a trained policy), and completions are sampled and scored as in training
(``RLModule.make_experience``). Each completion becomes one JSON line, its ``Experience.records()`` row:
``prompt``, ``completion``, ``reference``, ``reward``, ``correct``, ``extracted``, ``details``, ``error``
and ``group`` (the prompt's index in the split, shared by its G completions). Lines are written and
flushed batch by batch, so an interrupted run keeps every finished batch. ``--pairs-output`` also
writes preference pairs ``{"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}`` made
within each group (see ``preference_pairs``), for Bradley-Terry training.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rewards.errors import ToolParser
from rgra_lightning.callbacks import counted_progress
from rgra_lightning.checkpointing import load_trained_weights, require_checkpoint
from rgra_lightning.errors import ConfigError

SPLITS = ("train", "val", "test")
OVERRIDES_HELP = """-- OVERRIDES: options after -- override the configs as on the rgra fit command line, e.g.
  rgra label --config configs/rgra.yaml --split val --output runs/orm/val.jsonl \\
      -- --model.sampling.temperature=0.8"""


def label(
    config: str | list[str],
    output: str,
    split: str = "train",
    limit: int | None = None,
    num_generations: int | None = None,
    batch_size: int = 16,
    ckpt_path: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> dict[str, float]:
    """Sample ``num_generations`` (default: the config's G) completions for the first ``limit`` prompts of
    ``split``, score them with the config's verifier and write them to ``output``; returns a summary
    (rows, accuracy, mean reward, share of prompts whose completions are not all equally rewarded, and
    ``unverified``: completions whose verifier check failed, ``error`` set).
    ``config`` is one path, or several applied in order as ``fit`` applies several ``--config``."""
    from rgra_lightning.cli import main

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {list(SPLITS)}, got {split!r}")
    if batch_size < 1 or (limit is not None and limit < 1):
        raise ConfigError(f"--batch-size and --limit must be >= 1, got {batch_size}, {limit}")
    try:
        torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"--device {device}: not a torch device (cpu, cuda, cuda:N)") from error
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    if num_generations is not None and num_generations < 2:
        raise ConfigError(
            f"--num-generations must be >= 2 (a group needs two completions), got {num_generations}"
        )
    if Path(output).is_dir():
        raise ConfigError(f"--output {output} is a directory: give the JSONL file to write")
    if ckpt_path is not None:
        require_checkpoint(ckpt_path, "--ckpt-path")
    paths = [config] if isinstance(config, str) else config
    cli = main([*(arg for path in paths for arg in ("--config", path)), *(overrides or [])], run=False)
    module, data = cli.model, cli.datamodule
    if ckpt_path is not None:
        load_trained_weights(module, ckpt_path, "--ckpt-path")
    if getattr(data, "tokenizer", "absent") is None:  # chat prompts use the policy's tokenizer, as in fit
        data.tokenizer = module.tokenizer
    data.setup("fit")
    examples = getattr(data, f"{split}_examples")[:limit]
    module.use_stop_strings_of(data)
    sampling = module.sampling
    if num_generations is not None:
        sampling = replace(sampling, num_generations=num_generations)
    module.to(device)
    torch.manual_seed(seed)

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    rewards: list[float] = []
    correct: list[bool] = []
    mixed_groups = unverified = 0
    with (
        path.open("w", encoding="utf-8") as file,
        counted_progress(len(examples), "labelling", "prompt") as advance,
    ):
        for first in range(0, len(examples), batch_size):
            chunk = examples[first : first + batch_size]
            batch = {key: [example[key] for example in chunk] for key in ("prompt", "reference")}
            experience = module.make_experience(batch, sampling)
            for record in experience.records(first):
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            batch_rewards = [score.reward for score in experience.scores]
            rewards += batch_rewards
            correct += [score.correct for score in experience.scores]
            unverified += sum(score.error is not None for score in experience.scores)
            group = experience.group_size
            mixed_groups += sum(
                len(set(batch_rewards[start : start + group])) > 1
                for start in range(0, len(batch_rewards), group)
            )
            advance(len(chunk))
    rows = len(rewards)
    return {
        "rows": rows,
        "accuracy": sum(correct) / max(rows, 1),
        "mean_reward": sum(rewards) / max(rows, 1),
        "mixed_group_fraction": mixed_groups / max(len(examples), 1),
        "unverified": unverified,
    }


def preference_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chosen/rejected pairs from labelled rows: within each ``group``, sorted by reward, the best completion
    is paired with the worst, the second best with the second worst, and so on while the first is strictly
    better; at most G / 2 pairs a group, each completion in at most one pair. Rows whose verifier check
    failed (``error`` set) are left out: their 0 reward would make them the rejected side."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("error") is None:
            groups.setdefault(row["group"], []).append(row)
    pairs = []
    for group in groups.values():
        ranked = sorted(group, key=lambda row: row["reward"], reverse=True)
        for better, worse in zip(ranked[: len(ranked) // 2], reversed(ranked), strict=False):
            if better["reward"] <= worse["reward"]:
                break
            pairs.append(
                {
                    "prompt": better["prompt"],
                    "chosen": better["completion"],
                    "rejected": worse["completion"],
                    "chosen_reward": better["reward"],
                    "rejected_reward": worse["reward"],
                }
            )
    return pairs


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    overrides = args[args.index("--") + 1 :] if "--" in args else []
    args = args[: args.index("--")] if "--" in args else args
    parser = ToolParser(prog="rgra label", description=__doc__.split("\n\n")[0], epilog=OVERRIDES_HELP)
    parser.add_argument(
        "--config",
        required=True,
        action="append",
        help="a fit config (policy, data, sampling, verifier); repeat to apply several in order, as fit does "
        "(e.g. --config configs/rgra.yaml --config configs/reward/orm.yaml)",
    )
    parser.add_argument("--output", metavar="FILE.jsonl", required=True, help="JSONL file to write")
    parser.add_argument("--split", default="train", choices=SPLITS, help="which prompts of the data module")
    parser.add_argument("--limit", metavar="N", type=int, default=None, help="only the first N prompts")
    parser.add_argument(
        "--num-generations",
        metavar="G",
        type=int,
        default=None,
        help="completions per prompt (default: the config's model.sampling.num_generations)",
    )
    parser.add_argument("--batch-size", metavar="B", type=int, default=16, help="prompts per rollout")
    parser.add_argument(  # --ckpt_path too: the spelling of rgra fit, validate, test and predict
        "--ckpt-path",
        "--ckpt_path",
        dest="ckpt_path",
        metavar="CKPT",
        default=None,
        help="a training checkpoint of the policy to sample from (default: the config's model_path as it is)",
    )
    parser.add_argument("--seed", metavar="S", type=int, default=0, help="seed of the sampling")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device: cpu, cuda, cuda:N (default: cuda where torch finds a GPU, else cpu)",
    )
    parser.add_argument(
        "--pairs-output",
        metavar="PAIRS.jsonl",
        default=None,
        help="also write preference pairs (chosen, rejected) within each prompt's completions to this JSONL "
        "file, for Bradley-Terry training",
    )
    parser.usage = parser.format_usage().removeprefix("usage: ").rstrip() + " [-- OVERRIDES ...]"
    options = parser.parse_args(args)
    try:
        if (
            options.pairs_output is not None
            and Path(options.pairs_output).resolve() == Path(options.output).resolve()
        ):
            raise ConfigError(f"--pairs-output {options.pairs_output} is --output too: give another file")
        if options.pairs_output is not None and Path(options.pairs_output).is_dir():
            raise ConfigError(
                f"--pairs-output {options.pairs_output} is a directory: give the JSONL file to write"
            )
        summary = label(
            options.config,
            options.output,
            options.split,
            options.limit,
            options.num_generations,
            options.batch_size,
            options.ckpt_path,
            options.seed,
            options.device,
            overrides,
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    if options.pairs_output is not None:
        rows = [json.loads(line) for line in Path(options.output).read_text(encoding="utf-8").splitlines()]
        pairs = preference_pairs(rows)
        Path(options.pairs_output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.pairs_output).write_text(
            "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs), encoding="utf-8"
        )
        summary |= {"pairs_output": options.pairs_output, "pairs": len(pairs)}
    print(json.dumps({"output": options.output, **summary}))


if __name__ == "__main__":
    main()
