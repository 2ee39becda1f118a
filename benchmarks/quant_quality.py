"""Weight quantization methods against the genai builder's default int4, per block size and model: bits per weight,
package size, perplexity, KL, top-1, build time and peak memory, printed as a Markdown table.

    python benchmarks/quant_quality.py            # SmolLM2 and the miniature Phi-4-mini, 200 sequences
    python benchmarks/quant_quality.py --models smollm2 --blocks 32 --methods "gptq=--quant gptq"

Each package is built by `phiexport build --target cpu` in its own process (peak RSS is that process's own, from
os.wait4; build time leaves out the build's own short check). All packages of one model are then scored in one pass
against one torch fp32 reference on the same held-out GSM8K test sequences, so the rows differ only in their weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from build_process import BuildFailed, run_build

REPO = Path(__file__).resolve().parents[1]
# row label → build flags; the first row is the baseline every other row is compared with
METHODS = {
    "builder default int4 (baseline)": "--quant rtn",
    "rtn asym": "--quant rtn --asymmetric",
    "k_quant": "--quant k_quant",
    "awq": "--quant awq",
    "gptq": "--quant gptq",
    "gptq + mixed auto (4.5 bits)": "--quant gptq --mixed auto",
}


def build(source: str, flags: str, output: Path, cache: Path) -> dict:
    arguments = [source, "-o", str(output), "--target", "cpu", *flags.split(), "--eval-sequences", "1"]
    result, wall, peak_rss_gb = run_build(arguments, cache)
    package = Path(result["packages"]["cpu"])
    return {
        "package": package,
        "build_s": wall - result["timings_s"].get("verify", 0.0),
        "peak_rss_gb": peak_rss_gb,
        "bytes": sum(path.stat().st_size for path in package.iterdir()),
        "bits_per_weight": bits_per_weight(package / "model.onnx"),
    }


def bits_per_weight(model_path: Path) -> float:
    """Stored bits (codes, scales, zero points) per weight over every MatMulNBits node."""
    import onnx

    model = onnx.load(str(model_path))
    sizes = {tensor.name: len(tensor.raw_data) for tensor in model.graph.initializer}
    stored = weights = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {attribute.name: attribute.i for attribute in node.attribute}
            weights += attrs["K"] * attrs["N"]
            stored += sum(sizes.get(name, 0) for name in node.input[1:])
    return 8 * stored / weights


def model_sources(names: list[str], scratch: Path) -> dict[str, str]:
    sources = {}
    if "smollm2" in names:
        from phiexport.recipe import load_recipe

        sources["SmolLM2-135M"] = load_recipe("smollm2-135m-instruct").source.model
    if "mini-phi4" in names:
        sys.path.insert(0, str(REPO))
        from tests.miniatures import make_phi4_mini

        directory = scratch / "mini-phi4"
        directory.mkdir()
        sources["miniature Phi-4-mini"] = str(make_phi4_mini(directory))
    return sources


def checkpoint_dir(source: str, cache: Path) -> Path:
    from phiexport.recipe import SourceConfig
    from phiexport.source import resolve_source

    return resolve_source(SourceConfig(model=source), cache).path


def score(checkpoint: Path, packages: dict[str, Path], sequences: int) -> dict[str, dict]:
    from phiexport.evaluate.verify import verify_packages
    from phiexport.recipe import EvaluationConfig

    evaluation = EvaluationConfig(sequences=sequences, greedy_prompts=0)
    reports = verify_packages(
        checkpoint, packages, evaluation, trust_remote_code=False, track=lambda items, total, label: items
    )
    return {name: report["metrics"] for name, report in reports.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "mini-phi4"], choices=["smollm2", "mini-phi4"])
    parser.add_argument("--blocks", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--methods", nargs="+", help='rows as "label=flags" (default: the METHODS table)')
    parser.add_argument("--sequences", type=int, default=200, help="held-out GSM8K test sequences scored")
    args = parser.parse_args()
    methods = dict(item.split("=", 1) for item in args.methods) if args.methods else METHODS

    print(
        "| model | method | block | bits/weight | package MB | ppl (ref) | KL mean | KL p99 | top-1 | "
        "KL vs baseline | build s | peak RSS GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="quant-quality-") as scratch_name:
        scratch = Path(scratch_name)
        cache = scratch / "cache"
        for model, source in model_sources(args.models, scratch).items():
            checkpoint = checkpoint_dir(source, cache)  # a GGUF is dequantized here, outside every timed build
            for block in args.blocks:
                built, refused = {}, {}
                for index, (label, flags) in enumerate(methods.items()):
                    output = scratch / f"{index}-{block}-{model.replace(' ', '_')}"
                    try:
                        built[label] = build(source, f"{flags} --block-size {block}", output, cache)
                    except BuildFailed as failure:  # a combination the tool refuses is a result too
                        refused[label] = str(failure)
                metrics = score(
                    checkpoint,
                    {label: row["package"] for label, row in built.items()},
                    args.sequences,
                )
                baseline = metrics[next(iter(methods))]["kl_mean"]
                for label, row in built.items():
                    found = metrics[label]
                    print(
                        f"| {model} | {label} | {block} | {row['bits_per_weight']:.2f} | {row['bytes'] / 1e6:.1f} | "
                        f"{found['ppl_package']:.3f} ({found['ppl_reference']:.3f}) | {found['kl_mean']:.4f} | "
                        f"{found['kl_p99']:.3f} | {100 * found['top1_agreement']:.2f}% | "
                        f"{found['kl_mean'] / baseline:.2f}× | {row['build_s']:.0f} | {row['peak_rss_gb']:.2f} |",
                        flush=True,
                    )
                for label, reason in refused.items():
                    print(f"| {model} | {label} | {block} | refused: {reason} |" + " |" * 8, flush=True)
                print(f"<!-- {model} block {block}: {found['tokens']} tokens scored -->", flush=True)


if __name__ == "__main__":
    main()
