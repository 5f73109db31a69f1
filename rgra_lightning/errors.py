"""Errors the command line reports as one line (``error: ...``) instead of a traceback, however deep inside
config instantiation or training they were raised.

- ``ConfigError``: a mistake the user can fix in the config or the command: a bad value, a missing model,
  checkpoint or data file. The message names the field, file or row and what is allowed.
- ``NonFiniteTrainingError``: training diverged (NaN/inf losses or gradients); the message says where the
  last good state was saved and what to change before resuming.
"""

from __future__ import annotations

# Defined in the rewards package, which cannot import this one, so that the verifiers raise it too.
from rewards.errors import ConfigError


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates had a NaN/inf loss or gradient; the last good state was saved."""


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
