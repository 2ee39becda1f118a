"""The one typed description of a build: what to load, how to quantize, which devices, how to verify.

A Recipe comes from a YAML file in `recipes/`, from CLI flags, or from Python; all three go through
`Recipe.model_validate`, so an unknown key or an impossible combination fails the same way everywhere:

    >>> recipe = load_recipe("smollm2-135m-instruct").with_overrides({"quantization": {"block_size": 64}})
    >>> recipe.quantization.block_size
    64
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phiexport.errors import UsageError
from phiexport.resources import data_dir

RECIPE_VERSION = 1
BLOCK_SIZES = (16, 32, 64, 128, 256)
Precision = Literal["int4", "int8", "fp16", "fp32"]
INTEGER_PRECISIONS = ("int4", "int8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where the checkpoint comes from."""

    model: str = Field(min_length=1, description="Local HF directory, .gguf file, Hub id, or package:MODULE/FILE")
    revision: str | None = Field(None, description="Hub branch, tag or commit (Hub ids only)")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin/.pt) weights, loaded weights-only")
    trust_remote_code: bool = Field(False, description="Allow the checkpoint's own Python code (auto_map)")


CALIBRATED_METHODS = ("gptq", "awq")


class QuantizationConfig(_Strict):
    """Weight-only quantization. int4/int8 become MatMulNBits; fp32 keeps float weights.

    rtn and k_quant round each weight on its own (the genai builder's quantizers); gptq and awq are calibrated on
    `calibration:` text, one decoder layer at a time (phiexport.quantize.layerwise). fp32 ignores the method.
    """

    precision: Precision = "int4"
    method: Literal["rtn", "k_quant", "gptq", "awq"] = "rtn"
    block_size: int = 32
    symmetric: bool | None = Field(None, description="symmetric unless false; k_quant always has zero points")
    mixed: Literal["off", "auto"] = Field(
        "off", description="auto: keep the linears whose rounding costs the most KL at int8, within mixed_bits"
    )
    mixed_bits: float = Field(4.5, ge=4.0, le=8.0, description="Budget of `mixed: auto`: mean bits per weight")
    accuracy_level: int | None = Field(
        None,
        ge=0,
        le=4,
        description="MatMulNBits compute type: 0 default, 1 fp32 … 4 int8 activations. Unset: 4 (a GGUF's imported "
        "integers too: llama.cpp's own arithmetic), and 1 for integers imported from a GPTQ/AWQ source, which then "
        "compute exactly what the source does",
    )
    requantize: bool = Field(
        False, description="GGUF/GPTQ/AWQ source: quantize its dequantized weights again, not import its integers"
    )
    rotate: bool = Field(False, description="Fold a randomized Hadamard rotation of the residual stream in first")
    rotation_seed: int = Field(0, ge=0, description="Seed of the rotation's random signs")

    @field_validator("block_size")
    @classmethod
    def _block_size_supported(cls, value: int) -> int:
        if value not in BLOCK_SIZES:
            raise ValueError(
                f"{value} is not a MatMulNBits block size; choose one of {', '.join(map(str, BLOCK_SIZES))}"
            )
        return value

    @model_validator(mode="after")
    def _method_fits_symmetry(self) -> QuantizationConfig:
        if self.method == "k_quant" and self.symmetric:
            raise ValueError("k_quant always stores zero points; use method rtn for symmetric weights")
        if self.mixed == "auto" and self.precision != "int4":
            raise ValueError("mixed auto keeps some int4 linears at int8; set precision int4")
        return self

    @property
    def calibrated(self) -> bool:
        """True when integer weights are computed on calibration text (gptq, awq, or a measured int4/int8 mix);
        float precisions keep their weights whatever the method."""
        return self.is_integer and (self.method in CALIBRATED_METHODS or self.mixed == "auto")

    def compute_level(self, *, imported_from: str | None = None) -> int:
        """The MatMulNBits accuracy level of re-quantized weights, or of integers imported from a source of that
        label. A GGUF's compute with int8 activations, as llama.cpp does (KL to its fp32 dequantization at or below
        llama.cpp's own, BENCHMARKS.md); GPTQ's and AWQ's in fp32, as their runtimes do (`--accuracy-level 1` makes
        a GGUF's exact too)."""
        if self.accuracy_level is not None:
            return self.accuracy_level
        return 1 if imported_from in ("GPTQ", "AWQ") else 4

    @property
    def is_integer(self) -> bool:
        return self.precision in INTEGER_PRECISIONS

    @property
    def zero_points(self) -> bool:
        """True when blocks carry zero points (asymmetric rtn, and k_quant always)."""
        return self.method == "k_quant" or self.symmetric is False

    def describe(self) -> str:
        """Short human label, e.g. `int4 rtn block 32 sym`."""
        rotation = " + hadamard rotation" if self.rotate else ""
        if not self.is_integer:
            return f"{self.precision} (weights not quantized){rotation}"
        symmetry = "asym" if self.zero_points else "sym"
        mixed = f" + int8 mix within {self.mixed_bits:g} bits" if self.mixed == "auto" else ""
        return f"{self.precision} {self.method} block {self.block_size} {symmetry}{rotation}{mixed}"


class EvaluationConfig(_Strict):
    """How packages are checked against the torch reference: by every build, and by `phiexport eval` (which also
    answers GSM8K problems: `problems`, `problem_seed`, `answer_tokens`)."""

    sequences: int = Field(32, ge=1, le=1319, description="Held-out GSM8K test problems, teacher-forced")
    max_tokens: int = Field(320, ge=32, le=4096, description="Each sequence is cut to this many tokens")
    greedy_prompts: int = Field(3, ge=0, le=32, description="Prompts generated greedily by both models")
    greedy_tokens: int = Field(32, ge=1, le=512, description="New tokens per greedy prompt")
    problems: int = Field(100, ge=0, le=1319, description="eval: GSM8K test problems answered greedily (0: none)")
    problem_seed: int | None = Field(None, ge=0, description="eval: draw the problems with this seed (else file order)")
    simulator_problems: int = Field(
        0, ge=0, le=1319, description="eval: of those, answered on the HTP simulator too (~5 s per token)"
    )
    answer_tokens: int = Field(
        256, ge=16, le=32768, description="eval: new-token budget per answer (reasoning models think first: raise it)"
    )


class CalibrationConfig(_Strict):
    """Text that calibrated quantization sees: bundled GSM8K train conversations, chat-formatted."""

    sequences: int = Field(64, ge=1, le=1024, description="Conversations drawn from calibration/")
    max_tokens: int = Field(512, ge=16, le=8192, description="Each conversation is cut to this many tokens")
    seed: int = Field(0, ge=0, description="Seed of the draw (same seed, same package)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where GPTQ/AWQ, mixed: auto's scoring, the NPU's activation calibration and the reference of "
        "verify/eval run: auto = a CUDA GPU when torch sees one, else the CPU",
    )


class GatesConfig(_Strict):
    """Limits a package must meet to be published as good (phiexport.evaluate.gates); null turns one off.

    The defaults catch a broken package (scrambled scales, 2-bit weights: KL of several nats) and let any working
    int4 package through; recipes for known models set tighter ones.
    """

    max_kl: float | None = Field(1.0, gt=0, description="Largest mean KL(reference ‖ package)")
    min_top1: float | None = Field(None, ge=0, le=1, description="Smallest top-1 agreement with the reference")
    max_ppl_ratio: float | None = Field(2.0, ge=1, description="Largest perplexity ratio package / reference")
    min_answer_agreement: float | None = Field(
        None, ge=0, le=1, description="Smallest share of GSM8K final answers equal to the reference's"
    )


class NpuConfig(_Strict):
    """Shape of the static NPU pipeline (Phi Silica-style) and the SoCs it is compiled for."""

    socs: tuple[str, ...] = Field(("x-elite",), min_length=1, description="SoCs to compile context binaries for")
    context_length: int = Field(512, ge=2, le=131072, description="KV cache slots: the longest sequence it runs")
    chunk: int = Field(64, ge=2, le=1024, description="Prompt tokens per prefill step")
    parts: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Context binaries the body is cut into (consecutive decoder layers each); auto: the fewest "
        "whose weights each fit part_budget_mib",
    )
    part_budget_mib: int = Field(
        512,
        ge=16,
        le=4096,
        description="Weight budget of one context binary for parts: auto (Qualcomm's published LLM parts hold "
        "0.5-1 GB; docs/npu.md)",
    )
    rotate: bool = Field(True, description="Fold a Hadamard rotation into the weights before quantizing")
    activation_sequences: int = Field(
        16, ge=1, le=1024, description="Calibration conversations recorded for the activation ranges (the first N)"
    )
    decode_samples: int = Field(2, ge=0, le=64, description="Decode-graph calibration points per conversation")
    lm_head_bits: Literal[4, 8] = Field(8, description="Bits of the CPU-side LM head (block 32)")
    simulator_decode_tokens: int = Field(4, ge=0, le=256, description="Decode steps of the build's HTP simulator check")
    simulator_binaries: bool = Field(
        False,
        description="Also ship each body compiled on its own for the first SoC (<soc>/simulator/): the x86 HTP "
        "simulator runs those, not the weight-sharing pair",
    )
    qdq_bodies: bool = Field(
        False,
        description="Also ship the QDQ body graphs (body<k>_*.onnx), which the CPU EP runs (run/eval --device cpu) "
        "and other SoCs' binaries compile from; a device loads only the context binaries",
    )

    @field_validator("socs")
    @classmethod
    def _socs_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from phiexport.targets.htp import SOCS, find_soc

        names = []
        for name in value:
            found = find_soc(name)
            if found is None:
                raise ValueError(f"unknown SoC {name!r}; choose one of {', '.join(SOCS)}")
            names.append(found.name)
        if len(set(names)) != len(names):
            raise ValueError("a SoC is listed twice; list each once")
        return tuple(names)

    @model_validator(mode="after")
    def _context_holds_chunks(self) -> NpuConfig:
        if self.context_length % self.chunk:
            raise ValueError(
                f"context_length {self.context_length} is not a multiple of chunk {self.chunk}; "
                f"choose a multiple of {self.chunk}, e.g. {-(-self.context_length // self.chunk) * self.chunk}"
            )
        return self


class RopeStructure(_Strict):
    """Rotary position embedding as the published config defines it."""

    type: Literal["default", "llama3", "longrope"] = "default"
    theta: float = Field(gt=0)
    partial_rotary: float = Field(1.0, gt=0, le=1, description="Share of head_dim that is rotated")
    original_context: int | None = Field(None, ge=1, description="llama3/longrope: context the factors start from")
    factor: float | None = Field(None, gt=0, description="llama3: frequency scale")
    low_freq_factor: float | None = Field(None, gt=0, description="llama3")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3")
    short_factor: tuple[float, ...] | None = Field(None, description="longrope: per-frequency factors within context")
    long_factor: tuple[float, ...] | None = Field(None, description="longrope: per-frequency factors beyond it")


class StructureConfig(_Strict):
    """The real model's structure, copied from its published config.json (`source`).

    Miniature test models are generated from it (same head_dim, rope and tying; fewer layers, narrower, smaller
    vocabulary), and a build checks the checkpoint against it: a different head_dim, rope, tying or architecture is
    another model and is refused; different sizes (a miniature, a pruned variant) are reported.
    """

    architecture: str = Field(description="config.json architectures[0], e.g. Phi3ForCausalLM")
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    attention_heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=8)
    vocab_size: int = Field(ge=2)
    context_length: int = Field(ge=1, description="max_position_embeddings")
    tied_embeddings: bool
    attention_bias: bool = Field(False, description="q/k/v projections carry biases (Qwen2)")
    qk_norm: bool = Field(False, description="RMSNorm on each head's queries and keys (Qwen3)")
    rope: RopeStructure
    source: str = Field(min_length=1, description="Where the values were read: the config.json URL at a revision")

    @model_validator(mode="after")
    def _consistent(self) -> StructureConfig:
        if self.attention_heads % self.kv_heads:
            raise ValueError(f"{self.attention_heads} attention heads do not group over {self.kv_heads} KV heads")
        rope = self.rope
        if rope.type == "longrope":
            pairs = int(self.head_dim * rope.partial_rotary) // 2
            for name in ("short_factor", "long_factor"):
                factors = getattr(rope, name)
                if factors is None or len(factors) != pairs:
                    raise ValueError(f"rope.{name} needs {pairs} values (head_dim × partial_rotary / 2)")
            if rope.original_context is None:
                raise ValueError("longrope needs rope.original_context")
        if rope.type == "llama3" and None in (
            rope.factor,
            rope.low_freq_factor,
            rope.high_freq_factor,
            rope.original_context,
        ):
            raise ValueError("llama3 rope needs factor, low_freq_factor, high_freq_factor and original_context")
        return self


class ChatConfig(_Strict):
    """The model family's chat layout and stop tokens (phiexport.chat_formats)."""

    format: str | None = Field(None, description="A chat format name; null keeps what the checkpoint has")

    @field_validator("format")
    @classmethod
    def _format_known(cls, value: str | None) -> str | None:
        from phiexport.chat_formats import FORMATS

        if value is not None and value not in FORMATS:
            raise ValueError(f"unknown chat format {value!r}; choose one of {', '.join(FORMATS)}")
        return value


class Recipe(_Strict):
    version: Literal[1] = Field(description="Recipe schema version")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    source: SourceConfig
    structure: StructureConfig | None = None
    chat: ChatConfig = ChatConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    targets: tuple[str, ...] = Field(("cpu",), min_length=1)
    evaluation: EvaluationConfig = EvaluationConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    npu: NpuConfig = NpuConfig()
    gates: GatesConfig = GatesConfig()

    @field_validator("targets")
    @classmethod
    def _targets_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from phiexport.targets import TARGETS

        for name in value:
            if name not in TARGETS:
                raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
        if len(set(value)) != len(value):
            raise ValueError("a target is listed twice; list each once")
        return value

    @model_validator(mode="after")
    def _targets_support_precision(self) -> Recipe:
        from phiexport.targets import TARGETS

        for name in self.targets:
            target = TARGETS[name]
            if self.quantization.precision not in target.precisions:
                raise ValueError(
                    f"target {name} does not run {self.quantization.precision} weights; "
                    f"choose one of {', '.join(target.precisions)}"
                )
            if target.static_shapes and self.quantization.zero_points:
                raise ValueError(
                    f"target {name} runs symmetric weights only (the HTP ignores zero points); "
                    "drop --asymmetric (symmetric: false)"
                )
        return self

    def with_overrides(self, overrides: dict[str, Any], flags: Mapping[str, str] | None = None) -> Recipe:
        """A new Recipe with nested `overrides` merged in and validated again (CLI flags use this).

        `flags` maps a recipe key (`npu.chunk`) to the option that set it (`--chunk`), for the error to name.
        """
        return parse_recipe(_deep_merge(self.model_dump(), overrides), origin="options", flags=flags)


def parse_recipe(data: Any, origin: str, flags: Mapping[str, str] | None = None) -> Recipe:
    """Validate raw recipe data; any problem becomes one UsageError naming the key (and the flag that set it)."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problem, remedy, flag = _first_problem(exc, flags or {})
        if flag:
            raise UsageError(problem, remedy or f"pass another {flag} value (see --help)") from None
        fix = "see --help" if origin == "options" else "correct that key (recipes/README.md lists them)"
        raise UsageError(f"{origin}: {problem}", remedy or fix) from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe from a YAML path or by the name of a bundled recipe (`recipes/<name>.yaml`)."""
    path = Path(name_or_path)
    if not path.is_file():
        bundled = data_dir("recipes") / f"{name_or_path}.yaml"
        if not bundled.is_file():
            raise UsageError(
                f"no recipe file or bundled recipe named {str(name_or_path)!r}",
                f"pass a YAML path or one of: {', '.join(bundled_recipes())}",
            )
        path = bundled
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read recipe {path}: {exc}", "check the file exists and is UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UsageError(f"recipe {path} is not valid YAML{line}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} is not a mapping of keys", "start from a file in recipes/")
    return parse_recipe(data, origin=f"recipe {path.name}")


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in data_dir("recipes").glob("*.yaml"))


def recipe_for_source(model: str) -> Recipe:
    """Default recipe for a source given without one: int4 RTN for the CPU, named after the model."""
    stem = Path(model.rstrip("/")).name.removesuffix(".gguf") or "model"
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return parse_recipe({"version": RECIPE_VERSION, "name": name, "source": {"model": model}}, origin="source")


def _first_problem(exc: ValidationError, flags: Mapping[str, str]) -> tuple[str, str | None, str | None]:
    """The first problem as text, the remedy its message gives after "; " if any, and the flag that set the
    offending value (None when a recipe key did)."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    message, _, remedy = error["msg"].removeprefix("Value error, ").partition("; ")
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}", None, None
    if error["type"] == "missing":
        return f"missing required key {key!r}", None, None
    if not key:  # a combination of keys, checked on the whole recipe
        return message, remedy or None, None
    if isinstance(error.get("input"), dict):  # a combination of keys inside one section
        return f"{key}: {message}", remedy or None, None
    flag = next((flags[k] for k in flags if key == k or key.startswith(f"{k}.")), None)
    if flag:
        return f"{flag}: {message} (got {error.get('input')!r}; recipe key {key})", remedy or None, flag
    return f"{key}: {message} (got {error.get('input')!r})", remedy or None, None


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
