"""phiexport's own runner for static-shape NPU graphs: embeddings → body (prefill chunks or 1-token decode) → LM head.

onnxruntime-genai runs NPU packages (runtime/genai.py: `run`, `eval`, the build's checks). This runner is kept for
what og cannot run, graphs that are not a package: the export tests check each graph against torch through it, and
the tests and benchmarks use it as an oracle og is checked against (it feeds the graphs directly, with onnxruntime).

It drives the graphs as onnxruntime-genai's decoder pipeline does (docs/npu.md): each step feeds `past_seq_len` (the
tokens in the cache after the step, minus one) and `total_seq_len` to the embeddings graph, which derives the step's
positions, mask and cache write; the body returns the cache updated in place, which becomes the next step's past.
`filled` counts the real tokens cached. A sequence is cut into chunks of the prefill size; the last chunk is padded,
and the pad rows are computed, thrown away and overwritten in the cache by the tokens that follow, so sequences of
any length run, a single token too.

Build a runner with `StaticPipeline.from_graphs(graphs, layout)` on the paths `export_static_graphs` wrote (or
`from_package` on an NPU package's QDQ graphs, its body parts chained), then call `logits(token_ids)` for
teacher-forced logits, one call per step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.errors import BuildError
from phiexport.export.body_parts import BODY_KINDS, BodyPart, described_parts
from phiexport.export.static_graphs import STEP_TENSORS, StaticLayout

PAD_TOKEN = 0  # any id works: pad rows are masked from the real ones and discarded


class StaticPipeline:
    """One sequence at a time through the graphs of an NPU package: embeddings, each body part, LM head."""

    def __init__(self, sessions: dict[str, Any], bodies: list[tuple[BodyPart, dict[str, Any]]], layout: StaticLayout):
        """`sessions`: embeddings and lm_head; `bodies`: each part with its prefill and decode sessions."""
        self.sessions = sessions
        self.bodies = bodies
        self.layout = layout
        self.filled = 0
        self.cache: dict[str, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_graphs(cls, graphs: dict[str, Path], layout: StaticLayout) -> StaticPipeline:
        """Sessions on the CPU EP for `graphs` (embeddings, prefill, decode, lm_head: the body in one part)."""
        body = {kind: cpu_session(graphs[kind]) for kind in BODY_KINDS}
        vocab = {name: cpu_session(graphs[name]) for name in ("embeddings", "lm_head")}
        return cls(vocab, [(BodyPart(0, 0, layout.layers), body)], layout)

    @classmethod
    def from_package(cls, package_dir: Path) -> StaticPipeline:
        """Sessions on the CPU EP for an NPU package's graphs, its QDQ body parts chained and run as written (the
        arithmetic the HTP runs; onnxruntime's optimizer would compute their matmuls with int8 activations)."""
        from phiexport.package.npu_layout import PIPELINE_FILE

        pipeline = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))
        layout = StaticLayout(**pipeline["layout"])
        vocab = {name: cpu_session(package_dir / file) for name, file in pipeline["graphs"].items()}
        bodies = [
            (part, {kind: exact_session(package_dir / part.graph_file(kind)) for kind in BODY_KINDS})
            for part in described_parts(pipeline["parts"])
        ]
        return cls(vocab, bodies, layout)

    def reset(self) -> None:
        self.filled = 0
        shape = (1, self.layout.kv_heads, self.layout.context, self.layout.head_dim)
        self.cache = {name: np.zeros(shape, dtype=np.float32) for name in self.layout.cache_names()}

    def hidden_states(self, token_ids: Iterable[int], *, prompt: bool = False) -> np.ndarray:
        """Feed tokens after the ones already cached; `[n, d]` final hidden states (before the final norm). A
        `prompt` goes through the prefill graph even when it is one token, as onnxruntime-genai runs it."""
        ids = list(token_ids)
        if self.filled + len(ids) > self.layout.context:
            raise BuildError(
                f"sequence of {self.filled + len(ids)} tokens exceeds the package's context of {self.layout.context}",
                "build with a larger --context-length",
            )
        if len(ids) == 1 and not prompt:
            return self._step(ids, "decode", 1)
        chunk = self.layout.chunk
        return np.concatenate([self._step(ids[i : i + chunk], "prefill", chunk) for i in range(0, len(ids), chunk)])

    def logits(self, token_ids: Iterable[int], *, prompt: bool = False) -> np.ndarray:
        """`[n, vocab]` logits for tokens fed after the cached ones (teacher-forced)."""
        hidden = self.hidden_states(token_ids, prompt=prompt)
        (logits,) = self.sessions["lm_head"].run(["logits"], {"hidden_out": hidden[None]})
        return np.asarray(logits[0], dtype=np.float32)

    def _step(self, ids: list[int], graph: str, steps: int) -> np.ndarray:
        real = len(ids)
        padded = np.full((1, steps), self.layout.vocab, dtype=np.int64)  # the pad id og feeds (genai_pipeline.py)
        padded[0, :real] = ids
        lengths = {
            "past_seq_len": np.array([[self.filled + steps - 1]], dtype=np.int32),
            "total_seq_len": np.array([self.layout.context], dtype=np.int32),
        }
        step = self.sessions["embeddings"].run(None, {"input_ids": padded, **lengths})
        values = {**dict(zip(["hidden", *STEP_TENSORS], step, strict=True)), **self.cache}
        for part, sessions in self.bodies:  # each part reads the residual stream the one before wrote
            outputs = sessions[graph].run(None, {name: values[name] for name in part.input_names(self.layout)})
            values[part.output_names(self.layout)[0]] = outputs[0]
            self.cache |= dict(zip(self.layout.cache_names(part.layers), outputs[1:], strict=True))
        self.filled += real
        return np.asarray(values["hidden_out"][0, :real], dtype=np.float32)


def cpu_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exact_session(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """A session without graph optimizations, as onnxruntime's calibrator runs a graph (on the same `providers`):
    the outputs it gives one layer are the inputs the calibrator sees in the next, bit for bit."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=list(providers))
