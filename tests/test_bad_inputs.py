"""Every bad input a user or a CI job can hand `phiexport build`, in one table.

Each row runs the CLI in a fresh process and must end in one `error: <cause> — fix: <fix>` line naming the problem,
its exit code (errors.py), and nothing at the output path: no package, no staging folder, no build scratch.
Interrupts (SIGINT, SIGTERM) at several stages follow, with the same promise.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import assert_one_line_error, run_cli

PAYLOAD_MARK = "payload-ran"
SLOW_SOURCE = pytest.mark.slow  # the embedded GGUF is resolved (and first dequantized) before the option is refused


@dataclass
class Bench:
    """One row's scratch: copies of the Llama miniature to break, and mounts undone when the row ends."""

    tmp: Path
    model: Path
    output: Path
    preexec: Callable[[], None] | None = None
    unmount: list[Path] = field(default_factory=list)

    def broken(self, change: Callable[[Path], None]) -> Path:
        directory = Path(shutil.copytree(self.model, self.tmp / "model"))
        change(directory)
        return directory

    def mount_tmpfs(self, size: str, *options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = self.tmp / "mnt"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", point], check=True)
        self.unmount.append(point)
        return point


def edit_tensors(directory: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def truncate(directory: Path) -> None:
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def narrow_q_proj(tensors: dict[str, torch.Tensor]) -> None:
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = tensors[name][:, :-8].contiguous()


def poison(tensors: dict[str, torch.Tensor]) -> None:
    tensors["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")


def shard_index(directory: Path) -> None:
    names = load_file(directory / "model.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (directory / "model-00001-of-00002.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def pickled(directory: Path, *, payload: Path | None = None) -> None:
    """The weights as pytorch_model.bin; with `payload`, one entry runs code when unpickled (it creates a file)."""
    state: dict[str, object] = dict(load_file(directory / "model.safetensors"))
    if payload is not None:
        state["model.extra"] = _Payload(payload)
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")


class _Payload:
    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (os.makedirs, (str(self.mark),))


def remote_code_tokenizer(directory: Path) -> None:
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def empty_directory(bench: Bench) -> list[str]:
    (bench.tmp / "empty").mkdir()
    return [str(bench.tmp / "empty")]


def corrupt_gguf(bench: Bench) -> list[str]:
    path = bench.tmp / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x07" * 64)
    return [str(path)]


def recipe_file(bench: Bench, text: str) -> str:
    path = bench.tmp / "recipe.yaml"
    path.write_text(text)
    return str(path)


def full_disk(bench: Bench) -> list[str]:
    bench.output = bench.mount_tmpfs("1m") / "package"
    return [str(bench.model)]


def read_only_filesystem(bench: Bench) -> list[str]:
    bench.output = bench.mount_tmpfs("1m", "ro") / "package"
    return [str(bench.model)]


def no_write_permission(bench: Bench) -> list[str]:
    """A folder with mode 555; root is made subject to it by dropping CAP_DAC_OVERRIDE in the child."""
    if os.geteuid() != 0:
        pytest.skip("runs as root without CAP_DAC_OVERRIDE")
    locked = bench.tmp / "locked"
    locked.mkdir(mode=0o555)
    bench.output = locked / "package"
    bench.preexec = _drop_dac_override
    return [str(bench.model)]


def _drop_dac_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, from the bounding set: gone after exec
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


BAD_INPUTS = [
    # the source
    pytest.param(lambda b: ["./no-such-model"], 2, ["no such file or directory: ./no-such-model", "Hub id"],
                 id="missing-path"),
    pytest.param(empty_directory, 3, ["empty is empty", "pass a Hugging Face model directory"],
                 id="empty-directory"),
    pytest.param(lambda b: [str(b.broken(truncate))], 3,
                 ["model.safetensors is not a readable safetensors file", "truncated or corrupt"],
                 id="truncated-safetensors"),
    pytest.param(lambda b: [str(b.broken(lambda d: edit_tensors(d, narrow_q_proj)))], 3,
                 ["model.layers.0.self_attn.q_proj.weight", "has shape [256, 248]; config.json implies [256, 256]"],
                 id="tensor-of-wrong-shape"),
    pytest.param(lambda b: [str(b.broken(lambda d: edit_tensors(d, lambda t: t.pop("model.norm.weight"))))], 3,
                 ["config.json needs are not in the weights, e.g. model.norm.weight"], id="missing-tensor"),
    pytest.param(lambda b: [str(b.broken(lambda d: edit_tensors(d, poison)))], 3,
                 ["model.layers.0.mlp.down_proj.weight in model.safetensors holds NaN"], id="nan-in-weights"),
    pytest.param(lambda b: [str(b.broken(shard_index))], 3,
                 ["shard model-00002-of-00002.safetensors named in model.safetensors.index.json is missing"],
                 id="missing-shard"),
    pytest.param(corrupt_gguf, 3, ["model.gguf is not a readable GGUF file", "download the file again"],
                 id="corrupt-gguf"),
    pytest.param(lambda b: [str(b.broken(lambda d: (d / "config.json").unlink()))], 3, ["no config.json in"],
                 id="config-missing"),
    pytest.param(lambda b: [str(b.broken(lambda d: (d / "config.json").write_text('{"model_type": "llama",')))],
                 3, ["config.json is not valid JSON"], id="config-invalid-json"),
    pytest.param(lambda b: [str(b.broken(lambda d: (d / "config.json").write_text(
                     '{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')))], 3,
                 ["unsupported architecture", "phiexport supports", "phi3 (Phi3ForCausalLM)"],
                 id="unsupported-architecture"),
    pytest.param(lambda b: [str(b.broken(pickled))], 3,
                 ["pickle files (pytorch_model.bin); unpickling can run arbitrary code", "--allow-pickle"],
                 id="pickle-weights"),
    pytest.param(lambda b: [str(b.broken(lambda d: pickled(d, payload=b.tmp / PAYLOAD_MARK))), "--allow-pickle"],
                 3, ["holds more than tensors: the weights-only load refused it", "GLOBAL"],
                 id="pickle-carrying-code-with-allow-pickle"),
    pytest.param(lambda b: [str(b.broken(remote_code_tokenizer))], 3, ["auto_map", "--trust-remote-code"],
                 id="remote-code-not-trusted"),
    pytest.param(lambda b: ["phiexport-test/not-cached"], 3, ["HF_HUB_OFFLINE"], id="hub-id-while-offline"),
    # the recipe and the options
    pytest.param(lambda b: ["-r", recipe_file(b, "version: 1\nname: typo\nsource: {model: org/name}\n"
                                               "quantization: {blocksize: 64}\n")], 2,
                 ["unknown key 'quantization.blocksize'"], id="unknown-recipe-key"),
    pytest.param(lambda b: ["-r", recipe_file(b, "version: 1\nname: [unclosed\n")], 2, ["is not valid YAML at line"],
                 id="recipe-not-yaml"),
    pytest.param(lambda b: ["-r", "no-such-recipe"], 2, ["no recipe file or bundled recipe", "phi-4-mini-instruct"],
                 id="unknown-recipe"),
    pytest.param(lambda b: ["--target", "npu", "--precision", "fp32"], 2,
                 ["target npu does not run fp32", "fix: choose one of int4, int8"], id="npu-with-fp32"),
    pytest.param(lambda b: ["--precision", "fp16"], 2, ["target cpu does not run fp16"], id="cpu-with-fp16"),
    pytest.param(lambda b: ["--block-size", "48"], 2,
                 ["--block-size: 48 is not a MatMulNBits block size", "fix: choose one of 16, 32, 64, 128, 256"],
                 id="block-size-48"),
    pytest.param(lambda b: ["-t", "cpu", "--quant", "k_quant", "--block-size", "64"], 2,
                 ["even number of blocks", "width 576"], id="k-quant-odd-block-count", marks=SLOW_SOURCE),
    pytest.param(lambda b: ["--target", "npu", "--block-size", "64"], 2,
                 ["even number of 64-wide blocks", "width 576"], id="npu-odd-block-count", marks=SLOW_SOURCE),
    pytest.param(lambda b: ["--context-length", "100"], 2,
                 ["context_length 100 is not a multiple of chunk 64", "fix: choose a multiple of 64, e.g. 128"],
                 id="context-not-whole-chunks"),
    pytest.param(lambda b: ["--precision", "int3"], 2, ["--precision: Input should be 'int4'", "got 'int3'"],
                 id="unknown-precision"),
    pytest.param(lambda b: ["--target", "tpu"], 2, ["unknown target 'tpu'"], id="unknown-target"),
    pytest.param(lambda b: ["-t", "cpu", "--rotate"], 2,
                 ["--rotate changes the weights, so the source's integers cannot be imported", "add --requantize"],
                 id="gguf-import-with-rotation", marks=SLOW_SOURCE),
    pytest.param(lambda b: ["--soc", "snapdragon-9000"], 2, ["unknown SoC 'snapdragon-9000'", "x-elite, x2-elite"],
                 id="unknown-soc"),
    pytest.param(lambda b: ["--context-length", "0"], 2,
                 ["--context-length: Input should be greater than or equal to 2 (got 0", "pass another --context"],
                 id="out-of-range-context-length"),
    pytest.param(lambda b: ["--mixed-bits", "9"], 2, ["--mixed-bits: Input should be less than or equal to 8"],
                 id="out-of-range-mixed-bits"),
    pytest.param(lambda b: ["--min-top1", "1.5"], 2, ["--min-top1: Input should be less than or equal to 1"],
                 id="out-of-range-gate"),
    pytest.param(lambda b: ["--max-kl", "-1"], 2, ["--max-kl: Input should be greater than 0"],
                 id="negative-gate"),
    pytest.param(lambda b: ["--eval-sequences", "0"], 2, ["--eval-sequences: Input should be greater than or equal"],
                 id="out-of-range-eval-sequences"),
    pytest.param(lambda b: ["--block-size", "abc"], 2, ["--block-size", "see 'phiexport build --help'"],
                 id="not-an-integer"),
    pytest.param(lambda b: ["--no-such-flag"], 2, ["No such option: --no-such-flag"], id="unknown-flag"),
    pytest.param(lambda b: ["--sign"], 2, ["no signing key", "PHIEXPORT_SIGNING_KEY"], id="sign-without-key"),
    pytest.param(lambda b: ["--sign", "--key", str(b.tmp / "absent.pem")], 2, ["absent.pem"],
                 id="signing-key-missing"),
    # where the package goes
    pytest.param(full_disk, 1, ["no space left on device writing into", "(output: ", "build on a disk with room"],
                 id="full-filesystem"),
    pytest.param(read_only_filesystem, 2, ["cannot write into", "mnt"], id="read-only-filesystem"),
    pytest.param(no_write_permission, 2, ["cannot write into", "locked"], id="no-write-permission"),
]  # fmt: skip


@pytest.mark.parametrize(("make_args", "exit_code", "fragments"), BAD_INPUTS)
def test_bad_input_fails_in_one_line_and_leaves_nothing(make_args, exit_code, fragments, miniature_dirs, tmp_path):
    bench = Bench(tmp_path, miniature_dirs["llama"], tmp_path / "out" / "package")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        args = make_args(bench)
        result = run_cli(
            "build",
            *args,
            "-o",
            str(bench.output),
            env={"PHIEXPORT_SIGNING_KEY": None, "TMPDIR": str(scratch)},
            timeout=600,
            preexec=bench.preexec,
        )
        assert_one_line_error(result, exit_code, *fragments)
        assert not bench.output.exists()
        assert not bench.output.parent.exists() or list(bench.output.parent.iterdir()) == []
        assert list(scratch.glob("phiexport-*")) == []  # no build log, no scratch folder
        assert not (tmp_path / PAYLOAD_MARK).exists()  # no pickle payload ran
    finally:
        for point in bench.unmount:
            subprocess.run(["umount", point], check=True)


def test_existing_output_is_not_overwritten(tmp_path):
    output = tmp_path / "package"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = run_cli("build", "-o", str(output))
    assert_one_line_error(result, 2, "already exists", "--force")
    assert (output / "keep.txt").read_text() == "mine"


# stage the signal lands in → (build options that make that stage last, the tick printed just before it; None: the
# signal lands while the libraries load, as soon as the staging folder appears)
INTERRUPT_POINTS = {
    "load libraries": ([], None),
    "prepare weights": (["--quant", "gptq", "--calibration-sequences", "64"], "✓ source"),
    "npu layers": (["--target", "npu", "--context-length", "128"], "✓ npu vocabulary"),
    "verify": (["--precision", "fp32", "--eval-sequences", "200"], "✓ export"),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", list(INTERRUPT_POINTS))
def test_interrupted_build_leaves_nothing(stage, signum, miniature_dirs, tmp_path):
    options, tick_before = INTERRUPT_POINTS[stage]
    output, scratch = tmp_path / "out" / "package", tmp_path / "scratch"
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "phiexport", "build", str(miniature_dirs["llama"]), "-o", str(output), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    if tick_before is None:
        _wait_for(lambda: output.parent.is_dir() and any(output.parent.glob(".package.partial-*")))
    else:
        _wait_for_line(process, tick_before)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "error: interrupted" in stderr and "Traceback" not in stderr
    assert f"✓ {stage}" not in stderr  # the signal landed inside that stage
    assert list(output.parent.iterdir()) == []
    assert list(scratch.glob("phiexport-*")) == []


def _wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _wait_for_line(process: subprocess.Popen[str], start: str) -> None:
    assert process.stderr is not None
    while not process.stderr.readline().startswith(start):
        assert process.poll() is None, f"the build ended before {start!r}"
