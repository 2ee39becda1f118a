"""`phiexport build --quant gptq --mixed auto` end to end on the miniature Phi-4-mini: the CPU and NPU packages hold
the same calibrated integers, the int4/int8 choice is in the manifest, and the same inputs give the same package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from phiexport.quantize.device import calibration_device, describe_device, session_providers
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def recipe(mini_phi4: Path, directory: Path, targets: list[str]) -> Path:
    path = directory / "calibrated.yaml"
    data = {
        "version": 1,
        "name": "mini-gptq",
        "source": {"model": str(mini_phi4)},
        "targets": targets,
        "quantization": {"method": "gptq", "mixed": "auto", "mixed_bits": 4.5},
        "calibration": {"sequences": 8, "max_tokens": 128},
        "evaluation": {"sequences": 4, "greedy_prompts": 1, "greedy_tokens": 8},
        "npu": {
            "rotate": False,
            "context_length": 256,
            "activation_sequences": 4,
            "simulator_decode_tokens": 1,
            "qdq_bodies": True,  # the tests read the body integers from them
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def build(recipe_path: Path, output: Path) -> Path:
    result = run_cli("build", "--recipe", str(recipe_path), "-o", str(output), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def packages(mini_phi4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("calibrated")
    return build(recipe(mini_phi4, directory, ["cpu", "npu"]), directory / "out")


def signed_cpu_codes(model_path: Path) -> dict[str, np.ndarray]:
    """Signed integer codes `[N, K]` of every decoder MatMulNBits node (symmetric: stored code − 2^(bits−1))."""
    model = onnx.load(str(model_path))
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    codes = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.name.startswith("/lm_head"):
            continue
        attrs = {attribute.name: attribute.i for attribute in node.attribute}
        packed = numpy_helper.to_array(tensors[node.input[1]]).reshape(attrs["N"], -1)
        if attrs["bits"] == 4:
            packed = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(attrs["N"], -1)
        codes[node.name] = packed[:, : attrs["K"]].astype(np.int16) - (1 << (attrs["bits"] - 1))
    return codes


def npu_codes(model_path: Path) -> list[np.ndarray]:
    model = onnx.load(str(model_path))
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    return [
        numpy_helper.to_array(tensors[node.input[0]]).T.astype(np.int16)
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and tensors.get(node.input[0]) is not None
        and tensors[node.input[0]].data_type in (onnx.TensorProto.INT4, onnx.TensorProto.INT8)
        and len(tensors[node.input[0]].dims) == 2
    ]


def test_manifest_records_the_mixed_choice(packages: Path) -> None:
    weights = json.loads((packages / "cpu" / "manifest.json").read_text())["weights"]
    mixed = weights["calibrated"]["mixed"]
    assert weights["calibrated"]["method"] == "gptq"
    assert 4.0 < mixed["mean_bits"] <= 4.5 and mixed["int8"]
    assert weights["nodes_by_bits"]["int8"] >= len(mixed["int8"])


def covered_by(codes: np.ndarray, candidates: list[np.ndarray]) -> bool:
    """True when every row of `codes` lies in a row block equal to one of `candidates`, or `codes` is a row block
    of one: the CPU graph packs q/k/v and splits gate/up, the NPU graph keeps other groupings."""
    starts: dict[bytes, list[int]] = {}
    for index, row in enumerate(codes):
        starts.setdefault(row.tobytes(), []).append(index)
    rows = np.zeros(len(codes), dtype=bool)
    for weight in candidates:
        if weight.shape[1] != codes.shape[1]:
            continue
        if len(weight) > len(codes):
            inner = {weight[i].tobytes(): i for i in range(len(weight) - len(codes) + 1)}
            at = inner.get(codes[0].tobytes())
            rows |= at is not None and np.array_equal(weight[at : at + len(codes)], codes)
            continue
        for at in starts.get(weight[0].tobytes(), []):
            if np.array_equal(codes[at : at + len(weight)], weight):
                rows[at : at + len(weight)] = True
    return bool(rows.all())


def test_cpu_and_npu_packages_hold_the_same_integers(packages: Path) -> None:
    cpu = signed_cpu_codes(packages / "cpu" / "model.onnx")
    npu = npu_codes(packages / "npu" / "body0_decode.onnx")
    assert len(cpu) == 2 * 5  # two layers of qkv, o, gate, up, down
    for name, codes in cpu.items():
        assert covered_by(codes, npu), name


def test_same_recipe_builds_the_same_cpu_weights(packages: Path, mini_phi4: Path, tmp_path: Path) -> None:
    again = build(recipe(mini_phi4, tmp_path, ["cpu"]), tmp_path / "again")
    first = (packages / "cpu" / "model.onnx.data").read_bytes()
    assert (again / "cpu" / "model.onnx.data").read_bytes() == first


def test_npu_alone_runs_gptq_a_layer_at_a_time_to_the_cpu_packages_integers(mini_phi4: Path, tmp_path: Path) -> None:
    """Without a CPU target to reuse, the NPU build runs GPTQ itself as it walks the layers: the same integers as
    the CPU build's preparation (which tests/quantize/test_prepare.py ties to the whole model's GPTQ)."""
    outputs = {}
    for target in ("cpu", "npu"):
        directory = tmp_path / target
        directory.mkdir()
        path = recipe(mini_phi4, directory, [target])
        data = yaml.safe_load(path.read_text())
        data["quantization"]["mixed"] = "off"
        path.write_text(yaml.safe_dump(data))
        outputs[target] = build(path, directory / "out")
    manifest = json.loads((outputs["npu"] / "npu" / "manifest.json").read_text())
    assert manifest["weights"]["calibrated"]["method"] == "gptq"
    assert manifest["weights"]["calibrated"]["device"] == describe_device(calibration_device("auto"))
    provider = manifest["weights"]["calibration"]["activations_provider"]
    assert provider == session_providers(calibration_device("auto"))[0]
    npu = npu_codes(outputs["npu"] / "npu" / "body0_decode.onnx")
    for name, codes in signed_cpu_codes(outputs["cpu"] / "cpu" / "model.onnx").items():
        assert covered_by(codes, npu), name
