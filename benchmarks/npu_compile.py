"""HTP compile time and context-binary size per graph of built NPU packages, each compile in its own process.

    .venv/bin/python benchmarks/npu_compile.py packages/smollm2-135m-instruct/npu /data/phi4-4-layers/npu

For each package and each of its body parts: the prefill and the decode graph compiled alone, then both into one
weight-sharing binary (what the package ships), for one SoC; wall time and peak RSS of each compile, bytes of the
binaries, and the QDQ graphs' own size and node count for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
from build_process import run_measured

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phiexport.export.body_parts import BODY_KINDS, described_parts

COMPILE = """
import sys
from pathlib import Path
from phiexport.targets.htp import compile_context_binary, compile_shared_context, soc
target, output, bodies = soc(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
if len(bodies) == 1:
    compile_context_binary(bodies[0], output / f"{bodies[0].stem}_ctx.onnx", target)
else:
    compile_shared_context(bodies, output, target)
"""


def body_facts(path: Path) -> tuple[int, int]:
    """(bytes of the graph and of the weights it reads, which a part's two graphs share in one file; nodes) of one
    QDQ body."""
    graph = onnx.load(path, load_external_data=False).graph
    weights = sum(
        int(entry.value) for tensor in graph.initializer for entry in tensor.external_data if entry.key == "length"
    )
    return path.stat().st_size + weights, len(graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", type=Path, nargs="+", help="NPU package folders (phiexport build --target npu)")
    parser.add_argument("--soc", default="x-elite")
    args = parser.parse_args()
    rows = []
    for package in args.packages:
        parts = described_parts(json.loads((package / "npu_pipeline.json").read_text())["parts"])
        runs = {}
        for part in parts:
            bodies = {kind: package / part.graph_file(kind) for kind in BODY_KINDS}
            runs[f"part {part.index}: prefill alone"] = [bodies["prefill"]]
            runs[f"part {part.index}: decode alone"] = [bodies["decode"]]
            runs[f"part {part.index}: prefill + decode, weights shared"] = list(bodies.values())
        for name, graphs in runs.items():
            with tempfile.TemporaryDirectory() as scratch:
                command = [sys.executable, "-c", COMPILE, args.soc, scratch, *map(str, graphs)]
                _, _, wall, peak_gb = run_measured(command)
                binary = sum(p.stat().st_size for p in Path(scratch).glob("*.bin"))
            facts = [body_facts(graph) for graph in graphs]
            qdq_mb = sum(size for size, _ in facts) / 1e6
            nodes = "+".join(str(count) for _, count in facts)
            rows.append((package, name, qdq_mb, nodes, wall, peak_gb, binary))
    print(f"| package | compile ({args.soc}) | QDQ body MB | nodes | wall s | peak RSS GiB | context binary MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for package, name, qdq_mb, nodes, wall, peak_gb, binary in rows:
        print(f"| {package} | {name} | {qdq_mb:.1f} | {nodes} | {wall:.1f} | {peak_gb:.2f} | {binary / 1e6:.1f} |")


if __name__ == "__main__":
    main()
