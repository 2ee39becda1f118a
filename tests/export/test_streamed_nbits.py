import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import phiexport.export.streamed_nbits as streamed
from phiexport.export.genai_builder import export_with_builder
from phiexport.recipe import load_recipe
from phiexport.targets.cpu import CPU
from tests.miniatures import make_recipe_miniature

OPTIONS = {"block_size": "32", "is_symmetric": "true", "accuracy_level": "4"}


@pytest.fixture(scope="module")
def untied_miniature(tmp_path_factory):
    """Phi-4's structure, whose token embedding is not the LM head."""
    return make_recipe_miniature(load_recipe("phi-4"), tmp_path_factory.mktemp("mini-phi-4"))


def builder_alone(
    model_dir: Path, output: Path, execution_provider: str, options: dict[str, str], precision: str = "int4"
) -> None:
    """The genai builder as it ships, quantizing the whole graph in memory."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    args = ("", os.fspath(model_dir), os.fspath(output), precision, execution_provider, os.fspath(output) + "-cache")
    create_model(*args, **parse_extra_options(*args, [f"{k}={v}" for k, v in sorted(options.items())]))


def graph_and_weights(package: Path) -> tuple[list[tuple], dict[str, np.ndarray]]:
    model = onnx.load(package / "model.onnx")
    nodes = sorted(
        (
            n.op_type,
            n.name,
            tuple(n.input),
            tuple(n.output),
            tuple(sorted(str(a).replace("\n", " ") for a in n.attribute)),
        )
        for n in model.graph.node
    )
    return nodes, {i.name: numpy_helper.to_array(i, base_dir=str(package)) for i in model.graph.initializer}


@pytest.mark.parametrize(
    ("architecture", "execution_provider"),
    [("phi3", "cpu"), ("phi3", "dml"), ("llama", "cpu"), ("untied", "cpu"), ("untied-int8", "cpu")],
)
def test_streamed_quantization_writes_exactly_what_the_builder_writes(
    architecture, execution_provider, miniature_dirs, request, tmp_path, monkeypatch
):
    """Same nodes, same initializers, the same external data file byte for byte, and the streamed path was taken
    (Phi-3's re-packed qkv copy spilled to a mapped file on the way; an untied embedding's table quantized too, or
    left in float at 8 bits)."""
    calls = []
    lazy = streamed._lazy_to_nbits
    monkeypatch.setattr(streamed, "_lazy_to_nbits", lambda builder: calls.append(1) or lazy(builder))
    monkeypatch.setattr(streamed, "SPILL_BYTES", 1024)
    monkeypatch.setattr(streamed, "COLUMNS_PER_CHUNK", 96)  # several chunks of rows and columns
    untied = architecture.startswith("untied")
    precision = "int8" if architecture.endswith("int8") else "int4"
    model_dir = request.getfixturevalue("untied_miniature") if untied else miniature_dirs[architecture]
    options = {**OPTIONS, **(dict(CPU.builder_options) if execution_provider == "cpu" else {})}
    builder_alone(model_dir, tmp_path / "builder", execution_provider, options, precision)
    export_with_builder(
        model_dir,
        tmp_path / "streamed",
        precision=precision,
        execution_provider=execution_provider,
        options=options,
        cache_dir=tmp_path / "cache",
        log_path=tmp_path / "build.log",
    )
    assert calls == [1]
    nodes, weights = graph_and_weights(tmp_path / "streamed")
    reference_nodes, reference_weights = graph_and_weights(tmp_path / "builder")
    assert nodes == reference_nodes
    assert weights.keys() == reference_weights.keys()
    for name, values in weights.items():
        assert values.dtype == reference_weights[name].dtype and np.array_equal(values, reference_weights[name]), name
    data = (tmp_path / "streamed" / "model.onnx.data").read_bytes()
    assert data == (tmp_path / "builder" / "model.onnx.data").read_bytes()
    assert list((tmp_path / "cache" / "spill").iterdir()) == []  # spill files are unlinked once mapped
    if untied:  # int4 blocks; at 8 bits onnxruntime's quantizer leaves the table in float
        embedding = [node[0] for node in nodes if "embed_tokens" in node[1]]
        assert embedding == (["GatherBlockQuantized"] if precision == "int4" else ["Gather"])
