"""The error type for mistakes a user can fix: a bad config value, a missing model or data file.

The CLI prints such an error as one line (``error: ...``) instead of a traceback, however deep inside
config instantiation it was raised.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-fixable problem; the message names the field, file or row and what is allowed."""


def find_config_error(error: BaseException) -> ConfigError | None:
    """The first ``ConfigError`` in ``error``'s cause/context chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
