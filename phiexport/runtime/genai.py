"""An NPU package run by onnxruntime-genai, as a device app runs it: the package's own genai_config.json, with only
the body stages pointed at what this machine can execute.

`htp-sim`: the separately compiled context binaries of the first SoC (`<soc>/simulator/`), with the package's own QNN
options, through onnxruntime-qnn's plugin on the HTP simulator; the weight-sharing pair a device loads cannot load on
x86 (docs/npu.md). `cpu`: the QDQ body graphs on the CPU execution provider, as written (`QDQ_AS_WRITTEN`). og
reads a view of the package: a folder of links beside an edited genai_config.json (og's config overlay cannot empty
a stage's provider list, nor drop a stage). The embeddings and LM head stages run on the CPU in both, as on the device.

`GenaiPipelineRunner` scores and generates through it: `phiexport eval`, the build's check and its simulator check.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.errors import UsageError
from phiexport.export.capture import output_to_log

DEVICES = ("cpu", "htp-sim")
SIMULATOR_LINK = "simulator-bodies"  # the view's link to the folder of the simulated bodies
# The CPU EP runs a QDQ body as written: at onnxruntime's default level it rewrites the graph (DequantizeLinear →
# MatMul into MatMulNBits with int8 activations, accuracy level 4, among other QDQ rewrites), which is not the
# arithmetic the HTP runs, and holds each session's weights 1.8× (fused copy + prepacked), prefill and decode apart.
# Basic-level sessions map the weights from the package's files and dequantize them per call (docs/npu.md), with
# no arena to keep those floats.
QDQ_AS_WRITTEN = {"graph_optimization_level": "ORT_ENABLE_BASIC", "enable_cpu_mem_arena": False}


@contextmanager
def genai_model(
    package_dir: Path,
    device: str | Mapping[str, str | None],
    *,
    bodies: dict[str, Path] | None = None,
    profiles: Path | None = None,
) -> Iterator[Any]:
    """`og.Model` of the NPU package in `package_dir` for the length of the block (og reads the tokenizer from the
    model's folder, so the view lives as long).

    `device` (cpu or htp-sim) places every body stage, or maps body stages (`prefill_0`, `decode_0`, … one pair per
    body part) to one, the others on the CPU EP (None drops the stage: without decode stages the model can only take
    prompts). Simulated stages run `bodies` (stage → context model, all in one folder) when given, else the
    package's shipped simulator binaries; with `profiles`, onnxruntime profiles each simulated body's session into
    `profiles/<stage>_<time>.json` when the model closes."""
    import onnxruntime_genai as og

    from phiexport.export.body_parts import BODY_KINDS, described_parts
    from phiexport.package.npu_layout import PIPELINE_FILE

    pipeline = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))
    parts = described_parts(pipeline["parts"])
    graphs = {part.stage(kind): part.graph_file(kind) for part in parts for kind in BODY_KINDS}
    placement = dict.fromkeys(graphs, device) if isinstance(device, str) else {**dict.fromkeys(graphs, "cpu"), **device}
    for where in placement.values():
        if where is not None and where not in DEVICES:
            raise UsageError(f"unknown device {where!r}", f"choose one of {', '.join(DEVICES)}")
    config = json.loads((package_dir / "genai_config.json").read_text(encoding="utf-8"))
    simulated = [name for name, where in placement.items() if where == "htp-sim"]
    if simulated and bodies is None:
        _soc, shipped = simulator_binaries(package_dir, pipeline["contexts"])
        bodies = {name: package_dir / path for name, path in shipped.items()}
    entries = []
    for entry in config["model"]["decoder"]["pipeline"]:  # a list of {stage name: stage}
        ((name, stage),) = entry.items()
        where = placement.get(name, "cpu")
        if name in graphs and where is None:
            continue
        if name in graphs and where == "cpu":
            if not (package_dir / graphs[name]).is_file():
                raise UsageError(
                    f"{package_dir} ships no QDQ body graphs (the device layout: context binaries only), which the "
                    "CPU EP runs",
                    "rebuild it with --qdq-bodies (recipe: npu.qdq_bodies: true), or run it with --device htp-sim",
                )
            stage["filename"] = graphs[name]  # the QDQ graph
            stage["session_options"] = dict(QDQ_AS_WRITTEN)
        elif name in graphs:
            assert bodies is not None
            stage["filename"] = f"{SIMULATOR_LINK}/{bodies[name].name}"  # the context model finds its .bin beside it
            if profiles is not None:
                profiles.mkdir(parents=True, exist_ok=True)
                stage.setdefault("session_options", {})["enable_profiling"] = str(profiles / name)
        entries.append(entry)
    config["model"]["decoder"]["pipeline"] = entries
    with tempfile.TemporaryDirectory(prefix="phiexport-genai-") as scratch:
        view = Path(scratch)
        for item in package_dir.iterdir():
            if item.name != "genai_config.json":
                (view / item.name).symlink_to(item.absolute())
        if simulated:
            assert bodies is not None
            (view / SIMULATOR_LINK).symlink_to(bodies[simulated[0]].parent.absolute())
            register_qnn(og)
        (view / "genai_config.json").write_text(json.dumps(config), encoding="utf-8")
        with output_to_log(Path(os.devnull)):  # the QNN libraries print banners on stdout, which would corrupt --json
            model = og.Model(str(view))
        try:
            yield model
        finally:
            del model  # closes the sessions, which writes their profiles


class GenaiPipelineRunner:
    """An NPU package opened in onnxruntime-genai for scoring and generation, with the interface of the CPU
    package runner: `logits(token_ids)` teacher-forced, `greedy(prompt_ids, new_tokens)`.

    Teacher-forced logits come from appending the sequence a chunk at a time and reading each chunk's logits
    output: og keeps only the last append's, and runs every append through the prefill stage, as a prompt."""

    def __init__(self, package_dir: Path, device: str | Mapping[str, str | None] = "cpu", **model_options: Any):
        from phiexport.package.npu_layout import PIPELINE_FILE

        layout = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))["layout"]
        self.context: int = layout["context"]
        self.chunk: int = layout["chunk"]
        self._stack = ExitStack()
        self.model = self._stack.enter_context(genai_model(package_dir, device, **model_options))

    def close(self) -> None:
        """Close og's model now (its sessions write their profiles then), not when the runner is collected."""
        self.model = None
        self._stack.close()

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """`[len(token_ids), vocab]` float32 logits, every position of the sequence from an empty cache."""
        import onnxruntime_genai as og

        if self.padded(len(token_ids)) > self.context:
            raise UsageError(
                f"a sequence of {len(token_ids)} tokens exceeds the NPU package's context of {self.context}",
                "score shorter sequences or build with a larger --context-length",
            )
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.context)
        generator = og.Generator(self.model, params)
        rows = []
        for start in range(0, len(token_ids), self.chunk):
            chunk = token_ids[start : start + self.chunk]
            generator.append_tokens(chunk)
            rows.append(np.array(generator.get_output("logits")[0, : len(chunk)], dtype=np.float32))
        return np.concatenate(rows)

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        """og's greedy continuation, stopping at an end-of-sequence id or where the cache is full (og pads the
        prompt to whole chunks, and the padding takes cache slots)."""
        return [token for token, _ in self._decode(prompt_ids, new_tokens, keep_logits=False)]

    def greedy_logits(self, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
        """`greedy`, with the logits each token was chosen from: the prompt's last position, then each decode step."""
        steps = list(self._decode(prompt_ids, new_tokens, keep_logits=True))
        return [token for token, _ in steps], np.stack([scores for _, scores in steps])

    def _decode(self, prompt_ids: list[int], new_tokens: int, *, keep_logits: bool) -> Iterator[tuple[int, Any]]:
        import onnxruntime_genai as og

        room = self.context - self.padded(len(prompt_ids))
        if min(room, new_tokens) <= 0:
            return
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.padded(len(prompt_ids)) + min(room, new_tokens))
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt_ids)
        while not generator.is_done():
            scores = np.array(generator.get_logits()[0, -1], dtype=np.float32) if keep_logits else None
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0]), scores

    def padded(self, tokens: int) -> int:
        return padded_length(tokens, self.chunk)


def padded_length(tokens: int, chunk: int) -> int:
    """Cache slots a prompt of `tokens` takes in og's decoder pipeline: it pads a prompt to whole chunks."""
    return -(-tokens // chunk) * chunk


def simulator_binaries(package_dir: Path, contexts: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The first SoC and its separately compiled body binaries (og stage → path in the package), which the x86 HTP
    simulator can load; a one-line error when the package was built without them."""
    soc_name, context = next(iter(contexts.items()))
    if any("simulator" not in part for part in context["parts"]):
        raise UsageError(
            f"{package_dir} ships no simulator binaries ({soc_name}/simulator/), and the x86 HTP simulator cannot "
            "load its weight-sharing pair",
            "rebuild it with --simulator-binaries (recipe: npu.simulator_binaries: true), or run it with --device cpu",
        )
    from phiexport.export.body_parts import described_parts

    return soc_name, {
        part.stage(kind): path
        for part, record in zip(described_parts(context["parts"]), context["parts"], strict=True)
        for kind, path in record["simulator"].items()
    }


def package_stop_ids(package_dir: Path) -> set[int]:
    """End-of-sequence ids from a package's genai_config.json."""
    eos = json.loads((package_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["eos_token_id"]
    return set(eos) if isinstance(eos, list) else {eos}


_registered: list[bool] = [False]


def register_qnn(og: Any) -> None:
    import onnxruntime_qnn

    if not _registered[0]:
        og.register_execution_provider_library(onnxruntime_qnn.get_ep_name(), onnxruntime_qnn.get_library_path())
        _registered[0] = True
