"""The command line: LightningCLI with fit / validate / test / predict and YAML configs.

python -m rgra_lightning fit --config configs/rgra.yaml
python -m rgra_lightning fit --config configs/rgra.yaml --model.loss.beta=0.0
python -m rgra_lightning fit --config configs/rgra.yaml --print_config
"""

from __future__ import annotations

import sys
import warnings

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from rgra_lightning.errors import find_config_error


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]``. With ``run=False`` (tests) the model, data and
    trainer are only instantiated from the config, and ``args`` has no subcommand."""
    # Expected with manual optimisation and a frozen reference model; they would only confuse users.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    try:
        return LightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except Exception as error:
        config_error = find_config_error(error)
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from config_error
