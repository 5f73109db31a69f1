"""The command line: LightningCLI with fit / validate / test / predict and YAML configs.

    python -m rgra_lightning fit --config configs/rgra.yaml
    python -m rgra_lightning fit --config configs/rgra.yaml --model.loss.beta=0.0
    python -m rgra_lightning fit --config configs/rgra.yaml --print_config
"""

from __future__ import annotations

import warnings

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (used by tests)."""
    # Expected with manual optimisation and a frozen reference model; they would only confuse users.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
