"""GPTQ a decoder layer at a time, as a calibrated build runs it, on a chosen device: wall time and peak memory per
layer, the projection to the whole model, and (with `--compare`) the share of codes equal to another run's.

    .venv/bin/python benchmarks/full_size_checkpoint.py phi-4-mini-instruct /data/mini-l2 --layers 2
    .venv/bin/python benchmarks/gptq_layers.py /data/mini-l2 --device cpu --save /data/codes-cpu.pt
    .venv/bin/python benchmarks/gptq_layers.py /data/mini-l2 --device cuda --compare /data/codes-cpu.pt

The calibration text is the recipe default's (64 GSM8K train conversations of up to 512 tokens, seed 0; fewer with
`--sequences`), the grid int4 block 32 symmetric. The checkpoint's layers are read one at a time from its files
(source/layered.py), like `phiexport build`'s preparation. `--layers-total` projects the whole model from the mean
time per layer (32 for Phi-4-mini).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from transformers import AutoTokenizer

    from phiexport.evaluate.data import calibration_sequences
    from phiexport.quantize.calibrated import quantization_units
    from phiexport.quantize.device import calibration_device, describe_device
    from phiexport.quantize.grid import BlockGrid
    from phiexport.quantize.layerwise import LayerwiseQuantizer
    from phiexport.source.layered import LayeredModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--sequences", type=int, default=64, help="calibration conversations (the recipes' 64)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--layers-total", type=int, default=32, help="layers of the real model, for the projection")
    parser.add_argument("--save", type=Path, help="write every layer's codes here (torch.save)")
    parser.add_argument("--compare", type=Path, help="a --save file of another run: share of equal codes per linear")
    args = parser.parse_args()

    device = calibration_device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    sequences = calibration_sequences(tokenizer, args.sequences, args.max_tokens, seed=0)
    source = LayeredModel(args.checkpoint)
    grid = BlockGrid(4, 32, symmetric=True)
    grids = {name: grid for unit in quantization_units(source.model) for name in unit}
    start = time.perf_counter()
    quantizer = LayerwiseQuantizer(source.model, sequences, grids, "gptq", device=device)
    print(f"device {describe_device(device)}, {len(sequences)} sequences, {sum(map(len, sequences))} tokens")
    print(f"first layer's inputs: {time.perf_counter() - start:.1f} s\n")
    print("| layer | wall s | peak GPU GiB | peak RSS GiB |")
    print("|---:|---:|---:|---:|")
    codes: dict[str, torch.Tensor] = {}
    times = []
    for index in range(source.num_layers):
        layer = source.layer(index)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        weights = quantizer.quantize(index, layer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        print(f"| {index} | {times[-1]:.1f} | {gpu:.2f} | {rss:.2f} |")
        codes.update({name: weight.codes for name, weight in weights.items()})
        source.release(layer)
    mean = sum(times) / len(times)
    print(f"\nmean {mean:.1f} s a layer; {args.layers_total} layers: {args.layers_total * mean / 60:.1f} min")
    if args.save:
        torch.save(codes, args.save)
    if args.compare:
        other = torch.load(args.compare)
        print("\n| linear | codes equal |\n|---|---:|")
        for name, value in codes.items():
            print(f"| {name} | {100 * (value == other[name]).float().mean():.2f} % |")


if __name__ == "__main__":
    main()
