"""Write a full-size random checkpoint with a bundled recipe's published structure, for the scale benchmarks.

    .venv/bin/python benchmarks/full_size_checkpoint.py phi-4-mini-instruct /data/phi4-mini-shape
    .venv/bin/python benchmarks/full_size_checkpoint.py phi-4 /data/phi4-2-layers --layers 2

config.json at the published sizes (Phi-4-mini: 32 layers, hidden 3072, 24 heads, 8 KV heads, head_dim 128,
vocab 200064, LongRoPE, tied embeddings), bf16 safetensors shards with an index, weights from a fixed seed
(normal, std 0.02; norms 1), a small tokenizer with the recipe's chat format. Tensors are made one at a time and
written a shard at a time, so writing it needs one shard of memory, never the model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phiexport.recipe import load_recipe
from tests.miniatures import checkpoint_config, save_recipe_tokenizer

SHARD_BYTES = 2 * 2**30


def parameter_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every stored parameter (a tied lm_head once, as checkpoints store it), from a meta model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    return {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def write_checkpoint(recipe_name: str, directory: Path, seed: int, layers: int | None = None) -> tuple[int, int]:
    """Returns (parameters, bytes on disk of the weights). `layers` keeps the published width and vocabulary with
    fewer decoder layers: two such checkpoints give per-layer figures to project the whole model from."""
    recipe = load_recipe(recipe_name)
    assert recipe.structure is not None, f"{recipe_name} records no structure"
    directory.mkdir(parents=True, exist_ok=True)
    config = checkpoint_config(recipe.structure, *save_recipe_tokenizer(recipe, directory), miniature=False)
    config["torch_dtype"] = "bfloat16"
    config["num_hidden_layers"] = layers or config["num_hidden_layers"]
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shapes = parameter_shapes(directory)

    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        tensor_bytes = 2 * math.prod(shape)
        if shards[-1] and size + tensor_bytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += tensor_bytes

    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    for index, names in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: random_tensor(n, shapes[n], generator) for n in names}, directory / file_name, {"format": "pt"})
        weight_map.update(dict.fromkeys(names, file_name))
        print(f"  {file_name}: {len(names)} tensors", flush=True)
    total = sum(2 * math.prod(s) for s in shapes.values())
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    parameters = sum(math.prod(s) for s in shapes.values())
    return parameters, sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="bundled recipe whose structure to use, e.g. phi-4-mini-instruct")
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, help="decoder layers (default: the published count)")
    args = parser.parse_args()
    start = time.perf_counter()
    parameters, size = write_checkpoint(args.recipe, args.output, args.seed, args.layers)
    print(
        f"{args.output}: {parameters / 1e9:.2f} B parameters, {size / 1e9:.2f} GB bf16, "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
