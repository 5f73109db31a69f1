"""Plain-text math (``sqrt(3)``, ``pi/2``, ``2^(1/2)``, ``3*sqrt(5)``, ``binomial(n,k)``) rewritten as LaTeX.

Answers are often written the way a calculator, Python or a CAS takes them instead of in LaTeX. The LaTeX
parser misreads such text (``cos(x)`` is ``c*o*s(x)`` to it, ``4^(1/2)`` a syntax error), so ``to_latex``
translates it token by token into the LaTeX the parser reads: function calls become LaTeX functions
(``sqrt(a)`` -> ``\\sqrt{a}``, ``abs(a)`` -> ``\\left|a\\right|``, ``exp(a)`` -> ``e^{a}``, ``log(a)`` and
``ln(a)`` -> ``\\ln`` -- in plain text, as in Python, sympy and Maxima, ``log`` is the natural logarithm --,
``log(a, b)`` -> ``\\log_{b}``, ``binomial(n, k)`` -> ``\\binom{n}{k}``, trigonometric and hyperbolic names
including ``cosec``, ``sech``, ``csch``, ``coth``), ``**`` and ``^(...)`` become braced exponents, ``*``
becomes ``\\cdot``, ``pi``/``oo``/``inf``/``infinity`` and Greek letter names become their LaTeX symbols,
a name followed by digits (``R1``) becomes a subscript, and in text without any LaTeX a brace group with
commas (``{1, 2}``) becomes a set. LaTeX already in the text passes through unchanged.

It is a pure string rewrite -- nothing is evaluated --, linear in the input, and gives up (returns the text
unchanged) on unbalanced brackets, a wrong number of function arguments, or nesting deeper than
``MAX_DEPTH``.
"""

from __future__ import annotations

import re

MAX_DEPTH = 40  # nested groups the rewrite follows; deeper text is returned unchanged

_TRIG = (
    "sin", "cos", "tan", "sec", "csc", "cot", "sinh", "cosh", "tanh",
    "arcsin", "arccos", "arctan", "arcsec", "arccsc", "arccot", "arcsinh", "arccosh", "arctanh",
)  # fmt: skip
_ALIASES = {
    "asin": "arcsin", "acos": "arccos", "atan": "arctan", "asec": "arcsec", "acsc": "arccsc",
    "acot": "arccot", "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh", "cosec": "csc",
    "arcosh": "arccosh", "arsinh": "arcsinh", "artanh": "arctanh",
}  # fmt: skip
_RECIPROCAL_HYPERBOLIC = {"sech": "cosh", "csch": "sinh", "cosech": "sinh"}
_FUNCTIONS = (
    set(_TRIG) | set(_ALIASES) | set(_RECIPROCAL_HYPERBOLIC)
    | {"coth", "sqrt", "cbrt", "abs", "exp", "ln", "log", "binomial", "binom", "factorial", "floor", "ceil",
       "ceiling", "gcd", "lcm", "max", "min"}
)  # fmt: skip
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
    "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "Gamma", "Delta", "Theta",
    "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}  # fmt: skip
_NAMES = "|".join(sorted(_FUNCTIONS, key=len, reverse=True))
# what marks text as plain-text math: a call of a known function not written as a LaTeX command, ``**``,
# an exponent in parentheses or with a bare sign, or a spelled-out constant
_MARKERS = re.compile(
    rf"(?<![\\A-Za-z])(?:{_NAMES})\s*\(|(?<![\\A-Za-z])sqrt\s*\d|\*\*|\^\s*[(+-]"
    r"|(?<![\\A-Za-z])(?:pi|oo|inf|infinity)(?![A-Za-z])"
)
_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<command>\\[A-Za-z]+|\\.)"
    r"|(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+(?![A-Za-z(]))?)"
    r"|(?P<name>[A-Za-z]+)|(?P<op>\*\*|<=|>=|!=|.)",
    re.DOTALL,
)
_OPEN, _CLOSE = "([{", ")]}"


class _GiveUp(Exception):
    """The text is not plain-text math this rewrite understands."""


def looks_plain(text: str) -> bool:
    """Whether ``text`` contains plain-text math notation that the LaTeX parser would misread."""
    return _MARKERS.search(text) is not None


def to_latex(text: str) -> str:
    """``text`` with its plain-text math rewritten as LaTeX (unchanged when there is none, or when the rewrite
    gives up). ``to_latex("3*sqrt(5)") == "3 \\\\cdot \\\\sqrt{5}"``."""
    if not looks_plain(text):
        return text
    tokens = [(match.lastgroup or "op", match.group()) for match in _TOKEN.finditer(text)]
    try:
        partner = _partners(tokens)
        return re.sub(
            r"\s+", " ", _Writer(tokens, partner, "\\" not in text).write(0, len(tokens), 0)
        ).strip()
    except _GiveUp:
        return text


def _partners(tokens: list[tuple[str, str]]) -> dict[int, int]:
    """Index of the closing bracket of every opening bracket token (LaTeX ``\\{``, ``\\}`` are commands)."""
    partner, stack = {}, []
    for index, (kind, value) in enumerate(tokens):
        if kind != "op":
            continue
        if value in _OPEN:
            stack.append(index)
        elif value in _CLOSE:
            if not stack or _OPEN.index(tokens[stack[-1]][1]) != _CLOSE.index(value):
                raise _GiveUp
            partner[stack.pop()] = index
    if stack:
        raise _GiveUp
    return partner


class _Writer:
    """Rewrites a token range; ``write`` recurses into brackets and function arguments."""

    def __init__(self, tokens: list[tuple[str, str]], partner: dict[int, int], pure: bool) -> None:
        self.tokens, self.partner, self.pure = tokens, partner, pure

    def _next(self, index: int, end: int) -> int:
        """The first non-space token index at or after ``index``."""
        while index < end and self.tokens[index][0] == "space":
            index += 1
        return index

    def _arguments(self, open_index: int, depth: int) -> list[str]:
        """The rewritten comma-separated arguments of the bracket opening at ``open_index``."""
        close, start, parts, level = self.partner[open_index], open_index + 1, [], 0
        for index in range(open_index + 1, close):
            kind, value = self.tokens[index]
            if kind == "op" and value in _OPEN:
                level += 1
            elif kind == "op" and value in _CLOSE:
                level -= 1
            elif kind == "op" and value == "," and level == 0:
                parts.append(self.write(start, index, depth + 1))
                start = index + 1
        parts.append(self.write(start, close, depth + 1))
        return [part.strip() for part in parts]

    def _function(self, name: str, arguments: list[str]) -> str:
        name = _ALIASES.get(name, name)
        if name in ("binomial", "binom", "log", "gcd", "lcm", "max", "min"):
            if name in ("binomial", "binom") and len(arguments) == 2:
                return f"\\binom{{{arguments[0]}}}{{{arguments[1]}}}"
            if name == "log" and len(arguments) == 2:
                return f"\\log_{{{arguments[1]}}}\\left({arguments[0]}\\right)"
            if name in ("gcd", "lcm", "max", "min") and len(arguments) >= 2:
                command = "\\operatorname{lcm}" if name == "lcm" else f"\\{name}"
                return f"{command}\\left({', '.join(arguments)}\\right)"
        if len(arguments) != 1 or not arguments[0]:
            raise _GiveUp
        (argument,) = arguments
        if name == "sqrt":
            return f"\\sqrt{{{argument}}}"
        if name == "cbrt":
            return f"\\sqrt[3]{{{argument}}}"
        if name == "abs":
            return f"\\left|{argument}\\right|"
        if name == "exp":
            return f"e^{{{argument}}}"
        if name in ("ln", "log"):
            return f"\\ln\\left({argument}\\right)"
        if name == "factorial":
            return f"\\left({argument}\\right)!"
        if name in ("floor", "ceil", "ceiling"):
            side = "floor" if name == "floor" else "ceil"
            return f"\\l{side} {argument} \\r{side}"
        if name in _RECIPROCAL_HYPERBOLIC:
            return f"\\frac{{1}}{{\\{_RECIPROCAL_HYPERBOLIC[name]}\\left({argument}\\right)}}"
        if name == "coth":
            return f"\\frac{{\\cosh\\left({argument}\\right)}}{{\\sinh\\left({argument}\\right)}}"
        return f"\\{name}\\left({argument}\\right)"

    def _atom(self, index: int, end: int, depth: int) -> tuple[str, int]:
        """One exponent operand starting at token ``index``: a bracket group, a signed number or name, or a
        LaTeX command with its braced argument. Returns (rewritten operand, index after it)."""
        index = self._next(index, end)
        if index >= end:
            raise _GiveUp
        kind, value = self.tokens[index]
        sign = ""
        if kind == "op" and value in "+-":
            sign, index = value, self._next(index + 1, end)
            if index >= end:
                raise _GiveUp
            kind, value = self.tokens[index]
        if kind == "op" and value in "({":
            close = self.partner[index]
            inner = self.write(index + 1, close, depth + 1)
            return (sign + (f"({inner})" if value == "(" else inner)), close + 1
        if kind == "name" and value in _FUNCTIONS:
            after = self._next(index + 1, end)
            if after < end and self.tokens[after] == ("op", "("):
                return sign + self._function(value, self._arguments(after, depth)), self.partner[after] + 1
        if kind in ("number", "name"):
            return sign + value, index + 1
        if kind == "command":
            after = self._next(index + 1, end)
            if after < end and self.tokens[after] == ("op", "{"):
                close = self.partner[after]
                return f"{sign}{value}{{{self.write(after + 1, close, depth + 1)}}}", close + 1
            return sign + value + " ", index + 1
        raise _GiveUp

    def write(self, start: int, end: int, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise _GiveUp
        out: list[str] = []
        index = start
        while index < end:
            kind, value = self.tokens[index]
            if kind == "name":
                after = self._next(index + 1, end)
                is_call = after < end and self.tokens[after] == ("op", "(")
                if value in _FUNCTIONS and is_call:
                    out.append(" " + self._function(value, self._arguments(after, depth)) + " ")
                    index = self.partner[after] + 1
                    continue
                if value == "sqrt" and after < end and self.tokens[after][0] in ("number", "name"):
                    out.append(f" \\sqrt{{{self.tokens[after][1]}}} ")
                    index = after + 1
                    continue
                if value in ("pi", "oo", "inf", "infinity") or value in _GREEK:
                    out.append(" \\infty " if value in ("oo", "inf", "infinity") else f" \\{value} ")
                elif value in _FUNCTIONS:
                    out.append(f" \\{_ALIASES.get(value, value)} ")
                elif (
                    index + 1 < end
                    and self.tokens[index + 1][0] == "number"
                    and "." not in self.tokens[index + 1][1]
                ):
                    out.append(f"{value}_{{{self.tokens[index + 1][1]}}}")  # R1 -> R_{1}
                    index += 2
                    continue
                else:
                    out.append(value)
            elif kind == "number" and re.search(r"[eE]", value):
                mantissa, _, exponent = value.replace("E", "e").partition("e")
                out.append(f"({mantissa} \\times 10^{{{int(exponent)}}})")
            elif kind == "op" and value in ("^", "**"):
                operand, index = self._atom(index + 1, end, depth)
                out.append(f"^{{{operand}}}")
                continue
            elif kind == "op" and value == "*":
                out.append(" \\cdot ")
            elif kind == "op" and value in "([{":
                close = self.partner[index]
                inner = self.write(index + 1, close, depth + 1)
                if value == "{" and self.pure:
                    has_comma = any(self.tokens[i] == ("op", ",") for i in range(index + 1, close))
                    out.append(f"\\{{{inner}\\}}" if has_comma else f"({inner})")
                else:
                    out.append(value + inner + _CLOSE[_OPEN.index(value)])
                index = close + 1
                continue
            elif kind == "command":
                next_kind = self.tokens[index + 1][0] if index + 1 < end else ""
                out.append(value + (" " if next_kind == "name" else ""))
            else:
                out.append(value)
            index += 1
        return "".join(out)
