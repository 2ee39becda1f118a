"""The same NPU build cut into different numbers of body parts, side by side, each package run by onnxruntime-genai
on the CPU EP (its QDQ bodies): teacher-forced KL / top-1 against torch on held-out GSM8K sequences, the largest logit
difference from the first package on the same tokens, og's greedy tokens, and what the build's simulator check
recorded per part (each part's separately compiled binaries on the HTP simulator, CPU fallback disabled).

    for n in 1 2 3; do phiexport build -t npu --parts $n -o /tmp/parts$n; done
    python benchmarks/npu_parts.py /tmp/parts1/npu /tmp/parts2/npu /tmp/parts3/npu --sequences 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from phiexport.evaluate.data import chat_prompt, gsm8k_test, scored_sequences
from phiexport.evaluate.metrics import TokenScores
from phiexport.pipeline import cache_root
from phiexport.recipe import Recipe
from phiexport.runtime.genai import GenaiPipelineRunner
from phiexport.source import resolve_source


def package_mb(package: Path) -> float:
    return sum(path.stat().st_size for path in package.rglob("*") if path.is_file()) / 1e6


def simulated(part: dict) -> str:
    """One part's row of the build's simulator check: KL and top-1 against the CPU EP, decode steps, node placement."""
    nodes = "+".join(
        f"{count} {provider.removesuffix('ExecutionProvider')}"
        for stage in part["body_nodes"].values()
        for provider, count in stage.items()
    )
    kl, top1 = part["kl_mean_vs_cpu_ep"], part["top1_agreement_vs_cpu_ep"]
    return f"{kl:.4f}, {top1:.1%}, {part['decode_steps_compared']}, {nodes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", type=Path, nargs="+", help="NPU packages of one recipe, built with other --parts")
    parser.add_argument("--sequences", type=int, default=32, help="held-out sequences, teacher-forced")
    parser.add_argument("--greedy-prompts", type=int, default=4)
    parser.add_argument("--greedy-tokens", type=int, default=32)
    args = parser.parse_args()

    manifest = json.loads((args.packages[0] / "manifest.json").read_text())
    checkpoint = resolve_source(Recipe.model_validate(manifest["recipe"]).source, cache_root())
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32).eval()
    context = json.loads((args.packages[0] / "npu_pipeline.json").read_text())["layout"]["context"]
    scored = scored_sequences(tokenizer, args.sequences, min(320, context))
    with torch.no_grad():
        expected = [reference(torch.tensor([s.token_ids])).logits[0].numpy() for s in scored]
    prompts = [
        tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        for problem in gsm8k_test(args.greedy_prompts)
    ]

    print(
        "| parts (layers) | package MB | shared binary MB per part | KL mean / p99 / top-1 vs torch | "
        "max logit diff vs first | greedy tokens equal to first | simulator per part: KL vs CPU EP, top-1, "
        "decode steps, nodes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    first_logits: list[np.ndarray] = []
    first_tokens: list[list[int]] = []
    for package in args.packages:
        weights = json.loads((package / "manifest.json").read_text())["weights"]
        runner = GenaiPipelineRunner(package, "cpu")
        scores, logits = TokenScores(), []
        for sequence, torch_logits in zip(scored, expected, strict=True):
            window = slice(sequence.score_from - 1, len(sequence.token_ids) - 1)
            logits.append(runner.logits(sequence.token_ids))
            scores.add(torch_logits[window], logits[-1][window], np.asarray(sequence.token_ids[sequence.score_from :]))
        tokens = [runner.greedy(prompt, args.greedy_tokens) for prompt in prompts]
        runner.close()
        first_logits, first_tokens = first_logits or logits, first_tokens or tokens
        difference = max(float(np.abs(a - b).max()) for a, b in zip(logits, first_logits, strict=True))
        same = sum(a == b for a, b in zip(tokens, first_tokens, strict=True))
        summary = scores.summary()
        layers = ", ".join(f"{a}-{b - 1}" for a, b in weights["parts"]["layers"])
        context_parts = next(iter(weights["contexts"].values()))["parts"]
        binaries = ", ".join(f"{part['shared_bytes'] / 1e6:.1f}" for part in context_parts)
        simulator = "; ".join(simulated(part) for part in weights["simulator"]["parts"])
        print(
            f"| {len(context_parts)} ({layers}) | {package_mb(package):.1f} | {binaries} | "
            f"{summary['kl_mean']:.4f} / {summary['kl_p99']:.4f} / {summary['top1_agreement']:.2%} "
            f"({summary['tokens']} tokens) | {difference:.2e} | {same} of {len(prompts)} × {args.greedy_tokens} | "
            f"{simulator} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
