"""GSM8K task accuracy: each model answers held-out problems greedily; the final number of its reply is compared with
the problem's answer and with the reference model's.

A reply's answer is the number after `####` (GSM8K's own form), else its last number. Reasoning models think first:
only the text after `</think>` counts, and a reply whose think block never closed has no answer (it ran out of
new tokens while thinking).

    >>> final_answer("She makes 9 * 2 = $18 a day.\\n#### 18")
    '18'
    >>> final_answer("<think>maybe 12? no, 3 * 4 = 12, plus 2</think>So the total is $1,400.00.")
    '1400'
    >>> final_answer("<think>3 * 4 = 12") is None
    True
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from phiexport.evaluate.data import gsm8k_test

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_MARKED = re.compile(r"####\s*(-?\$?\d[\d,]*(?:\.\d+)?)")
TEST_PROBLEMS = 1319  # the GSM8K test split


def final_answer(reply: str) -> str | None:
    """The normalized number a reply commits to, or None when it gives none."""
    if THINK_CLOSE in reply:
        reply = reply.rsplit(THINK_CLOSE, 1)[1]
    elif THINK_OPEN in reply:
        return None
    marked = _MARKED.findall(reply)
    numbers = marked or _NUMBER.findall(reply)
    return normalize_number(numbers[-1]) if numbers else None


def normalize_number(text: str) -> str | None:
    """`$1,400.00` → `1400`, `-0.50` → `-0.5`: one spelling per value, so answers compare as strings."""
    try:
        value = Decimal(text.replace("$", "").replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gold_answer(problem: dict[str, str]) -> str:
    answer = final_answer(problem["answer"])
    if answer is None:
        raise ValueError(f"GSM8K answer without a final number: {problem['answer'][-80:]!r}")
    return answer


def select_problems(limit: int, seed: int | None) -> list[dict[str, str]]:
    """`limit` test problems: the first ones in file order, or a `seed`ed draw from the whole split."""
    if seed is None:
        return gsm8k_test(limit)
    problems = gsm8k_test(TEST_PROBLEMS)
    return random.Random(seed).sample(problems, min(limit, len(problems)))


@dataclass
class Answers:
    """One model's replies to the selected problems."""

    replies: list[str]
    answers: list[str | None]
    seconds: float

    def accuracy(self, gold: list[str]) -> float:
        return sum(a == g for a, g in zip(self.answers, gold, strict=True)) / max(len(gold), 1)

    def agreement(self, other: Answers) -> float:
        """Share of problems where both models give the same final answer (both none counts as the same)."""
        pairs = list(zip(self.answers, other.answers, strict=True))
        return sum(a == b for a, b in pairs) / max(len(pairs), 1)
