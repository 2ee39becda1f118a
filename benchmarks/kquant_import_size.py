"""Package ÷ GGUF size of a K-quant import: a Q4_K_M GGUF of the Llama 3.2 3B recipe miniature (hidden 768, MLP
2048, so every row is whole 256-weight super-blocks), made with llama.cpp's own converter and quantizer, imported by
`phiexport build --target cpu`, by default (the GGUF's own integers, int8 activations) and exact (`--accuracy-level 1`).

    .venv/bin/python benchmarks/kquant_import_size.py /tmp/kq --llama-cpp /path/to/llama.cpp --llama-venv /path/to/venv

`--llama-cpp` is llama.cpp's source tree for convert_hf_to_gguf.py (llama-cpp-python's sdist carries it in
vendor/llama.cpp); `--llama-venv` has llama-cpp-python, whose binding runs llama.cpp's quantizer. The miniature's
tokenizer is a tokenizer.json alone, unknown to the converter's pre-tokenizer table, so the converter runs with
the sentencepiece lookups skipped and the pre-tokenizer named `gpt-4o`: neither touches a weight.

Prints the GGUF's tensor bytes by type and the package's initializer bytes: weights (codes, scales, minimums), the
rotary tables (a miniature's 16 K-position cos/sin caches outweigh its two layers) and norms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

CONVERT = """
import runpy, sys
sys.path[:0] = [".", "gguf-py"]
import conversion.base as base

def no_sentencepiece(self):
    raise FileNotFoundError("tokenizer.json only")

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-4o"
base.TextModel._set_vocab_sentencepiece = no_sentencepiece
base.TextModel._set_vocab_llama_hf = no_sentencepiece
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
"""

QUANTIZE = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def make_gguf(scratch: Path, llama_cpp: Path, venv: Path, kind: str) -> Path:
    from phiexport.recipe import load_recipe
    from tests.miniatures import make_recipe_miniature

    model = scratch / "llama-3.2-3b-mini"
    if not model.exists():
        make_recipe_miniature(load_recipe("llama-3.2-3b-instruct"), model)
    f32, quantized = scratch / "mini-f32.gguf", scratch / f"mini-{kind}.gguf"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(
        [sys.executable, "-c", CONVERT, str(model), "--outtype", "f32", "--outfile", str(f32)],
        cwd=llama_cpp,
        check=True,
        **quiet,
    )
    subprocess.run([str(venv / "bin" / "python"), "-c", QUANTIZE, str(f32), str(quantized), kind], check=True, **quiet)
    return quantized


def gguf_bytes(path: Path) -> dict[str, int]:
    """The GGUF's tensor bytes by type."""
    from gguf import GGUFReader

    sizes: Counter[str] = Counter()
    for tensor in GGUFReader(path).tensors:
        sizes[tensor.tensor_type.name] += int(tensor.n_bytes)
    return dict(sizes)


def package_bytes(package: Path) -> Counter[str]:
    import onnx

    model = onnx.load(str(package / "model.onnx"), load_external_data=False)
    sizes: Counter[str] = Counter()
    for tensor in model.graph.initializer:
        length = next((int(entry.value) for entry in tensor.external_data if entry.key == "length"), None)
        kind = "rotary tables" if "cache" in tensor.name else "norms" if "norm" in tensor.name else "weights"
        sizes[kind] += len(tensor.raw_data) if length is None else length
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp's source tree")
    parser.add_argument("--llama-venv", type=Path, required=True, help="a venv with llama-cpp-python")
    parser.add_argument("--kind", default="Q4_K_M", help="llama.cpp's quantization mix (LLAMA_FTYPE_MOSTLY_<kind>)")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    gguf = make_gguf(args.scratch, args.llama_cpp, args.llama_venv, args.kind)
    builds = {"default (int8 activations)": (), "exact (--accuracy-level 1)": ("--accuracy-level", "1")}
    written = {}
    for label, flags in builds.items():
        package = args.scratch / ("_".join(flag.strip("-") for flag in flags) or "default")
        command = [sys.executable, "-m", "phiexport", "build", str(gguf), "-t", "cpu", *flags, "-o", str(package)]
        subprocess.run([*command, "--force", "--json"], check=True, stdout=subprocess.DEVNULL, env=os.environ)
        written[label] = package_bytes(package / "cpu")
        written[label]["model.onnx + data"] = sum(p.stat().st_size for p in (package / "cpu").glob("model.onnx*"))
    source = gguf_bytes(gguf)
    tensors = sum(source.values())
    print(
        f"GGUF {gguf.name}: {gguf.stat().st_size / 1e6:.2f} MB, tensors {tensors / 1e6:.2f} MB "
        f"({', '.join(f'{k} {v / 1e6:.2f}' for k, v in sorted(source.items()))})"
    )
    print("| package part | " + " | ".join(f"{label}: MB | ÷ GGUF tensors" for label in builds) + " |")
    print("|---|" + "---:|---:|" * len(builds))
    for kind in ["weights", "rotary tables", "norms", "model.onnx + data"]:
        cells = [f"{sizes[kind] / 1e6:.2f} | {sizes[kind] / tensors:.3f}" for sizes in written.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
