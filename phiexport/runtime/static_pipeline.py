"""phiexport's runner for static-shape NPU packages: embeddings → body (prefill chunks or 1-token decode) → LM head.

onnxruntime-genai runs the packages (`phiexport run`, runtime/genai.py). This runner is kept for what og cannot give:
the logits of every position of a teacher-forced sequence (og returns a prompt's last chunk only), which the KL of
`eval` and of the build's check needs, and single graphs fed directly (the simulator check, calibration).

It drives the graphs as onnxruntime-genai's decoder pipeline does (docs/npu.md): each step feeds `past_seq_len` (the
tokens in the cache after the step, minus one) and `total_seq_len` to the embeddings graph, which derives the step's
positions, mask and cache write; the body returns the cache updated in place, which becomes the next step's past.
`filled` counts the real tokens cached. A prompt is cut into chunks of the prefill size; the last chunk is padded,
and the pad rows are computed, thrown away and overwritten in the cache by the tokens that follow, so prompts of any
length run, a single token too.

Build a runner with `StaticPipeline.from_graphs(graphs, layout)` on the paths `export_static_graphs` wrote, then call
`generate(prompt_ids, new_tokens, stop_ids)` for greedy tokens or `logits(token_ids)` for teacher-forced logits.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.errors import BuildError, UsageError
from phiexport.export.static_graphs import STEP_TENSORS, StaticLayout, body_input_names

PAD_TOKEN = 0  # any id works: pad rows are masked from the real ones and discarded


class StaticPipeline:
    """One sequence at a time through the four graphs of an NPU package."""

    def __init__(self, sessions: dict[str, Any], layout: StaticLayout):
        self.sessions = sessions
        self.layout = layout
        self._input_names = body_input_names(layout)
        self.filled = 0
        self.cache: dict[str, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_graphs(cls, graphs: dict[str, Path], layout: StaticLayout) -> StaticPipeline:
        """Sessions on the CPU EP for `graphs` (embeddings, prefill, decode, lm_head)."""
        return cls({name: cpu_session(path) for name, path in graphs.items()}, layout)

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

    def generate(self, prompt_ids: list[int], new_tokens: int, stop_ids: Collection[int] = ()) -> list[int]:
        """Greedy continuation of `prompt_ids` from an empty cache, stopping at a stop id or the context's end."""
        return list(self.stream(prompt_ids, new_tokens, stop_ids))

    def stream(self, prompt_ids: list[int], new_tokens: int, stop_ids: Collection[int] = ()) -> Iterator[int]:
        """`generate`, one token at a time."""
        self.reset()
        next_logits = self.logits(prompt_ids, prompt=True)[-1]
        for produced in range(1, new_tokens + 1):
            token = int(np.argmax(next_logits))
            yield token
            if token in stop_ids or self.filled >= self.layout.context or produced == new_tokens:
                return
            next_logits = self.logits([token])[-1]

    def _step(self, ids: list[int], graph: str, steps: int) -> np.ndarray:
        real = len(ids)
        padded = np.full((1, steps), self.layout.vocab, dtype=np.int64)  # the pad id og feeds (genai_pipeline.py)
        padded[0, :real] = ids
        lengths = {
            "past_seq_len": np.array([[self.filled + steps - 1]], dtype=np.int32),
            "total_seq_len": np.array([self.layout.context], dtype=np.int32),
        }
        step = self.sessions["embeddings"].run(None, {"input_ids": padded, **lengths})
        feed = {**dict(zip(["hidden", *STEP_TENSORS], step, strict=True)), **self.cache}
        feed = {name: feed[name] for name in self._input_names}
        outputs = self.sessions[graph].run(None, feed)
        self.cache = dict(zip(self.layout.cache_names(), outputs[1:], strict=True))
        self.filled += real
        return np.asarray(outputs[0][0, :real], dtype=np.float32)


def cpu_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exact_session(path: Path) -> Any:
    """A CPU session without graph optimizations, as onnxruntime's calibrator runs a graph: the outputs it gives
    one layer are the inputs the calibrator sees in the next, bit for bit."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


DEVICES = ("cpu", "htp-sim")


class StaticPackageRunner:
    """An NPU package opened for scoring and generation, with the interface of the CPU package runner.

    `cpu` runs the QDQ body graphs on the CPU execution provider. `htp-sim` runs the context binaries the build
    compiled on its own for the package's first SoC (`<soc>/simulator/`, shipped with `--simulator-binaries`) on the
    HTP simulator with CPU fallback disabled; the weight-sharing pair a device loads cannot load on x86 (docs/npu.md).
    """

    def __init__(self, package_dir: Path, device: str = "cpu"):
        import json

        from phiexport.targets.npu import PIPELINE_FILE

        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        description = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))
        layout = StaticLayout(**description["layout"])
        graphs = {name: package_dir / file for name, file in description["graphs"].items()}
        if device == "htp-sim":
            sessions = {name: cpu_session(graphs[name]) for name in ("embeddings", "lm_head")}
            self.pipeline = StaticPipeline(sessions | simulator_sessions(package_dir, description["contexts"]), layout)
        else:
            self.pipeline = StaticPipeline.from_graphs(graphs, layout)
        self.stop_ids = package_stop_ids(package_dir)

    def logits(self, token_ids: list[int]) -> np.ndarray:
        self.pipeline.reset()
        return self.pipeline.logits(token_ids)

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        return self.pipeline.generate(prompt_ids, new_tokens, self.stop_ids)


def simulator_sessions(package_dir: Path, contexts: dict[str, Any]) -> dict[str, Any]:
    """HTP simulator sessions on the separately compiled body binaries of the package's first SoC."""
    from phiexport.targets.htp import htp_session, soc

    soc_name, binaries = simulator_binaries(package_dir, contexts)
    target = soc(soc_name)
    return {kind: htp_session(package_dir / path, target) for kind, path in binaries.items()}


def simulator_binaries(package_dir: Path, contexts: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The first SoC and its separately compiled body binaries (`prefill`, `decode` → path in the package), which
    the x86 HTP simulator can load; a one-line error when the package was built without them."""
    soc_name, context = next(iter(contexts.items()))
    if "simulator" not in context:
        raise UsageError(
            f"{package_dir} ships no simulator binaries ({soc_name}/simulator/), and the x86 HTP simulator cannot "
            "load its weight-sharing pair",
            "rebuild it with --simulator-binaries (recipe: npu.simulator_binaries: true), or run it with --device cpu",
        )
    return soc_name, context["simulator"]


def package_stop_ids(package_dir: Path) -> set[int]:
    """End-of-sequence ids from a package's genai_config.json."""
    import json

    eos = json.loads((package_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["eos_token_id"]
    return set(eos) if isinstance(eos, list) else {eos}
