"""``ConfigError``: a verifier option the user can fix (a bad value, a missing optional package); the
message names the verifier, the option and what is allowed. ``rgra`` reports it as one line (``error: ...``)
instead of a traceback, however deep inside config instantiation it was raised.

It is defined here, not in ``rgra_lightning.errors`` (which re-exports it as the trainer's ``ConfigError``),
because this package must not import the trainer.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-fixable problem; the message names the field, file or row and what is allowed."""
