"""fp32 packages against torch: the largest logit difference for every supported architecture's miniature, below
and above the original RoPE context (LongRoPE models switch to their long factors there).

    python benchmarks/fp32_parity.py

Miniatures come from tests/miniatures.py (real structure, random weights from a fixed seed).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import TorchReference
from phiexport.pipeline import build
from phiexport.recipe import recipe_for_source
from tests.miniatures import MINIATURES


def main() -> None:
    print("| architecture | tokens | past original context | max abs logit error | logit scale |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for model_type, make in sorted(MINIATURES.items()):
            model_dir = make(Path(scratch) / model_type)
            recipe = recipe_for_source(str(model_dir)).with_overrides(
                {"quantization": {"precision": "fp32"}, "evaluation": {"sequences": 2, "greedy_prompts": 0}}
            )
            package = build(recipe, Path(scratch) / f"{model_type}-out").packages["cpu"]
            config = json.loads((model_dir / "config.json").read_text())
            original = config.get("original_max_position_embeddings")
            runner, reference = PackageRunner(package), TorchReference(model_dir)
            for length in (40, 150, 300):
                ids = np.random.default_rng(length).integers(10, config["vocab_size"], size=length).tolist()
                expected = reference.logits(ids)
                error = np.abs(runner.logits(ids) - expected).max()
                past = "n/a" if original is None else ("yes" if length > original else "no")
                print(f"| {model_type} | {length} | {past} | {error:.2e} | {np.abs(expected).max():.2f} |")


if __name__ == "__main__":
    main()
