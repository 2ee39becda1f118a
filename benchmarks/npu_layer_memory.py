"""Resident memory of the NPU build's layer loop alone (export, calibrate, QDQ-quantize a decoder layer at a time, the
body stitched at the end), sampled every 0.1 s, on a full-size random checkpoint.

    .venv/bin/python benchmarks/full_size_checkpoint.py phi-4-mini-instruct /data/mini-l8 --layers 8
    .venv/bin/python benchmarks/npu_layer_memory.py /data/mini-l8
    .venv/bin/python benchmarks/npu_layer_memory.py /data/mini-l8 --keep-freed

Prints, after each layer, the anonymous resident memory and the peak so far (GiB). `--keep-freed` leaves what each
layer freed with the allocator, as the build did before it called `release_freed_memory` after every layer.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import phiexport.targets.npu.layers as layers
from phiexport.export.body_parts import plan_parts
from phiexport.export.static_graphs import StaticLayout, rotary_tables
from phiexport.pipeline import cache_root
from phiexport.quantize.prepare import calibration_text
from phiexport.recipe import Recipe
from phiexport.source import resolve_source
from phiexport.source.layered import LayeredModel
from phiexport.targets.npu.build import layer_calibration


def anonymous_gib() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        return int(next(line for line in status if line.startswith("RssAnon:")).split()[1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--keep-freed", action="store_true", help="do not release freed memory after each layer")
    args = parser.parse_args()
    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], anonymous_gib())
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    if args.keep_freed:
        layers.release_freed_memory = lambda: None  # type: ignore[assignment]
    recipe = Recipe.model_validate({"version": 1, "name": "memory", "source": {"model": str(args.checkpoint)}})
    checkpoint = resolve_source(recipe.source, cache_root())
    layout = StaticLayout.from_config(checkpoint.config, context=recipe.npu.context_length, chunk=recipe.npu.chunk)
    sequences = calibration_text(checkpoint, recipe, max_tokens=layout.context)
    source = LayeredModel(checkpoint.path, rotation_seed=recipe.quantization.rotation_seed)
    cos, sin = (table.numpy() for table in rotary_tables(source.model, layout.context))
    activations = layer_calibration(source, layout, sequences, recipe, cos, sin)
    print("| after layer | resident GiB | peak GiB |\n| --- | --- | --- |")
    print(f"| (start) | {anonymous_gib():.2f} | {peak[0]:.2f} |", flush=True)

    def track(items: Iterable[Any], _total: int, _description: str) -> Iterator[Any]:
        for index, item in enumerate(items):
            yield item
            print(f"| {index} | {anonymous_gib():.2f} | {peak[0]:.2f} |", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        layers.quantize_layers(
            source,
            layout,
            activations,
            lambda _index, _layer: {},
            plan_parts(1, layout.layers, parts=1, budget=1),
            Path(scratch) / "layers",
            Path(scratch),
            weight_bits=4,
            block_size=recipe.quantization.block_size,
            track=track,
        )


if __name__ == "__main__":
    main()
