"""Final-answer extraction from model completions (``\\boxed{}``, ``#### N``, "The answer is N")."""

from __future__ import annotations

import re

_GSM8K = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None if there is none/unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin - 1, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: last ``\\boxed{}``, else ``#### N``, else "The answer is N"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_GSM8K, _ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            return matches[-1].strip()
    return None
