"""onnxruntime-genai running an NPU package's QDQ bodies on the CPU EP: as written (phiexport's `QDQ_AS_WRITTEN`:
basic graph optimizations, no arena) against onnxruntime's default level, which rewrites the bodies (MatMulNBits at
accuracy level 4). Resident memory after opening and at its peak, seconds to score and to decode, and each mode's
KL against torch on the same held-out GSM8K tokens (every position). Each mode runs in its own process.

    .venv/bin/python benchmarks/og_cpu_bodies.py /tmp/smollm2/npu            # a package built with --qdq-bodies
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def resident() -> dict[str, float]:
    """GiB: RssAnon, RssFile and the peak (VmHWM) of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 2**20 for key in ("RssAnon", "RssFile", "VmHWM")}


def measure(package: Path, mode: str, tokens: list[list[int]], new_tokens: int, logits_file: Path) -> dict[str, float]:
    """One mode in this process: open, teacher-force the token lists, decode `new_tokens` greedily."""
    import phiexport.runtime.genai as genai

    if mode == "default":
        genai.QDQ_AS_WRITTEN.clear()  # the stage then gets og's (and onnxruntime's) defaults
    start = time.perf_counter()
    runner = genai.GenaiPipelineRunner(package, "cpu")
    opened, memory = time.perf_counter(), resident()
    logits = np.concatenate([runner.logits(ids) for ids in tokens])
    scored = time.perf_counter()
    runner.greedy(tokens[0][:64], new_tokens)
    decoded = time.perf_counter()
    np.save(logits_file, logits)
    peak = resident()
    return {
        "open_s": opened - start,
        "score_s": scored - opened,
        "decode_s_per_token": (decoded - scored) / new_tokens,
        "opened_anon_gib": memory["RssAnon"],
        "opened_file_gib": memory["RssFile"],
        "peak_gib": peak["VmHWM"],
    }


def checkpoint_of(package: Path) -> Path:
    from phiexport.pipeline import cache_root
    from phiexport.recipe import Recipe
    from phiexport.source import resolve_source

    recipe = Recipe.model_validate(json.loads((package / "manifest.json").read_text())["recipe"])
    return resolve_source(recipe.source, cache_root()).path


def held_out(checkpoint: Path, sequences: int) -> list[list[int]]:
    """The first held-out GSM8K conversations, up to 320 tokens, as the build's check scores them."""
    from transformers import AutoTokenizer

    from phiexport.evaluate.data import scored_sequences

    return [s.token_ids for s in scored_sequences(AutoTokenizer.from_pretrained(checkpoint), sequences, 320)]


def torch_logits(checkpoint: Path, tokens: list[list[int]]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return np.concatenate([model(torch.tensor([ids])).logits[0].numpy() for ids in tokens])


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    import torch

    p, q = torch.log_softmax(torch.tensor(p_logits), -1), torch.log_softmax(torch.tensor(q_logits), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="an NPU package with its QDQ bodies")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--mode", choices=("as-written", "default"), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        tokens = json.loads(args.tokens.read_text())
        print(json.dumps(measure(args.package, args.mode, tokens, args.new_tokens, args.logits)))
        return
    checkpoint = checkpoint_of(args.package)
    tokens = held_out(checkpoint, args.sequences)
    rows, logits = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "tokens.json").write_text(json.dumps(tokens))
        for mode in ("default", "as-written"):
            out = Path(scratch) / f"{mode}.npy"
            command = [sys.executable, __file__, str(args.package), "--mode", mode, "--logits", str(out)]
            command += ["--tokens", str(Path(scratch) / "tokens.json"), "--new-tokens", str(args.new_tokens)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows[mode], logits[mode] = json.loads(result.stdout.strip().splitlines()[-1]), np.load(out)
    reference = torch_logits(checkpoint, tokens)
    print(
        "| CPU-EP bodies | open s | score s | decode s/token | opened GiB (anon + file) | peak GiB | KL vs torch | "
        "top-1 vs torch |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, row in rows.items():
        top1 = float((reference.argmax(-1) == logits[mode].argmax(-1)).mean())
        print(
            f"| {mode} | {row['open_s']:.1f} | {row['score_s']:.1f} | {row['decode_s_per_token']:.2f} | "
            f"{row['opened_anon_gib']:.2f} + {row['opened_file_gib']:.2f} | {row['peak_gib']:.2f} | "
            f"{kl(reference, logits[mode]):.4f} | {top1:.1%} |"
        )
    print(f"\nKL between the two modes: {kl(logits['default'], logits['as-written']):.4f}")


if __name__ == "__main__":
    main()
