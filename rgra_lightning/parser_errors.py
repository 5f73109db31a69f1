"""jsonargparse's reports of a config mistake, as one line naming the option, and the config file and line
where the mistake is in a file (``FILE:LINE: ...``): a misspelled key with the closest valid one, a value of
the wrong type with the types allowed, a plain value for a group of options (``--model.lora=true``) with
the group's options, a ``class_path`` that names no class with the closest class, an option below an
unknown one or below one that takes a single value (``--model.learning_rate.x``), a misspelled top-level
key (``modle:``, ``--trainr.max_steps``) with the closest one, the parser's own options among them on the
command line (``--conf`` for ``--config``), and a class named without its package for ``--model.help``
(``RLModule``) with the full class path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib
import inspect
import re
import typing
from pathlib import Path

import rgra_lightning
from rgra_lightning.commands import LIGHTNING_COMMANDS
from rgra_lightning.config_files import find_key

# jsonargparse's wordings for an unknown key below a class given by class_path, and for the section.
_SECTION = re.compile(r'Parser key "(?P<section>[\w.]+)"')
_CLASS_PATH = re.compile(r"class_path '(?P<class_path>[\w.]+)'")
# A value of the wrong type: one type expected, or a union of plain types and Literals (``int | None``,
# ``trainer.precision``).
_PLAIN_TYPE = r"<class '(?:int|float|str|bool|NoneType)'>|typing\.Literal\[[^\]\n]*\]"
_WRONG_VALUE = re.compile(
    r'Parser key "(?P<key>[\w.]+)":\s*\n\s*Expected a (?P<expected>[^\n]+?)\. Got value: (?P<value>[^\n]*)'
    r'|Parser key "(?P<union_key>[\w.]+)":\s*\n\s*Does not validate against any of the Union subtypes\s*\n'
    rf"\s*Subtypes: \[(?P<subtypes>(?:(?:{_PLAIN_TYPE})(?:, )?)+)\]\s*\n"
    r"(?:[^\n]*\n)*?\s*Given value: (?P<union_value>[^\n]*)"
)
# How the parser shows an option given below one that takes a single value (``--model.learning_rate.x``).
_NESTED_ARG = re.compile(r"NestedArg\(key='(?P<key>[\w.]+)', val=.*\)")
_UNKNOWN_KEY = re.compile(
    r"unrecognized arguments: --(?P<key>[\w.-]+)"
    r"|Option '(?P<option>[\w.]+)' is not accepted"
    r"|Subcommand '(?P<subcommand>\w+)' does not accept option '(?P<subcommand_option>[\w.]+)'"
    r"|Group '(?P<group>[\w.]+)' does not accept option '(?P<group_option>[\w.]+)'"
)
# The options of the parser itself, besides a config's keys: valid on the command line only.
PARSER_OPTIONS = ("config", "print_config", "help")
# A plain value for an option that takes a dataclass of options: ``model.lora`` (or null; the lines between
# hold no other union's subtypes, as the report nests the option's in its class's), ``model.sampling``.
_OPTIONS_VALUE = re.compile(
    r"Subtypes: \[<class '(?P<class_path>[\w.]+)'>, <class 'NoneType'>\]\s*\n"
    r"(?:(?![^\n]*Subtypes:)[^\n]*\n)*?"
    r"\s*Given value type: <class 'str'>\s*\n\s*Given value: (?P<value>[^\n]*)"
    r"|Parser key \"(?P<key>\w+)\":\s*\n\s*Unable to load config '(?P<config_value>[^'\n]*)'"
)
# A class_path that names no class: a module without that attribute, no such module, or not a dotted path.
_MISSING_CLASS = re.compile(
    r"Problem with given class_path '(?P<class_path>[\w.]+)':\s*\n\s*"
    r"(?P<reason>module '[\w.]+' has no attribute '\w+'|No module named '[\w.]+')"
    r"|(?:--(?P<option>[\w.]+): )?Expected a dot import path string: (?P<value>\S+)"
)


class Mistake(typing.NamedTuple):
    """A config mistake the parser reported: the dotted option it is about and one line saying what."""

    key: str
    message: str
    value: str | None = None  # the value the parser refused, where it names one


def _sections(error_text: str, end: int) -> list[str]:
    """The sections the report nests the text before ``end`` in (model > lora > rank), outermost first."""
    return [match["section"] for match in _SECTION.finditer(error_text, 0, end)]


def _innermost_class(error_text: str, end: int) -> str | None:
    """The class path named last before ``end``: the innermost class (a LoraConfig inside an RLModule)."""
    paths = [match["class_path"] for match in _CLASS_PATH.finditer(error_text, 0, end)]
    return paths[-1] if paths else None


def imported(class_path: str) -> typing.Any:
    """The object a dotted ``module.Name`` path names (ImportError or AttributeError if none)."""
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _options(target: object) -> list[str]:
    """The option names of a class's ``__init__`` (and its bases', when it passes ``**kwargs`` on to them,
    as the data modules do) or a dataclass's fields."""
    if dataclasses.is_dataclass(target):
        return [field.name for field in dataclasses.fields(target)]
    names: list[str] = []
    for cls in getattr(target, "__mro__", [target]):
        if "__init__" not in vars(cls) and cls is not target:
            continue
        parameters = inspect.signature(cls).parameters.values()
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))  # a base class repeats the options its subclass passes on


def top_level_keys(subcommand: str | None) -> list[str]:
    """The keys of a config's top level: the module's, and the arguments of ``Trainer.<subcommand>``
    (``ckpt_path``, ...) where a subcommand parses it (``rgra fit``; ``cli.main(run=False)`` has none)."""
    keys = ["seed_everything", "trainer", "model", "data"]
    if subcommand is None:
        return keys
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    skipped = LightningCLI.subcommands().get(subcommand)
    if skipped is None:
        return keys
    arguments = inspect.signature(getattr(Trainer, subcommand)).parameters
    return keys + [name for name in arguments if name not in skipped and name != "self"]


def unknown_key_error(error_text: str, subcommand: str | None = None) -> Mistake | None:
    """For jsonargparse's report of an unknown key under a class, or at the top level of the config of
    ``subcommand`` (``modle:``), one line naming the key, the closest valid one and every valid one at
    that level; None for any other error."""
    key_match = _UNKNOWN_KEY.search(error_text)
    if key_match is None:
        return None
    dotted = (
        key_match["key"]
        or key_match["option"]
        or key_match["subcommand_option"]
        or f"{key_match['group']}.{key_match['group_option']}"
    )
    subcommand = key_match["subcommand"] or subcommand
    class_path = _innermost_class(error_text, key_match.start())
    if class_path is not None:
        section_name = ".".join(_sections(error_text, key_match.start()))
    elif dotted.startswith("trainer.") and dotted.count(".") == 1:  # the subcommand's own trainer options
        class_path, section_name, dotted = "lightning.pytorch.Trainer", "trainer", dotted.split(".")[1]
    elif key_match["key"] and not _sections(error_text, key_match.start()):  # argparse's: the command line
        return _unknown_command_line_option(dotted, subcommand)
    elif key_match["group"] is None and not _sections(error_text, key_match.start()):  # a dotted path
        return _unknown_top_level_key(dotted.split(".")[0], subcommand)
    else:
        return None
    owner = f"{section_name} ({class_path})" if section_name else class_path
    names, parents = dotted.split("."), []
    try:
        target = imported(class_path)
        options = _options(target)
        # Walk nested dataclass options (loss.advantage) down to the first name that is not an option.
        while len(parents) < len(names) - 1 and names[len(parents)] in options:
            name = names[len(parents)]
            target = option_type(target, name)
            parents.append(name)
            options = _options(target)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return None
    unknown = names[len(parents)]
    if not options and section_name:  # no class_path given: a preset read alone, not over its base config
        return Mistake(
            f"{section_name}.{unknown}",
            f"option '{unknown}' of {section_name}, which has no class_path here: a preset sets options of a "
            f"base config's {section_name}; compose them in order, its base first (rgra fit --config BASE "
            "--config PRESET: configs/rgra.yaml for the loss and reward presets; a preset's header names its "
            "base)",
        )
    shown = ".".join([*parents, unknown])  # ``sampling.foo`` of ``--model.sampling.foo.bar``
    prefix = "".join(f"{name}." for name in parents)
    close = difflib.get_close_matches(unknown, options, n=1)
    suggestion = f": did you mean '{prefix}{close[0]}'?" if close else ":"
    level = f" under {prefix.rstrip('.')}" if parents else ""
    message = f"unknown option '{shown}' of {owner}{suggestion} valid keys{level}: {', '.join(options)}"
    return Mistake(f"{section_name}.{shown}" if section_name else shown, message)


def _unknown_top_level_key(name: str, subcommand: str | None) -> Mistake | None:
    """The one line for ``name`` at a config's top level where it is no key there (None where it is one:
    the mistake is below it, and the parser's report says no more)."""
    keys = top_level_keys(subcommand)
    if name in keys:
        return None
    close = difflib.get_close_matches(name, keys, n=1)
    suggestion = f": did you mean '{close[0]}'?" if close else ":"
    owner = f"rgra {subcommand}" if subcommand else "the config"
    return Mistake(
        name, f"unknown top-level option '{name}' of {owner}{suggestion} valid keys: {', '.join(keys)}"
    )


def _unknown_command_line_option(dotted: str, subcommand: str | None) -> Mistake | None:
    """The one line for ``--DOTTED`` on the command line where its first name is no top-level key, with the
    closest option: a config's top-level key, or one of the parser's own (``--conf`` for ``--config``),
    which listing the keys alone made read as invalid. None where the first name is a key (the mistake is
    below it, and the parser's report says no more)."""
    name, dot, below = dotted.partition(".")
    keys = top_level_keys(subcommand)
    if name in keys:
        return None
    options = [*PARSER_OPTIONS, *keys]
    close = difflib.get_close_matches(name, options, n=1)
    # A key keeps the options below it (--trainer.max_steps); the parser's own options have none.
    shown = f"--{close[0]}{dot + below if close[0] in keys else ''}" if close else ""
    suggestion = f": did you mean {shown}?" if close else ":"
    owner = f" of rgra {subcommand}" if subcommand else ""
    valid = ", ".join(f"--{option}" for option in options)
    return Mistake(name, f"unknown option --{dotted}{owner}{suggestion} valid options: {valid}")


def option_type(target: typing.Any, name: str) -> typing.Any:
    """The type of option ``name`` of a class or dataclass, without a union's None (``LoraConfig | None``)."""
    hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__)
    members = [member for member in typing.get_args(hints[name]) if member is not type(None)]
    return members[0] if len(members) == 1 else hints[name]


def _type_names(text: str) -> str:
    """``<class 'int'>`` -> ``an int``, ``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``."""
    text = re.sub(
        r"<class '(?:\w+\.)*(\w+)'>", lambda name: f"{'an' if name[1][0] in 'aeiou' else 'a'} {name[1]}", text
    )
    return re.sub(r"^typing\.Literal\[(.*)\]$", r"one of \1", text).replace("a NoneType", "None")


def _union_names(subtypes: str) -> str:
    """A union's subtypes as words: ``an int or None``; Literals' values joined into one list of the
    values allowed, ``one of 64, 32, 'bf16-mixed' or None``."""
    values, types = [], []
    for subtype in re.findall(_PLAIN_TYPE, subtypes):
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", subtype)
        if literal:
            values.append(literal[1])
        else:
            types.append(_type_names(subtype))
    if values:
        types.insert(0, f"one of {', '.join(values)}")
    return " or ".join(types)


def wrong_value_error(error_text: str) -> Mistake | None:
    """For jsonargparse's report of a value of the wrong type (a word for a number, a name not among a
    Literal's), one line naming the field, the type and the value; None for any other error."""
    matches = list(_WRONG_VALUE.finditer(error_text))
    if not matches:
        return None
    wrong = max(matches, key=lambda match: match.start())  # the innermost: classes nest their reports
    key = ".".join([*_sections(error_text, wrong.start()), wrong["key"] or wrong["union_key"]])
    if wrong["key"]:
        expected, value = _type_names(wrong["expected"]), wrong["value"]
    else:
        expected, value = _union_names(wrong["subtypes"]), wrong["union_value"]
    below = _NESTED_ARG.fullmatch(value.strip("\"'"))
    if below:  # ``--model.learning_rate.x=1``: an option below one that takes a single value
        message = f"unknown option '{key}.{below['key']}': {key} takes {expected}, with no options below it"
        return Mistake(f"{key}.{below['key']}", message)
    return Mistake(key, f"{key}: expected {expected}, got {value!r}", value)


def options_value_error(error_text: str) -> Mistake | None:
    """For jsonargparse's report of a plain value given to an option that takes a dataclass of options
    (``--model.lora=true``, ``--model.sampling=x``), one line naming the option, its options and how to set
    one."""
    match = _OPTIONS_VALUE.search(error_text)
    if match is None:
        return None
    sections = _sections(error_text, match.start())
    try:
        if match["class_path"]:  # a union with None
            target, value, nullable = imported(match["class_path"]), match["value"], True
        else:  # the option's type, from the class it belongs to
            owner = _innermost_class(error_text, match.start())
            if owner is None:
                return None
            target = typing.get_type_hints(imported(owner).__init__)[match["key"]]
            value, nullable = match["config_value"], False
            sections.append(match["key"])
    except (ImportError, AttributeError, KeyError, TypeError):
        return None
    if not dataclasses.is_dataclass(target):
        return None
    key, options = ".".join(sections), _options(target)
    message = (
        f"{key}: expected {target.__name__}'s options ({', '.join(options)}) as a mapping, e.g. "
        f"--{key}.{options[0]}=...{', or null' if nullable else ''}; got {value!r}"
    )
    return Mistake(key, message, value)


def missing_class_error(error_text: str) -> Mistake | None:
    """For jsonargparse's report of a ``class_path`` that names no class, one line naming the option, the
    class path, why and, where the module has one, the closest class; None for any other error."""
    missing = _MISSING_CLASS.search(error_text)
    if missing is None:
        return None
    key = missing["option"] or ".".join(_sections(error_text, missing.start()))
    if missing["value"]:
        value = missing["value"]
        # A class the package exports, named without it (``--model.help RLModule``), where the parser knows
        # no subclass of that name: it knows only those imported so far.
        exported = rgra_lightning.__all__ if key.split(".")[0] in ("model", "data") else []
        close = difflib.get_close_matches(value, exported, n=1)
        suggestion = f": did you mean 'rgra_lightning.{close[0]}'?" if close else ""
        where, full = (f"--{key}", " full") if missing["option"] else (key, "")
        message = f"{where}: expected a{full} class path (package.module.Class), got {value!r}{suggestion}"
        return Mistake(key, message, value)
    module_name, _, class_name = missing["class_path"].rpartition(".")
    suggestion = ""
    with contextlib.suppress(ImportError):
        module = importlib.import_module(module_name)
        classes = [name for name, value in vars(module).items() if inspect.isclass(value)]
        close = difflib.get_close_matches(class_name, classes, n=1)
        suggestion = f": did you mean '{module_name}.{close[0]}'?" if close else ""
    message = f"{key}: no class {missing['class_path']} ({missing['reason']}){suggestion}"
    return Mistake(key, message, missing["class_path"])


def given_options(args: list[str]) -> typing.Iterator[tuple[str, str]]:
    """(``--name``, value) of each option on a command line, ``--name=value`` or ``--name value``; ``-c``
    is the parser's short name for ``--config``."""
    for index, arg in enumerate(args):
        if arg == "-c" or arg.startswith("-c="):
            arg = f"--config{arg[2:]}"
        if not arg.startswith("--"):
            continue
        name, equals, value = arg.partition("=")
        if not equals and index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
        yield name, value


class Source(typing.NamedTuple):
    """Where in a ``--config`` file a mistake is: ``FILE:LINE``, and the option as the file sets it, with
    the index of each list item on the way (``trainer.callbacks[0].every_n_step``: ``find_key``)."""

    where: str
    key: str


def where_set(mistake: Mistake, args: list[str], last: bool = False) -> Source | None:
    """The ``--config`` file, line and option the parser refused ``mistake`` in: the first source, in the
    order the parser reads them, that sets its option (to the refused value, where it names one); with
    ``last``, the last one, whose value won (a value refused after parsing, which names no value the files
    write). None where that is the command line itself or nothing does."""
    key, value, found = mistake.key, mistake.value, None
    for name, given in given_options(args):
        option = name.removeprefix("--").rstrip("+")  # ``--trainer.callbacks+=...`` appends
        if name == "--config":
            located = find_key(given, key, value) if is_file(given) else None
            if located is None:
                continue
            found = Source(f"{given}:{located[1]}", located[0])
        else:
            sets_key = (
                option == key or key.startswith((f"{option}.", f"{option}[")) or option.startswith(f"{key}.")
            )
            if not sets_key or (value is not None and value not in given):
                continue
            found = None
        if not last:
            return found
    return found


def with_indices(message: str, key: str) -> str:
    """``message`` with each list the dotted ``key`` goes through by index (``trainer.callbacks[0].x``)
    named with that index where it names the list alone (``of trainer.callbacks (...)``, as the parser's
    reports name it): which item the mistake is in."""
    for index in reversed(list(re.finditer(r"\[\d+\]", key))):
        listed = re.sub(r"\[\d+\]", "", key[: index.start()])
        message = re.sub(rf"(?<![\w.\]]){re.escape(listed)}(?![\w\[])", key[: index.end()], message)
    return message


def without_usage(error_text: str) -> str:
    """jsonargparse's error output without the usage block it prints first (a line per option, about 50 for
    ``fit``, above the error that matters); its ``tip:`` line still says how to list the options."""
    lines, in_usage = [], False
    for line in error_text.splitlines(keepends=True):
        in_usage = line.startswith("usage: ") or (in_usage and line[:1].isspace())
        if not in_usage:
            lines.append(line)
    return "".join(lines)


def is_file(value: str) -> bool:
    """Whether ``value`` names a file; False for what cannot be a path (jsonargparse also takes a
    ``--config`` given as a YAML string, longer than a file name may be)."""
    try:
        return Path(value).is_file()
    except OSError:
        return False


def one_line_report(error_text: str, args: list[str] | None) -> str | None:
    """The one line (``error: ...``) for the parser's report ``error_text`` of the command line ``args``
    (None: not a list, so no file is named); None where the report is not one of those above."""
    subcommand = args[0] if isinstance(args, list) and args and args[0] in LIGHTNING_COMMANDS else None
    readers = (
        functools.partial(unknown_key_error, subcommand=subcommand),
        wrong_value_error,
        options_value_error,
        missing_class_error,
    )
    mistake = next((found for read in readers if (found := read(error_text)) is not None), None)
    if mistake is None:
        return None
    source = where_set(mistake, args) if isinstance(args, list) else None
    if source is None:
        return f"error: {mistake.message}"
    return f"error: {source.where}: {with_indices(mistake.message, source.key)}"
