"""Build the embedded SmolLM2-135M-Instruct for the CPU, int4, three ways, and print wall time, peak RSS and size.

    .venv/bin/python benchmarks/build_peers.py [--olive-venv /path/to/venv]

1. `phiexport build --target cpu --quant rtn` (int4 RTN, block 32, accuracy level 4: the genai builder's default,
   so the three make the same weights), with its verification stage, and its export stage alone;
2. the onnxruntime-genai builder called directly on the same fp32 checkpoint;
3. Olive (`olive auto-opt --use_model_builder --use_ort_genai`, its int4 CPU path), from a separate venv: Olive 0.13
   needs onnxruntime-genai 0.14.1, which cannot live beside phiexport's 0.18. The row is skipped without one. It runs
   in the scratch folder: Olive caches its results in `.olive-cache/` under the working directory, and a second run
   would otherwise be a cache hit.

Each runs in its own process, one after the other in one run, so the times compare; peak RSS is that process's own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from build_process import BuildFailed, run_build, run_measured


def dequantized_smollm2(cache: Path) -> Path:
    """The fp32 HF directory phiexport makes from the embedded GGUF (what every row starts from)."""
    from phiexport.recipe import load_recipe
    from phiexport.source import resolve_source

    return resolve_source(load_recipe("smollm2-135m-instruct").source, cache).path


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--olive-venv", type=Path, help="a venv with olive-ai 0.13.0 and onnxruntime-genai 0.14.1")
    args = parser.parse_args()
    rows: list[tuple[str, str, float | None, float | None, float | None]] = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        checkpoint = dequantized_smollm2(scratch / "cache")

        result, wall, peak = run_build(
            [str(checkpoint), "-o", str(scratch / "phiexport"), "--target", "cpu", "--quant", "rtn"], scratch / "cache"
        )
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["timings_s"].items())
        rows.append(("phiexport build", f"stages s: {stages}", wall, peak, size_mb(scratch / "phiexport" / "cpu")))
        rows.append(("phiexport build: export stage alone", "", result["timings_s"]["export cpu"], None, None))

        builder = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint)]
        builder += ["-o", str(scratch / "builder"), "-p", "int4", "-e", "cpu", "-c", str(scratch / "builder-cache")]
        _, _, wall, peak = run_measured(builder)
        rows.append(("onnxruntime-genai builder 0.18", "", wall, peak, size_mb(scratch / "builder")))

        if args.olive_venv:
            olive = [str(args.olive_venv / "bin" / "olive"), "auto-opt", "--model_name_or_path", str(checkpoint)]
            olive += ["--device", "cpu", "--provider", "CPUExecutionProvider", "--precision", "int4"]
            olive += ["--use_model_builder", "--use_ort_genai", "--output_path", str(scratch / "olive")]
            try:
                _, _, wall, peak = run_measured(olive, cwd=scratch)
                rows.append(("Olive 0.13 auto-opt", "", wall, peak, size_mb(scratch / "olive")))
            except BuildFailed as failure:
                rows.append(("Olive 0.13 auto-opt", f"failed: {failure}", None, None, None))
        else:
            rows.append(("Olive 0.13 auto-opt", "skipped: no --olive-venv", None, None, None))

    base = rows[0][2]
    print("| build | wall s | × phiexport | peak RSS GiB | package MB | note |\n|---|---:|---:|---:|---:|---|")
    for name, note, wall, peak, size in rows:
        ratio = f"{wall / base:.2f}" if wall and base else ""
        print(f"| {name} | {_cell(wall, 1)} | {ratio} | {_cell(peak, 2)} | {_cell(size, 1)} | {note} |")


def _cell(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
