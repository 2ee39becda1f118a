"""Where calibration runs (`--device auto|cpu|cuda`): the CPU without a GPU, a one-line refusal of a GPU that is not
there, and on a CUDA GPU the CPU's codes, sensitivities and reference logits (tested only where torch sees one)."""

import numpy as np
import onnxruntime
import pytest
import torch

from phiexport.evaluate.data import calibration_sequences
from phiexport.quantize.calibrated import quantization_units
from phiexport.quantize.device import calibration_device, describe_device, session_providers
from phiexport.quantize.grid import BlockGrid
from phiexport.quantize.layerwise import LayerwiseQuantizer
from tests.conftest import assert_one_line_error, run_cli

NO_GPU = not torch.cuda.is_available()


def test_auto_and_cpu_name_the_device_torch_can_use():
    assert calibration_device("cpu") == torch.device("cpu")
    assert calibration_device("auto").type == ("cpu" if NO_GPU else "cuda")
    assert describe_device(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU, so --device cuda is not refused")
def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path):
    result = run_cli("build", "--device", "cuda", "-t", "cpu", "-o", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "--device cuda", "sees no CUDA GPU", "--device cpu")
    assert not (tmp_path / "out").exists()


def _layer_codes(model_dir, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sequences = calibration_sequences(AutoTokenizer.from_pretrained(model_dir), 8, 128, seed=0)
    grid = BlockGrid(4, 32, symmetric=True)
    grids = {name: grid for unit in quantization_units(model) for name in unit if ".layers.0." in name}
    quantizer = LayerwiseQuantizer(model, sequences, grids, "gptq", device=device)
    layer = model.model.layers[0]
    codes = quantizer.quantize(0, layer)
    assert next(layer.parameters()).device.type == "cpu"  # back where it came from, for the checkpoint writer
    return {name: weight.codes for name, weight in codes.items()}


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (CI has none); the CPU path runs in every GPTQ test")
def test_gptq_on_cuda_gives_the_cpus_codes(mini_phi4):
    """Measured on an H200 with a Phi-4-mini-shaped layer: 99.8-99.9 % of the codes equal, 95.6 % for down_proj (the
    reduction order moves some columns' error feedback). The miniature's layers are narrower: at least 95 % each."""
    on_cpu = _layer_codes(mini_phi4, torch.device("cpu"))
    on_gpu = _layer_codes(mini_phi4, torch.device("cuda"))
    for name, codes in on_cpu.items():
        assert on_gpu[name].device.type == "cpu"
        assert (on_gpu[name] == codes).float().mean() >= 0.95, name


def test_the_device_path_on_the_cpu_gives_the_default_paths_codes(mini_phi4):
    """The device-generic path (layer moved to the device and back, calls moved once) on the CPU: the codes the
    layer-at-a-time GPTQ always computed here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phiexport.quantize.layerwise import quantize_layerwise

    model = AutoModelForCausalLM.from_pretrained(mini_phi4, dtype=torch.float32).eval()
    sequences = calibration_sequences(AutoTokenizer.from_pretrained(mini_phi4), 8, 128, seed=0)
    grid = BlockGrid(4, 32, symmetric=True)
    grids = {name: grid for unit in quantization_units(model) for name in unit if ".layers.0." in name}
    default = quantize_layerwise(model, sequences, grids, "gptq")
    moved = _layer_codes(mini_phi4, torch.device("cpu"))
    assert set(moved) == set(default) and len(moved) >= 4
    for name, codes in moved.items():
        assert torch.equal(codes, default[name].codes), name


def test_activation_calibration_takes_cuda_only_from_an_onnxruntime_that_has_it():
    assert session_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    on_cuda = session_providers(torch.device("cuda"))  # a torch device object needs no GPU
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # onnxruntime-gpu
        assert on_cuda == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        assert on_cuda == ["CPUExecutionProvider"]


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (CI has none); the CPU path runs in every mixed: auto test")
def test_sensitivity_on_cuda_gives_the_cpus_order(mini_phi4):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phiexport.quantize.calibrated import measure_sensitivity

    model = AutoModelForCausalLM.from_pretrained(mini_phi4, dtype=torch.float32).eval()
    sequences = calibration_sequences(AutoTokenizer.from_pretrained(mini_phi4), 8, 96, seed=0)
    units, grid = quantization_units(model), BlockGrid(4, 32, symmetric=True)
    on_cpu = measure_sensitivity(model, units, grid, sequences)
    on_gpu = measure_sensitivity(model, units, grid, sequences, device=torch.device("cuda"))
    assert next(model.parameters()).device.type == "cpu"
    for unit in units:  # fp32 on both; the reduction order moves the last digits only
        assert on_gpu[unit] == pytest.approx(on_cpu[unit], rel=1e-2), unit
    assert sorted(units, key=on_gpu.get) == sorted(units, key=on_cpu.get)


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (CI has none); the CPU reference runs in every build")
def test_the_reference_on_cuda_gives_the_cpus_logits(mini_phi4):
    from phiexport.evaluate.data import ScoredSequence
    from phiexport.evaluate.reference import TorchReference
    from phiexport.evaluate.streamed_reference import StreamedReference

    scored = [ScoredSequence(list(range(10, 130)), 40)]
    (expected,) = TorchReference(mini_phi4).scored_logits(scored)
    cuda = torch.device("cuda")
    for reference in (TorchReference(mini_phi4, device=cuda), StreamedReference(mini_phi4, device=cuda)):
        (actual,) = reference.scored_logits(scored)
        assert np.abs(actual - expected).max() < 1e-3


def test_modules_moved_in_inference_mode_keep_ordinary_weights():
    """A layer moved to the device and back while calibration runs in inference mode must come back with weights
    that later in-place updates outside it may write (torch refuses those on inference tensors). The meta device
    stands in for the GPU: a move there makes new tensors as a move to CUDA does."""
    from phiexport.quantize.layerwise import moved_to

    linear = torch.nn.Linear(4, 4)
    moved = moved_to(torch.device("meta"), linear)
    with torch.inference_mode():
        moved.__enter__()
    assert linear.weight.device.type == "meta"
    assert not linear.weight.is_inference()
    linear.to_empty(device="cpu")  # nothing comes back from meta: give the way home real (empty) tensors
    moved.__exit__(None, None, None)
