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
import difflib
import re
import sys
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A user-fixable problem; the message names the field, file or row and what is allowed."""


Check = tuple[str, object, bool, str]  # (option, value, whether it is valid, what is allowed)


def require_valid(prefix: str, *checks: Check) -> None:
    """Raise a one-line ``ConfigError`` for the first check that fails: ``<prefix><option> must be
    <allowed>, got <value>`` (``prefix``: ``model.`` for the trainer's options, ``MathVerifier `` for a
    verifier's, ``model.verifier.`` for a config's verifier's: ``Verifier.check_options``)."""
    for option, value, valid, allowed in checks:
        if not valid:
            raise ConfigError(f"{prefix}{option} must be {allowed}, got {value}")


def require_one_of(prefix: str, *choices: tuple[str, object, object]) -> None:
    """Raise a one-line ``ConfigError`` for the first ``(option, value, Literal[...])`` whose value is not
    one of the literal's: ``<prefix><option>='x' is not one of [...]``."""
    for option, value, allowed in choices:
        if value not in typing.get_args(allowed):
            raise ConfigError(f"{prefix}{option}={value!r} is not one of {list(typing.get_args(allowed))}")


class ParagraphHelpFormatter(argparse.HelpFormatter):
    """A paragraph of a description or epilog with an indented line (an example, a table) keeps its line
    breaks; the others are filled to the terminal's width, as argparse fills the whole text."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line[:1].isspace() for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


class ToolHelpFormatter(ParagraphHelpFormatter):
    """The tools' ``--help``: an option's default follows its help (``(default: 16)``) unless it has none
    to show (``None``, ``False``, an empty list) or the help says it already; descriptions and epilogs as
    ``ParagraphHelpFormatter`` lays them out."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        if (
            action.option_strings
            and not any(default is nothing for nothing in (argparse.SUPPRESS, None, False))
            and default not in ([], "")  # a default of 0 is shown, though 0 == False
            and "%(default)" not in help
            and "default:" not in help
        ):
            help += " (default: %(default)s)"
        return help


class ToolParser(argparse.ArgumentParser):
    """A usage mistake is one line, ``error: MESSAGE (PROG --help)`` with exit status 2, not argparse's usage
    block followed by the message.

    Options are named in full (``allow_abbrev=False``: argparse would take ``--summary`` for
    ``--summary_only``), the help shows defaults (``ToolHelpFormatter``), and a required subcommand left out
    is reported with the choices (``error: choose a command: a, b``), not as ``required: command``. The
    subcommands' parsers (``add_subparsers().add_parser``) are ``ToolParser`` too, so all of this holds for
    them."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", ToolHelpFormatter)
        super().__init__(*args, **kwargs)
        self._commands: argparse._SubParsersAction | None = None
        self._command_required = False

    def add_subparsers(self, **kwargs: typing.Any) -> argparse._SubParsersAction:
        """argparse's, with ``required=True`` checked here so that its error names the choices."""
        named = kwargs.get("dest", argparse.SUPPRESS) is not argparse.SUPPRESS  # else None is not "left out"
        required = kwargs.pop("required", False)
        self._commands = super().add_subparsers(required=required and not named, **kwargs)
        self._command_required = required and named
        return self._commands

    def parse_known_args(
        self, args: typing.Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if self._command_required and getattr(parsed, self._commands.dest, None) is None:
            self.error(f"choose a command: {', '.join(self._commands.choices)}")
        return parsed, extras

    def parse_args(
        self, args: typing.Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """argparse's, with an unrecognized argument after a subcommand reported with the subcommand's
        ``--help`` (``rgra export checkpoint --help``, not ``rgra export --help``), and, in a parser without
        subcommands, a misspelt option named first, with the closest known one (``unrecognized arguments:
        --conf: did you mean --config?``), where argparse reported a required option it left out instead."""
        if self._commands is None:
            unknown = self._unknown_option(sys.argv[1:] if args is None else args)
            if unknown is not None:
                self.error(unknown)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, self._commands.dest, None) if self._commands is not None else None
            parser = self._commands.choices[command] if command is not None else self
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _unknown_option(self, args: typing.Sequence[str]) -> str | None:
        """What is wrong with the first long option in ``args`` this parser does not know (``--name`` or
        ``--name=value``; ``--`` ends the options), with the closest it knows; None where it knows them all.
        Short options (``-vv``, ``-oFILE``) and values (``-3``, ``"-a b"``) are left to argparse."""
        known = sorted(self._option_string_actions)
        for arg in args:
            if arg == "--":
                break
            if not arg.startswith("--") or re.search(r"\s", arg):  # short options, values: argparse's to read
                continue
            name = arg.split("=", 1)[0]
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                return f"unrecognized arguments: {name}" + (f": did you mean {close[0]}?" if close else "")
        return None

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} ({self.prog} --help)\n")


def program_name() -> str:
    """How this process was started, for usage and error messages: ``rgra`` (the console script, which runs
    ``rgra score`` here) or ``python -m rewards`` / ``python -m rgra_lightning`` (argparse's default before
    Python 3.14 says ``__main__.py``)."""
    path = Path(sys.argv[0])
    return f"python -m {path.parent.name}" if path.name == "__main__.py" else path.name
