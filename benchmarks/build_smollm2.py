"""Build the embedded SmolLM2-135M-Instruct for the CPU in several weight variants; print time, memory, size and
accuracy against the fp32 reference as a Markdown table.

    python benchmarks/build_smollm2.py                                  # the default variants below
    python benchmarks/build_smollm2.py --sequences 200 -- "" "--block-size 128 --rotate"

Each build runs `phiexport build` in its own process (cold start, as a user runs it); peak RSS is that
process's own (os.wait4).
The first build also dequantizes the GGUF into an empty cache, so its time includes the ~20 s GGUF load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from build_process import run_build

VARIANTS = [
    "",  # the bundled recipe's CPU package: int4 RTN, block 32, symmetric
    "--asymmetric",
    "--quant k_quant",
    "--block-size 128",
    "--rotate",
    "--block-size 128 --rotate",
    "--precision int8",
    "--precision fp32",
]


def build(flags: str, sequences: int, output: Path, cache: Path) -> dict:
    arguments = ["-o", str(output), "--target", "cpu", *flags.split(), "--eval-sequences", str(sequences)]
    result, wall, peak_rss_gb = run_build(arguments, cache)
    package = Path(result["packages"]["cpu"])
    manifest = json.loads((package / "manifest.json").read_text())
    return {
        "variant": manifest["recipe"]["quantization"],
        "wall_s": wall,
        "peak_rss_gb": peak_rss_gb,
        "timings": result["timings_s"],
        "bytes": sum(p.stat().st_size for p in package.iterdir()),
        "metrics": result["metrics"]["cpu"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=VARIANTS, help="extra `phiexport build` flags per row, after --")
    parser.add_argument("--sequences", type=int, default=32, help="held-out GSM8K sequences scored per package")
    parser.add_argument("--save", type=Path, help="also write the raw rows as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, flags in enumerate(args.variants):
            rows.append(build(flags, args.sequences, Path(scratch) / str(index), Path(scratch) / "cache"))
            if args.save:
                args.save.write_text(json.dumps(rows, indent=2))
    print(
        "| weights | wall s | source s | export s | verify s | peak RSS GB | package MB | ppl ref | ppl pkg "
        "| KL mean | KL p99 | top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        m, t = row["metrics"], row["timings"]
        print(
            f"| {_label(row['variant'])} | {row['wall_s']:.1f} | {t['source']:.1f} | {t['export cpu']:.1f} "
            f"| {t['verify']:.1f} | {row['peak_rss_gb']:.2f} | {row['bytes'] / 1e6:.1f} | {m['ppl_reference']:.3f} "
            f"| {m['ppl_package']:.3f} | {m['kl_mean']:.4f} | {m['kl_p99']:.4f} | {m['top1_agreement']:.2%} |"
        )
    print(f"\n{rows[0]['metrics']['tokens']} scored tokens over {args.sequences} GSM8K test problems.")


def _label(quantization: dict) -> str:
    if quantization["precision"] not in ("int4", "int8"):
        return quantization["precision"] + (" + rotation" if quantization.get("rotate") else "")
    zero_points = quantization["method"] == "k_quant" or quantization["symmetric"] is False
    label = f"{quantization['precision']} {quantization['method']} b{quantization['block_size']} "
    return label + ("asym" if zero_points else "sym") + (" + rotation" if quantization.get("rotate") else "")


if __name__ == "__main__":
    main()
