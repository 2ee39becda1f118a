"""An NPU package run by onnxruntime-genai, as a device app runs it: the package's own genai_config.json, with only
the body stages pointed at what this machine can execute.

`htp-sim`: the separately compiled context binaries of the first SoC (`<soc>/simulator/`), with the package's own QNN
options, through onnxruntime-qnn's plugin on the HTP simulator; the weight-sharing pair a device loads cannot load on
x86 (docs/npu.md). `cpu`: the QDQ body graphs on the CPU execution provider, read through a view of the package (a
folder of links beside a config without the QNN options: og's config overlay cannot empty a stage's provider list).
The embeddings and LM head stages run on the CPU in both, as on the device.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phiexport.export.capture import output_to_log
from phiexport.runtime.static_pipeline import simulator_binaries

BODY_STAGES = ("prefill", "decode")


@contextmanager
def genai_model(package_dir: Path, device: str) -> Iterator[Any]:
    """`og.Model` of the NPU package in `package_dir` on `device` (cpu or htp-sim), for the length of the block (og
    reads the tokenizer from the model's folder, so the cpu view lives as long)."""
    import onnxruntime_genai as og

    from phiexport.targets.npu import PIPELINE_FILE

    config = json.loads((package_dir / "genai_config.json").read_text(encoding="utf-8"))
    pipeline = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))
    entries = config["model"]["decoder"]["pipeline"]  # a list of {stage name: stage}
    if device == "cpu":
        for entry in entries:
            for name, stage in entry.items():
                if name in BODY_STAGES:
                    stage["filename"] = pipeline["graphs"][name]  # the QDQ graph
                    stage.pop("session_options", None)
        with tempfile.TemporaryDirectory(prefix="phiexport-genai-") as scratch:
            view = Path(scratch)
            for item in package_dir.iterdir():
                if item.name != "genai_config.json":
                    (view / item.name).symlink_to(item.absolute())
            (view / "genai_config.json").write_text(json.dumps(config), encoding="utf-8")
            yield og.Model(str(view))
        return
    _soc, binaries = simulator_binaries(package_dir, pipeline["contexts"])
    register_qnn(og)
    overlay = [{name: {"filename": binaries[name]} for name in entry if name in BODY_STAGES} for entry in entries]
    model_config = og.Config(str(package_dir))
    model_config.overlay(json.dumps({"model": {"decoder": {"pipeline": overlay}}}))
    with output_to_log(Path(os.devnull)):  # the QNN libraries print banners on stdout, which would corrupt --json
        model = og.Model(model_config)
    yield model


_registered: list[bool] = [False]


def register_qnn(og: Any) -> None:
    import onnxruntime_qnn

    if not _registered[0]:
        og.register_execution_provider_library(onnxruntime_qnn.get_ep_name(), onnxruntime_qnn.get_library_path())
        _registered[0] = True
