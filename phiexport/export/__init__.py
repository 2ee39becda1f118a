"""Export stage: Hugging Face checkpoint → ONNX with a GroupQueryAttention KV cache."""
