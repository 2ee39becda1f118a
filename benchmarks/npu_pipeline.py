"""Measure an NPU package against its torch reference, the package run by onnxruntime-genai: fp32 static pipeline
parity, teacher-forced KL/top-1 on the CPU EP and on the HTP simulator, og's greedy tokens against phiexport's graph
runner (the oracle, feeding the same graphs directly), wall time per prefill chunk and decode step on the simulator.
Greedy text through og alone: benchmarks/og_plain.py.

    python benchmarks/npu_pipeline.py packages/smollm2-135m-instruct/npu --sequences 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from phiexport.evaluate.data import chat_prompt, gsm8k_test, scored_sequences
from phiexport.evaluate.metrics import TokenScores, first_divergence
from phiexport.export.static_graphs import StaticLayout, export_static_graphs
from phiexport.pipeline import cache_root
from phiexport.quantize.rotation import rotate_decoder
from phiexport.recipe import Recipe
from phiexport.runtime.genai import GenaiPipelineRunner
from phiexport.runtime.static_pipeline import StaticPipeline
from phiexport.source import resolve_source


def incremental(pipeline: StaticPipeline, ids: list[int], decode: int) -> np.ndarray:
    """Prompt through prefill chunks, then the last `decode` tokens one by one through the decode graph."""
    pipeline.reset()
    prompt = ids[: len(ids) - decode]
    return np.concatenate([pipeline.logits(prompt)] + [pipeline.logits([token]) for token in ids[len(prompt) :]])


timed: dict[str, float] = {}


class Rows(list[tuple[str, str]]):
    """The table's rows, printed as they are measured (the simulator rows take minutes)."""

    def __init__(self) -> None:
        super().__init__()
        print("| measure | value |\n| --- | --- |", flush=True)

    def append(self, row: tuple[str, str]) -> None:
        super().append(row)
        print(f"| {row[0]} | {row[1]} |", flush=True)

    def __iadd__(self, rows: Any) -> Rows:
        for row in rows:
            self.append(row)
        return self


def teacher_forced(name: str, runner: GenaiPipelineRunner, scored: list, torch_logits) -> list[tuple[str, str]]:
    """KL, top-1 and perplexity of the runner's teacher-forced logits against torch's on the scored positions."""
    scores, seconds = TokenScores(), 0.0
    for sequence in scored:
        window = slice(sequence.score_from - 1, len(sequence.token_ids) - 1)
        targets = np.asarray(sequence.token_ids[sequence.score_from :])
        start = time.perf_counter()
        logits = runner.logits(sequence.token_ids)
        seconds += time.perf_counter() - start
        scores.add(torch_logits(sequence.token_ids)[window], logits[window], targets)
    timed[name] = seconds
    summary = scores.summary()
    return [
        (
            f"{name}, {len(scored)} GSM8K test sequences, {summary['tokens']} tokens: KL mean / p99 / top-1",
            f"{summary['kl_mean']:.4f} / {summary['kl_p99']:.4f} / {summary['top1_agreement']:.2%}",
        ),
        (
            f"{name}: ppl reference → package",
            f"{summary['ppl_reference']:.3f} → {summary['ppl_package']:.3f} ({seconds:.0f} s)",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--sequences", type=int, default=64, help="held-out sequences scored on the CPU EP")
    parser.add_argument("--simulator-sequences", type=int, default=1, help="held-out sequences on the simulator")
    parser.add_argument("--decode", type=int, default=8, help="decode steps timed on the simulator")
    parser.add_argument("--greedy-prompts", type=int, default=8, help="GSM8K prompts for og against the oracle")
    args = parser.parse_args()

    manifest = json.loads((args.package / "manifest.json").read_text())
    recipe = Recipe.model_validate(manifest["recipe"])
    checkpoint = resolve_source(recipe.source, cache_root())
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32).eval()
    layout = StaticLayout(**json.loads((args.package / "npu_pipeline.json").read_text())["layout"])
    rows = Rows()

    def torch_logits(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return reference(torch.tensor([ids])).logits[0].numpy()

    prompt_len = 2 * layout.chunk - 28  # two prefill chunks, the second one padded
    sequences = [s.token_ids for s in scored_sequences(tokenizer, 32, 320) if len(s.token_ids) >= prompt_len + 16]

    # 1. fp32 static pipeline (rotated as the package is) against the reference
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32).eval()
    if recipe.npu.rotate:
        rotate_decoder(model, recipe.quantization.rotation_seed)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = StaticPipeline.from_graphs(export_static_graphs(model, layout, Path(scratch)), layout)
        errors = []
        for ids in sequences[:6]:
            ids = ids[: prompt_len + args.decode]
            errors.append(np.abs(incremental(fp32, ids, args.decode) - torch_logits(ids)).max())
    del model
    scale = float(np.abs(torch_logits(sequences[0][:prompt_len])).max())
    rows.append(
        (
            "fp32 static pipeline vs torch, max abs logit error (6 seqs, 2 chunks + 16 decode)",
            f"{max(errors):.2e} (logit scale {scale:.0f})",
        )
    )

    # 2. the package through og on the CPU EP, teacher-forced over held-out sequences
    cpu = GenaiPipelineRunner(args.package, "cpu")
    scored = scored_sequences(tokenizer, args.sequences, min(320, layout.context))
    rows += teacher_forced("og, CPU EP", cpu, scored, torch_logits)

    # 3. og's greedy tokens against the oracle's (the QDQ graphs fed directly by phiexport's runner), GSM8K prompts
    oracle = StaticPipeline.from_package(args.package)
    prompts = [
        tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        for problem in gsm8k_test(args.greedy_prompts)
    ]
    divergences = []
    for prompt in prompts:
        tokens = cpu.greedy(prompt, 64)
        oracle.reset()
        expected = [int(np.argmax(oracle.logits(prompt, prompt=True)[-1]))]
        for token in tokens[:-1]:
            expected.append(int(np.argmax(oracle.logits([token])[-1])))
        divergences.append(first_divergence(expected, tokens))
    same = sum(d is None for d in divergences)
    rows.append(
        (
            f"og vs oracle, CPU EP, {len(prompts)} GSM8K prompts x 64 greedy tokens: identical / first differences",
            f"{same}/{len(prompts)} / {[d for d in divergences if d is not None]}",
        )
    )
    cpu.close()

    # 4. the simulator through og: teacher-forced chunks, then greedy decode steps, every body node on the HTP
    start = time.perf_counter()
    htp = GenaiPipelineRunner(args.package, "htp-sim")
    rows.append(("og on the HTP simulator: model load (both bodies)", f"{time.perf_counter() - start:.0f} s"))
    few = scored[: args.simulator_sequences]
    rows += teacher_forced("og, HTP simulator", htp, few, torch_logits)
    chunks = sum(-(-len(s.token_ids) // layout.chunk) for s in few)
    rows.append(("og, HTP simulator: wall time per prefill chunk", f"{timed['og, HTP simulator'] / chunks:.2f} s"))
    start = time.perf_counter()
    tokens = htp.greedy(sequences[0][: layout.chunk], args.decode + 1)
    steps = len(tokens) - 1
    prefill = timed["og, HTP simulator"] / chunks
    rows.append(
        (
            "og, HTP simulator: wall time per decode step",
            f"{(time.perf_counter() - start - prefill) / max(steps, 1):.2f} s ({steps} steps)",
        )
    )


if __name__ == "__main__":
    main()
