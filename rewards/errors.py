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


Check = tuple[str, object, bool, str]  # (option, value, whether it is valid, what is allowed)


def require_valid(prefix: str, *checks: Check) -> None:
    """Raise a one-line ``ConfigError`` for the first check that fails: ``<prefix><option> must be
    <allowed>, got <value>`` (``prefix``: ``model.`` for the trainer's options, ``MathVerifier `` for a
    verifier's)."""
    for option, value, valid, allowed in checks:
        if not valid:
            raise ConfigError(f"{prefix}{option} must be {allowed}, got {value}")


def require_one_of(prefix: str, *choices: tuple[str, object, object]) -> None:
    """Raise a one-line ``ConfigError`` for the first ``(option, value, Literal[...])`` whose value is not
    one of the literal's: ``<prefix><option>='x' is not one of [...]``."""
    for option, value, allowed in choices:
        if value not in typing.get_args(allowed):
            raise ConfigError(f"{prefix}{option}={value!r} is not one of {list(typing.get_args(allowed))}")


class ToolParser(argparse.ArgumentParser):
    """A usage mistake is one line, ``error: MESSAGE (PROG --help)`` with exit status 2, not argparse's usage
    block followed by the message."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} ({self.prog} --help)\n")
