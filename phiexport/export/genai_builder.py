"""The onnxruntime-genai model builder, called as a library behind options we have validated.

The builder accepts unknown and outdated option names silently, so only names on BUILDER_OPTIONS (each checked
against onnxruntime-genai 0.18) can reach it, and quantize.checks verifies the graph it wrote afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phiexport.errors import BuildError
from phiexport.source import Checkpoint

BUILDER_OPTIONS = frozenset(
    {
        "algo_config",
        "block_size",
        "is_symmetric",
        "accuracy_level",
        "hf_remote",
        "shared_embeddings",
        "op_types_to_quantize",
        "prune_lm_head",
    }
)


def stage_checkpoint(checkpoint: Checkpoint, scratch: Path) -> Path:
    """The directory to give the builder: the checkpoint itself, or a symlinked copy with a fixed-up config.json."""
    prepared = checkpoint.architecture.prepare_config(checkpoint.config)
    if prepared == checkpoint.config:
        return checkpoint.path
    staged = scratch / "checkpoint"
    staged.mkdir(parents=True)
    for item in checkpoint.path.iterdir():
        if item.name != "config.json":
            (staged / item.name).symlink_to(item.resolve())
    (staged / "config.json").write_text(json.dumps(prepared, indent=2), encoding="utf-8")
    return staged


def export_with_builder(
    model_dir: Path,
    output_dir: Path,
    *,
    precision: str,
    execution_provider: str,
    options: dict[str, str],
    cache_dir: Path,
    log_path: Path,
) -> None:
    """Run the builder into `output_dir` (model.onnx, model.onnx.data, genai_config.json, tokenizer files).

    The caller routes the builder's printing into `log_path` (see export.capture); errors name that log.
    """
    unknown = set(options) - BUILDER_OPTIONS
    if unknown:
        raise ValueError(f"builder options not validated by phiexport: {sorted(unknown)}")
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from phiexport.export.streamed_nbits import streamed_weight_quantization

    pairs = [f"{key}={value}" for key, value in sorted(options.items())]
    args = ("", os.fspath(model_dir), os.fspath(output_dir), precision, execution_provider, os.fspath(cache_dir))
    try:
        extra = parse_extra_options(*args, pairs)
        with streamed_weight_quantization(cache_dir / "spill"), wheel_commit_stamped():
            create_model(*args, **extra)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BuildError(
            f"the onnxruntime-genai builder failed: {type(exc).__name__}: {first_line}",
            f"read the build log {log_path}",
        ) from exc


@contextmanager
def wheel_commit_stamped() -> Iterator[None]:
    """The builder stamps model.onnx's producer_version with `git rev-parse HEAD` of the folder five levels above
    its own file, which for a virtual environment inside a repository is that repository's commit (phiexport's,
    here): every commit would change every package's bytes. Within the block it stamps the installed wheel's own."""
    import onnxruntime_genai
    from onnxruntime_genai.models import builder

    Model = builder.LlamaModel.__mro__[-2]  # the builder imports its base as `builders.base`, its own module object
    commit = getattr(onnxruntime_genai, "__commit__", None)
    original = Model.__dict__["get_genai_commit"]
    Model.get_genai_commit = classmethod(lambda cls: commit)
    try:
        yield
    finally:
        Model.get_genai_commit = original


def set_session_options(package_dir: Path, options: dict[str, int | str]) -> None:
    """Add `options` to the decoder's session options in the package's genai_config.json."""
    if not options:
        return
    path = package_dir / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model"]["decoder"].setdefault("session_options", {}).update(options)
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
