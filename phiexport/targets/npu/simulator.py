"""The build's check of the compiled binaries: the package through onnxruntime-genai on the HTP simulator, a body at
a time, against the same package on the CPU EP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phiexport.evaluate.metrics import TokenScores
from phiexport.export.body_parts import BODY_KINDS, BodyPart
from phiexport.memory import release_freed_memory
from phiexport.targets.htp import HTP_PROVIDER


def simulator_check(
    package_dir: Path,
    parts: list[BodyPart],
    bodies: dict[str, Path],
    prompt: list[int],
    soc_name: str,
    *,
    decode_tokens: int,
    profiles: Path,
) -> dict[str, Any]:
    """Run the package through onnxruntime-genai as a device app would, its bodies on the CPU EP (QDQ graphs), then
    with the separately compiled context binaries `bodies` (og stage → context model) through the QNN plugin on the
    HTP simulator, one simulated body at a time, and compare: the prompt chunk teacher-forced with part k's prefill
    simulated (og then takes prompts only), then greedy decode steps with part k's decode simulated after the QDQ
    prefill, while both decoded the same tokens (og cannot force a token into a decode step).

    Where the body nodes ran is read back from onnxruntime's profile of the simulated sessions (under `profiles`)."""
    from phiexport.runtime.genai import GenaiPipelineRunner
    from phiexport.targets.htp import node_providers

    def run(simulated: str | None, *, decode: bool) -> tuple[np.ndarray, list[int], np.ndarray]:
        """The prompt chunk's logits, and with `decode` greedy tokens and their logits; `simulated` on the HTP."""
        placement: dict[str, str | None] = {
            part.stage(kind): "cpu" if kind == "prefill" or decode else None for part in parts for kind in BODY_KINDS
        }
        if simulated is not None:
            placement[simulated] = "htp-sim"
        runner = GenaiPipelineRunner(package_dir, placement, bodies=bodies, profiles=profiles / str(simulated))
        chunk_logits = runner.logits(prompt)
        tokens, step_logits = runner.greedy_logits(prompt, decode_tokens + 1) if decode else ([], np.empty(0))
        runner.close()
        release_freed_memory()
        return chunk_logits, tokens, step_logits

    cpu_chunk, cpu_tokens, cpu_steps = run(None, decode=True)
    checked: list[dict[str, Any]] = []
    for part in parts:
        htp_chunk, _, _ = run(part.stage("prefill"), decode=False)
        _, htp_tokens, htp_steps = run(part.stage("decode"), decode=True)
        # decode step i (logits row i) decodes greedy token i - 1: comparable while both chose the same tokens before
        same = next(
            (i for i, (a, b) in enumerate(zip(cpu_tokens, htp_tokens, strict=False)) if a != b), len(cpu_tokens)
        )
        decoded = min(same, len(cpu_tokens) - 1, len(htp_tokens) - 1)
        scores = TokenScores()
        scores.add(
            np.concatenate([cpu_chunk, cpu_steps[1 : decoded + 1]]),
            np.concatenate([htp_chunk, htp_steps[1 : decoded + 1]]),
            np.asarray(prompt[1:] + cpu_tokens[: decoded + 1]),
        )
        agreement = scores.summary()
        stages = [part.stage(kind) for kind in BODY_KINDS]
        checked.append(
            {
                "layers": [part.first, part.stop],
                "decode_steps_compared": decoded,
                "body_nodes": {
                    stage: node_providers(next((profiles / stage).glob(f"{stage}_*.json"))) for stage in stages
                },
                "kl_mean_vs_cpu_ep": agreement["kl_mean"],
                "top1_agreement_vs_cpu_ep": agreement["top1_agreement"],
            }
        )
    return {
        "soc": soc_name,
        "positions": len(prompt) + min(part["decode_steps_compared"] for part in checked),
        "loaded": "context binaries compiled per body, run by onnxruntime-genai one at a time (the shared pairs load "
        "only on ARM)",
        "parts": checked,
        "every_body_node_on_htp": all(
            set(nodes) == {HTP_PROVIDER} for part in checked for nodes in part["body_nodes"].values()
        ),
        "kl_mean_vs_cpu_ep": max(part["kl_mean_vs_cpu_ep"] for part in checked),  # the worst part
        "top1_agreement_vs_cpu_ep": min(part["top1_agreement_vs_cpu_ep"] for part in checked),
        "decode_steps_compared": min(part["decode_steps_compared"] for part in checked),
    }
