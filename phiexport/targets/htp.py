"""Qualcomm Hexagon NPU (HTP) through onnxruntime-qnn: SoC presets, sessions, offline context-binary compilation.

On x86 the same libQnnHtp runs graphs on Qualcomm's HTP simulator, so everything here runs in CI; timings from it
rank ops but say nothing about device latency. `compile_context_binary(qdq_model, context_model, soc("x-elite"))`
writes a QDQ graph's offline-compiled context binary for that SoC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiexport.errors import UsageError
from phiexport.export.capture import output_to_log


@dataclass(frozen=True)
class Soc:
    name: str  # what users pass to --soc
    soc_model: int  # QNN's soc_model number
    htp_arch: int  # Hexagon architecture version (v73 → 73)
    chip: str  # Qualcomm part number


# soc_model and htp_arch as read back from context binaries compiled by onnxruntime-qnn 2.7.0 (QNN SDK 2.51).
SOCS: dict[str, Soc] = {
    soc.name: soc
    for soc in (
        Soc("x-elite", 60, 73, "SC8380XP"),
        Soc("x2-elite", 88, 81, "SC8480XP"),
        Soc("8-gen-1", 36, 69, "SM8450"),
        Soc("8-gen-2", 43, 73, "SM8550"),
        Soc("8-gen-3", 57, 75, "SM8650"),
        Soc("8-elite", 69, 79, "SM8750"),
        Soc("sm8850", 87, 81, "SM8850"),
    )
}


def find_soc(name: str) -> Soc | None:
    """The SoC for a readable name (`x-elite`) or a part number (`SC8380XP`), case-insensitive."""
    wanted = name.strip().lower()
    for candidate in SOCS.values():
        if wanted in (candidate.name, candidate.chip.lower()):
            return candidate
    return None


def soc(name: str) -> Soc:
    """Like `find_soc`, but an unknown name is a usage error listing the known ones."""
    if (found := find_soc(name)) is None:
        raise UsageError(f"unknown SoC {name!r}", f"choose one of {', '.join(SOCS)}")
    return found


HTP_PROVIDER = "QNNExecutionProvider"
_registered: list[bool] = [False]


def _qnn_devices() -> list[Any]:
    import onnxruntime as ort
    import onnxruntime_qnn

    if not _registered[0]:
        ort.register_execution_provider_library(onnxruntime_qnn.get_ep_name(), onnxruntime_qnn.get_library_path())
        _registered[0] = True
    return [device for device in ort.get_ep_devices() if device.ep_name == HTP_PROVIDER]


def htp_session_options(
    target: Soc,
    *,
    context_path: Path | None = None,
    embed: bool = False,
    share: str | None = None,
    profiling: tuple[str, Path] | None = None,
) -> Any:
    """SessionOptions that put every node on the HTP or fail (CPU fallback disabled).

    With `context_path`, creating a session compiles the graph and writes `context_path` (an ONNX model holding one
    EPContext node) beside a `.bin` context binary, or inside it when `embed`. `share` ("open" or "last") puts the
    graphs of consecutive sessions into one context binary holding their common weights once; "last" closes it.
    `profiling` (level, CSV path) has QNN write its own profile, cycles included at level "detailed".
    """
    import onnxruntime as ort
    import onnxruntime_qnn

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_path is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_path))
        options.add_session_config_entry("ep.context_embed_mode", "1" if embed else "0")
    if share is not None:
        options.add_session_config_entry("ep.share_ep_contexts", "1")
        if share == "last":
            options.add_session_config_entry("ep.stop_share_ep_contexts", "1")
    provider_options = {
        "backend_path": onnxruntime_qnn.get_qnn_htp_path(),
        "soc_model": str(target.soc_model),
        # block-wise int4 weights become Qualcomm's integer LPBQ encoding; without it each such MatMul runs in fp16
        "enable_block_quant_weight_optimization": "1",
    }
    if profiling is not None:
        provider_options |= {"profiling_level": profiling[0], "profiling_file_path": str(profiling[1])}
    options.add_provider_for_devices(_qnn_devices(), provider_options)
    return options


def htp_session(model_path: Path, target: Soc) -> Any:
    """An InferenceSession running `model_path` (a QDQ graph or a compiled `*_ctx.onnx`) entirely on the HTP. The QNN
    libraries print banners on the process's stdout, which would corrupt `--json`: they go to /dev/null."""
    import onnxruntime as ort

    options = htp_session_options(target)
    with output_to_log(Path(os.devnull)):
        return ort.InferenceSession(str(model_path), sess_options=options)


def node_providers(profile: Path) -> dict[str, int]:
    """How many nodes ran on each execution provider, read from an onnxruntime profile (a session's
    `enable_profiling` output). A graph compiled whole into a context binary shows one QNN node."""
    import json

    events = json.loads(profile.read_text(encoding="utf-8"))
    nodes = {
        (event["name"], event["args"]["provider"])
        for event in events
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")  # one per node run
    }
    counts: dict[str, int] = {}
    for _name, provider in nodes:
        counts[provider] = counts.get(provider, 0) + 1
    return counts


@contextmanager
def _named_by_file_name(model_path: Path) -> Iterator[str]:
    """Yield the name to load `model_path` by, from inside its folder.

    onnxruntime names each compiled partition after a hash of the model path it was given, and the name is written
    into the context binary and its EPContext node: an absolute (temporary, per-build) path would make every build's
    binaries differ. Loaded by file name alone, two builds of the same graphs give byte-identical binaries."""
    previous = Path.cwd()
    os.chdir(model_path.parent)
    try:
        yield model_path.name
    finally:
        os.chdir(previous)


def compile_context_binary(model_path: Path, context_path: Path, target: Soc) -> Path:
    """Compile `model_path` for `target` into `context_path` (+ its `.bin`); returns `context_path`."""
    import onnxruntime as ort

    context_path = context_path.absolute()
    with _named_by_file_name(model_path) as name:
        ort.InferenceSession(name, sess_options=htp_session_options(target, context_path=context_path))
    if not context_path.is_file():
        raise RuntimeError(f"onnxruntime-qnn wrote no context model at {context_path}")
    return context_path


def compile_shared_context(models: list[Path], output_dir: Path, target: Soc) -> tuple[list[Path], list[Any]]:
    """Compile `models` into one weight-sharing context binary in `output_dir`; returns the `*_ctx.onnx` paths and the
    compiling sessions, which stay usable for running the graphs.

    On x86 the QNN stub refuses to load a shared binary ("Shared weights buffer isn't supported on this platform"),
    so these sessions, or a separately compiled pair, are what the simulator can run (docs/npu.md).
    """
    import onnxruntime as ort

    output_dir.mkdir(parents=True, exist_ok=True)
    paths, sessions = [], []
    for index, model in enumerate(models):
        context_path = output_dir.absolute() / f"{model.stem}_ctx.onnx"
        share = "last" if index == len(models) - 1 else "open"
        options = htp_session_options(target, context_path=context_path, share=share)
        with _named_by_file_name(model) as name:
            sessions.append(ort.InferenceSession(name, sess_options=options))
        if not context_path.is_file():
            raise RuntimeError(f"onnxruntime-qnn wrote no context model at {context_path}")
        paths.append(context_path)
    return paths, sessions
