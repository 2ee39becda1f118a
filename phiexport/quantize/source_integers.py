"""A pre-quantized source's integers (GGUF, GPTQ, AWQ) as phiexport imports them, and the account of what was
imported: which tensors, in which formats, at which compute type. quantize/imported.py writes them into the graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiexport.errors import UsageError
from phiexport.quantize.gguf_blocks import BlockWeight
from phiexport.recipe import QuantizationConfig
from phiexport.source.checkpoint import Checkpoint

INT8_ACTIVATIONS = 4  # MatMulNBits accuracy level that quantizes activations to int8
LM_HEAD = "lm_head"
EMBEDDING = "model.embed_tokens"


@dataclass(frozen=True)
class SourceIntegers:
    """A pre-quantized source's integer weights and the type of each of its 2-D tensors, by HF module name."""

    label: str  # "GGUF", "GPTQ", "AWQ"
    weights: dict[str, BlockWeight]
    formats: dict[str, str]
    tied: bool  # the LM head is the token embedding (one tensor in the source)

    @property
    def complete(self) -> bool:
        """True when every linear (LM head included) has integers to import: nothing is left to re-quantize."""
        return all(name in self.weights for name in self.formats if name != EMBEDDING)

    def describe(self, accuracy_level: int, rest: str) -> str:
        """The export stage's line, e.g. `the GGUF's own integers (Q4_1, Q8_0), int8-activation compute`; `rest`
        names how the linears without integers are quantized, when there are any."""
        kinds = ", ".join(sorted({self.formats[name] for name in self.weights if name in self.formats}))
        return f"the {self.label}'s own integers ({kinds}), {_compute(accuracy_level)}" + (
            "" if self.complete else f"; the rest {rest}"
        )

    def report(self, imported: set[str], accuracy_level: int, *, float_embedding: bool) -> dict[str, Any]:
        """The manifest's account: source tensors imported (by format), those re-quantized or kept in float
        (`float_embedding`: the package gathers an untied embedding from the builder's float table)."""
        counts: dict[str, int] = {}
        requantized, kept_float = {}, []
        for name, kind in sorted(self.formats.items()):
            if name == LM_HEAD and self.tied:
                continue  # the embedding's tensor
            if name in imported or (name == EMBEDDING and self.tied and LM_HEAD in imported):
                counts[kind] = counts.get(kind, 0) + 1
            elif name == EMBEDDING and float_embedding:
                kept_float.append(name)  # the builder's float table holds the dequantized values exactly
            else:
                requantized[name] = kind
        return {
            "source": self.label,
            "imported": counts,
            "requantized": requantized,
            "kept_float": kept_float,
            "accuracy_level": accuracy_level,
        }


def source_integers(checkpoint: Checkpoint, quant: QuantizationConfig) -> SourceIntegers | None:
    """The pre-quantized source's integers when the recipe imports them (an integer precision, no --requantize),
    else None.

    Rotation and a measured int4/int8 mix change the weights themselves, so they need --requantize; so does a GPTQ
    checkpoint whose inputs are grouped out of order (act-order), which MatMulNBits blocks cannot hold.
    """
    if checkpoint.prequantized is None or quant.requantize or not quant.is_integer:
        return None
    for asked, flag in ((quant.rotate, "--rotate"), (quant.mixed == "auto", "--mixed auto")):
        if asked:
            raise UsageError(
                f"{flag} changes the weights, so the source's integers cannot be imported as they are",
                f"add --requantize to quantize the dequantized weights again, or drop {flag}",
            )
    tied = bool(checkpoint.config.get("tie_word_embeddings", False))
    if checkpoint.kind == "gguf":
        from phiexport.source.gguf import gguf_linears

        weights, formats = gguf_linears(checkpoint.prequantized)
        return SourceIntegers("GGUF", weights, formats, tied and "lm_head" in weights)
    return _checkpoint_integers(checkpoint.prequantized, tied)


def _checkpoint_integers(directory: Path, tied: bool) -> SourceIntegers:
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file

    from phiexport.source import prequantized

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    quant = prequantized.quantization_config(config)
    assert quant is not None  # resolve_source set `prequantized` because of it
    label = str(quant["quant_method"]).upper()
    weights: dict[str, BlockWeight] = {}
    formats: dict[str, str] = {}
    for path in sorted(directory.glob("*.safetensors")):
        found, groups = prequantized.linear_weights(load_file(path), quant)
        for module, weight in found.items():
            if not prequantized.in_order(weight, groups[module]):
                raise UsageError(
                    f"{module} is act-order {label} (desc_act): its inputs are grouped out of order, which "
                    "MatMulNBits blocks cannot hold",
                    "add --requantize to quantize the dequantized weights again, or use a desc_act=false export",
                )
            weights[module] = weight
            formats[module] = f"{label} int{weight.bits} g{weight.block_size}"
        with safe_open(path, "np") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                if name in (f"{LM_HEAD}.weight", f"{EMBEDDING}.weight"):
                    formats[name.removesuffix(".weight")] = str(handle.get_slice(name).get_dtype())
    return SourceIntegers(label, weights, formats, tied)


def describe_import(report: dict[str, Any]) -> str:
    """One line for the model card, e.g. `the GGUF's own integers (Q4_1 × 210, Q8_0 × 1), int8-activation compute`."""
    formats = ", ".join(f"{kind} × {count}" for kind, count in sorted(report["imported"].items()))
    rest = f"; {len(report['requantized'])} tensors re-quantized" if report["requantized"] else ""
    return f"the {report['source']}'s own integers ({formats}), {_compute(report['accuracy_level'])}{rest}"


def _compute(accuracy_level: int) -> str:
    return "int8-activation compute" if accuracy_level == INT8_ACTIVATIONS else "fp32 compute (exact)"
