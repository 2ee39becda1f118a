"""Static-shape ONNX graphs for NPUs: the decoder body over a fixed chunk, and the CPU-side embeddings and LM head.

The body graph is written from a module that calls the checkpoint's own norms, projections and MLP, so every
architecture transformers supports with the Llama layout (Llama, Phi-3, Qwen2, Qwen3) exports without a per-model
rewrite. Its attention is spelled out in the form the HTP runs (docs/npu.md): the query heads of each KV group are
folded into the row axis, so every tensor stays 4-D and K/V are never repeated; the mask is additive.

The graphs follow onnxruntime-genai's decoder pipeline (docs/npu.md): og feeds `past_seq_len` (tokens in the cache
after the step, minus one, pad rows counted) and binds one buffer per cache tensor as both past input and present
output, so the body updates its cache in place. The embeddings graph turns `past_seq_len` into the step's rotary
rows, its mask and its cache write (`step_tensors` computes the same in numpy), so only float tensors reach the body.

Graph contract (S = step tokens, C = cache slots, d = hidden, D = head_dim, R = rotary dims):
    embeddings.onnx  input_ids [1,S] int64, past_seq_len [1,1] int32, total_seq_len [1] int32
                     → hidden [1,S,d], cos, sin [1,1,S,R], mask [1,1,S,C], write [1,1,C,S], keep [1,1,C,1]
    body (S=chunk, S=1)  hidden, cos, sin, mask, write, keep, past_key.i / past_value.i [1,Hkv,C,D]
                     → hidden_out [1,S,d], present_key.i / present_value.i [1,Hkv,C,D]
                       (present = past · keep + write @ the step's keys/values; attention reads the updated cache)
    lm_head.onnx     hidden_out [1,S,d] → logits [1,S,V]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MASKED = -1.0e4  # additive mask value; float32's min wrecks the uint16 encoding of scores + mask (docs/npu.md)


@dataclass(frozen=True)
class StaticLayout:
    """The shapes every NPU graph and the runner agree on."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    rotary_dim: int
    vocab: int
    context: int  # KV cache slots: the longest sequence a package runs
    chunk: int  # prompt tokens per prefill step

    @classmethod
    def from_config(cls, config: dict[str, Any], *, context: int, chunk: int) -> StaticLayout:
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rotary_dim=int(head_dim * partial),
            vocab=config["vocab_size"],
            context=context,
            chunk=chunk,
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def cache_names(self, layers: range | None = None) -> list[str]:
        """The past key/value inputs of `layers` (default: every layer)."""
        return [f"past_{kind}.{i}" for i in layers or range(self.layers) for kind in ("key", "value")]

    def present_names(self, layers: range | None = None) -> list[str]:
        return [f"present_{kind}.{i}" for i in layers or range(self.layers) for kind in ("key", "value")]


STEP_TENSORS = ("cos", "sin", "mask", "write", "keep")  # what the embeddings graph derives from past_seq_len


def step_positions(past_seq_len: int, steps: int) -> np.ndarray:
    """The positions of a step's rows: og's `past_seq_len` counts the cache after the step, minus one."""
    return np.arange(past_seq_len + 1 - steps, past_seq_len + 1)


def step_tensors(
    layout: StaticLayout, cos: np.ndarray, sin: np.ndarray, past_seq_len: int, steps: int
) -> dict[str, np.ndarray]:
    """What embeddings.onnx computes for a step besides the embedding rows, from the rotary tables `[C, R]`: the rows'
    cos and sin, the additive mask (slot j visible to a row at position p when j ≤ p), the cache write (slot j takes
    the row at position j; a row at or past C writes nothing) and the slots it keeps."""
    positions = step_positions(past_seq_len, steps)
    slots = np.arange(layout.context)
    rows = np.clip(positions, 0, layout.context - 1)
    write = (positions[:, None] == slots[None, :]).astype(np.float32)  # [S, C]
    return {
        "cos": cos[rows][None, None].astype(np.float32),
        "sin": sin[rows][None, None].astype(np.float32),
        "mask": np.where(slots[None, :] <= positions[:, None], 0.0, MASKED).astype(np.float32)[None, None],
        "write": np.ascontiguousarray(write.T)[None, None],
        "keep": (1.0 - write.max(axis=0)).astype(np.float32)[None, None, :, None],
    }


def rotary_tables(model: Any, positions: int) -> tuple[Any, Any]:
    """cos and sin `[positions, R]` from the model's own rotary embedding, one row per absolute position.

    LongRoPE rule: a position below original_max_position_embeddings uses the short factors, any later position the
    long ones. Transformers instead switches every position of a forward to the long factors once the sequence passes
    that length, which an incremental runtime cannot do (its cached keys are already rotated); keeping each
    position's own rotation makes a token's encoding independent of how the prompt was chunked.
    """
    import torch

    rotary = model.model.rotary_emb
    probe = torch.zeros(1, dtype=torch.float32)
    cos, sin = rotary(probe, torch.arange(positions)[None, :])
    original = (model.config.rope_parameters or {}).get("original_max_position_embeddings")
    if rotary.rope_type == "longrope" and original and positions > original:
        short_cos, short_sin = rotary(probe, torch.arange(original)[None, :])
        cos = torch.cat([short_cos[:, :original], cos[:, original:]], dim=1)
        sin = torch.cat([short_sin[:, :original], sin[:, original:]], dim=1)
    return cos[0].float(), sin[0].float()


def _modules() -> tuple[type, type, type]:
    import torch

    class RmsNorm(torch.autograd.Function):
        """RMSNorm exported as one SimplifiedLayerNormalization node, which the HTP runs as its native RmsNorm.

        Spelled out (Pow, ReduceMean, Sqrt, Div), x² of a massive-activation token spans ~2e6, so a uint16 encoding
        of it has a step of ~31 and every ordinary token's variance is lost (measured on SmolLM2).
        """

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, eps: float) -> Any:
            variance = x.pow(2).mean(-1, keepdim=True)
            return weight * (x * torch.rsqrt(variance + eps))

        @staticmethod
        def symbolic(graph: Any, x: Any, weight: Any, eps: float) -> Any:
            return graph.op("SimplifiedLayerNormalization", x, weight, axis_i=-1, epsilon_f=eps)

    def rms_norm(norm: Any, x: Any) -> Any:
        eps = getattr(norm, "variance_epsilon", None) or norm.eps
        return RmsNorm.apply(x, norm.weight, eps)

    class Embeddings(torch.nn.Module):
        """The fp32 embeddings graph: the rows of `input_ids`, and `step_tensors` from og's sequence lengths."""

        def __init__(self, model: Any, cos: Any, sin: Any):
            super().__init__()
            self.embed_tokens = model.model.embed_tokens
            self.cos_table: Any = torch.nn.Buffer(cos)
            self.sin_table: Any = torch.nn.Buffer(sin)
            self.slots: Any = torch.nn.Buffer(torch.arange(cos.shape[0], dtype=torch.int32))

        def forward(self, input_ids: Any, past_seq_len: Any, total_seq_len: Any) -> tuple[Any, ...]:
            steps = input_ids.shape[1]
            positions = past_seq_len.reshape(1) + 1 - steps + torch.arange(steps, dtype=torch.int32)
            limit = torch.clamp(total_seq_len, max=self.slots.shape[0])  # og feeds max_length, at most the context
            rows = torch.minimum(torch.clamp(positions, min=0), limit - 1)
            write = (positions[:, None] == self.slots[None, :]).float()
            mask = torch.where(self.slots[None, :] <= positions[:, None], 0.0, MASKED)
            keep = 1.0 - write.amax(0)
            return (
                self.embed_tokens(input_ids.clamp(max=self.embed_tokens.num_embeddings - 1)),  # og's pad id: V
                self.cos_table[rows][None, None],
                self.sin_table[rows][None, None],
                mask[None, None],
                write.t()[None, None],
                keep[None, None, :, None],
            )

    class Body(torch.nn.Module):
        def __init__(self, layers: Any, layout: StaticLayout):
            super().__init__()
            self.layers = layers
            self.layout = layout

        def forward(self, hidden: Any, cos: Any, sin: Any, mask: Any, write: Any, keep: Any, *past: Any) -> Any:
            present: list[Any] = []
            for index, layer in enumerate(self.layers):
                cache = (past[2 * index], past[2 * index + 1])
                attention, updated = self._attention(
                    layer, rms_norm(layer.input_layernorm, hidden), cos, sin, mask, write, keep, cache
                )
                hidden = hidden + attention
                hidden = hidden + layer.mlp(rms_norm(layer.post_attention_layernorm, hidden))
                present += updated
            return (hidden, *present)

        def _attention(
            self, layer: Any, x: Any, cos: Any, sin: Any, mask: Any, write: Any, keep: Any, cache: tuple[Any, Any]
        ) -> tuple[Any, list[Any]]:
            lay = self.layout
            steps = x.shape[1]
            attn = layer.self_attn
            query, key, value = _project_qkv(attn, x, lay)
            query = query.view(1, steps, lay.heads, lay.head_dim)
            key = key.view(1, steps, lay.kv_heads, lay.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3 normalizes each head's queries and keys before the rotation
                query, key = attn.q_norm(query), attn.k_norm(key)
            query = _rotate(query.transpose(1, 2), cos, sin, lay.rotary_dim, lay.head_dim)
            key = _rotate(key.transpose(1, 2), cos, sin, lay.rotary_dim, lay.head_dim)
            value = value.view(1, steps, lay.kv_heads, lay.head_dim).transpose(1, 2)
            # the cache updated in place: kept slots as they were, the step's rows written where `write` says
            keys = cache[0] * keep + torch.matmul(write, key)
            values = cache[1] * keep + torch.matmul(write, value)
            group = lay.heads // lay.kv_heads
            # fold: [1, H, S, D] → [1, Hkv, group·S, D], rows ordered (head in group, step)
            folded = query.reshape(1, lay.kv_heads, group * steps, lay.head_dim)
            scores = torch.matmul(folded, keys.transpose(2, 3)) * attn.scaling
            probs = torch.softmax(scores + mask.repeat(1, 1, group, 1), dim=-1)
            out = torch.matmul(probs, values).view(1, lay.heads, steps, lay.head_dim)
            out = out.transpose(1, 2).reshape(1, steps, lay.heads * lay.head_dim)
            return attn.o_proj(out), [keys, values]

    class LmHead(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.norm = model.model.norm
            self.lm_head = model.lm_head

        def forward(self, hidden: Any) -> Any:
            return self.lm_head(self.norm(hidden))

    return Embeddings, Body, LmHead


def _project_qkv(attn: Any, x: Any, lay: StaticLayout) -> tuple[Any, Any, Any]:
    if hasattr(attn, "qkv_proj"):  # Phi-3 fuses the three projections
        qkv = attn.qkv_proj(x)
        q_size, kv_size = lay.heads * lay.head_dim, lay.kv_heads * lay.head_dim
        return qkv[..., :q_size], qkv[..., q_size : q_size + kv_size], qkv[..., q_size + kv_size :]
    return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


def _rotate(x: Any, cos: Any, sin: Any, rotary_dim: int, head_dim: int) -> Any:
    """Rotary embedding on the first `rotary_dim` dims (partial rotary keeps the rest), halves rotated as in HF."""
    import torch

    rot = x[..., :rotary_dim]
    half = rotary_dim // 2
    out = rot * cos + torch.cat([-rot[..., half:], rot[..., :half]], dim=-1) * sin
    return torch.cat([out, x[..., rotary_dim:]], dim=-1) if rotary_dim < head_dim else out


def export_static_graphs(model: Any, layout: StaticLayout, output: Path) -> dict[str, Path]:
    """Write embeddings.onnx, body_prefill.onnx, body_decode.onnx and lm_head.onnx (fp32) into `output`."""
    import torch

    Embeddings, Body, LmHead = _modules()
    output.mkdir(parents=True, exist_ok=True)
    cos, sin = rotary_tables(model, layout.context)
    paths = {
        "embeddings": output / "embeddings.onnx",
        "prefill": output / "body_prefill.onnx",
        "decode": output / "body_decode.onnx",
        "lm_head": output / "lm_head.onnx",
    }
    ids = torch.zeros(1, 2, dtype=torch.int64)
    lengths = (torch.tensor([[1]], dtype=torch.int32), torch.tensor([layout.context], dtype=torch.int32))
    with torch.no_grad():
        _export(
            Embeddings(model, cos, sin),
            (ids, *lengths),
            paths["embeddings"],
            inputs=list(EMBEDDINGS_INPUTS),
            outputs=["hidden", *STEP_TENSORS],
            dynamic={"input_ids": {1: "steps"}},
            infer_shapes=False,
        )
        _export_bodies(Body(model.model.layers, layout), layout, paths)
        hidden = torch.zeros(1, 2, layout.hidden)
        _export(
            LmHead(model),
            (hidden,),
            paths["lm_head"],
            inputs=["hidden_out"],
            outputs=["logits"],
            dynamic={"hidden_out": {1: "steps"}},
        )
    return paths


def export_layer_graphs(layer: Any, layout: StaticLayout, output: Path) -> dict[str, Path]:
    """One decoder layer as fp32 body graphs (`prefill`, `decode`) of a one-layer layout, in `output`."""
    import dataclasses

    import torch

    _, Body, _ = _modules()
    single = dataclasses.replace(layout, layers=1)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"prefill": output / "body_prefill.onnx", "decode": output / "body_decode.onnx"}
    with torch.no_grad():
        _export_bodies(Body(torch.nn.ModuleList([layer]), single), single, paths)
    return paths


def _export_bodies(body: Any, layout: StaticLayout, paths: dict[str, Path]) -> None:
    for kind, steps in (("prefill", layout.chunk), ("decode", 1)):
        _export(
            body,
            body_example(layout, steps),
            paths[kind],
            inputs=body_input_names(layout),
            outputs=body_output_names(layout),
        )


EMBEDDINGS_INPUTS = ("input_ids", "past_seq_len", "total_seq_len")


def residual_name(layer: int, layers: int) -> str:
    """The residual stream entering decoder layer `layer` of `layers`: the body's input (`hidden`), its output
    (`hidden_out`), or between the two the link from one body part to the next (`hidden.<layer>`)."""
    return "hidden" if layer == 0 else "hidden_out" if layer == layers else f"hidden.{layer}"


def body_input_names(layout: StaticLayout, layers: range | None = None) -> list[str]:
    """Inputs of the body graph computing `layers` (default: every layer)."""
    layers = layers or range(layout.layers)
    return [residual_name(layers.start, layout.layers), *STEP_TENSORS, *layout.cache_names(layers)]


def body_output_names(layout: StaticLayout, layers: range | None = None) -> list[str]:
    layers = layers or range(layout.layers)
    return [residual_name(layers.stop, layout.layers), *layout.present_names(layers)]


def body_example(layout: StaticLayout, steps: int) -> tuple[Any, ...]:
    import torch

    cache = [torch.zeros(1, layout.kv_heads, layout.context, layout.head_dim) for _ in range(2 * layout.layers)]
    return (
        torch.zeros(1, steps, layout.hidden),
        torch.ones(1, 1, steps, layout.rotary_dim),
        torch.zeros(1, 1, steps, layout.rotary_dim),
        torch.zeros(1, 1, steps, layout.context),
        torch.zeros(1, 1, layout.context, steps),
        torch.ones(1, 1, layout.context, 1),
        *cache,
    )


def _export(
    module: Any,
    example: tuple[Any, ...],
    path: Path,
    *,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]] | None = None,
    infer_shapes: bool = True,
) -> None:
    """TorchScript export (static shapes trace cleanly), saved at opset 21 with external data; with `infer_shapes`,
    every tensor's shape recorded by onnxruntime's symbolic shape inference."""
    import tempfile

    import onnx
    import torch
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # TorchScript scatters >2 GB weights per tensor
        traced = Path(scratch) / "model.onnx"
        torch.onnx.export(
            module,
            example,
            str(traced),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=20,
            dynamo=False,
        )
        model = onnx.load(str(traced))
    for opset in model.opset_import:  # 21 for blocked int4 DequantizeLinear; from 20 to 21 these ops only gained types
        if opset.domain in ("", "ai.onnx"):
            opset.version = 21
    # onnx's shape inference does not know onnxruntime's SimplifiedLayerNormalization, and the calibrator skips any
    # tensor without a type: record every shape with onnxruntime's own inference.
    if infer_shapes:
        model = SymbolicShapeInference.infer_shapes(model)
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.stem}.data", size_threshold=1024)
