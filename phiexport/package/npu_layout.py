"""The NPU package's own files: npu_pipeline.json (shapes, body parts, context binaries) beside og's
genai_config.json. Everything that opens an NPU package (the runners, run, eval) reads them through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phiexport.export.body_parts import BodyPart
from phiexport.export.static_graphs import StaticLayout
from phiexport.package.genai_pipeline import genai_pipeline_config
from phiexport.recipe import Recipe
from phiexport.source.checkpoint import Checkpoint

PIPELINE_FILE = "npu_pipeline.json"
PIPELINE_SCHEMA = "phiexport.npu-pipeline/3"  # /3: a part's QDQ graphs share one weight file
SIMULATOR_DIR = "simulator"  # <soc>/simulator/: each body compiled on its own, what the x86 simulator loads
VOCAB_FILES = {"embeddings": "embeddings.onnx", "lm_head": "lm_head.onnx"}  # the CPU graphs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def is_npu_package(package_dir: Path) -> bool:
    return (package_dir / PIPELINE_FILE).is_file()


def read_pipeline(package_dir: Path) -> dict[str, Any]:
    """The package's npu_pipeline.json."""
    return dict(json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8")))


def write_pipeline_files(
    package_dir: Path,
    recipe: Recipe,
    checkpoint: Checkpoint,
    layout: StaticLayout,
    parts: list[BodyPart],
    contexts: dict[str, Any],
) -> None:
    """npu_pipeline.json (phiexport's runner reads it) and genai_config.json (onnxruntime-genai's decoder pipeline)."""
    rope = checkpoint.config.get("rope_parameters") or checkpoint.config.get("rope_scaling") or {}
    original = rope.get("original_max_position_embeddings") or checkpoint.config.get("original_max_position_embeddings")
    description = {
        "schema": PIPELINE_SCHEMA,
        "layout": layout.to_dict(),
        "graphs": VOCAB_FILES,
        "parts": [part.to_dict() for part in parts],
        "qdq_bodies": recipe.npu.qdq_bodies,  # whether the package ships the parts' QDQ graphs
        "contexts": contexts,
        "rope": (
            f"position p < {original} uses the short factors, p >= {original} the long ones"
            if original
            else "one rotary table for every position"
        ),
    }
    (package_dir / PIPELINE_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    config = genai_pipeline_config(checkpoint, layout, parts, contexts[recipe.npu.socs[0]])
    (package_dir / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
