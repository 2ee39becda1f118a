"""QuaRot-style rotation of the residual stream, folded into a Hugging Face decoder's weights before quantization.

With Q an orthogonal randomized Hadamard matrix, the residual stream h becomes hQ: every linear that reads the
stream turns into W·diag(g)·Q (the RMSNorm scale g folded in first, since RMSNorm commutes with Q only without it),
every linear that writes it into Qᵀ·W, and the embedding into E·Q. The fp32 model computes the same logits, while
outlier channels are spread over all channels, which makes the weights and activations easier to quantize.
Written here because no installed library folds rotations into HF checkpoints (neural-compressor and onnxruntime
quantize ONNX graphs; their rotation code expects training frameworks and GPUs).

Llama, Phi-3 and Qwen2 share the layout this relies on: `input_layernorm` → attention (`o_proj` writes),
`post_attention_layernorm` → MLP (`down_proj` writes), final `model.norm` → `lm_head`.
"""

from __future__ import annotations

from typing import Any

from phiexport.quantize.hadamard import random_orthogonal_hadamard

_WRITERS = {"self_attn": "o_proj", "mlp": "down_proj"}


def rotate_decoder(model: Any, seed: int) -> None:
    """Rotate `model` (a transformers causal LM, modified in place); tied embeddings are untied."""
    import torch

    inner = model.model
    rotation = torch.from_numpy(random_orthogonal_hadamard(model.config.hidden_size, seed))
    lm_head = rotated_rows(model.lm_head.weight.detach(), rotation, inner.norm.weight.detach().double())
    embedding = rotated_rows(inner.embed_tokens.weight.detach(), rotation)
    for layer in inner.layers:
        rotate_layer(layer, rotation)
    with torch.no_grad():
        inner.norm.weight.fill_(1.0)
        inner.embed_tokens.weight = torch.nn.Parameter(embedding, requires_grad=False)
        model.lm_head.weight = torch.nn.Parameter(lm_head, requires_grad=False)
    model.config.tie_word_embeddings = False


def rotate_layer(layer: Any, rotation: Any) -> None:
    """Fold `rotation` (float64) into one decoder layer, in place: its norms' scales move into the linears that
    read the stream, which read it rotated; the linears that write the stream write it rotated."""
    import torch

    with torch.no_grad():
        for block, norm in (("self_attn", layer.input_layernorm), ("mlp", layer.post_attention_layernorm)):
            module = getattr(layer, block)
            scale = norm.weight.detach().double()
            for name, linear in module.named_children():
                if isinstance(linear, torch.nn.Linear) and name != _WRITERS[block]:
                    _set(linear.weight, (linear.weight.double() * scale[None, :]) @ rotation)
            norm.weight.fill_(1.0)
            writer = getattr(module, _WRITERS[block])
            _set(writer.weight, rotation.T @ writer.weight.double())
            if writer.bias is not None:
                _set(writer.bias, rotation.T @ writer.bias.double())


ROWS_PER_BLOCK = 8192  # vocabulary rows rotated at once in float64: 200 MB at Phi-4-mini's width, not 4.9 GB


def rotated_rows(weight: Any, rotation: Any, scale: Any = None) -> Any:
    """`(weight · diag(scale)) @ rotation` in float64, a block of rows at a time, returned in `weight`'s dtype."""
    import torch

    rotated = torch.empty_like(weight)
    for start in range(0, weight.shape[0], ROWS_PER_BLOCK):
        block = weight[start : start + ROWS_PER_BLOCK].double()
        if scale is not None:
            block = block * scale[None, :]  # not in place: a float64 weight's .double() is the weight itself
        rotated[start : start + ROWS_PER_BLOCK] = (block @ rotation).to(weight.dtype)
    return rotated


def _set(parameter: Any, value: Any) -> None:
    parameter.copy_(value.to(parameter.dtype))
