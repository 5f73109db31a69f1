"""Final-answer extraction: find the answer string in a model completion or a reference solution.

Each *extractor* returns ``(position, answer)`` for the last match of its kind, or None. ``extract_answer``
runs the configured strong extractors and keeps the match that ends last in the text (a model's last stated
answer wins: a ``\\boxed{}`` followed by "Final Answer: The final answer is $X$" yields X), then falls back
to the last ``$...$`` / ``\\(...\\)`` / ``\\[...\\]``, the whole text when it is short (a bare answer such
as ``\\dfrac{9}{7}``), and finally, optionally, the last number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Match = tuple[int, str]
BARE_ANSWER_MAX_LENGTH = 120
_MAX_GAP_WORDS = 4

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_GSM8K = re.compile(r"####\s*([^\n]+)")
_FINAL_ANSWER = re.compile(
    r"final answer\s*(?:is)?\s*[:：]?\s*(?:the final answer is)?\s*(.+?)\s*"
    r"(?:\.?\s*I hope it is correct|\n\n|$)",
    re.IGNORECASE | re.DOTALL,
)
_ANSWER_IS = re.compile(r"answer is\s*[:：]?\s*(.+?)\s*(?:\.?\s*I hope it is correct|\n|$)", re.IGNORECASE)
_MATH = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)
_NUMBER = re.compile(r"\\frac\{-?\d+\}\{\d+\}|-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+%?")
_PROSE_WORD = re.compile(r"(?<![\\\w])(?!(?:and|pct|percent)\b)[^\W\d_]{3,}|[^\x00-\x7f]{2,}")
_CONNECTOR = re.compile(
    r"\\text\{([^{}]*)\}|\\quad|\\qquad|\\[,;!]|\\\]|\\\[|\\\)|\\\(|[$,;.\s]|\b(?:and|or)\b"
)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_LABEL = re.compile(r"^(?:final\s+)?answer\s*[:：]\s*", re.IGNORECASE)
_CURRENCY_AMOUNT = re.compile(
    rf"(?:\\?\$|€|£)\s*({_NUMBER.pattern})|({_NUMBER.pattern})\s*(?:\\?\$|€|£|\\euro\b|\\pounds\b)"
)
# a sentence opening with a conclusion word, possibly right after a closing math span
_CONCLUSION = re.compile(
    r"(?:^|[.!?:\n]\s*(?:\$\$|\$|\\\]|\\\))?\s*)"
    r"((?:therefore|thus|hence|so|in conclusion|in total)\b(?:[^.!?\n]|\.(?=\d))*)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?:\s+)(?=\S)")


def _closing_brace(text: str, open_index: int) -> int | None:
    """Index of the brace closing ``text[open_index] == '{'``, or None when unbalanced."""
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Every ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` as ``(start, end, content)``, in order."""
    found = []
    for match in _BOX_COMMAND.finditer(text):
        after = match.end()
        if after < len(text) and text[after] == "{":
            close = _closing_brace(text, after)
            if close is not None:
                found.append((match.start(), close + 1, text[after + 1 : close].strip()))
        elif match.group().endswith(" "):
            token = re.match(r"[^\s$.,]+", text[after:])
            if token:
                found.append((match.start(), after + token.end(), token.group()))
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last box, or None. Boxes separated only by a short connector ("and", ",",
    ``\\quad``, at most four words of prose) form one answer list: ``\\boxed{1} and \\boxed{2}``
    -> ``1, 2``."""
    found = boxes(text)
    if not found:
        return None
    group = [found[-1]]
    for previous in reversed(found[:-1]):
        gap = text[previous[1] : group[0][0]]
        words = _CONNECTOR.sub(lambda m: f" {m.group(1) or ''} ", gap).split()
        if len(words) > _MAX_GAP_WORDS or len(gap) > 60:
            break
        group.insert(0, previous)
    return ", ".join(content for _, _, content in group)


def _boxed(text: str) -> Match | None:
    found = boxes(text)
    return (found[-1][1], last_boxed(text) or "") if found else None


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
}
DEFAULT_ORDER = ("boxed", "answer_tag", "gsm8k", "final_answer", "answer_is")


def _is_prose(text: str) -> bool:
    """Two or more words outside ``\\text{}`` (or any run of non-ASCII letters): a sentence, not an answer."""
    text = re.sub(r"\\(?:text|begin|end)\{[^{}]*\}", "", text)
    return len(_PROSE_WORD.findall(text)) >= 2 or re.search(r"[^\x00-\x7f]{2,}", text) is not None


def _refine(candidate: str) -> str:
    """Reduce a marker's captured text to its answer: a box or math span inside it, else, when it reads as
    prose ("Jane started growing 3 hours ago"), its last number."""
    candidate = _ANSWER_LABEL.sub("", candidate.strip().strip("*").strip())
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
    text = text.replace("\\\\boxed", "\\boxed").replace("<|im_start|>user", "").strip()
    matches = [
        (match[0], -rank, match[1]) for rank, name in enumerate(order) if (match := EXTRACTORS[name](text))
    ]
    if matches:
        return _refine(max(matches)[2]) or None
    spans = list(_MATH.finditer(text))
    conclusion = _conclusion_number(text, spans[-1].end() if spans else 0)
    if conclusion is not None:
        return conclusion
    if spans:
        outside = _MATH.sub(" ", text)
        if len(text) <= BARE_ANSWER_MAX_LENGTH and not _CONNECTOR.sub(" ", outside).strip():
            return ", ".join(_refine(_span_text(span)) for span in spans) or None
        return _refine(_span_text(spans[-1])) or None
    if not _is_prose(text):
        return _refine(text) or None
    if last_number_fallback and (number := _last_number(text)):
        return number[1]
    return None


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
