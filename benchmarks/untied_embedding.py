"""What an int4 untied token embedding costs: the CPU int4 package of the untied recipe miniatures (Phi-4, Phi-3.5),
with the embedding table in int4 blocks read by GatherBlockQuantized (the CPU target's default) and in fp32 (the
genai builder's own default), each scored by the build's check against torch on the same held-out sequences.

    .venv/bin/python benchmarks/untied_embedding.py /tmp/untied

The miniatures have random weights, so the figures compare the two tables, not models.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from phiexport.pipeline import build
from phiexport.recipe import load_recipe
from phiexport.targets import TARGETS
from tests.miniatures import make_recipe_miniature, on_miniature

UNTIED = ("phi-4", "phi-3.5-mini-instruct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scratch", type=Path, help="where the miniatures and packages go")
    parser.add_argument("--sequences", type=int, default=16, help="held-out sequences scored")
    args = parser.parse_args()
    cpu = TARGETS["cpu"]
    rows = []
    for name in UNTIED:
        model = args.scratch / name
        if not model.exists():
            make_recipe_miniature(load_recipe(name), model)
        for table, target in (("int4", cpu), ("fp32", replace(cpu, builder_options=()))):
            TARGETS["cpu"] = target
            recipe = on_miniature(
                load_recipe(name),
                model,
                quick=True,
                targets=["cpu"],
                quantization={"method": "rtn", "precision": "int4"},
                evaluation={"sequences": args.sequences, "greedy_prompts": 1, "greedy_tokens": 8},
            )
            package = build(recipe, args.scratch / f"{name}-{table}").packages["cpu"]
            metrics = json.loads((package / "report.json").read_text())["metrics"]
            size = sum(path.stat().st_size for path in package.glob("model.onnx*"))
            rows.append((name, table, metrics["kl_mean"], metrics["kl_p99"], metrics["top1_agreement"], size))
    TARGETS["cpu"] = cpu
    print("| miniature | embedding table | KL mean | KL p99 | top-1 | model.onnx + data MB |")
    print("|---|---|---:|---:|---:|---:|")
    for name, table, kl, p99, top1, size in rows:
        print(f"| {name} | {table} | {kl:.4f} | {p99:.4f} | {top1:.1%} | {size / 1e6:.1f} |")


if __name__ == "__main__":
    main()
