"""The check every build runs: each package against the torch reference, on the same held-out token streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phiexport.errors import BuildError
from phiexport.evaluate.data import chat_prompt, gsm8k_test, prompt_tokenizer, scored_sequences
from phiexport.evaluate.metrics import TokenScores, first_divergence
from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import open_reference, reference_device
from phiexport.progress import Track
from phiexport.recipe import EvaluationConfig
from phiexport.runtime.genai import GenaiPipelineRunner, package_stop_ids

REPORT_SCHEMA = "phiexport.report/1"


def verify_packages(
    checkpoint_dir: Path,
    packages: dict[str, Path],
    evaluation: EvaluationConfig,
    *,
    trust_remote_code: bool,
    track: Track[Any],
    chat_template: str | None = None,
    device: Any = None,
) -> dict[str, dict[str, Any]]:
    """A report per package (keyed like `packages`): perplexity, KL, top-1 and greedy agreement.

    `chat_template` formats the prompts when the checkpoint's tokenizer has none (the packages got it too); the
    torch reference runs on `device` (default: the CPU).
    """
    tokenizer = prompt_tokenizer(checkpoint_dir, trust_remote_code=trust_remote_code, chat_template=chat_template)
    sequences = scored_sequences(tokenizer, evaluation.sequences, evaluation.max_tokens)
    if not sequences:
        raise BuildError("no evaluation sequence survived tokenization", "raise evaluation.max_tokens in the recipe")
    reference = open_reference(checkpoint_dir, trust_remote_code=trust_remote_code, track=track, device=device)
    runners = _Runners(packages)  # opened after the reference's first pass: at scale, one model in memory at a time
    scores = {name: TokenScores() for name in packages}

    scored = zip(sequences, reference.scored_logits(sequences), strict=True)
    for sequence, ref_logits in track(scored, len(sequences), "scoring held-out GSM8K"):
        targets = np.asarray(sequence.token_ids[sequence.score_from :])
        for name in packages:
            scores[name].add(ref_logits, runners[name].logits(sequence.token_ids)[sequence.scored_positions], targets)

    eos_ids = package_stop_ids(next(iter(packages.values())))
    problems = gsm8k_test(evaluation.greedy_prompts)
    prompts = [
        tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        for problem in problems
    ]
    draft = runners[next(iter(packages))].greedy  # a streamed reference checks a package's text rather than decode
    ref_tokens = reference.greedy_many(prompts, evaluation.greedy_tokens, eos_ids, draft)
    greedy: dict[str, list[dict[str, Any]]] = {name: [] for name in packages}
    generations = zip(problems, prompts, ref_tokens, strict=True)
    for problem, prompt_ids, ref in track(generations, len(problems), "greedy generations"):
        for name in packages:
            pkg_tokens = runners[name].greedy(prompt_ids, evaluation.greedy_tokens)
            greedy[name].append(
                {
                    "question": problem["question"],
                    "first_divergence": first_divergence(ref, pkg_tokens),
                    "reference_text": tokenizer.decode(ref, skip_special_tokens=True),
                    "package_text": tokenizer.decode(pkg_tokens, skip_special_tokens=True),
                }
            )

    return {
        name: {
            "schema": REPORT_SCHEMA,
            "reference": {
                "model": "torch fp32 (transformers) of the source checkpoint",
                "runs_on": reference_device(device),
            },
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


class _Runners(dict[str, Any]):
    """Each package's runner, opened when first asked for."""

    def __init__(self, packages: dict[str, Path]):
        super().__init__()
        self._packages = packages

    def __missing__(self, name: str) -> Any:
        self[name] = open_runner(self._packages[name])
        return self[name]


def open_runner(package_dir: Path) -> Any:
    """The runner for a package: onnxruntime-genai's decoder pipeline over the QDQ bodies on the CPU EP for NPU
    packages, else the genai decoder."""
    from phiexport.package.npu_layout import PIPELINE_FILE

    if (package_dir / PIPELINE_FILE).is_file():
        return GenaiPipelineRunner(package_dir)
    return PackageRunner(package_dir)
