"""The check every build runs: each package against the torch reference, on the same held-out token streams."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from phiexport.errors import BuildError
from phiexport.evaluate.data import chat_prompt, gsm8k_test, prompt_tokenizer, scored_sequences
from phiexport.evaluate.metrics import TokenScores, first_divergence
from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import TorchReference
from phiexport.recipe import EvaluationConfig
from phiexport.runtime.static_pipeline import StaticPackageRunner, package_stop_ids

REPORT_SCHEMA = "phiexport.report/1"
T = TypeVar("T")
Track = Callable[[Iterable[T], int, str], Iterable[T]]


def verify_packages(
    checkpoint_dir: Path,
    packages: dict[str, Path],
    evaluation: EvaluationConfig,
    *,
    trust_remote_code: bool,
    track: Track[Any],
    chat_template: str | None = None,
) -> dict[str, dict[str, Any]]:
    """A report per package (keyed like `packages`): perplexity, KL, top-1 and greedy agreement.

    `chat_template` formats the prompts when the checkpoint's tokenizer has none (the packages got it too).
    """
    tokenizer = prompt_tokenizer(checkpoint_dir, trust_remote_code=trust_remote_code, chat_template=chat_template)
    sequences = scored_sequences(tokenizer, evaluation.sequences, evaluation.max_tokens)
    if not sequences:
        raise BuildError("no evaluation sequence survived tokenization", "raise evaluation.max_tokens in the recipe")
    reference = TorchReference(checkpoint_dir, trust_remote_code=trust_remote_code)
    runners = {name: open_runner(path) for name, path in packages.items()}
    scores = {name: TokenScores() for name in packages}

    for sequence in track(sequences, len(sequences), "scoring held-out GSM8K"):
        window = slice(sequence.score_from - 1, len(sequence.token_ids) - 1)
        targets = np.asarray(sequence.token_ids[sequence.score_from :])
        ref_logits = reference.logits(sequence.token_ids)[window]
        for name, runner in runners.items():
            scores[name].add(ref_logits, runner.logits(sequence.token_ids)[window], targets)

    eos_ids = package_stop_ids(next(iter(packages.values())))
    greedy: dict[str, list[dict[str, Any]]] = {name: [] for name in packages}
    problems = gsm8k_test(evaluation.greedy_prompts)
    for problem in track(problems, len(problems), "greedy generations"):
        prompt_ids = tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        ref_tokens = reference.greedy(prompt_ids, evaluation.greedy_tokens, eos_ids)
        for name, runner in runners.items():
            pkg_tokens = runner.greedy(prompt_ids, evaluation.greedy_tokens)
            greedy[name].append(
                {
                    "question": problem["question"],
                    "first_divergence": first_divergence(ref_tokens, pkg_tokens),
                    "reference_text": tokenizer.decode(ref_tokens, skip_special_tokens=True),
                    "package_text": tokenizer.decode(pkg_tokens, skip_special_tokens=True),
                }
            )

    return {
        name: {
            "schema": REPORT_SCHEMA,
            "reference": {"model": "torch fp32 (transformers) of the source checkpoint"},
            "data": {
                "dataset": "GSM8K test (first problems in file order), chat-formatted, assistant tokens scored",
                "sequences": len(sequences),
                "max_tokens": evaluation.max_tokens,
                "chat_template": bool(tokenizer.chat_template),
            },
            "metrics": scores[name].summary(),
            "greedy": {"new_tokens": evaluation.greedy_tokens, "prompts": greedy[name]},
        }
        for name in packages
    }


def open_runner(package_dir: Path) -> Any:
    """The runner for a package: phiexport's static pipeline for NPU packages, else the genai decoder."""
    from phiexport.targets.npu import PIPELINE_FILE

    if (package_dir / PIPELINE_FILE).is_file():
        return StaticPackageRunner(package_dir)
    return PackageRunner(package_dir)
