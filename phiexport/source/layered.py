"""A causal LM a decoder layer at a time: what transformers computes, without the model in memory.

Phi-4-mini in fp32 is 15 GB. Here the model is a skeleton on the meta device; a decoder layer is given its fp32
weights from the memory-mapped checkpoint when asked for and emptied again when released. The embedding reads only
the rows it needs and the vocabulary matrices are read in row ranges. With a rotation seed, every piece comes out
rotated as `quantize/rotation.py` rotates a whole model, so the layers compute the rotated model's numbers.
Open a checkpoint directory with `LayeredModel(directory, rotation_seed=...)`, take decoder layer i with
`source.layer(i)` and hand it back with `source.release(layer)` before taking the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiexport.source.mapped import MappedWeights

EMBEDDING = "model.embed_tokens.weight"


class LayeredModel:
    """The checkpoint at `directory` (safetensors), optionally Hadamard-rotated, a decoder layer at a time."""

    def __init__(self, directory: Path, *, rotation_seed: int | None = None, trust_remote_code: bool = False):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from phiexport.quantize.hadamard import random_orthogonal_hadamard
        from phiexport.source.torch_model import quiet_transformers

        self.weights = MappedWeights(directory)
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        with quiet_transformers(), torch.device("meta"):
            self.model: Any = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32, trust_remote_code=trust_remote_code
            ).eval()
        inner = self.model.model
        inner.embed_tokens = _mapped_embedding(self)
        inner.rotary_emb = type(inner.rotary_emb)(config=self.model.config)  # its buffers come from the config
        self.rotation = (
            torch.from_numpy(random_orthogonal_hadamard(config.hidden_size, rotation_seed))
            if rotation_seed is not None
            else None
        )
        self._lm_head = "lm_head.weight" if "lm_head.weight" in self.weights else EMBEDDING
        self._final_scale = self.weights.read("model.norm.weight").double()
        self.norm = self._load(inner.norm, "model.norm.")
        if self.rotation is not None:  # the final norm's scale moves into the lm_head rows
            with torch.no_grad():
                self.norm.weight.fill_(1.0)

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)

    @property
    def vocab_size(self) -> int:
        return int(self.weights.view(self._lm_head).shape[0])

    def layer(self, index: int) -> Any:
        """Decoder layer `index` with its fp32 (rotated) weights; `release` it when done."""
        from phiexport.quantize.rotation import rotate_layer

        layer = self._load(self.model.model.layers[index], f"model.layers.{index}.")
        if self.rotation is not None:
            rotate_layer(layer, self.rotation)
        return layer

    def release(self, layer: Any) -> None:
        layer.to("meta")

    def embedding_rows(self, rows: Any) -> Any:
        """fp32 embedding rows (a slice or an index tensor), rotated like the model."""
        from phiexport.quantize.rotation import rotated_rows

        values = self.weights.read(EMBEDDING, rows)
        return values if self.rotation is None else rotated_rows(values, self.rotation)

    def lm_head_rows(self, start: int, stop: int) -> Any:
        """fp32 rows `start:stop` of the lm_head; rotated, they carry the final norm's scale."""
        from phiexport.quantize.rotation import rotated_rows

        values = self.weights.read(self._lm_head, slice(start, stop))
        return values if self.rotation is None else rotated_rows(values, self.rotation, self._final_scale)

    def _load(self, module: Any, prefix: str) -> Any:
        """`module` with its fp32 weights from the checkpoint (a meta module is given the tensors themselves)."""
        state = {name: self.weights.read(prefix + name) for name in module.state_dict()}
        module.load_state_dict(state, strict=True, assign=True)
        return module


def _mapped_embedding(source: LayeredModel) -> Any:
    """Stands in for `nn.Embedding`: the rows of the ids asked for, from the mapped checkpoint."""
    from torch import nn

    class MappedEmbedding(nn.Module):
        def forward(self, ids: Any) -> Any:
            return source.embedding_rows(ids.reshape(-1)).view(*ids.shape, -1)

    return MappedEmbedding()
