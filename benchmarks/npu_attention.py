"""GroupQueryAttention against phiexport's explicit attention with an in-graph cache write, on the HTP simulator.

    python benchmarks/npu_attention.py

One decoder layer of the embedded SmolLM2 (layer 0, real weights), in onnxruntime-genai's decoder-pipeline contract
both ways: (a) phiexport's body (export/static_graphs.py: explicit attention, `present = past·keep + write@new`,
positions, mask and write from the embeddings graph) and (b) com.microsoft.GroupQueryAttention reading `past_seq_len`
as its seqlens_k, with `total_sequence_length` the constant context (the HTP refuses a runtime-valued one) and its own
rotary from cos/sin caches, the cache shared in place. Both quantized with onnxruntime's QNN recipe (uint16
activations, uint8 weights) on the same calibration calls, compiled for the HTP (CPU fallback disabled); reported:
the HTP cycles of a 64-token chunk and of a decode step (QNN's profile, least of five runs), the nodes left outside
the HTP, and the cosine of the layer's contribution (output − input) against the fp32 explicit layer's over og's
calls for a 130-token prompt and 40 decode steps.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from transformers import AutoModelForCausalLM

from phiexport.evaluate.data import scored_sequences
from phiexport.export.static_graphs import (
    StaticLayout,
    _modules,
    _project_qkv,
    export_layer_graphs,
    rotary_tables,
    step_tensors,
)
from phiexport.pipeline import cache_root
from phiexport.recipe import load_recipe
from phiexport.source import resolve_source
from phiexport.targets.htp import _qnn_devices

CONTEXT, CHUNK = 512, 64
AFFINITY = Path(tempfile.gettempdir()) / "phiexport-gqa-affinity.json"  # the QNN plugin reads it from a file


class Gqa(torch.autograd.Function):
    """com.microsoft.GroupQueryAttention in the exported graph; `forward` only gives the tracer its output shapes."""

    @staticmethod
    def forward(ctx: Any, q: Any, k: Any, v: Any, past_k: Any, past_v: Any, *rest: Any) -> Any:
        return q * 1.0, past_k.clone(), past_v.clone()

    @staticmethod
    def symbolic(g: Any, *args: Any) -> Any:
        *tensors, heads, kv_heads, scale = args  # q, k, v, past k/v, seqlens_k, total length, cos and sin caches
        return g.op(
            "com.microsoft::GroupQueryAttention",
            *tensors,
            num_heads_i=heads,
            kv_num_heads_i=kv_heads,
            do_rotary_i=1,
            scale_f=scale,
            outputs=3,
        )


def gqa_layer(layer: Any, layout: StaticLayout, cos: torch.Tensor, sin: torch.Tensor, output: Path) -> dict[str, Path]:
    _, Body, _ = _modules()
    # the body's own RMSNorm (one SimplifiedLayerNormalization node), so that only the attention differs
    closure = dict(zip(Body.forward.__code__.co_freevars, Body.forward.__closure__ or (), strict=True))
    rms_norm = closure["rms_norm"].cell_contents

    class GqaBody(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer
            half = layout.rotary_dim // 2
            self.cos_cache: Any = torch.nn.Buffer(cos[:, :half].contiguous())
            self.sin_cache: Any = torch.nn.Buffer(sin[:, :half].contiguous())
            self.total: Any = torch.nn.Buffer(torch.tensor(layout.context, dtype=torch.int32))

        def forward(self, hidden: Any, past_seq_len: Any, past_k: Any, past_v: Any) -> Any:
            attn = self.layer.self_attn
            x = rms_norm(self.layer.input_layernorm, hidden)
            q, k, v = _project_qkv(attn, x, layout)
            out, pk, pv = Gqa.apply(
                q,
                k,
                v,
                past_k,
                past_v,
                past_seq_len.reshape(1),
                self.total,
                self.cos_cache,
                self.sin_cache,
                layout.heads,
                layout.kv_heads,
                float(attn.scaling),
            )
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + self.layer.mlp(rms_norm(self.layer.post_attention_layernorm, hidden))
            return hidden, pk, pv

    output.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, steps in (("prefill", layout.chunk), ("decode", 1)):
        cache = torch.zeros(1, layout.kv_heads, layout.context, layout.head_dim)
        example = (torch.zeros(1, steps, layout.hidden), torch.zeros(1, 1, dtype=torch.int32), cache, cache.clone())
        paths[kind] = output / f"gqa_{kind}.onnx"
        traced = output / f"traced_{kind}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                GqaBody(),
                example,
                str(traced),
                dynamo=False,
                opset_version=20,
                input_names=["hidden", "past_seq_len", "past_key.0", "past_value.0"],
                output_names=["hidden_out", "present_key.0", "present_value.0"],
                custom_opsets={"com.microsoft": 1},
            )
        model = onnx.load(str(traced))
        for opset in model.opset_import:  # as phiexport's own export (static_graphs._export): opset 21, shapes typed
            if opset.domain in ("", "ai.onnx"):
                opset.version = 21
        onnx.save(SymbolicShapeInference.infer_shapes(model), str(paths[kind]))
    return paths


def og_calls(prompt: int, decode: int) -> list[tuple[str, int, int]]:
    """(graph, first row, past_seq_len) as og feeds them: left-aligned padded chunks, then decode steps."""
    padded = -(-prompt // CHUNK) * CHUNK
    calls = [("prefill", start, start + CHUNK - 1) for start in range(0, padded, CHUNK)]
    return calls + [("decode", prompt + step, prompt + step) for step in range(decode)]


class Form:
    """One attention form's sessions and how to feed them."""

    def __init__(self, name: str, graphs: dict[str, Path], layout: StaticLayout, cos: np.ndarray, sin: np.ndarray):
        self.name, self.graphs, self.layout, self.cos, self.sin = name, graphs, layout, cos, sin

    def feed(self, kind: str, hidden: np.ndarray, past_seq_len: int, cache: tuple[np.ndarray, np.ndarray]) -> dict:
        steps = hidden.shape[1]
        if self.name == "gqa":
            base = {"hidden": hidden, "past_seq_len": np.array([[past_seq_len]], np.int32)}
        else:
            base = {"hidden": hidden, **step_tensors(self.layout, self.cos, self.sin, past_seq_len, steps)}
        return base | {"past_key.0": cache[0], "past_value.0": cache[1]}

    def run(self, sessions: dict[str, Any], rows: np.ndarray, calls: list) -> tuple[list[np.ndarray], list[dict]]:
        shape = (1, self.layout.kv_heads, self.layout.context, self.layout.head_dim)
        cache = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
        outs, feeds = [], []
        for kind, first, past_seq_len in calls:
            steps = CHUNK if kind == "prefill" else 1
            hidden = rows[first : first + steps][None].astype(np.float32)
            feed = self.feed(kind, hidden, past_seq_len, cache)
            feeds.append((kind, feed))
            hidden_out, key, value = sessions[kind].run(None, feed)
            cache = (key, value)
            outs.append((hidden_out - hidden)[0, : min(steps, len(rows) - first)])  # the layer's contribution
        return outs, feeds


class Reader:
    def __init__(self, feeds: list[dict]):
        self.feeds, self.it = feeds, iter(feeds)

    def get_next(self) -> dict | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.feeds)


def cpu(path: Path) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def htp_options(profile: Path | None = None) -> Any:
    """phiexport's HTP options (targets/htp.py), plus the affinity without which the QNN EP leaves
    GroupQueryAttention to the CPU."""
    import json

    import onnxruntime_qnn

    AFFINITY.write_text(json.dumps({"op_type": {"GroupQueryAttention": "htp"}}))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = {
        "backend_path": onnxruntime_qnn.get_qnn_htp_path(),
        "soc_model": "60",
        "enable_block_quant_weight_optimization": "1",
        "op_affinity": str(AFFINITY),
    }
    if profile is not None:
        provider |= {"profiling_level": "detailed", "profiling_file_path": str(profile)}
    options.add_provider_for_devices(_qnn_devices(), provider)
    return options


def htp(path: Path) -> Any:
    options = htp_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), sess_options=options)


def providers(session: Any) -> dict[str, int]:
    import json

    events = json.loads(Path(session.end_profiling()).read_text())
    nodes = {
        (e["name"], e["args"]["provider"])
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    }
    counts: dict[str, int] = {}
    for _, provider in nodes:
        counts[provider] = counts.get(provider, 0) + 1
    return counts


def cycles(path: Path, feed: dict, scratch: Path) -> int:
    profile = scratch / f"{path.stem}.csv"
    session = ort.InferenceSession(str(path), sess_options=htp_options(profile))
    for _ in range(6):
        session.run(None, feed)
    del session
    with profile.open(newline="") as handle:
        found = [
            int(r["Time"])
            for r in csv.DictReader(handle)
            if r["Event Identifier"] == "Accelerator (execute) time (cycles)"
        ]
    return min(found[1:])  # the simulator's counts vary from run to run: the least of five


def attention_inputs(path: Path) -> str:
    """What feeds the attention: uint16 tensors (a quantized op) or DequantizeLinear outputs (a float island)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    gqa = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    if not gqa:
        return "MatMul/Softmax in QDQ"
    return "GQA fed by " + ", ".join(sorted({producers.get(name, "input") for name in gqa[0].input[:5] if name}))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    recipe = load_recipe("smollm2-135m-instruct")
    checkpoint = resolve_source(recipe.source, cache_root())
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32).eval()
    layout = dataclasses.replace(StaticLayout.from_config(checkpoint.config, context=CONTEXT, chunk=CHUNK), layers=1)
    cos_t, sin_t = rotary_tables(model, CONTEXT)
    cos, sin = cos_t.numpy(), sin_t.numpy()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    sequences = [s.token_ids for s in scored_sequences(tokenizer, 12, 320)]
    embed = model.model.embed_tokens
    with torch.no_grad():
        rows_of = [embed(torch.tensor(ids + [0] * CHUNK)).numpy() for ids in sequences]
    layer = model.model.layers[0]
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        forms = {
            "explicit": Form("explicit", export_layer_graphs(layer, layout, scratch / "explicit"), layout, cos, sin),
            "gqa": Form("gqa", gqa_layer(layer, layout, cos_t, sin_t, scratch / "gqa"), layout, cos, sin),
        }
        test_rows = rows_of[-1]
        test_calls = og_calls(130, 40)
        reference, _ = forms["explicit"].run(
            {k: cpu(p) for k, p in forms["explicit"].graphs.items()}, test_rows, test_calls
        )
        print(
            "| form | chunk cycles | decode cycles | nodes off the HTP | attention's inputs | fp32 vs explicit fp32 | "
            "cosine prefill (min) | cosine decode (last) | CPU EP same QDQ: prefill / decode |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, form in forms.items():
            fp32 = {k: cpu(p) for k, p in form.graphs.items()}
            got32, _ = form.run(fp32, test_rows, test_calls)
            fp32_error = max(float(np.abs(a - b).max()) for a, b in zip(got32, reference, strict=True))
            calibration: dict[str, list] = {"prefill": [], "decode": []}
            for rows, ids in zip(rows_of[:-1], sequences[:-1], strict=True):
                prompt = min(len(ids) - 8, 200)
                _, feeds = form.run(fp32, rows, og_calls(prompt, 6))
                for kind, feed in feeds:
                    calibration[kind].append(feed)
            qdq = {}
            for kind, path in form.graphs.items():
                config = get_qnn_qdq_config(
                    str(path),
                    Reader(calibration[kind]),
                    activation_type=QuantType.QUInt16,
                    weight_type=QuantType.QUInt8,
                )
                qdq[kind] = path.with_name(f"{path.stem}.qdq.onnx")
                quantize(str(path), str(qdq[kind]), config)
            on_htp = {k: htp(p) for k, p in qdq.items()}
            got, feeds = form.run(on_htp, test_rows, test_calls)
            on_cpu, _ = form.run({k: cpu(p) for k, p in qdq.items()}, test_rows, test_calls)
            placement = {k: providers(s) for k, s in on_htp.items()}
            off = {k: {p: n for p, n in c.items() if p != "QNNExecutionProvider"} for k, c in placement.items()}
            prefill_feed = next(f for k, f in feeds if k == "prefill")
            decode_feed = next(f for k, f in feeds if k == "decode")
            chunk_cycles = cycles(qdq["prefill"], prefill_feed, scratch)
            decode_cycles = cycles(qdq["decode"], decode_feed, scratch)
            n_prefill = sum(k == "prefill" for k, _, _ in test_calls)
            cos_prefill = min(cosine(a, b) for a, b in zip(got[:n_prefill], reference[:n_prefill], strict=True))
            cpu_prefill = min(cosine(a, b) for a, b in zip(on_cpu[:n_prefill], reference[:n_prefill], strict=True))
            feeding = attention_inputs(qdq["prefill"])
            print(
                f"| {name} | {chunk_cycles / 1e6:.1f} M | {decode_cycles / 1e6:.1f} M | {off} | {feeding} | "
                f"{fp32_error:.1e} | "
                f"{cos_prefill:.5f} | {cosine(got[-1], reference[-1]):.5f} | "
                f"{cpu_prefill:.5f} / {cosine(on_cpu[-1], reference[-1]):.5f} |"
            )


if __name__ == "__main__":
    main()
