"""Where a build's torch and calibration work runs: a CUDA GPU when torch sees one (`auto`), else the CPU.

Only one decoder layer and its inputs are on the device at a time (quantize/layerwise.py, `mixed: auto`'s scoring,
the layer-streamed reference), so a model calibrates on a card that holds one of its layers. TF32 stays off: GPTQ's
error feedback is a long chain of fp32 updates, and TF32's 10-bit mantissa would move codes the CPU computes
otherwise. The NPU's activation calibration runs ONNX graphs, so it takes onnxruntime's CUDA execution provider
when the installed onnxruntime has one (onnxruntime-gpu), else the CPU.
"""

from __future__ import annotations

from typing import Any

from phiexport.errors import UsageError


def check_device(setting: str) -> None:
    """Refuse `cuda` before any work when torch sees no GPU (`auto` and `cpu` always run)."""
    if setting == "cuda":
        calibration_device(setting)


def calibration_device(setting: str) -> Any:
    """The torch device `setting` (`auto`, `cpu` or `cuda`) names on this machine."""
    import torch

    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    if setting == "cuda":
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UsageError(
            f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU",
            "use --device cpu (or auto), or install a CUDA build of torch (README: Calibrating on a GPU)",
        )
    return torch.device("cpu")


def describe_device(device: Any) -> str:
    """For the manifest: `cpu`, or `cuda (<the GPU's name>)`."""
    import torch

    return "cpu" if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})"


def session_providers(device: Any) -> list[str]:
    """onnxruntime's execution providers for calibration graphs on torch `device`: CUDA when both have it."""
    import onnxruntime

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
