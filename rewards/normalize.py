"""String normalisation of an extracted answer, before parsing.

``normalize`` maps the many spellings of one answer to one LaTeX string: text/font commands, units and
currency, degrees, percent (kept as a trailing ``\\%`` so equivalence can try both readings), thousands
separators, unicode symbols, ``\\dfrac``/``\\tfrac``/``\\frac12``/``\\sqrt3``, ``\\left``/``\\right``,
a leading ``x =`` (or ``f(x) =``, ``|AB| =``) when its left side is a bare name, equality chains (the last
member), ``\\approx``, "and"/"or" answer lists, multiple-choice letters and base subscripts (``204_5``).
It is pure string work, linear in the input length, and safe to run in the main process.
"""

from __future__ import annotations

import re

_SPACING = re.compile(  # a backslash after a backslash is a row break ``\\\\``, not a space command
    r"(?<!\\)\\[,;:!> ]|\\q?quad|\\displaystyle|\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])|~"
)
_TEXT_COMMANDS = re.compile(
    r"\\(?:text(?:bf|it|rm|normal|sf|tt)?|mathrm|mathbf|mathit|mathsf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\}|[a-zA-Z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d+|[a-zA-Z])")
_SQRT_PAREN = re.compile(r"\\sqrt\s*\(([^()]*)\)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\}|\bpercentage\b|\bpercent\b|\bpct\b)\s*$")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\\euro\b|\\pounds\b")
_THOUSANDS = re.compile(r"(?<![\d.])([1-9]\d{0,2})((?:(?:,|\{,\}|,\\!|\\,|\s)\d{3})+)(?![\d])")
_EXPLICIT_THOUSANDS = re.compile(r"(\d)(?:\{,\}|,\\!)\s*(?=\d{3}(?!\d))")
_DECIMAL_COMMA = re.compile(r"^(-?)(0|\d+),(\d{2}|\d{4,})$|^(-?)0,(\d+)$")
_BASE = re.compile(r"^([0-9A-Fa-f]+)_\{?(\d{1,2})\}?$")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?\.?$")
_UNIT = re.compile(
    r"(?<=[\d}).])\s*(?:[a-zA-Z]{2,}|[a-zA-Z]{1,2}\s*\^\s*\{?[23]\}?|m|g|s)(?:\s+[a-zA-Z]{2,})*\.?$"
)
_SIMPLE_LHS = re.compile(r"^[^=<>\d+\-]*[a-zA-Z][^=<>\d+\-]*$|^[a-zA-Z]_?\{?\d+\}?$")
_ASSIGNMENT = re.compile(r"([a-zA-Z](?:_\{?\w+\}?)?)\s*=\s*([^=<>]+)")
_LIST_WORDS = re.compile(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b)\s*")
_UNICODE = {
    "−": "-", "–": "-", "≤": "\\leq ", "≥": "\\geq ", "≠": "\\neq ", "×": "\\times ", "÷": "\\div ",
    "π": "\\pi ", "∞": "\\infty ", "√": "\\sqrt", "·": "\\cdot ", "⋅": "\\cdot ",
}  # fmt: skip
_COMMANDS = {
    "\\le ": "\\leq ", "\\ge ": "\\geq ", "\\lt": "<", "\\gt": ">", "\\ne ": "\\neq ", "!=": "\\neq ",
    "<=": "\\leq ", ">=": "\\geq ", "\\dots": "\\ldots", "\\cdots": "\\ldots", "\\infin ": "\\infty ",
    "\\bmatrix": "\\pmatrix", "\\vmatrix": "\\pmatrix",
}  # fmt: skip


def strip_delimiters(text: str) -> str:
    """Remove surrounding ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` and trailing punctuation."""
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : len(text) - len(right)].strip()
    return text.rstrip(".").strip()


def _replace_text_commands(text: str) -> str:
    previous = None
    while previous != text:
        previous, text = text, _TEXT_COMMANDS.sub(lambda m: f" {m.group(1).strip()} ", text)
    return text


def _unbox(text: str) -> str:
    match = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", text, re.DOTALL)
    return match.group(1).strip() if match else text


def _split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` characters outside any brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _is_simple_lhs(text: str) -> bool:
    return bool(_SIMPLE_LHS.match(re.sub(r"_\{[^{}]*\}|_\w|\\", "", text)))


def drop_approximation(text: str) -> str:
    """``a = 1/3 \\approx 0.33`` -> ``a = 1/3``; ``x \\approx 11`` -> ``11``;
    ``\\frac{9.5}{3.14} \\approx 3.01`` -> ``\\frac{9.5}{3.14}``."""
    if "\\approx" not in text:
        return text
    before, _, after = text.partition("\\approx")
    return after.strip() if "=" not in before and _is_simple_lhs(before.strip()) else before.strip()


def drop_chain(text: str) -> str:
    """``x = 5 + 6 = 11`` -> ``11`` (the last member of an equality chain)."""
    members = [member.strip() for member in re.split(r"(?<![<>!\\])=", text)]
    return members[-1] if len(members) > 2 and all(members) else text


def drop_simple_lhs(text: str) -> str:
    """``x = 3`` -> ``3``, ``f(x) = 1`` -> ``1``, ``|AB| = 1`` -> ``1``; keeps ``2x + 4y = 3``."""
    members = [member.strip() for member in re.split(r"(?<![<>!\\])=", text)]
    if len(members) == 2 and all(members) and _is_simple_lhs(members[0]):
        return members[1]
    return text


def group_assignments(parts: list[str]) -> list[list[str]] | None:
    """The values of a list of assignments that repeat the same names, one group per solution:
    ``p=5,q=2;p=7,q=2`` (parts ``p=5,q=2`` and ``p=7,q=2``) -> ``[["5", "2"], ["7", "2"]]``; None when the
    parts are not all ``name = value`` or the names do not cycle through at least two names twice."""
    items = [item.strip() for part in parts for item in _split_top_level(part, ",")]
    assignments = [_ASSIGNMENT.fullmatch(item) for item in items]
    if not all(assignments):
        return None
    names = [match.group(1).replace("{", "").replace("}", "") for match in assignments]
    width = len(dict.fromkeys(names))
    repeats = len(names) // width
    if width < 2 or repeats < 2 or names != names[:width] * repeats:
        return None
    values = [match.group(2).strip() for match in assignments]
    return [values[start : start + width] for start in range(0, len(values), width)]


def normalize_element(text: str) -> str:
    """Normalise one answer (no top-level list separators)."""
    text = _unbox(strip_delimiters(text))
    if re.fullmatch(r"\\in\b.*|.*?\\in\s+(.*)", text):
        text = re.sub(r"^.*?\\in\s+", "", text)
    text = drop_chain(drop_approximation(text))
    text = text.strip().rstrip(".").strip()
    percent = bool(_PERCENT.search(text))
    text = _PERCENT.sub("", text)
    text = _CURRENCY.sub("", text).strip()
    text = _UNIT.sub("", text).strip() if re.search(r"\d", text) else text
    if not re.search(r"[(\[{]", text):
        text = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), text)
    decimal = _DECIMAL_COMMA.match(text)
    if decimal:
        text = text.replace(",", ".")
    base = _BASE.match(text)
    if base and int(base.group(2)) >= 2 and all(int(d, 36) < int(base.group(2)) for d in base.group(1)):
        text = str(int(base.group(1), int(base.group(2))))
    choice = _CHOICE.match(text)
    if choice:
        text = choice.group(1).upper()
    text = re.sub(r"\s+", " ", text).strip()
    if re.fullmatch(r"[+-]?0*\d+(\.\d*)?|[+-]?\.\d+", text):
        text = text.lstrip("+")
        sign = "-" if text.startswith("-") else ""
        text = sign + (text.lstrip("-").lstrip("0") or "0")
        text = "0" + text if text.startswith((".", "-.")) else text
        if text.startswith("0") and len(text) > 1 and text[1] != ".":
            text = text.lstrip("0") or "0"
        text = "0" if text in ("-0", "-0.") else text
    return text + ("\\%" if percent else "")


def normalize(answer: str) -> str:
    """The canonical string of an extracted answer; list answers are joined with ``", "``."""
    text = strip_delimiters(answer)
    for old, new in _UNICODE.items():
        text = text.replace(old, new)
    text = _CURRENCY.sub(" ", text)
    text = _EXPLICIT_THOUSANDS.sub(r"\1", text)
    text = _SPACING.sub(" ", text)
    if "matrix" not in text and "array" not in text:
        text = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", text)
    text = _replace_text_commands(text)
    text = text.replace("\\mathrm e", "e")
    for old, new in _COMMANDS.items():
        text = text.replace(old, new)
    text = _DEGREES.sub("", text)
    text = _FRAC_VARIANTS.sub("\\\\frac", text)
    text = _FRAC_SHORT.sub(lambda m: f"\\frac{{{m.group(1).strip('{}')}}}{{{m.group(2).strip('{}')}}}", text)
    text = _SQRT_SHORT.sub(r"\\sqrt{\1}", text)
    text = _SQRT_PAREN.sub(r"\\sqrt{\1}", text)
    text = re.sub(r"\s+", " ", text).strip()
    if "matrix" in text or "array" in text:
        return text
    text = _LIST_WORDS.sub(", ", text).strip(", ")
    text = (
        _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), text)
        if not re.search(r"[ (\[{]", text)
        else text
    )
    elements = [part for part in _split_top_level(text, ";") if part.strip()]
    if len(elements) == 1:
        elements = [part for part in _split_top_level(text, ",") if part.strip()]
    if len(elements) <= 1 or _DECIMAL_COMMA.match(text.replace(" ", "")):
        return normalize_element(text)
    groups = group_assignments(elements)
    if groups is not None:
        return ", ".join(f"({', '.join(normalize_element(value) for value in group)})" for group in groups)
    return ", ".join(drop_simple_lhs(normalize_element(element)) for element in elements)
