"""The embedded SmolLM2-135M-Instruct GGUF imported (its own Q4_1 / Q8_0 integers) against re-quantized int4 packages
of the same file: accuracy against the dequantized GGUF, package size, and decode speed, in one run.

    .venv/bin/python benchmarks/gguf_import.py [--repeats 5] [--packages DIR]

Each row is a `phiexport build --target cpu` of the GGUF, scored on the recipe's 32 held-out GSM8K sequences, gates
loosened so every row builds (a package already in `--packages` is reused). Decode: the rows take turns (A, B, C, D,
A, B, ...) on one 64-token GSM8K prompt, 128 new tokens each on onnxruntime-genai, after one warm-up each;
"× re-quantized RTN" is the median over rounds of each round's ratio to that row, so a slow moment of the shared
machine hits the rows alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import NamedTuple

from build_process import run_build
from decode_peers import prompt_ids, smollm2_gguf, time_genai

LOOSE_GATES = ["--max-kl", "2", "--min-top1", "0", "--max-ppl-ratio", "3"]


class Row(NamedTuple):
    name: str
    flags: tuple[str, ...]


ROWS = (
    Row("imported, fp32 compute (the default)", ()),
    Row("imported, int8 activations (--accuracy-level 4)", ("--accuracy-level", "4")),
    Row("re-quantized: the genai builder's RTN int4", ("--requantize", "--quant", "rtn")),
    Row("re-quantized: GPTQ int4 (the bundled recipe's method)", ("-r", "smollm2-135m-instruct", "--requantize")),
)
BASELINE = ROWS[2].name


def build(row: Row, folder: Path, gguf: Path) -> tuple[Path, dict]:
    from phiexport.pipeline import cache_root

    output = folder / ("_".join(flag.strip("-") for flag in row.flags) or "default")
    if (output / "cpu" / "report.json").is_file():  # built by an earlier run into --packages
        return output / "cpu", json.loads((output / "cpu" / "report.json").read_text())["metrics"]
    result, _, _ = run_build(
        [str(gguf), "--target", "cpu", *row.flags, *LOOSE_GATES, "-o", str(output), "--force"], cache_root()
    )
    return output / "cpu", result["metrics"]["cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="decode rounds; every speed is a median over them")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--packages", type=Path, help="build the packages into this folder (default: a temporary one)")
    args = parser.parse_args()
    import onnxruntime_genai as og

    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.packages or Path(scratch)
        built = {row.name: build(row, folder, gguf) for row in ROWS}
        models = {name: og.Model(str(package)) for name, (package, _) in built.items()}
        ids = prompt_ids(next(iter(models.values())))[64]
        for model in models.values():
            time_genai(model, ids, args.new_tokens)
        speeds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                speeds[name].append(time_genai(model, ids, args.new_tokens)[1])
        gguf_mb = gguf.stat().st_size / 1e6
        print(f"GGUF: {gguf.name}, {gguf_mb:.1f} MB\n")
        print(
            "| package | KL mean | KL max | top-1 | ppl ratio | size MB | × GGUF | decode tok/s | × re-quantized RTN |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, (package, metrics) in built.items():
            size = sum(path.stat().st_size for path in package.iterdir()) / 1e6
            ratios = [mine / base for mine, base in zip(speeds[name], speeds[BASELINE], strict=True)]
            cells = [
                name,
                f"{metrics['kl_mean']:.3g}",
                f"{metrics['kl_max']:.3g}",
                f"{100 * metrics['top1_agreement']:.2f} %",
                f"{metrics['ppl_ratio']:.4f}",
                f"{size:.1f}",
                f"{size / gguf_mb:.3f}",
                f"{statistics.median(speeds[name]):.1f}",
                f"{statistics.median(ratios):.2f}",
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
