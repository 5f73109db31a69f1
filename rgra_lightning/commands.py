"""The ``rgra`` console script (also ``python -m rgra_lightning``): LightningCLI's subcommands and the
project's other tools, each a subcommand. Tools are imported only when run, so ``rgra score`` starts
without torch or Lightning.
"""

from __future__ import annotations

import importlib
import signal
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# The tools besides LightningCLI's subcommands: ``rgra <tool> ARGS`` runs ``main(ARGS)`` of the module.
TOOLS = {
    "label": ("rgra_lightning.reward_models.label", "sample and verify completions into a labelled JSONL"),
    "export": ("rgra_lightning.export", "a checkpoint or a GGUF file to a Hugging Face model directory"),
    "ablate": ("rgra_lightning.ablate", "run an ablation study: loss presets x seeds, then a summary"),
    "score": ("rewards.__main__", "score a JSONL file of (gold, pred) answer pairs with a verifier"),
    "rehearse": ("rgra_lightning.rehearsal", "2 checked updates of a GPU config on CPU, with a tiny model"),
}
USAGE = (
    """usage: rgra COMMAND [options]   (or: python -m rgra_lightning COMMAND ...)

training and evaluation (LightningCLI):
  fit        train a policy: rgra fit --config configs/rgra.yaml [--config configs/loss/grpo.yaml]
  validate   evaluate a policy on the validation split
  test       evaluate a policy on the test split, else the validation one (pass@k, maj@k: model.evaluation)
  predict    greedy completions of the test prompts to predict_samples.jsonl
tools:
"""
    + "".join(f"  {name:<10} {help}\n" for name, (_, help) in TOOLS.items())
    + """
rgra COMMAND --help lists the command's options; for fit, validate, test and predict those are the
trainer's, not the model's or the data module's (a config's model.init_args, data.init_args): list those
by the class, named in full:
  rgra fit --model.help rgra_lightning.RLModule
  rgra fit --data.help rgra_lightning.ArithmeticDataModule   (JsonFilesDataModule, DatasetDataModule, ...)
"""
)


KILLED = 128 + signal.SIGTERM  # the exit status of a process stopped by SIGTERM, as a shell reports it


def exit_on_termination() -> None:
    """Make SIGTERM (``kill``, ``timeout``: ``SystemExit(KILLED)``) and SIGHUP (the terminal closed: 129)
    raise ``SystemExit`` in this process, so that a tool's ``finally`` blocks run and a child started with
    ``subprocess`` is stopped on the way out (``rgra ablate``'s fits run in a session of their own, which
    a closed terminal does not reach: without this they went on unsupervised)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _: sys.exit(128 + number))


def run(args: list[str] | None = None) -> None:
    """Run ``rgra ARGS`` (None: ``sys.argv[1:]``): a tool of ``TOOLS``, or LightningCLI's subcommands
    (``rgra_lightning.cli``)."""
    given = sys.argv[1:] if args is None else args
    if not given or given[0] in ("-h", "--help"):
        print(USAGE, end="")
        raise SystemExit(0 if given else 2)
    if given[0] in TOOLS:
        tool = importlib.import_module(TOOLS[given[0]][0])
        # ``rgra score ...`` runs as ``python -m rewards score ...``
        rest = ["score", *given[1:]] if given[0] == "score" else given[1:]
        raise SystemExit(tool.main(rest) or 0)
    if not given[0].startswith("-") and given[0] not in LIGHTNING_COMMANDS:
        print(unknown_command(given[0]), file=sys.stderr)
        raise SystemExit(2)
    from rgra_lightning.cli import main

    main(args)  # None: LightningCLI reads sys.argv itself (given it as ``args`` too, Lightning warns)


def unknown_command(name: str) -> str:
    """The one-line error for ``rgra NAME`` with no such command, with the closest one and every one (the
    parser's own error would list LightningCLI's subcommands only)."""
    import difflib

    commands = [*LIGHTNING_COMMANDS, *TOOLS]
    close = difflib.get_close_matches(name, commands, n=1)
    suggestion = f": did you mean '{close[0]}'?" if close else ":"
    return f"error: unknown command '{name}'{suggestion} commands are {', '.join(commands)} (rgra --help)"
