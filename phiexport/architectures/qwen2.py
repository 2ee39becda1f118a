"""Qwen2 / Qwen2.5: Llama's layout with biases on q/k/v."""

from phiexport.architectures.base import Architecture
from phiexport.architectures.llama import linear_out_features

QWEN2 = Architecture(
    model_type="qwen2",
    hf_class="Qwen2ForCausalLM",
    gguf_name="qwen2",
    linear_out_features=linear_out_features,
)
