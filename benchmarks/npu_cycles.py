"""HTP simulator cycles per prefill chunk and per decode step of an NPU package's bodies, from QNN's own profile.

    python benchmarks/npu_cycles.py packages/smollm2-135m-instruct/npu [more packages...]

Loads each body's separately compiled context binary (`<soc>/simulator/`, CPU fallback disabled) with QNN profiling
at level `detailed`, runs it three times on zero inputs, and reads "Accelerator (execute) time (cycles)" of the last
run from QNN's CSV, beside the wall time of that run. Simulator cycles rank graphs; they do not predict device latency.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from phiexport.targets.htp import htp_session_options, soc

TYPES = {"tensor(float)": np.float32, "tensor(uint16)": np.uint16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def body_cycles(context_model: Path, soc_name: str, profile: Path) -> tuple[int, float]:
    import onnxruntime as ort

    options = htp_session_options(soc(soc_name), profiling=("detailed", profile))
    session = ort.InferenceSession(str(context_model), sess_options=options)
    feed = {i.name: np.zeros(i.shape, dtype=TYPES[i.type]) for i in session.get_inputs()}
    for _ in range(3):
        start = time.perf_counter()
        session.run(None, feed)
        seconds = time.perf_counter() - start
    del session
    with profile.open(newline="") as handle:
        cycles = [
            int(row["Time"])
            for row in csv.DictReader(handle)
            if row["Event Identifier"].endswith("(cycles)")
            and row["Event Identifier"].startswith("Accelerator (execute)")
        ]
    return cycles[-1], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", type=Path, nargs="+")
    args = parser.parse_args()
    print("| package | body | cycles | wall s |\n| --- | --- | --- | --- |")
    for package in args.packages:
        soc_name, context = next(iter(json.loads((package / "npu_pipeline.json").read_text())["contexts"].items()))
        for index, part in enumerate(context["parts"]):
            for body, path in part["simulator"].items():
                with tempfile.TemporaryDirectory() as scratch:
                    cycles, seconds = body_cycles(package / path, soc_name, Path(scratch) / "qnn.csv")
                print(f"| {package} | {body}_{index} | {cycles / 1e6:.1f} M | {seconds:.2f} |")


if __name__ == "__main__":
    main()
