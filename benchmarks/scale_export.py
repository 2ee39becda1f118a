"""Export a full-size checkpoint to a CPU int4 package two ways, in one run: the onnxruntime-genai builder as it
ships, and phiexport's export stage (the same builder with streamed weight quantization). Prints wall time, peak
RSS against the checkpoint's size on disk, and whether the two weight files are byte-identical.

    .venv/bin/python benchmarks/full_size_checkpoint.py phi-4-mini-instruct /data/phi4-mini-shape
    .venv/bin/python benchmarks/scale_export.py /data/phi4-mini-shape

The builder alone needs about 3 × the checkpoint in memory (22.7 GiB for the Phi-4-mini shape on a 23.5 GiB
machine): pass --skip-builder where that does not fit.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from build_process import run_measured

OPTIONS = {"block_size": "32", "is_symmetric": "true", "accuracy_level": "4"}

BUILDER_ALONE = """
import os, sys
from onnxruntime_genai.models.builder import create_model, parse_extra_options
args = ("", sys.argv[1], sys.argv[2], "int4", "cpu", sys.argv[2] + "-cache")
create_model(*args, **parse_extra_options(*args, sys.argv[3:]))
"""

PHIEXPORT_EXPORT = """
import sys
from pathlib import Path
from phiexport.export.genai_builder import export_with_builder
options = dict(pair.split("=", 1) for pair in sys.argv[3:])
output = Path(sys.argv[2])
export_with_builder(Path(sys.argv[1]), output, precision="int4", execution_provider="cpu", options=options,
                    cache_dir=output.with_name(output.name + "-cache"), log_path=output.with_name("export.log"))
"""


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 24):
            sha.update(block)
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--skip-builder", action="store_true", help="only phiexport's export (the builder's needs ~3×)")
    parser.add_argument("--scratch", type=Path, help="where the packages go (default: a temporary folder)")
    args = parser.parse_args()
    size = sum(p.stat().st_size for p in args.checkpoint.glob("*.safetensors"))
    pairs = [f"{key}={value}" for key, value in sorted(OPTIONS.items())]
    runs = {"phiexport export (streamed)": PHIEXPORT_EXPORT}
    if not args.skip_builder:
        runs = {"onnxruntime-genai builder alone": BUILDER_ALONE, **runs}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for index, (name, program) in enumerate(runs.items()):
            output = Path(scratch) / f"package-{index}"
            command = [sys.executable, "-c", program, str(args.checkpoint), str(output), *pairs]
            _, _, wall, peak_gb = run_measured(command)
            rows.append((name, wall, peak_gb, digest(output / "model.onnx.data")))
    base = rows[0][1]
    print(f"checkpoint {args.checkpoint}: {size / 1e9:.2f} GB of safetensors\n")
    print("| export, cpu int4 block 32 | wall s | × first | peak RSS GiB | ÷ checkpoint | model.onnx.data sha256 |")
    print("|---|---:|---:|---:|---:|---|")
    for name, wall, peak_gb, sha in rows:
        ratio = peak_gb * 2**30 / size
        print(f"| {name} | {wall:.1f} | {wall / base:.2f} | {peak_gb:.2f} | {ratio:.2f} | {sha[:16]}… |")


if __name__ == "__main__":
    main()
