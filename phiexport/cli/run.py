"""`phiexport run`: stream a greedy reply from a package, a reasoning model's thinking shown apart."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from phiexport.cli.common import DebugFlag, JsonFlag, reported_errors


def run(
    package: Annotated[Path, typer.Argument(help="A package directory, e.g. packages/<recipe>/cpu.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens to generate.")] = 256,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    raw: Annotated[bool, typer.Option(help="Send the prompt as is, without the chat template.")] = False,
    hide_thinking: Annotated[
        bool, typer.Option(help="Reasoning models: print only the answer, not the <think> block (shown dimmed).")
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(help="NPU packages only: cpu (QDQ graphs on the CPU EP) or htp-sim (HTP simulator) [cpu]."),
    ] = None,
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Stream a greedy reply from a package with the model's chat template (CPU and DirectML packages through
    onnxruntime-genai on the CPU, NPU packages through phiexport's prefill/decode pipeline). A reasoning model's
    thinking is shown dimmed before its answer."""
    with reported_errors(as_json, debug):
        from phiexport.chat import GenerationStats, split_thinking, stream_reply, think_markers

        stats = GenerationStats()
        think = think_markers(package) if (package / "manifest.json").is_file() else None
        pieces = stream_reply(
            package, prompt, max_new_tokens=max_tokens, system=system, raw=raw, stats=stats, device=device
        )
        if as_json:
            text = "".join(pieces)
            thinking, answer = split_thinking(text, think)
            print(
                json.dumps(
                    {
                        "text": text,
                        "thinking": thinking,
                        "answer": answer,
                        "prompt_tokens": stats.prompt_tokens,
                        "new_tokens": stats.new_tokens,
                        "tokens_per_second": stats.new_tokens / max(stats.seconds, 1e-9),
                    }
                )
            )
            return
        console = Console(highlight=False)
        text, shown_thinking, shown_answer = "", 0, 0
        for piece in pieces:
            text += piece
            thinking, answer = split_thinking(text, think) if think else ("", text)
            if thinking[shown_thinking:] and not hide_thinking:
                console.print(thinking[shown_thinking:], end="", style="dim", markup=False, soft_wrap=True)
            if answer[shown_answer:]:
                if shown_answer == 0 and thinking and not hide_thinking:
                    console.print()
                console.print(answer[shown_answer:], end="", markup=False, soft_wrap=True)
            shown_thinking, shown_answer = len(thinking), len(answer)
        print()
        print(f"[{stats.new_tokens} tokens, {stats.new_tokens / max(stats.seconds, 1e-9):.1f} tok/s]", file=sys.stderr)
