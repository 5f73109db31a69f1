"""How a user's mistake is reported: one line (``error: ...``), not a traceback or a usage block.

- ``ConfigError``: a verifier option the user can fix (a bad value, a missing optional package); the message
  names the verifier, the option and what is allowed. ``rgra`` reports it as one line instead of a
  traceback, however deep inside config instantiation it was raised.
- ``ToolParser``: the argument parser of the command-line tools (``rgra score`` here, and ``rgra label``,
  ``export``, ``ablate``, ``rehearse``): a usage mistake is one line.

They are defined here, not in the trainer (``rgra_lightning.errors`` re-exports ``ConfigError``,
the trainer's tools use ``ToolParser``), because this package must not import the trainer.
"""

from __future__ import annotations

import argparse
import typing


class ConfigError(ValueError):
    """A user-fixable problem; the message names the field, file or row and what is allowed."""


class ToolParser(argparse.ArgumentParser):
    """A usage mistake is one line, ``error: MESSAGE (PROG --help)`` with exit status 2, not argparse's usage
    block followed by the message."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} ({self.prog} --help)\n")
