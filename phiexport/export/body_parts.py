"""The NPU body cut into parts: consecutive ranges of decoder layers, each its own prefill and decode graph pair,
compiled into its own weight-sharing context binary and run as its own pair of onnxruntime-genai pipeline stages.

One context binary for the whole body is what made the HTP compile of a 3.8 B model peak at 16 GiB, and the HTP
maps a context into a 32-bit address space (docs/npu.md), so larger models are cut: part k reads the residual stream
`hidden.<first>` that part k−1 wrote (og hands a stage's outputs to the later stages that name them) and its own
layers' caches. `plan_parts(layer_bytes, layers, parts="auto", budget=...)` picks the cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from phiexport.errors import UsageError
from phiexport.export.static_graphs import StaticLayout, body_input_names, body_output_names

BODY_KINDS = ("prefill", "decode")


@dataclass(frozen=True)
class BodyPart:
    """Decoder layers `first` … `stop − 1` of the body."""

    index: int
    first: int
    stop: int

    @property
    def layers(self) -> range:
        return range(self.first, self.stop)

    def graph_file(self, kind: str) -> str:
        """The QDQ graph's file name (`kind`: prefill or decode)."""
        return f"body{self.index}_{kind}.onnx"

    @property
    def data_file(self) -> str:
        """The weights of the part's prefill and decode graphs, one copy for both (export/stitch.py)."""
        return f"body{self.index}.onnx.data"

    def stage(self, kind: str) -> str:
        """The og pipeline stage running this part's `kind` graph."""
        return f"{kind}_{self.index}"

    def input_names(self, layout: StaticLayout) -> list[str]:
        return body_input_names(layout, self.layers)

    def output_names(self, layout: StaticLayout) -> list[str]:
        return body_output_names(layout, self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [self.first, self.stop],
            **{kind: self.graph_file(kind) for kind in BODY_KINDS},
            "data": self.data_file,
        }


def described_parts(records: list[dict[str, Any]]) -> list[BodyPart]:
    """The parts a package's npu_pipeline.json (`parts`) or manifest records, in order."""
    return [BodyPart(index, *record["layers"]) for index, record in enumerate(records)]


def layer_weight_bytes(config: dict[str, Any], *, weight_bits: int, block_size: int) -> int:
    """Bytes one decoder layer's linear weights take in a context binary: `weight_bits` per weight and an fp32
    scale per block of `block_size` (norms are a few KB and left out)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    weights = hidden * (heads * head_dim + 2 * kv) + heads * head_dim * hidden + 3 * hidden * inter
    return weights * weight_bits // 8 + weights // block_size * 4


def plan_parts(layer_bytes: int, layers: int, *, parts: int | Literal["auto"], budget: int) -> list[BodyPart]:
    """`layers` decoder layers cut into `parts` consecutive ranges whose sizes differ by at most one layer; `auto`
    takes the fewest parts whose weights each fit `budget` bytes."""
    if parts != "auto" and parts > layers:
        raise UsageError(
            f"--parts {parts} cuts more parts than the model has decoder layers ({layers})", f"choose 1 to {layers}"
        )
    per_part = max(1, budget // layer_bytes)  # whole layers: a layer is never cut
    count = math.ceil(layers / per_part) if parts == "auto" else parts
    bounds = [layers * index // count for index in range(count + 1)]
    return [BodyPart(index, bounds[index], bounds[index + 1]) for index in range(count)]
