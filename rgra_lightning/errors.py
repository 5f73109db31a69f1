"""Errors the command line reports as one line (``error: ...``) instead of a traceback, however deep inside
config instantiation or training they were raised, and the exit status each one ends ``rgra`` with.

- ``ConfigError``: a mistake the user can fix in the config or the command: a bad value, a missing model,
  checkpoint or data file. The message names the field, file or row and what is allowed.
- ``NonFiniteTrainingError``: training diverged (NaN/inf losses or gradients); the message says where the
  last finite state was saved and what to change before resuming.

Exit statuses of ``rgra fit`` (and validate, test, predict): 0 done; ``CONFIG_REFUSED`` (2) a config or
usage mistake, also one found during training (a verifier failing on every completion): the same for every
seed; ``TRAINING_DIVERGED`` (3) a ``NonFiniteTrainingError``, which another seed may not hit;
``RUN_REFUSED`` (4) a ``RunRefusedError``, a refusal about the run's own directory or checkpoint, which
another run of the same config does not meet; 143 stopped by SIGTERM, 130 by Ctrl-C and 138 by SLURM's
requeue signal, the state saved (``distributed.stop_status``). ``rgra ablate`` tells them apart: only a
refused config skips a preset's other seeds.
"""

from __future__ import annotations

# Defined in the rewards package, which cannot import this one, so that the verifiers raise it too.
from rewards.errors import ConfigError
from rewards.errors import require_one_of as require_one_of  # the option checks, for the trainer's modules
from rewards.errors import require_valid as require_valid

CONFIG_REFUSED = 2  # argparse's and jsonargparse's status for a usage mistake, kept for every config mistake
TRAINING_DIVERGED = 3
RUN_REFUSED = 4


class RunRefusedError(ConfigError):
    """A refusal about one run's own state, not its config: another process holds its checkpoint directory,
    the directory holds an earlier run's checkpoints, or the checkpoint it resumes from was trained with
    other settings. Another run of the same config (another seed, another directory) may go ahead."""


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates had a NaN/inf loss or gradient; the last finite state was saved."""


REPORTED_AS_ONE_LINE = (ConfigError, NonFiniteTrainingError)


def find_reported_error(error: BaseException) -> BaseException | None:
    """The first ``ConfigError`` or ``NonFiniteTrainingError`` in ``error``'s cause/context chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, REPORTED_AS_ONE_LINE):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def exit_status(error: BaseException) -> int:
    """The exit status for a reported ``error``: neither a diverged run nor a refused run directory is a
    refused config (``rgra ablate`` skips a preset's other seeds for the one only)."""
    if isinstance(error, NonFiniteTrainingError):
        return TRAINING_DIVERGED
    return RUN_REFUSED if isinstance(error, RunRefusedError) else CONFIG_REFUSED
