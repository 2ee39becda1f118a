"""Llama (Llama 3.x, SmolLM2): separate q/k/v and gate/up projections, plain RoPE or llama3 scaling."""

from phiexport.architectures.base import Architecture, Config, head_dim, kv_heads


def linear_out_features(config: Config) -> set[int]:
    return {
        config["num_attention_heads"] * head_dim(config),
        kv_heads(config) * head_dim(config),
        config["hidden_size"],
        config["intermediate_size"],
    }


LLAMA = Architecture(
    model_type="llama",
    hf_class="LlamaForCausalLM",
    gguf_name="llama",
    linear_out_features=linear_out_features,
)
