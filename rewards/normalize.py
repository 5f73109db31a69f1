"""String normalisation of an extracted answer, before parsing.

``normalize`` maps the many spellings of one answer to one LaTeX string: surrounding ``$...$``, quotation
marks and enclosing ``\\boxed{}`` (``MAX_WRAPPERS`` layers; an unclosed ``\\boxed{`` opening the text is
dropped), text/font/style and layout macros, a stray trailing backslash, ``\\pmod``/``(\\mod n)`` (the residue
stays), ``\\bmod`` and ``\\equiv``, units and currency (also inside a bracketed list, ``{35 cm, 4}``), degrees
(dropped, but radians inside a trigonometric function), percent (kept as a trailing ``\\%`` so equivalence can
try both readings), thousands separators, scientific notation (``1e3``), unicode symbols, plain-text math
(``sqrt(3)``, ``2^(1/2)``: ``rewards.plaintext``), ``\\dfrac``/``\\tfrac``/``\\frac12``/ ``\\sqrt3``,
``\\left``/``\\right``, a leading ``x =`` (or ``f(x) =``, ``|AB| =``) when its left side is a bare name, a
chain of quantities with units or currency (a conversion: its last member), ``\\approx``, "and"/"or" answer
lists ("and" between inequalities in one variable: ``\\land``), clock times (``08:34 P.M.`` -> ``20:34``),
mixed numbers (``1 1/2``), repeating decimals (``0.\\overline{3}`` -> ``\\frac{1}{3}``), multiple-choice
letters, base subscripts (``204_5``) and the spelling of set-builder notation (``\\{x \\mid x > 0\\}``,
``\\{x : x > 0\\}`` -> ``\\{x|x > 0\\}``). Equality chains are kept whole: the parser decides them
(``rewards.equivalence``).

Units are dropped only when they are plainly units: a ``\\text{}``/``\\mbox{}`` of words after a number
(``10\\text{ units}``, ``15\\mbox{ cm}^2``), or trailing words after a number and a space that are a word of
three or more letters or a known two-letter abbreviation (``125 miles``, ``35 cm``); letters written against
a number (``6x^3``, ``2ab``, ``3R^2``) are variables and kept.

Commas: ``1,000`` / ``12,345,678`` (groups of three digits) are thousands separators at the top level and in
a bracket whose elements are separated by ``", "`` (``(1,000, 2)``); inside a bracket whose elements are not
(``[1,100]``, ``(6,31,-1)``) they separate elements. Any other comma separates list elements (``3,12`` is
``3, 12``); ``normalize_pair`` reads ``a,b`` as a decimal comma only when the other answer is a decimal
with as many places (``1,22`` vs ``1.22``).

It is pure string work, linear in the input length (an answer longer than ``MAX_NORMALIZE_LENGTH`` is
returned only stripped: the parser rejects it anyway), and safe to run in the main process.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

from rewards import plaintext
from rewards.extract import boxes

MAX_NORMALIZE_LENGTH = 4000
MAX_WRAPPERS = 8  # layers of math delimiters and boxes that ``strip_wrappers`` removes
_BRACED_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_QUOTED = re.compile(r'(?:\\?"|\u201c|\u2018|\')(.+?)(?:\\?"|\u201d|\u2019|\')', re.DOTALL)

_SPACING = re.compile(  # a backslash after a backslash is a row break ``\\\\``, not a space command
    r"(?<!\\)\\[,;:!> ]|\\q?quad|\\displaystyle|\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])|~"
)
_TEXT_COMMANDS = re.compile(
    r"\\(?:text(?:bf|it|rm|normal|sf|tt)?|mathrm|mathbf|mathit|mathsf|mbox|operatorname)\s*\{([^{}]*)\}"
)
# LaTeX function commands the parser misreads (``\\sech(x)`` as ``sec(h(x))``): written as plain-text names,
# which ``plaintext.to_latex`` rewrites as expressions it reads
_UNSUPPORTED_FUNCTIONS = re.compile(r"\\(sech|csch|coth|cosech|cosec)(?=\s*\()")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\}|[a-zA-Z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d+|[a-zA-Z])")
_SQRT_PAREN = re.compile(r"\\sqrt\s*\(([^()]*)\)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_TRIG_COMMAND = re.compile(r"\\(?:a?(?:sin|cos|tan|cot|sec|csc)|arc(?:sin|cos|tan|cot|sec|csc))(?![A-Za-z])")
# layout and style macros that carry no value (the parser rejects most of them)
_FORMATTING = re.compile(
    r"\\(?:hspace|vspace|hphantom|vphantom|phantom|color)\*?\s*\{[^{}]*\}"
    r"|\\(?:textstyle|scriptstyle|scriptscriptstyle|limits|nolimits|mathord|mathop|rm|bf|it|cal|bigl|bigr|Bigl|Bigr"
    r"|biggl|biggr|Biggl|Biggr|bigm|Bigm|middle|thinspace|enspace|medspace|thickspace|negthinspace"
    r"|negmedspace|nobreakspace|allowbreak|nonumber|notag)(?![a-zA-Z])"
    r"|\\(?:left|right)\s*\.|\\textcolor\s*\{[^{}]*\}(?=\s*\{)"
)
# style commands whose braced argument is the value: the command goes, the braces group as before
_STYLE_COMMAND = re.compile(r"\\(?:boldsymbol|bm|pmb|mathnormal|underline|cancel|hbox|textup)\s*(?=\{)")
# modular arithmetic: ``a \pmod{n}`` / ``a (\mod n)`` state the residue a; ``\bmod`` is the binary operator
_PMOD = re.compile(r"\s*(?:\\pmod\s*(?:\{[^{}]*\}|\w+)|\(\s*\\(?:mod|bmod)\s*\{?[^{}()]*\}?\s*\))")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([AaPp])\.?\s*[Mm]\.?)?")
_CHOICE_WITH_TEXT = re.compile(r"\(?([A-E])(?:\)|\.|:|\)\.)\s+\S.*", re.DOTALL)
_MIXED_NUMBER = re.compile(r"(-?\d+)\s+(\d+)/(\d+)")  # the sign applies to the whole: -3 1/2 = -3.5
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\}|\bpercentage\b|\bpercent\b|\bpct\b)\s*$")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\\euro\b|\\pounds\b")
_THOUSANDS = re.compile(r"(?<![\d.])([1-9]\d{0,2})((?:(?:,|\{,\}|,\\!|\\,|\s)\d{3})+)(?![\d])")
_EXPLICIT_THOUSANDS = re.compile(r"(\d)(?:\{,\}|,\\!)\s*(?=\d{3}(?!\d))")
_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")  # one comma, no space: a decimal comma or a two-element list
_THOUSANDS_GROUP = re.compile(r"-?[1-9]\d{0,2},\d{3}")
_DECIMAL = re.compile(r"-?\d+\.(\d+)")
_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d{1,4})")
_BASE = re.compile(r"^([0-9A-Fa-f]+)_\{?(\d{1,2})\}?$")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?\.?$")
_POWER = r"(?:\s*\^\s*\{?[23]\}?)?"  # cm^2, m^{3}
# a \text{} of words after a number or a closing bracket (not "and"/"or", which join list members)
_TEXT_WORDS = (
    r"(?<=[\d})])\s*\\(?:text(?:bf|it|rm|normal|sf|tt)?|mbox)\s*"
    r"\{(?!\s*(?:and|or)\s*\})\s*[A-Za-z][A-Za-z .'/-]*\}"
)
_TEXT_UNIT_ANYWHERE = re.compile(_TEXT_WORDS)
# ... as a unit: before the end, a separator or a closing bracket
_TEXT_UNIT = re.compile(_TEXT_WORDS + _POWER + r"(?=\s*(?:$|[,;)\]]|\\\}|\\right))")
_FUNCTION_NAMES = r"(?:a?(?:sin|cos|tan|cot|sec|csc)h?|arc\w+|log|ln|exp|lim|max|min|gcd|lcm|det|mod)\b"
_UNIT_WORD = rf"(?:(?!{_FUNCTION_NAMES})[A-Za-z]{{3,}}|mm|cm|dm|km|kg|mg|ml|mL|ft|yd|mi|in|hr|lb|oz){_POWER}"
# trailing unit words after a number and a space: ``125 miles``, ``35 cm``, ``15 cm ^2``, ``60 km/h``
_UNIT = re.compile(rf"(?<=[\d}}).])\s+{_UNIT_WORD}(?:\s+{_UNIT_WORD}|\s*/\s*[A-Za-z]+{_POWER})*\.?$")
_SIMPLE_LHS = re.compile(r"^[^=<>\d+\-]*[a-zA-Z][^=<>\d+\-]*$|^[a-zA-Z]_?\{?\d+\}?$")
_MATH_FUNCTION = re.compile(
    r"(?<![A-Za-z])(?:a?(?:sin|cos|tan|cot|sec|csc)h?|arc[a-z]+|log|ln|exp|sqrt|binom|sum|prod|int|lim"
    r"|det|gcd|lcm|max|min|mod|bmod|pmod)(?![A-Za-z])"
)
# the inside of a set in set-builder notation, ``\{x | cond\}``, ``\{x \mid cond\}``, ``\{x : cond\}``, with
# an optional domain, ``\{x \in \mathbb{R} | cond\}``: (variable, domain, condition)
_SET_BUILDER = re.compile(
    r"\s*([A-Za-z])\s*(\\in(?![A-Za-z])[^|:]*?)?\s*(?:\||\\mid(?![A-Za-z])|:)\s*(\S.*?)\s*", re.DOTALL
)
_REALS = re.compile(r"\\in\s*(?:\\mathbb\s*\{\s*R\s*\}|\\mathbb\s*R|\\R|R)\s*")
_ASSIGNMENT = re.compile(r"([a-zA-Z](?:_\{?\w+\}?)?)\s*=\s*([^=<>]+)")
_LIST_WORDS = re.compile(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b)\s*")
# "and"/"or" (and ``\\land``/``\\lor``) between inequalities: ``x < -1 or x > 1`` is a union of solution sets
_RELATION_WORDS = re.compile(r"\s*(?:\\text\{\s*(and|or)\s*\}|\b(and|or)\b|\\(land|lor)(?![A-Za-z]))\s*")
_INEQUALITY = re.compile(r"<|>|\\[lg]eq?(?![A-Za-z])")
# a repeating decimal: ``0.\\overline{3}``, ``1.2\\overline{3}``, ``0.\\bar{6}`` (the repetend under the bar)
# and ``0.\\dot{3}``, ``0.\\dot{1}4285\\dot{7}`` (a dot over the repetend's one digit, or its first and last)
_REPEATING_BAR = re.compile(
    r"(?<![\d.])(\d*)\.(\d*)\s*\\(?:overline|bar)\s*(?:\{\s*(\d+)\s*\}|(\d))(?![\d.])"
)
_REPEATING_DOTS = re.compile(
    r"(?<![\d.])(\d*)\.(\d*)\\dot\s*(?:\{(\d)\}|(\d))(?:(\d*)\\dot\s*(?:\{(\d)\}|(\d)))?(?![\d.])"
)
_UNICODE = {
    "−": "-", "–": "-", "≤": "\\leq ", "≥": "\\geq ", "≠": "\\neq ", "×": "\\times ", "÷": "\\div ",
    "π": "\\pi ", "∞": "\\infty ", "√": "\\sqrt", "·": "\\cdot ", "⋅": "\\cdot ",
}  # fmt: skip
_COMMANDS = {
    "\\le ": "\\leq ", "\\ge ": "\\geq ", "\\lt": "<", "\\gt": ">", "\\ne ": "\\neq ", "!=": "\\neq ",
    "<=": "\\leq ", ">=": "\\geq ", "\\dots": "\\ldots", "\\cdots": "\\ldots", "\\infin ": "\\infty ",
    "\\bmatrix": "\\pmatrix", "\\vmatrix": "\\pmatrix", "\\varnothing": "\\emptyset",
}  # fmt: skip


def strip_delimiters(text: str) -> str:
    """Remove surrounding ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``, quotation marks (``"12"``,
    ``\\"12\\"``, ``\u201c12\u201d``), an unclosed ``\\boxed{`` opening the text, and trailing punctuation."""
    text = text.strip()
    quoted = _QUOTED.fullmatch(text)
    if quoted:
        text = quoted.group(1).strip()
    opening = _BRACED_BOX.match(text)
    if opening and not any(start == 0 for start, _, _ in boxes(text)):  # an unclosed box: a stray opening
        text = text[opening.end() :].strip()
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
    """The content of ``\\boxed{...}`` when it is the whole text (``\\boxed{1} and \\boxed{2}`` stays)."""
    if not _BRACED_BOX.match(text) or not text.endswith("}"):
        return text
    found = boxes(text)
    return found[0][2] if found and found[0][:2] == (0, len(text)) else text


def strip_wrappers(text: str) -> str:
    """``text`` without surrounding math delimiters, trailing periods and enclosing boxes, up to
    ``MAX_WRAPPERS`` layers: ``$\\boxed{-2,1}$.`` -> ``-2,1``. Each layer costs a pass over the text, so
    the bound keeps hostile nests (``\\boxed{\\boxed{...}}`` a thousand deep) linear; they stay wrapped."""
    for _ in range(MAX_WRAPPERS):
        previous, text = text, _unbox(strip_delimiters(text))
        if text == previous:
            break
    return text


def _join_thousands(text: str) -> str:
    """Thousands separators removed where a comma cannot separate elements: at the top level and inside plain
    ``{}``, and inside a ``(``/``[``/``\\{`` bracket whose elements are separated by ``", "``."""
    if not _THOUSANDS.search(text):
        return text
    owner, stack, spaced = [], [0], [True]  # the top level always joins
    for index, char in enumerate(text):
        owner.append(stack[-1])
        if char in "([{":
            stack.append(len(spaced))
            spaced.append(char == "{" and (index == 0 or text[index - 1] != "\\"))
        elif char in ")]}" and len(stack) > 1:
            stack.pop()
        elif char == "," and text[index + 1 : index + 2].isspace():
            spaced[stack[-1]] = True
    return _THOUSANDS.sub(lambda m: _joined(m) if spaced[owner[m.start()]] else m.group(), text)


def _joined(thousands: re.Match[str]) -> str:
    """A ``_THOUSANDS`` match without its separators: ``1,234,567`` -> ``1234567``."""
    return thousands.group(1) + re.sub(r"\D", "", thousands.group(2))


def _split_top_level(text: str, separator: str, after: str = "") -> list[str]:
    """``text`` split at ``separator`` characters outside any brackets, except one that follows a character
    of ``after`` (``<=`` is not an ``=``)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0 and (index == 0 or text[index - 1] not in after):
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _is_simple_lhs(text: str) -> bool:
    """A bare name (``x``, ``f(x)``, ``|AB|``, ``a_1``) that labels the value on the other side of ``=``;
    a function of mathematics applied to something (``\\sin(x)``, ``\\log_2 8``) is not a label."""
    if _MATH_FUNCTION.search(text):
        return False
    return bool(_SIMPLE_LHS.match(re.sub(r"_\{[^{}]*\}|_\w|\\", "", text)))


def set_builder(text: str) -> tuple[str, str, str] | None:
    """``(variable, domain, condition)`` of a set in set-builder notation that is the whole ``text``:
    ``\\{x | -2 \\leq x < 1\\}`` -> ``("x", "", "-2 \\leq x < 1")``; also with ``\\mid`` or ``:`` for ``|``
    (a ``\\mid`` in the condition becomes ``|``) and with a domain, empty when it is the reals:
    ``\\{x \\in \\mathbb{R} : x > 0\\}`` -> ``("x", "", "x > 0")``, ``\\{n \\in \\mathbb{Z} | n > 0\\}`` ->
    ``("n", "\\in \\mathbb{Z}", "n > 0")``. None for anything else (``\\{1, 2\\}``, ``\\{x|x>0\\} \\cup
    \\{0\\}``)."""
    if not (text.startswith("\\{") and text.endswith("\\}")):
        return None
    depth = 0
    for char in text[:-1]:  # the opening brace closes only at the end: one set, not \{..\} \cup \{..\}
        depth += (char == "{") - (char == "}")
        if depth == 0 and char == "}":
            return None
    match = _SET_BUILDER.fullmatch(text, 2, len(text) - 2)
    if not match:
        return None
    variable, domain, condition = match.groups()
    domain = "" if domain is None or _REALS.fullmatch(domain) else domain.strip()
    return variable, domain, re.sub(r"\s*\\mid(?![A-Za-z])\s*", "|", condition)


def drop_approximation(text: str) -> str:
    """``a = 1/3 \\approx 0.33`` -> ``a = 1/3``; ``x \\approx 11`` -> ``11``;
    ``\\frac{9.5}{3.14} \\approx 3.01`` -> ``\\frac{9.5}{3.14}``."""
    if "\\approx" not in text:
        return text
    before, _, after = text.partition("\\approx")
    return after.strip() if "=" not in before and _is_simple_lhs(before.strip()) else before.strip()


def equality_members(text: str) -> list[str]:
    """The members of an equation or equality chain, split at the ``=`` signs outside brackets and braces:
    ``x = 5 + 6 = 11`` -> ``["x", "5 + 6", "11"]``; ``F_n = \\sum_{k=0}^{n} F_k`` has two members."""
    return [part.strip() for part in _split_top_level(text, "=", after="<>!\\")]


def drop_simple_lhs(text: str) -> str:
    """``x = 3`` -> ``3``, ``f(x) = 1`` -> ``1``, ``|AB| = 1`` -> ``1``; keeps ``2x + 4y = 3``."""
    members = equality_members(text)
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


def _strip_units_in_brackets(text: str) -> str:
    """Units after the numbers of a bracketed list: ``{35 cm, 4}`` -> ``{35, 4}``, ``[45 degrees]`` ->
    ``[45]`` (the same unit rule as for a whole answer, applied to each element)."""
    group = re.fullmatch(r"(\\\{|[{(\[])(.*)(\\\}|[})\]])", text, re.DOTALL)
    if not group or not re.search(r"\d\s*[A-Za-z\\]", group.group(2)):
        return text
    parts = _split_top_level(group.group(2), ",")
    stripped = [
        _UNIT.sub("", part.strip()).strip() if re.search(r"\d", part) else part.strip() for part in parts
    ]
    return group.group(1) + ", ".join(stripped) + group.group(3)


def normalize_element(text: str) -> str:
    """Normalise one answer (no top-level list separators)."""
    text = _unbox(strip_delimiters(text))
    builder = set_builder(text)
    if builder is None and re.fullmatch(r".*?\\in(?![A-Za-z]).*", text, re.DOTALL):  # x \in [0, 5]: the set
        text = re.sub(r"^.*?\\in(?![A-Za-z])\s*", "", text)
        builder = set_builder(text)
    if builder is not None:  # \{x \mid -2 \leq x < 1\} -> \{x|-2 \leq x < 1\}: one spelling
        variable, domain, condition = builder
        return f"\\{{{variable}{' ' + domain if domain else ''}|{condition}\\}}"
    text = drop_approximation(text)
    text = text.strip().rstrip(".").strip()
    percent = bool(_PERCENT.search(text))
    text = _PERCENT.sub("", text)
    text = _CURRENCY.sub("", text).strip()
    text = _UNIT.sub("", text).strip() if re.search(r"\d", text) else text
    text = _strip_units_in_brackets(text)
    if not re.search(r"[(\[{]", text):
        text = _THOUSANDS.sub(_joined, text)
    scientific = _SCIENTIFIC.fullmatch(text)
    if scientific:
        mantissa, exponent = scientific.group(1), int(scientific.group(2))
        text = format(Decimal(text), "f") if abs(exponent) <= 50 else f"{mantissa} \\times 10^{{{exponent}}}"
    clock = _CLOCK.fullmatch(text)  # 20:34:00, 08:34 P.M. -> 20:34
    if clock:
        hours, minutes, seconds, half = clock.groups()
        hours = int(hours) % 12 + (12 if half and half.lower() == "p" else 0) if half else int(hours)
        text = f"{hours}:{minutes}" + (f":{seconds}" if seconds and seconds != "00" else "")
    mixed = _MIXED_NUMBER.fullmatch(text)  # 1 1/2 and -3 1/2 (-3\frac{1}{2} is -3.5)
    if mixed:
        text = f"{mixed.group(1)}\\frac{{{mixed.group(2)}}}{{{mixed.group(3)}}}"
    base = _BASE.match(text)
    if base and int(base.group(2)) >= 2 and all(int(d, 36) < int(base.group(2)) for d in base.group(1)):
        text = str(int(base.group(1), int(base.group(2))))
    choice = _CHOICE.match(text)
    if choice:
        text = choice.group(1).upper()
    text = re.sub(r"\s+", " ", text).strip()
    if re.fullmatch(r"[+-]?0*\d+(\.\d*)?|[+-]?\.\d+", text):  # 007 -> 7, .5 -> 0.5, -.5 -> -0.5, -0 -> 0
        sign = "-" if text.startswith("-") and text.strip("+-0.") else ""  # zero has no sign: -0.0 -> 0.0
        digits = text.lstrip("+-").lstrip("0")
        text = sign + ("0" + digits if not digits or digits.startswith(".") else digits)
    return text + ("\\%" if percent else "")


def _repeating_fraction(whole: str, fixed: str, repetend: str, before: str) -> str:
    """The exact fraction of the repeating decimal ``whole.fixed(repetend)(repetend)...``: ``0.(3)`` ->
    ``\\frac{1}{3}``, ``1.2(3)`` -> ``\\frac{37}{30}``, ``0.(9)`` -> ``1``; in braces after ``^`` or ``_``
    (``before``, the text before it), where the fraction is an exponent or subscript."""
    value = Fraction(
        int(whole + fixed + repetend) - int(whole + fixed or "0"),
        10 ** len(fixed) * (10 ** len(repetend) - 1),
    )
    text = (
        str(value.numerator)
        if value.denominator == 1
        else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
    )
    return f"{{{text}}}" if before.rstrip().endswith(("^", "_")) else text


def _before(match: re.Match[str]) -> str:
    """A few characters of the text before ``match`` (enough to see a ``^`` or ``_`` before spaces)."""
    return match.string[max(0, match.start() - 16) : match.start()]


def repeating_decimals(text: str) -> str:
    """Repeating decimals written with a bar or dots as the exact fractions they are:
    ``0.\\overline{3}`` -> ``\\frac{1}{3}``, ``0.\\overline{142857}`` -> ``\\frac{1}{7}``,
    ``1.2\\overline{3}`` -> ``\\frac{37}{30}``, ``0.\\dot{3}`` -> ``\\frac{1}{3}``,
    ``0.\\dot{1}4285\\dot{7}`` -> ``\\frac{1}{7}``; a bar over letters (``\\overline{AB}``) stays."""
    if "\\overline" in text or "\\bar" in text:
        text = _REPEATING_BAR.sub(lambda m: _repeating_fraction(m[1], m[2], m[3] or m[4], _before(m)), text)
    if "\\dot" in text:

        def dots(m: re.Match[str]) -> str:
            first, middle, last = m[3] or m[4], m[5] or "", m[6] or m[7] or ""
            return _repeating_fraction(m[1], m[2], first + (middle + last if last else ""), _before(m))

        text = _REPEATING_DOTS.sub(dots, text)
    return text


def _join_list_words(text: str) -> str:
    """Answer-list words as the list separator ``", "`` (``1 and 3``, ``x = 1 \\text{ or } x = 3`` ->
    ``1, 3``), except between inequalities: their "or" (``\\lor``) is a union and stays ``" \\lor "``
    (``x < -1 or x > 1`` -> ``x < -1 \\lor x > 1``, never equal to ``x < -1 and x > 1``); their "and"
    (``\\land``) is an intersection, ``" \\land "``, when every inequality is in the same one variable
    (``x > -1 and x < 1`` -> ``x > -1 \\land x < 1``, which is ``-1 < x < 1``), else ``", "`` as before
    (``x > 0 and y > 0`` -> ``x > 0, y > 0``)."""
    pieces = _RELATION_WORDS.split(text)  # text, three groups of each word, text, ...
    texts, words = pieces[::4], ["".join(filter(None, pieces[i : i + 3])) for i in range(1, len(pieces), 4)]
    if not words or not all(_INEQUALITY.search(piece) for piece in texts):
        return _LIST_WORDS.sub(", ", text).strip(", ")
    variables = [set(re.findall(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", piece))) for piece in texts]
    conjunction = " \\land " if len(variables[0]) == 1 and all(v == variables[0] for v in variables) else ", "
    joined = texts[0]
    for word, piece in zip(words, texts[1:], strict=True):
        joined += (" \\lor " if word.endswith("or") else conjunction) + piece
    return joined.strip()


def normalize(answer: str) -> str:
    """The canonical string of an extracted answer; list answers are joined with ``", "``."""
    text = strip_wrappers(answer)
    if len(text) > MAX_NORMALIZE_LENGTH:
        return text
    for old, new in _UNICODE.items():
        text = text.replace(old, new)
    text = _FORMATTING.sub(" ", text)
    text = _STYLE_COMMAND.sub("", text)
    text = _PMOD.sub("", text).replace("\\bmod", "\\mod").replace("\\equiv", "=")
    text = re.sub(r"\s*\\+\s*$", "", text)  # a stray trailing backslash (``185\\``)
    members = equality_members(text)
    if len(members) >= 2 and any(_CURRENCY.search(m) or _TEXT_UNIT_ANYWHERE.search(m) for m in members[:-1]):
        text = members[-1]  # a chain of quantities with units is a conversion: its value is the last member
    text = _CURRENCY.sub(" ", text)
    text = _EXPLICIT_THOUSANDS.sub(r"\1", text)
    text = _SPACING.sub(" ", text)
    text = repeating_decimals(text)
    if "matrix" not in text and "array" not in text:
        text = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", text)
    elif re.search(r"(?<!\\)\\\\(?:begin|end)\{", text):  # the whole text escaped twice
        text = text.replace("\\\\", "\\")
    text = re.sub(
        r"\\text\s*\{\s*([AaPp])\.?\s*[Mm]\.?\s*\}", r" \1M", text
    )  # 8:34 \text{P.M.}: a clock time
    text = _TEXT_UNIT.sub("", text)
    text = _replace_text_commands(text)
    text = text.replace("\\mathrm e", "e")
    text = _UNSUPPORTED_FUNCTIONS.sub(r"\1", text)
    text = plaintext.to_latex(text)
    for old, new in _COMMANDS.items():
        text = text.replace(old, new)
    # degrees are dropped from an answer (``90^\\circ`` is 90) but are radians' pi/180 inside a trigonometric
    # function (``\\sin(90^\\circ - x)`` is ``\\cos x``)
    text = _DEGREES.sub("\\\\cdot\\\\frac{\\\\pi}{180}" if _TRIG_COMMAND.search(text) else "", text)
    text = _FRAC_VARIANTS.sub("\\\\frac", text)
    text = _FRAC_SHORT.sub(lambda m: f"\\frac{{{m.group(1).strip('{}')}}}{{{m.group(2).strip('{}')}}}", text)
    text = _SQRT_SHORT.sub(r"\\sqrt{\1}", text)
    text = _SQRT_PAREN.sub(r"\\sqrt{\1}", text)
    text = re.sub(r"\s+", " ", text).strip()
    if "matrix" in text or "array" in text:
        return text
    text = _join_list_words(text)
    text = _join_thousands(text)
    elements = [part for part in _split_top_level(text, ";") if part.strip()]
    if len(elements) == 1:
        elements = [part for part in _split_top_level(text, ",") if part.strip()]
    if len(elements) <= 1:
        return normalize_element(text)
    groups = group_assignments(elements)
    if groups is not None:
        return ", ".join(f"({', '.join(normalize_element(value) for value in group)})" for group in groups)
    return ", ".join(drop_simple_lhs(normalize_element(element)) for element in elements)


def normalize_pair(pred: str, gold: str) -> tuple[str, str]:
    """``normalize`` of both answers, reading a one-comma answer ``a,b`` (no space, not a thousands group) as
    a decimal comma when the other answer is a decimal with as many places: ``1,22`` vs ``1.22`` ->
    ``1.22``/``1.22``; ``3,12`` vs ``3, 12`` and ``-2,10`` vs ``-2.1`` stay lists."""
    normalized = [normalize(pred), normalize(gold)]
    for side in (0, 1):  # a choice letter against an option written out: "C. x = 42" is choice C
        choice = _CHOICE_WITH_TEXT.fullmatch(strip_wrappers(pred if side == 0 else gold))
        if choice and normalized[1 - side] == choice.group(1):
            normalized[side] = choice.group(1)
    for side in (0, 1):
        raw = strip_wrappers(pred if side == 0 else gold)
        other = _DECIMAL.fullmatch(normalized[1 - side])
        decimal_comma = _DECIMAL_COMMA.fullmatch(raw) and not _THOUSANDS_GROUP.fullmatch(raw)
        if other and decimal_comma and len(raw.partition(",")[2]) == len(other.group(1)):
            normalized[side] = normalize(raw.replace(",", "."))
    return normalized[0], normalized[1]
