"""`phiexport build`: flags become recipe overrides; the pipeline builds, checks and publishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from phiexport.cli.common import (
    DebugFlag,
    JsonFlag,
    KeyOption,
    recipe_overrides,
    reported_errors,
    stderr_console,
    stdout_console,
)


def build(
    source: Annotated[
        str | None,
        typer.Argument(help="Local Hugging Face directory, .gguf file or Hub id (org/name). Default: the recipe's."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="Recipe YAML file or bundled recipe name.")
    ] = None,
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="Device target; repeatable: cpu, dml, npu.")
    ] = None,
    soc: Annotated[
        list[str] | None,
        typer.Option(help="npu: SoC to compile for, repeatable: x-elite, x2-elite, 8-gen-1/2/3, 8-elite, sm8850."),
    ] = None,
    context_length: Annotated[int | None, typer.Option(help="npu: KV cache slots (longest sequence).")] = None,
    chunk: Annotated[int | None, typer.Option(help="npu: prompt tokens per prefill step.")] = None,
    parts: Annotated[
        str | None,
        typer.Option(help="npu: context binaries the body is cut into: N, or auto (512 MiB of weights each) [auto]."),
    ] = None,
    simulator_binaries: Annotated[
        bool,
        typer.Option(
            "--simulator-binaries",
            help="npu: also ship each body compiled on its own (<soc>/simulator/), which the x86 HTP simulator runs.",
        ),
    ] = False,
    qdq_bodies: Annotated[
        bool,
        typer.Option(
            "--qdq-bodies",
            help="npu: also ship the QDQ body graphs, which the CPU EP runs (`phiexport run --device cpu`).",
        ),
    ] = False,
    device_only: Annotated[
        bool,
        typer.Option(
            "--device-only", help="npu: ship only what a device loads (no QDQ bodies, no simulator binaries)."
        ),
    ] = False,
    precision: Annotated[str | None, typer.Option(help="Weights: int4, int8, fp32 (cpu) or fp16 (dml).")] = None,
    quant: Annotated[str | None, typer.Option(help="Weight method: rtn, k_quant, or calibrated gptq or awq.")] = None,
    mixed: Annotated[
        str | None, typer.Option(help="auto: measured int4/int8 mix within --mixed-bits; off: one width.")
    ] = None,
    mixed_bits: Annotated[float | None, typer.Option(help="Mean bits per weight allowed by --mixed auto.")] = None,
    calibration_sequences: Annotated[
        int | None, typer.Option(help="GSM8K train conversations that calibrated methods see.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Where calibration and the reference check run: auto (CUDA if torch sees a GPU), cpu, cuda."),
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="Quantization block: 16, 32, 64, 128 or 256.")] = None,
    symmetric: Annotated[
        bool | None, typer.Option("--symmetric/--asymmetric", help="Weights without or with zero points.")
    ] = None,
    accuracy_level: Annotated[
        int | None,
        typer.Option(
            help="MatMulNBits compute: 0-4 (4 = int8 activations; 1 = fp32, a GGUF's exact) [4; 1 for GPTQ/AWQ "
            "integers]."
        ),
    ] = None,
    requantize: Annotated[
        bool,
        typer.Option("--requantize", help="GGUF/GPTQ/AWQ source: quantize it again, not import its integers."),
    ] = False,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Fold a randomized Hadamard rotation into the weights first.")
    ] = False,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickle .bin weights (loaded weights-only).")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow the checkpoint's own Python code.")
    ] = False,
    eval_sequences: Annotated[int | None, typer.Option(help="Held-out sequences scored in the build check.")] = None,
    max_kl: Annotated[float | None, typer.Option(help="Gate: largest mean KL a published package may have.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Gate: smallest top-1 agreement (0-1).")] = None,
    max_ppl_ratio: Annotated[
        float | None, typer.Option(help="Gate: largest perplexity ratio to the reference.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder [packages/<recipe>].")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder, once the new build succeeded.")
    ] = False,
    sign: Annotated[
        bool, typer.Option("--sign", help="Sign each package's manifest (ed25519) before it is published.")
    ] = False,
    key: KeyOption = None,
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Build one verified package per target (default: the embedded SmolLM2-135M-Instruct, CPU int4 and NPU w4a16).

    Packages that fail the recipe's accuracy gates are withheld in OUTPUT.rejected/ and the exit code is 4."""
    with reported_errors(as_json, debug):
        from phiexport.errors import UsageError
        from phiexport.quantize.device import check_device
        from phiexport.recipe import load_recipe, recipe_for_source

        if key is not None and not sign:
            raise UsageError("--key is only used with --sign", "add --sign, or drop --key")
        if device_only and (qdq_bodies or simulator_binaries):
            raise UsageError(
                "--device-only ships neither QDQ bodies nor simulator binaries", "drop --device-only or the other flag"
            )
        signing_key = None
        if sign:  # a missing or unreadable key fails now, not after the build
            from phiexport.package.signing import load_private_key

            signing_key = load_private_key(key)

        if recipe is not None:
            base = load_recipe(recipe)
        elif source is not None:
            base = recipe_for_source(source)
        else:
            base = load_recipe("smollm2-135m-instruct")
        overrides, flags = recipe_overrides(
            {
                "SOURCE": ("source.model", source),
                "--revision": ("source.revision", revision),
                "--allow-pickle": ("source.allow_pickle", allow_pickle or None),
                "--trust-remote-code": ("source.trust_remote_code", trust_remote_code or None),
                "--precision": ("quantization.precision", precision),
                "--quant": ("quantization.method", quant),
                "--block-size": ("quantization.block_size", block_size),
                "--symmetric/--asymmetric": ("quantization.symmetric", symmetric),
                "--accuracy-level": ("quantization.accuracy_level", accuracy_level),
                "--rotate": ("quantization.rotate", rotate or None),
                "--requantize": ("quantization.requantize", requantize or None),
                "--mixed": ("quantization.mixed", mixed),
                "--mixed-bits": ("quantization.mixed_bits", mixed_bits),
                "--calibration-sequences": ("calibration.sequences", calibration_sequences),
                "--device": ("calibration.device", device),
                "--eval-sequences": ("evaluation.sequences", eval_sequences),
                "--max-kl": ("gates.max_kl", max_kl),
                "--min-top1": ("gates.min_top1", min_top1),
                "--max-ppl-ratio": ("gates.max_ppl_ratio", max_ppl_ratio),
                "--soc": ("npu.socs", tuple(soc) if soc else None),
                "--context-length": ("npu.context_length", context_length),
                "--chunk": ("npu.chunk", chunk),
                "--parts": ("npu.parts", parts),
                "--simulator-binaries": ("npu.simulator_binaries", simulator_binaries or None),
                "--qdq-bodies": ("npu.qdq_bodies", qdq_bodies or None),
                "--target": ("targets", tuple(target) if target else None),
            }
        )
        if device_only:  # one flag, two keys
            overrides.setdefault("npu", {}).update(qdq_bodies=False, simulator_binaries=False)
            flags |= {"npu.qdq_bodies": "--device-only", "npu.simulator_binaries": "--device-only"}
        if source is not None and revision is None:
            overrides["source"]["revision"] = None  # a recipe's Hub revision does not apply to another source
        resolved = base.with_overrides(overrides, flags)
        destination = output or Path("packages") / resolved.name
        check_device(resolved.calibration.device)  # a GPU asked for and missing fails now, not after the export

        from phiexport.pipeline import build as run_build
        from phiexport.progress import StageProgress

        console = None if as_json else stderr_console()
        progress = StageProgress(console)
        try:
            result = run_build(resolved, destination, force=force, progress=progress, signing_key=signing_key)
        finally:
            progress.close()

        if as_json:
            print(
                json.dumps(
                    {
                        "output": str(result.output.absolute()),
                        "packages": {name: str(path.absolute()) for name, path in result.packages.items()},
                        "metrics": {name: report["metrics"] for name, report in result.reports.items()},
                        "timings_s": result.timings,
                        "signed_by": result.signed_by,
                    },
                    indent=2,
                )
            )
            return
        table = Table(title=f"{resolved.name}: {resolved.quantization.describe()}")
        table.add_column("package", overflow="fold")
        for column in ("ppl ref → pkg", "KL mean", "KL p99", "top-1"):
            table.add_column(column, no_wrap=True)
        for name, report in result.reports.items():
            m = report["metrics"]
            table.add_row(
                str(result.packages[name]),
                f"{m['ppl_reference']:.3f} → {m['ppl_package']:.3f}",
                f"{m['kl_mean']:.4f}",
                f"{m['kl_p99']:.4f}",
                f"{m['top1_agreement']:.1%}",
            )
        first = next(iter(result.packages.values()))
        stdout = stdout_console()
        stdout.print(table)
        stdout.print(f'run it: phiexport run {first} "Hello"    inspect it: phiexport inspect {first}')
