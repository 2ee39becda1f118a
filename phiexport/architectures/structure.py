"""A checkpoint's structure read from its config.json, and the check of a checkpoint against its recipe's record.

What makes a model *that* model (architecture, head_dim, rope, tying, biases, q/k norms) must match the recipe;
sizes (layers, width, heads, vocabulary, context) may differ, so a recipe's miniature builds with the recipe itself.
"""

from __future__ import annotations

from typing import Any

from phiexport.architectures.base import Config, head_dim, kv_heads
from phiexport.errors import SourceError
from phiexport.recipe import RopeStructure, StructureConfig

# fields whose difference makes another model; the rest are sizes
IDENTITY_FIELDS = ("architecture", "head_dim", "tied_embeddings", "attention_bias", "qk_norm")
ROPE_IDENTITY_FIELDS = ("type", "theta", "partial_rotary", "factor", "low_freq_factor", "high_freq_factor")
FACTOR_TOLERANCE = 1e-6


def read_structure(config: Config, source: str) -> StructureConfig:
    """The structure a config.json describes (published, or as transformers 5 saves it); taken as found, without a
    recipe's consistency rules, so that it can be compared field by field."""
    return StructureConfig.model_construct(
        architecture=(config.get("architectures") or ["?"])[0],
        layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        attention_heads=config["num_attention_heads"],
        kv_heads=kv_heads(config),
        head_dim=head_dim(config),
        vocab_size=config["vocab_size"],
        context_length=config["max_position_embeddings"],
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=_attention_bias(config),
        qk_norm=config.get("model_type") == "qwen3",
        rope=_read_rope(config),
        source=source,
    )


def _attention_bias(config: Config) -> bool:
    if config.get("model_type") == "qwen2":
        return True  # Qwen2 always has q/k/v biases; its config does not say so
    return bool(config.get("attention_bias", False))


def _read_rope(config: Config) -> RopeStructure:
    scaling: dict[str, Any] = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    theta = float(scaling.get("rope_theta") or config.get("rope_theta") or 10000.0)
    partial = float(scaling.get("partial_rotary_factor") or config.get("partial_rotary_factor") or 1.0)
    original = scaling.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    if kind == "longrope":
        return RopeStructure.model_construct(
            type="longrope",
            theta=theta,
            partial_rotary=partial,
            original_context=original,
            short_factor=tuple(scaling["short_factor"]),
            long_factor=tuple(scaling["long_factor"]),
        )
    if kind == "llama3":
        return RopeStructure.model_construct(
            type="llama3",
            theta=theta,
            partial_rotary=partial,
            original_context=original,
            factor=scaling["factor"],
            low_freq_factor=scaling["low_freq_factor"],
            high_freq_factor=scaling["high_freq_factor"],
        )
    if kind != "default":
        raise SourceError(f"unsupported rope type {kind!r}", "phiexport exports default, llama3 and longrope rotary")
    return RopeStructure.model_construct(type="default", theta=theta, partial_rotary=partial)


def compare_structure(recorded: StructureConfig, config: Config, recipe_name: str) -> dict[str, Any]:
    """Refuse a checkpoint that is another model than the recipe's; return the sizes that differ (a miniature)."""
    found = read_structure(config, source="checkpoint")
    mismatches = [
        f"{name} {getattr(found, name)} (recipe: {getattr(recorded, name)})"
        for name in IDENTITY_FIELDS
        if getattr(found, name) != getattr(recorded, name)
    ]
    mismatches += [
        f"rope.{name} {getattr(found.rope, name)} (recipe: {getattr(recorded.rope, name)})"
        for name in ROPE_IDENTITY_FIELDS
        if getattr(found.rope, name) != getattr(recorded.rope, name)
    ]
    for name in ("short_factor", "long_factor"):
        if not _same_factors(getattr(recorded.rope, name), getattr(found.rope, name)):
            mismatches.append(f"rope.{name} differs from the recipe's")
    if mismatches:
        raise SourceError(
            f"the checkpoint is not the model recipe {recipe_name} describes: {'; '.join(mismatches)}",
            "use the recipe of this model, or build without -r",
        )
    sizes = (
        "layers",
        "hidden_size",
        "intermediate_size",
        "attention_heads",
        "kv_heads",
        "vocab_size",
        "context_length",
    )
    differs = {name: getattr(found, name) for name in sizes if getattr(found, name) != getattr(recorded, name)}
    if found.rope.original_context != recorded.rope.original_context:
        differs["rope.original_context"] = found.rope.original_context
    return {"matches_recipe": not differs, "differs": differs, "recorded": recorded.source}


def _same_factors(ours: tuple[float, ...] | None, theirs: tuple[float, ...] | None) -> bool:
    if ours is None or theirs is None:
        return ours is theirs
    return len(ours) == len(theirs) and all(abs(a - b) <= FACTOR_TOLERANCE for a, b in zip(ours, theirs, strict=True))
