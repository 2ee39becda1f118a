"""Greedy text from an NPU package with onnxruntime-genai alone (no phiexport import), as a device app runs it.

    python benchmarks/og_plain.py packages/smollm2-135m-instruct/npu --device cpu
    python benchmarks/og_plain.py packages/smollm2-135m-instruct/npu --device htp-sim

`cpu` points the body stages of the package's genai_config.json at its QDQ graphs (body*.onnx) on the CPU EP;
`htp-sim` points them at the separately compiled context binaries in <soc>/simulator/ and runs them through
onnxruntime-qnn's plugin on Qualcomm's HTP simulator (x86 cannot load the weight-sharing pair a device loads). Every
other byte of the package is used as shipped. Prints a table: prompt, its token count, og's greedy reply.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnxruntime_genai as og

LONG = (
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from the sun "
    "evaporates water from seas, lakes and rivers; plants release more through their leaves. The vapour rises, cools "
    "and condenses into droplets that form clouds. When the droplets grow heavy they fall as rain, snow or hail. Some "
    "of that water runs off into rivers and back to the sea, some soaks into the ground and refills aquifers, and "
    "some is taken up by plants. Glaciers and ice caps store water for thousands of years before it melts. Human "
    "activity changes the cycle too: cities cover soil that once absorbed rain, farms draw water from rivers and "
    "wells, and a warmer climate holds more vapour, which makes heavy rain more intense. Explain in two sentences "
    "why a warmer climate makes heavy rain more intense."
)


def open_model(package: Path, device: str, scratch: Path) -> og.Model:
    config = json.loads((package / "genai_config.json").read_text())
    stages = [stage for entry in config["model"]["decoder"]["pipeline"] for stage in entry.values()]
    bodies = [stage for stage in stages if "_ctx.onnx" in stage["filename"]]
    if device == "cpu":  # the QDQ graph each context binary was compiled from, no QNN options
        for stage in bodies:
            stage["filename"] = Path(stage["filename"]).name.replace("_ctx.onnx", ".onnx")
            stage.pop("session_options", None)
        for item in package.iterdir():
            if item.name != "genai_config.json":
                (scratch / item.name).symlink_to(item.absolute())
        (scratch / "genai_config.json").write_text(json.dumps(config))
        return og.Model(str(scratch))
    import onnxruntime_qnn

    og.register_execution_provider_library(onnxruntime_qnn.get_ep_name(), onnxruntime_qnn.get_library_path())
    overlay = [
        {
            name: {"filename": str(Path(stage["filename"]).parent / "simulator" / Path(stage["filename"]).name)}
            for name, stage in entry.items()
            if "_ctx.onnx" in stage["filename"]
        }
        for entry in config["model"]["decoder"]["pipeline"]
    ]
    model_config = og.Config(str(package))
    model_config.overlay(json.dumps({"model": {"decoder": {"pipeline": overlay}}}))
    return og.Model(model_config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--device", choices=("cpu", "htp-sim"), default="cpu")
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = open_model(args.package, args.device, Path(scratch))
        tokenizer = og.Tokenizer(model)

        def chat(text: str) -> str:
            messages = json.dumps([{"role": "user", "content": text}])
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True)

        prompts = [
            ("1 token", "Hello", args.new_tokens),
            (
                "raw, ~20 tokens",
                "Question: What is the capital of France, and which river runs through it?\nAnswer:",
                args.new_tokens,
            ),
            ("chat, ~200 tokens", chat(LONG), args.new_tokens),
            ("raw", "The opposite of hot is", 16),
        ]
        decoder = json.loads((args.package / "genai_config.json").read_text())["model"]
        chunk, context = decoder["decoder"]["sliding_window"]["window_size"], decoder["context_length"]
        print(f"| prompt | tokens | og greedy reply ({args.device}) | s |\n| --- | --- | --- | --- |")
        for label, text, new_tokens in prompts:
            ids = tokenizer.encode(text)
            params = og.GeneratorParams(model)
            padded = -(-len(ids) // chunk) * chunk  # og pads a prompt to whole chunks; the pads take cache slots
            params.set_search_options(do_sample=False, max_length=min(padded + new_tokens, context))
            generator = og.Generator(model, params)
            start = time.perf_counter()
            generator.append_tokens(ids)
            reply = []
            while not generator.is_done():
                generator.generate_next_token()
                reply.append(int(generator.get_next_tokens()[0]))
            seconds = time.perf_counter() - start
            print(f"| {label} | {len(ids)} | {tokenizer.decode(reply)!r} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
