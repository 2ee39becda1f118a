"""Measure an NPU package against its torch reference: fp32 static pipeline parity, quantized KL/top-1 on the CPU EP,
the same on the HTP simulator over prompt chunks + decode steps, and greedy text from the simulator.

    python benchmarks/npu_pipeline.py packages/smollm2-135m-instruct/npu --sequences 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from phiexport.evaluate.data import chat_prompt, gsm8k_test, scored_sequences
from phiexport.evaluate.metrics import TokenScores
from phiexport.export.static_graphs import StaticLayout, export_static_graphs
from phiexport.pipeline import cache_root
from phiexport.quantize.rotation import rotate_decoder
from phiexport.recipe import Recipe
from phiexport.runtime.static_pipeline import StaticPackageRunner, StaticPipeline
from phiexport.source import resolve_source


def incremental(pipeline: StaticPipeline, ids: list[int], decode: int) -> np.ndarray:
    """Prompt through prefill chunks, then the last `decode` tokens one by one through the decode graph."""
    pipeline.reset()
    prompt = ids[: len(ids) - decode]
    return np.concatenate([pipeline.logits(prompt)] + [pipeline.logits([token]) for token in ids[len(prompt) :]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--sequences", type=int, default=64, help="held-out sequences scored on the CPU EP")
    parser.add_argument("--simulator-sequences", type=int, default=1)
    parser.add_argument("--decode", type=int, default=16, help="decode steps after 2 prompt chunks")
    args = parser.parse_args()

    manifest = json.loads((args.package / "manifest.json").read_text())
    recipe = Recipe.model_validate(manifest["recipe"])
    checkpoint = resolve_source(recipe.source, cache_root())
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32).eval()
    layout = StaticLayout(**json.loads((args.package / "npu_pipeline.json").read_text())["layout"])
    rows: list[tuple[str, str]] = []

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

    # 2. quantized package on the CPU EP, teacher-forced over held-out sequences
    cpu = StaticPackageRunner(args.package, device="cpu")
    scores, start = TokenScores(), time.perf_counter()
    scored = scored_sequences(tokenizer, args.sequences, min(320, layout.context))
    for sequence in scored:
        window = slice(sequence.score_from - 1, len(sequence.token_ids) - 1)
        targets = np.asarray(sequence.token_ids[sequence.score_from :])
        scores.add(torch_logits(sequence.token_ids)[window], cpu.logits(sequence.token_ids)[window], targets)
    summary = scores.summary()
    rows.append(
        (
            f"CPU EP, {len(scored)} GSM8K test sequences, {summary['tokens']} tokens: KL mean / p99 / top-1",
            f"{summary['kl_mean']:.4f} / {summary['kl_p99']:.4f} / {summary['top1_agreement']:.2%}",
        )
    )
    rows.append(("CPU EP ppl reference → package", f"{summary['ppl_reference']:.3f} → {summary['ppl_package']:.3f}"))
    rows.append(("CPU EP scoring time", f"{time.perf_counter() - start:.0f} s"))

    # 3. the HTP simulator: 2 prompt chunks + decode steps, every body node on the HTP
    start = time.perf_counter()
    htp = StaticPackageRunner(args.package, device="htp-sim")
    rows.append(("HTP simulator session creation (compile both bodies)", f"{time.perf_counter() - start:.0f} s"))
    for name, runner in (("HTP simulator", htp), ("CPU EP (same positions)", cpu)):
        scores, start = TokenScores(), time.perf_counter()
        for ids in sequences[: args.simulator_sequences]:
            ids = ids[: prompt_len + args.decode + 1]
            scores.add(torch_logits(ids[:-1]), incremental(runner.pipeline, ids[:-1], args.decode), np.asarray(ids[1:]))
        summary = scores.summary()
        rows.append(
            (
                f"{name}: 2 chunks + {args.decode} decode, {summary['tokens']} positions: KL mean / top-1",
                f"{summary['kl_mean']:.4f} / {summary['top1_agreement']:.2%} ({time.perf_counter() - start:.0f} s)",
            )
        )

    # 4. greedy text from the simulator: a 10-token raw prompt, and the chat prompt of the GSM8K test problem
    # whose length is nearest 100 tokens
    short = tokenizer("Here is a short poem about the sea:\n", add_special_tokens=False)["input_ids"]
    prompts = [
        tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        for problem in gsm8k_test(20)
    ]
    long = min(prompts, key=lambda ids: abs(len(ids) - 100))
    for prompt in (short, long):
        text = tokenizer.decode(htp.greedy(prompt, 32), skip_special_tokens=True)
        rows.append((f"simulator greedy, {len(prompt)}-token prompt, 32 new tokens", repr(text)))

    print("| measure | value |\n| --- | --- |")
    for measure, value in rows:
        print(f"| {measure} | {value} |")


if __name__ == "__main__":
    main()
