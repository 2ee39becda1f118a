"""Where a CPU package's decode step goes: onnxruntime's profiler under onnxruntime-genai, per operator and per
MatMulNBits linear, averaged over the decode steps after a GSM8K-style prompt.

    .venv/bin/python benchmarks/decode_profile.py packages/smollm2-135m-instruct/cpu [--steps 64]

The package is opened through a view (links to its files beside a genai_config.json with profiling on), so the
package itself is not touched. The profiler adds its own cost to each step: compare packages with each other in
one run, not with decode_peers.py's timings.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

PROMPT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
    "did Natalia sell altogether in April and May? Explain step by step."
)
LINEARS = ("lm_head", "qkv", "o_proj", "gate", "up_proj", "down")  # the builder's node names


def profile(package: Path, steps: int, scratch: Path) -> list[dict]:
    """onnxruntime's trace events of `steps` greedy decode steps after PROMPT."""
    import onnxruntime_genai as og

    view = scratch / "view"
    view.mkdir()
    for item in package.iterdir():
        if item.name != "genai_config.json":
            (view / item.name).symlink_to(item.absolute())
    config = json.loads((package / "genai_config.json").read_text())
    config["model"]["decoder"].setdefault("session_options", {})["enable_profiling"] = str(scratch / "ort")
    (view / "genai_config.json").write_text(json.dumps(config))
    model = og.Model(str(view))
    ids = og.Tokenizer(model).encode(PROMPT)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + steps + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    for _ in range(steps):
        generator.generate_next_token()
    del generator, params, model  # the sessions write their profiles when the last reference goes
    (trace,) = scratch.glob("ort*.json")
    return json.loads(trace.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", type=Path, nargs="+", help="CPU package folders")
    parser.add_argument("--steps", type=int, default=64, help="decode steps (the prompt's run is left out)")
    args = parser.parse_args()
    print("| package | model run ms | kernels ms | top operators, ms per step | MatMulNBits by linear, ms |")
    print("|---|---:|---:|---|---|")
    for package in args.packages:
        with tempfile.TemporaryDirectory() as scratch:
            events = profile(package, args.steps, Path(scratch))
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
        ops: collections.Counter[str] = collections.Counter()
        linears: collections.Counter[str] = collections.Counter()
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            if any(start <= event["ts"] < end for start, end in runs):
                op = event["args"]["op_name"]
                ops[op] += event["dur"]
                if op == "MatMulNBits":
                    linears[next((k for k in LINEARS if k in event["name"]), "other")] += event["dur"]
        per_step = 1000 * len(runs)
        run_ms = sum(end - start for start, end in runs) / per_step
        top = ", ".join(f"{op} {us / per_step:.2f}" for op, us in ops.most_common(6))
        by_linear = ", ".join(f"{k} {us / per_step:.2f}" for k, us in linears.most_common())
        print(f"| {package} | {run_ms:.2f} | {sum(ops.values()) / per_step:.2f} | {top} | {by_linear} |")


if __name__ == "__main__":
    main()
