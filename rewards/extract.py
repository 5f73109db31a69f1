"""Final-answer extraction: find the answer string in a model completion or a reference solution.

Each *extractor* returns ``(position, answer)`` for the last match of its kind, or None. ``extract_answer``
runs the configured strong extractors and keeps the match that ends last in the text (a model's last stated
answer wins: a ``\\boxed{}`` followed by "Final Answer: The final answer is $X$" yields X), except that a
prose phrase ("the answer is ...", "final answer ...") after a ``\\boxed{}`` only wins when it states a value
(a digit or a LaTeX command): in "\\boxed{44}. So our answer is correct." the box wins. It then falls back to
the last ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` (with the number before it when it is that number's unit:
``20 $cm^{2}$``), the whole text when it is short (a bare answer such as ``\\dfrac{9}{7}``), and finally,
optionally, the last number.

Only the last ``SEARCH_TAIL`` characters of a text are searched (the final answer is at its end), and every
pattern is linear in its input, so extraction is cheap and safe in the calling process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Match = tuple[int, str]
BARE_ANSWER_MAX_LENGTH = 120
SEARCH_TAIL = 10_000  # characters at the end of a text that extraction looks at
_MAX_GAP_LENGTH = 60
_MAX_GAP_WORDS = 4

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_GSM8K = re.compile(r"####\s*:?\s*([^\n]+)")
# Markdown emphasis (``**Final Answer**: 18``, ``__Answer:__ 18``, ``**18**``) may close around a label or
# wrap an answer: the markers skip ``*``/``_`` runs after a label as they skip its spaces
_FINAL_ANSWER = re.compile(
    r"final answer[\s*_]*(?:is)?[\s*_]*[:：]?[\s*_]*(?:the final answer is)?\s*(.+?)\s*"
    r"(?:\.?\s*I hope it is correct|\n\n|$)",
    re.IGNORECASE | re.DOTALL,
)
_ANSWER_IS = re.compile(
    r"answer(?:\*{1,3}|_{1,3})? is[\s*_]*[:：]?\s*(.+?)\s*(?:\.?\s*I hope it is correct|\n|$)", re.IGNORECASE
)
_MATH = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)
# an integer with thousands separators between groups of three digits: ``,`` or LaTeX's ``,\!``, ``{,}`` and
# thin space ``\,`` (``32,\!348``, ``1{,}000``, ``12\,000``); a run of digits and bare commas that is not one
# (``1,2``, ``1,22``) is read whole, as before: normalisation decides whether it is a list or a decimal comma
_GROUPED_INTEGER = r"\d{1,3}(?:(?:,\\!|\{,\}|\\,|,)\d{3})+(?!\d|,\d)"
_NUMBER = re.compile(
    rf"\\frac\{{-?\d+\}}\{{\d+\}}|-?(?:{_GROUPED_INTEGER}|\d[\d,]*)(?:\.\d+)?(?:/\d+)?%?|-?\.\d+%?"
)
# a word of prose: three or more letters, not a LaTeX command, not a plain-text math name (``sqrt``, ``cos``)
_PROSE_WORD = re.compile(
    r"(?<![\\\w])(?!(?:and|pct|percent|pi|sqrt|cbrt|abs|exp|log|ln|a?(?:sin|cos|tan|cot|sec|csc|sech|csch|coth)h?"
    r"|arc[a-z]+|cosech?|binomial|binom|factorial|floor|ceil|gcd|lcm|max|min|infinity)\b)[^\W\d_]{3,}"
    r"|[^\x00-\x7f]{2,}"
)
_CONNECTOR = re.compile(
    r"\\text\{([^{}]*)\}|\\quad|\\qquad|\\[,;!]|\\\]|\\\[|\\\)|\\\(|[$,;.\s]|\b(?:and|or)\b"
)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*")
_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_TOKEN = re.compile(r"[^\s$.,]+")
# what separates the boxes of one answer list: connectors, math delimiters and variable labels (``x_2 =``), or
# at most four words of prose ("papers and", "for part (a) and") without a sentence end or a word of
# self-correction ("\boxed{5}. Hmm no, \boxed{6}", "\boxed{5}, wait, actually \boxed{7}")
_SENTENCE_BREAK = re.compile(r"[.!?:](?!\d)|\n")
_CORRECTION = re.compile(
    r"\b(?:no|not|wait|actually|hmm+|wrong|instead|rather|but|oops|sorry|mistake|correct\w*|thus|so|hence"
    r"|therefore|then|gives?|is|was|should|means|final|answer|it's|i)\b",
    re.IGNORECASE,
)
_LIST_GAP = re.compile(
    r"(?:\s|[,;&$]|\\[,;!]|\\q?quad|\\[()\[\]]|\\text\{\s*(?:and|or)\s*\}|\b(?:and|or)\b"
    r"|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*"
)
_ANSWER_LABEL = re.compile(r"^(?:final\s+)?answer[\s*_]*[:：][\s*_]*", re.IGNORECASE)
# bold opening a word (after a space) or closing one (before a space or punctuation), not ``x**2``
_INNER_EMPHASIS = re.compile(
    r"(?<!\S)(?:\*{2,3}|_{2,3})(?=\S)|(?<=[^\s^\\*_])(?:\*{2,3}|_{2,3})(?=[\s.,;:!?)]|$)"
)
# "Answer: X" opening a line (after list, quote, heading or emphasis marks: ``- **Answer:** X``), X on the
# same line: a label alone on its line may head the work that follows
_ANSWER_LINE = re.compile(r"(?:^|\n)[ \t>#*_-]*answer[ \t*_]*[:：][ \t*_]*([^\s*_][^\n]*)", re.IGNORECASE)
# a number only from the start of its digit run, separators included (``}`` of ``{,}``, ``!`` of ``,\!``): no
# quadratic backtracking
_CURRENCY_AMOUNT = re.compile(
    rf"(?:\\?\$|€|£)\s*({_NUMBER.pattern})"
    rf"|(?<![\d,.\-}}!])({_NUMBER.pattern})\s*(?:\\?\$|€|£|\\euro\b|\\pounds\b)"
)
# a sentence opening with a conclusion word, possibly right after a closing math span (a LaTeX negative space
# ``\!``, as in ``12,\!000``, ends no sentence)
_CONCLUSION = re.compile(
    r"(?:^|[.!?:\n]\s*(?:\$\$|\$|\\\]|\\\))?\s*)"
    r"((?:therefore|thus|hence|so|in conclusion|in total)\b(?:\\!|[^.!?\n]|\.(?=\d))*)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?:\s+)(?=\S)")
# a unit written after a number, the unit's last part in a math span (``_quantity``): its power, the text
# between a number's span and the unit's (`` cm`` of ``$20$ cm$^2$``), a number and that text before the unit
_UNIT_POWER = re.compile(r"\^\s*\{?\s*[23]\s*\}?")
_UNIT_GAP = re.compile(r"[A-Za-z\s/.]*")
_NUMBER_BEFORE_UNIT = re.compile(rf"(?<![\w.])({_NUMBER.pattern})([A-Za-z\s/.]*)$")
# a list connector before a quantity (``and`` of ``$3$ $\text{cm}$ and $4$ $\text{cm}$``) and a number, with
# a short unit, ending the text before that connector
_LIST_CONNECTOR_BEFORE = re.compile(r"(?:\s*(?:,|;|&|\band\b|\bor\b))+\s*$", re.IGNORECASE)
_SPACES_BEFORE = re.compile(r"[ \t]*\Z")
_NUMBER_AT_END = re.compile(rf"(?<![\w.])(?:{_NUMBER.pattern})(?:\s*[A-Za-z]{{1,5}}(?:\^\d)?)?\s*$")


def _closing_braces(text: str) -> dict[int, int]:
    """Index of the closing brace of every balanced ``{`` of ``text``, in one pass."""
    closing, stack = {}, []
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            closing[stack.pop()] = index
    return closing


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Every ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` as ``(start, end, content)``, in order."""
    found = []
    closing: dict[int, int] | None = None
    for match in _BOX_COMMAND.finditer(text):
        after = match.end()
        if after < len(text) and text[after] == "{":
            closing = _closing_braces(text) if closing is None else closing
            close = closing.get(after)
            if close is not None:
                found.append((match.start(), close + 1, text[after + 1 : close].strip()))
        elif match.group().endswith(" "):
            token = _BOX_TOKEN.match(text, after)
            if token:
                found.append((match.start(), token.end(), token.group()))
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last box, or None. Boxes separated only by a short connector ("and", "or", ",",
    ``\\quad``, ``$``, a label such as ``x_2 =``, at most four words of prose) form one answer list:
    ``\\boxed{1} and \\boxed{2}`` -> ``1, 2``; a sentence end or a word of self-correction between them
    does not (``\\boxed{5}. Hmm no, \\boxed{6}`` -> ``6``). A box inside another is part of its content."""
    contents = last_boxes(text)
    return ", ".join(contents) if contents else None


def last_boxes(text: str) -> list[str]:
    """The contents of the boxes ``last_boxed`` reads as one answer, in order; empty without a box."""
    return [content for _, _, content in _last_box_group(text)]


def _last_box_group(text: str) -> list[tuple[int, int, str]]:
    """The boxes of the last answer list (see ``last_boxed``), outermost boxes only, in order."""
    outermost, end = [], -1
    for box in boxes(text):
        if box[0] >= end:  # not nested in the previous outermost box
            outermost.append(box)
            end = box[1]
    first = len(outermost) - 1
    while first > 0:
        gap = text[outermost[first - 1][1] : outermost[first][0]]
        if len(gap) > _MAX_GAP_LENGTH or not _is_list_gap(gap):
            break
        first -= 1
    return outermost[first:] if outermost else []


def _is_list_gap(gap: str) -> bool:
    if _LIST_GAP.fullmatch(gap):
        return True
    if _SENTENCE_BREAK.search(gap) or _CORRECTION.search(gap):
        return False
    return len(_CONNECTOR.sub(lambda m: f" {m.group(1) or ''} ", gap).split()) <= _MAX_GAP_WORDS


def _boxed(text: str) -> Match | None:
    group = _last_box_group(text)
    return (group[-1][1], ", ".join(content for _, _, content in group)) if group else None


def _last(pattern: re.Pattern[str]) -> Callable[[str], Match | None]:
    def extractor(text: str) -> Match | None:
        matches = list(pattern.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return last.end(), next(group for group in last.groups() if group is not None)

    return extractor


def _last_math(text: str) -> Match | None:
    return _last(_MATH)(text)


def _last_number(text: str) -> Match | None:
    return _last(re.compile(f"({_NUMBER.pattern})"))(text)


EXTRACTORS: dict[str, Callable[[str], Match | None]] = {
    "boxed": _boxed,
    "answer_tag": _last(_ANSWER_TAG),
    "gsm8k": _last(_GSM8K),
    "final_answer": _last(_FINAL_ANSWER),
    "answer_is": _last(_ANSWER_IS),
    "answer_line": _last(_ANSWER_LINE),
}
DEFAULT_ORDER = ("boxed", "answer_tag", "gsm8k", "final_answer", "answer_is", "answer_line")
_PROSE_MARKERS = ("final_answer", "answer_is", "answer_line")
# The reason a model gives after its answer on the same line ("7 because 3+4=7", "7, since ...", "7, which
# is odd", "18 (9 eggs at $2 each)", "5; we check ..."): the answer is what comes before it. A parenthesis
# counts only after a value (a digit, ``}`` or ``$``) and when it holds a word (``(9 eggs``), not an
# interval's ``\cup (5, 7)``.
_JUSTIFICATION = re.compile(
    r",?\s+(?:because|since|as|given|due to|from)\b|,\s*(?:which|that)\b"
    r"|(?<=[\d}$])\s*\((?=[^()]*[a-zA-Z]{2})|;\s",
    re.IGNORECASE,
)
# a value restated after the answer ("1/2 of 36, which is 18"): the restated one is the answer
_RESTATED = re.compile(r",\s*(?:which|that)\s+(?:is|equals|gives)\s+(?=[^\n]*\d)(.+)", re.IGNORECASE)
_STATES_VALUE = re.compile(r"[\d\\]")  # a digit or a LaTeX command: a value, not a comment


def _is_prose(text: str) -> bool:
    """Two or more words outside ``\\text{}`` (or any run of non-ASCII letters): a sentence, not an answer."""
    text = re.sub(r"\\(?:text|begin|end)\{[^{}]*\}", "", text)
    return len(_PROSE_WORD.findall(text)) >= 2 or re.search(r"[^\x00-\x7f]{2,}", text) is not None


def _without_reason(candidate: str) -> str:
    """A prose marker's capture (the rest of its line) without the reason after its answer
    (``_JUSTIFICATION``), or the value it restates (``_RESTATED``); a math span or a box is never cut."""
    inside = [(m.start(), m.end()) for m in _MATH.finditer(candidate)]
    inside += [(start, end) for start, end, _ in boxes(candidate)]

    def outside(match: re.Match[str]) -> bool:
        return match.start() > 0 and not any(start <= match.start() < end for start, end in inside)

    restated = next((m for m in _RESTATED.finditer(candidate) if outside(m)), None)
    if restated is not None:
        return _without_reason(restated.group(1))
    reason = next((m for m in _JUSTIFICATION.finditer(candidate) if outside(m)), None)
    return candidate if reason is None else candidate[: reason.start()]


def _strip_emphasis(text: str) -> str:
    """``text`` without Markdown emphasis (``*``, ``**``, ``_``, ``__``) around it or around a word inside
    it: ``**Answer:** 18`` -> ``Answer: 18``, ``**18** apples`` -> ``18 apples``, ``**18**.`` -> ``18.``;
    Python's power ``x**2`` stays."""
    text = _INNER_EMPHASIS.sub("", text).strip().lstrip("*_").lstrip()
    core = text.rstrip(".!").rstrip()
    return core.rstrip("*_").rstrip() if core.endswith(("*", "_")) else text


def _refine(candidate: str) -> str:
    """Reduce a marker's captured text to its answer: a box or math span inside it, else, when it reads as
    prose ("Jane started growing 3 hours ago"), its last number."""
    candidate = _strip_emphasis(_ANSWER_LABEL.sub("", _strip_emphasis(candidate)))
    boxed = last_boxed(candidate)
    if boxed is not None:
        return boxed
    if _is_prose(candidate):
        if " is " in candidate:
            return _refine(candidate.rpartition(" is ")[2])
        inner = _last_math(candidate) or _last_number(candidate)
        if inner is not None:
            return _refine(inner[1]) if inner[1] != candidate else inner[1]
    math = _MATH.fullmatch(candidate.rstrip(". "))
    if math:
        return next(group for group in math.groups() if group is not None).strip()
    return candidate.rstrip(". ").strip()


def extract_answer(
    text: str, order: Sequence[str] = DEFAULT_ORDER, last_number_fallback: bool = True
) -> str | None:
    """The final answer of ``text`` (a completion, a reference solution or a bare answer), or None.

    Args:
        text: the completion or reference.
        order: which strong extractors to use (keys of ``EXTRACTORS``); the one matching last in the text
            wins, ties going to the earlier name.
        last_number_fallback: when nothing else matches, use the last number in the text.
    """
    text = text[-SEARCH_TAIL:].replace("\\\\boxed", "\\boxed").replace("<|im_start|>user", "").strip()
    found = {name: match for name in order if (match := EXTRACTORS[name](text))}
    if found:
        ranked = sorted(((found[name][0], -rank, name) for rank, name in enumerate(order) if name in found),
                        reverse=True)  # fmt: skip
        for _, _, name in ranked:
            captured = found[name][1]
            answer = _refine(_without_reason(captured) if name in _PROSE_MARKERS else captured)
            box = found.get("boxed")
            after_box = name in _PROSE_MARKERS and box is not None and box[0] < found[name][0]
            if after_box and not _STATES_VALUE.search(answer):
                continue  # "\\boxed{44}. ... so our answer is correct.": the box wins
            if name == "answer_line" and _is_prose(answer):
                continue  # "Answer: let us count the cases." opens the work, it does not state a value
            if _cut_off(answer):
                continue  # "The answer is 4+9=13 \\boxed{13": the box was cut off, its content unfinished
            return answer or None
    spans = list(_MATH.finditer(text))
    conclusion = _conclusion_number(text, spans[-1].end() if spans else 0)
    if conclusion is not None:
        return conclusion
    if spans:
        outside = _MATH.sub(" ", text)
        quantity = _quantity(text, spans)
        if quantity is not None:
            answer = quantity
        elif len(text) <= BARE_ANSWER_MAX_LENGTH and not _CONNECTOR.sub(" ", outside).strip():
            answer = ", ".join(_refine(_span_text(span)) for span in spans)
        else:
            answer = _refine(_span_text(spans[-1]))
        if not _cut_off(answer):
            return answer or None
    if not _is_prose(text) and not _cut_off(answer := _refine(text)):
        return answer or None
    if last_number_fallback and (number := _last_number(text)):
        return number[1]
    return None


def _quantity(text: str, spans: list[re.Match[str]], alone: bool = True) -> str | None:
    """A number and its unit, without math delimiters, when the last math span is the unit (or its power)
    written after the number: ``20 $cm^{2}$`` -> ``20 cm^{2}``, ``$20$ cm$^2$`` -> ``20 cm^2``, ``$5$
    $\\text{km}$`` -> ``5 \\text{km}``, so that a unit in a math span is dropped as one outside it is (``20
    cm^{2}``), not taken for the answer. The unit rule is normalisation's: the quantity must normalise to
    what its number does (``$5$ $x$``, ``20 $\\%$`` or ``$3$ and $k$`` are no quantity). None otherwise, and
    when ``alone`` and the quantity is the last of a list (``_follows_a_listed_number``)."""
    from rewards.normalize import normalize

    last = spans[-1]
    unit = _span_text(last).strip()
    if len(unit) > _MAX_GAP_LENGTH or re.search(r"\d", _UNIT_POWER.sub("", unit)):
        return None
    start = max(0, last.start() - _MAX_GAP_LENGTH)
    previous = spans[-2] if len(spans) > 1 and spans[-2].end() > start else None
    if previous is not None and _UNIT_GAP.fullmatch(text, previous.end(), last.start()):
        value, between = _span_text(previous).strip(), text[previous.end() : last.start()]
        begin = previous.start()
    else:
        number = _NUMBER_BEFORE_UNIT.search(text, previous.end() if previous else start, last.start())
        if number is None:
            return None
        value, between, begin = number.group(1), number.group(2), number.start(1)
    if alone and _follows_a_listed_number(text, begin, spans):
        return None  # "$3$ $\\text{cm}$ and $4$ $\\text{cm}$": a list of quantities, not its last one
    if not re.search(r"\d", value) or not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", between + unit)):
        return None
    quantity = re.sub(r"\s+", " ", f"{value}{between or ' '}{unit}").strip()
    return quantity if normalize(quantity) == normalize(value) else None


def _follows_a_listed_number(text: str, begin: int, spans: list[re.Match[str]]) -> bool:
    """Whether the quantity starting at ``begin`` follows a list connector (``,``, ``;``, ``&``, ``and``,
    ``or``) after another number: a number's math span, a quantity with its unit in a math span, or a plain
    number with a short unit (``3 cm and $4$ $\\text{cm}$``); or follows, on the same line with only spaces
    between, another quantity with its unit in a math span (``$3$ $cm$ $4$ $cm$``)."""
    window = max(0, begin - _MAX_GAP_LENGTH)
    connector = _LIST_CONNECTOR_BEFORE.search(text[window:begin])
    if connector is None:
        spaces = _SPACES_BEFORE.search(text, window, begin)
        head = text[: spaces.start()]
        earlier = [span for span in spans if span.end() <= len(head)]
        return (
            bool(earlier) and earlier[-1].end() == len(head) and _quantity(head, earlier, False) is not None
        )
    head = text[: window + connector.start()]
    earlier = [span for span in spans if span.end() <= len(head)]
    if earlier and earlier[-1].end() == len(head):
        return bool(re.search(r"\d", _span_text(earlier[-1]))) or _quantity(head, earlier, False) is not None
    return _NUMBER_AT_END.search(head[-_MAX_GAP_LENGTH:]) is not None


def _cut_off(answer: str) -> bool:
    """Whether ``answer`` holds, after its start, a ``\\boxed{`` that never closes: a completion cut off by
    the token limit inside its box (``4+9=13 \\boxed{13``). The box's content is unfinished, so it is no
    answer: passed on, it made the parser fail and count a verifier error. Extraction moves on to its next
    fallback instead. A box opening the answer (``\\boxed{5``, as some references are written) is a stray
    opening that normalisation drops."""
    closed = {start for start, _, _ in boxes(answer)}
    return any(match.start() > 0 and match.start() not in closed for match in _BOX_OPENING.finditer(answer))


def _conclusion_number(text: str, after: int) -> str | None:
    """The answer a prose completion states without a marker: the last currency amount when the text has no
    math span and the amount is in the last sentence (``Réponse: ... 220 $ à payer d'ici 12 mois`` ->
    ``220``), else the last number of the last sentence opening with "Therefore"/"Thus"/"So"/... when that
    sentence follows every math span."""
    if after == 0 and (amounts := list(_CURRENCY_AMOUNT.finditer(_SENTENCE_END.split(text.strip())[-1]))):
        return next(group for group in amounts[-1].groups() if group is not None)
    sentences = [match.group(1) for match in _CONCLUSION.finditer(text) if match.start(1) >= after]
    if not sentences:
        return None
    number = _last_number(sentences[-1])
    return number[1] if number else None


def _span_text(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None)
