"""Held-out evaluation text: GSM8K test problems, chat-formatted, with the assistant's tokens marked for scoring."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiexport.resources import data_dir

Draft = Callable[[list[int], int], list[int]]  # a package's greedy continuation of a prefix, which a reference checks


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids of one conversation; positions `score_from` … end are the assistant's answer.

    The logits at position t predict token t+1, so the scored logits are `score_from - 1 … len - 2`.
    """

    token_ids: list[int]
    score_from: int

    @property
    def scored_positions(self) -> slice:
        """The rows of this sequence's logits that predict the scored tokens."""
        return slice(self.score_from - 1, len(self.token_ids) - 1)


def prompt_tokenizer(checkpoint_dir: Path, *, trust_remote_code: bool, chat_template: str | None) -> Any:
    """The checkpoint's tokenizer; `chat_template` (the recipe's chat format) stands in when it has none, as the
    packages got it too."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=trust_remote_code)
    tokenizer.chat_template = tokenizer.chat_template or chat_template
    return tokenizer


def gsm8k_test(limit: int) -> list[dict[str, str]]:
    """The first `limit` problems of the bundled GSM8K test split (file order, so every run scores the same ones)."""
    path: Path = data_dir("evaluation") / "gsm8k_test.jsonl"
    with path.open(encoding="utf-8") as handle:
        problems = [json.loads(line) for _, line in zip(range(limit), handle, strict=False)]
    return problems


def chat_prompt(tokenizer: Any, question: str) -> str:
    """The model's chat template applied to one user turn, ready for the assistant's reply."""
    if tokenizer.chat_template:
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
        )
    return f"Question: {question}\nAnswer: "


def scored_sequences(tokenizer: Any, count: int, max_tokens: int) -> list[ScoredSequence]:
    """`count` GSM8K test problems as question + reference answer, cut to `max_tokens` tokens.

    Without a chat template the plain `Question: … Answer: …` form is used.
    """
    sequences = []
    for problem in gsm8k_test(count):
        prompt_ids = tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        full_ids = conversation_ids(tokenizer, problem)[:max_tokens]
        if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
            continue  # the template re-tokenizes the prompt differently, or the answer was cut entirely
        sequences.append(ScoredSequence(token_ids=full_ids, score_from=len(prompt_ids)))
    return sequences


def calibration_sequences(tokenizer: Any, count: int, max_tokens: int, seed: int) -> list[list[int]]:
    """`count` bundled GSM8K train conversations (question + answer, chat-formatted), drawn with `seed`."""
    import random

    path: Path = data_dir("calibration") / "gsm8k_train_1024.jsonl"
    with path.open(encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle]
    chosen = random.Random(seed).sample(problems, min(count, len(problems)))
    return [conversation_ids(tokenizer, problem)[:max_tokens] for problem in chosen]


def conversation_ids(tokenizer: Any, problem: dict[str, str]) -> list[int]:
    """Token ids of one user question and its reference answer, in the model's chat format."""
    if tokenizer.chat_template:
        conversation = [
            {"role": "user", "content": problem["question"]},
            {"role": "assistant", "content": problem["answer"]},
        ]
        full = str(tokenizer.apply_chat_template(conversation, tokenize=False))
    else:
        full = chat_prompt(tokenizer, problem["question"]) + problem["answer"] + (tokenizer.eos_token or "")
    return list(tokenizer(full, add_special_tokens=False)["input_ids"])
