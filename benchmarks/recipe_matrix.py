"""Every bundled recipe × every target, built on a miniature of the model it describes: built or not (and why), build
seconds per target, package size, KL against torch, and how exactly the fp32 export matches torch.

    python benchmarks/recipe_matrix.py [--recipes NAME ...] [--full]

Miniatures come from each recipe's recorded structure (tests/miniatures.py: 2 layers, real head_dim, rope, tying;
random weights from a fixed seed). By default the suite's quick check settings are used (8 calibration and 4 scored
sequences); `--full` keeps the recipe's own. Seconds per target: the stages only that target runs (export, or the
NPU's export/calibrate/quantize/compile/simulator); `shared s` is what all targets share (GPTQ, the check).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phiexport.errors import PhiexportError
from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import TorchReference
from phiexport.pipeline import build
from phiexport.recipe import bundled_recipes, load_recipe
from tests.miniatures import VOCAB, make_recipe_miniature, on_miniature

TARGETS = ("cpu", "dml", "npu")


def fp32_error(name: str, model_dir: Path, scratch: Path) -> float:
    recipe = on_miniature(load_recipe(name), model_dir, quick=True, targets=["cpu"], quantization={"precision": "fp32"})
    package = build(recipe, scratch / "fp32").packages["cpu"]
    tokens = np.random.default_rng(0).integers(10, VOCAB, size=150).tolist()
    return float(np.abs(PackageRunner(package).logits(tokens) - TorchReference(model_dir).logits(tokens)).max())


def target_seconds(timings: dict[str, float], target: str) -> float:
    if target == "npu":
        return sum(seconds for stage, seconds in timings.items() if stage.startswith("npu "))
    return timings.get(f"export {target}", 0.0)


def size_mib(package: Path) -> float:
    return sum(path.stat().st_size for path in package.rglob("*") if path.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", default=bundled_recipes())
    parser.add_argument("--full", action="store_true", help="the recipes' own calibration and check sizes")
    args = parser.parse_args()
    print(
        "| recipe | miniature (layers × hidden, heads/KV × head_dim) | target | built | s | shared s | MiB | KL "
        "| top-1 | fp32 max abs Δlogit |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.recipes:
        with tempfile.TemporaryDirectory() as scratch_name:
            scratch = Path(scratch_name)
            recipe = load_recipe(name)
            model_dir = make_recipe_miniature(recipe, scratch / "model")
            config = json.loads((model_dir / "config.json").read_text())
            shape = (
                f"{config['num_hidden_layers']} × {config['hidden_size']}, {config['num_attention_heads']}/"
                f"{config['num_key_value_heads']} × {config['head_dim']}"
            )
            error = f"{fp32_error(name, model_dir, scratch):.1e}"
            start = time.perf_counter()
            try:
                result = build(
                    on_miniature(recipe, model_dir, quick=not args.full, targets=list(TARGETS)), scratch / "out"
                )
            except PhiexportError as failure:
                for target in TARGETS:
                    print(f"| {name} | {shape} | {target} | no: {failure.cause} | | | | | | {error} |")
                continue
            total = time.perf_counter() - start
            shared = total - sum(target_seconds(result.timings, target) for target in TARGETS)
            for target in TARGETS:
                metrics = result.reports[target]["metrics"]
                seconds = target_seconds(result.timings, target)
                print(
                    f"| {name} | {shape} | {target} | yes | {seconds:.1f} | {shared:.1f} "
                    f"| {size_mib(result.packages[target]):.1f} | {metrics['kl_mean']:.4f} "
                    f"| {metrics['top1_agreement']:.1%} | {error} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
