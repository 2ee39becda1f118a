"""Phi-3 / Phi-3.5 / Phi-4 (mini and full): fused qkv and gate_up projections, LongRoPE, partial rotary."""

from phiexport.architectures.base import Architecture, Config, head_dim, kv_heads


def linear_out_features(config: Config) -> set[int]:
    return {
        (config["num_attention_heads"] + 2 * kv_heads(config)) * head_dim(config),
        config["hidden_size"],
        2 * config["intermediate_size"],
    }


def prepare_config(config: Config) -> Config:
    """Give LongRoPE settings the `type` key the genai builder reads.

    transformers 5 writes `rope_parameters` with only `rope_type`; the builder's Phi-3 path indexes
    `rope_parameters["type"]` and fails with a KeyError without it.
    """
    prepared = dict(config)
    for key in ("rope_parameters", "rope_scaling"):
        rope = prepared.get(key)
        if isinstance(rope, dict) and "rope_type" in rope and "type" not in rope:
            prepared[key] = {**rope, "type": rope["rope_type"]}
    return prepared


PHI3 = Architecture(
    model_type="phi3",
    hf_class="Phi3ForCausalLM",
    gguf_name="phi3",
    linear_out_features=linear_out_features,
    prepare_config=prepare_config,
)
