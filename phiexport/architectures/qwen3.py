"""Qwen3 (dense): Llama's layout without q/k/v biases, with an RMSNorm on each head's queries and keys; its
attention width (heads × head_dim) may differ from the hidden size."""

from phiexport.architectures.base import Architecture
from phiexport.architectures.llama import linear_out_features

QWEN3 = Architecture(
    model_type="qwen3",
    hf_class="Qwen3ForCausalLM",
    gguf_name="qwen3",
    linear_out_features=linear_out_features,
)
