"""`phiexport run`: stream a reply from a package through onnxruntime-genai with the model's chat template."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiexport.errors import UsageError


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def stream_reply(
    package_dir: Path,
    prompt: str,
    *,
    max_new_tokens: int,
    system: str | None,
    raw: bool,
    stats: GenerationStats,
    device: str | None = None,
) -> Iterator[str]:
    """Yield decoded text pieces as they are generated (greedy); fills `stats` as it goes.

    Every package runs through onnxruntime-genai; an NPU package's bodies on `device` (`cpu`: its QDQ graphs on the
    CPU EP, or `htp-sim`: its simulator binaries on the HTP simulator; runtime/genai.py).
    """
    from contextlib import AbstractContextManager, nullcontext

    import onnxruntime_genai as og

    from phiexport.package.npu_layout import PIPELINE_FILE
    from phiexport.runtime.genai import genai_model

    if not (package_dir / "genai_config.json").is_file():
        raise UsageError(
            f"{package_dir} has no genai_config.json", "pass a package directory, e.g. packages/<name>/cpu"
        )
    model: AbstractContextManager[Any]
    if (package_dir / PIPELINE_FILE).is_file():
        device = device or "cpu"
        context, chunk = _npu_layout(package_dir)
        model = genai_model(package_dir, device)  # refuses an unknown device
    elif device is not None:
        raise UsageError(f"--device applies to NPU packages; {package_dir} is not one", "leave --device out")
    else:
        context, chunk = None, 1
        model = nullcontext(og.Model(str(package_dir)))
    with model as opened:
        yield from _generate(opened, package_dir, prompt, max_new_tokens, system, raw, stats, context, chunk)


def think_markers(package_dir: Path) -> tuple[str, str] | None:
    """The markers around a reasoning model's thinking, from the chat format its recipe names (None: no block)."""
    from phiexport.chat_formats import chat_format
    from phiexport.package.manifest import read_manifest

    name = read_manifest(package_dir)["recipe"].get("chat", {}).get("format")
    return chat_format(name).think if name else None


def split_thinking(text: str, think: tuple[str, str] | None) -> tuple[str, str]:
    """(thinking, answer) of a reply so far; text before an opening marker is answer, an unclosed block is thinking."""
    if think is None or think[0] not in text:
        return "", text
    before, _, rest = text.partition(think[0])
    thinking, closed, after = rest.partition(think[1])
    return thinking.strip(), (before + after).strip() if closed else before.strip()


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _npu_layout(package_dir: Path) -> tuple[int, int]:
    """An NPU package's context and prefill chunk."""
    import json

    from phiexport.package.npu_layout import PIPELINE_FILE

    layout = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))["layout"]
    return layout["context"], layout["chunk"]


def _generate(
    model: Any,
    package_dir: Path,
    prompt: str,
    max_new_tokens: int,
    system: str | None,
    raw: bool,
    stats: GenerationStats,
    context: int | None,
    chunk: int,
) -> Iterator[str]:
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    from phiexport.runtime.genai import padded_length

    tokenizer = og.Tokenizer(model)
    if raw:
        text = prompt
    else:  # the package's own template through transformers, as the build's check and eval format prompts
        template = AutoTokenizer.from_pretrained(package_dir)
        text = str(template.apply_chat_template(_messages(prompt, system), tokenize=False, add_generation_prompt=True))
    tokens = tokenizer.encode(text)
    stats.prompt_tokens = len(tokens)
    max_length = len(tokens) + max_new_tokens
    if context is not None:  # og pads the prompt to whole chunks, and the padded prompt must leave room in the cache
        padded = padded_length(len(tokens), chunk)
        if padded >= context:
            raise UsageError(
                f"the prompt has {len(tokens)} tokens ({padded} in whole {chunk}-token chunks); the package's context "
                f"holds {context}",
                "shorten the prompt or build with a larger --context-length",
            )
        max_length = min(padded + max_new_tokens, context)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=max_length)
    generator = og.Generator(model, params)
    stream = tokenizer.create_stream()
    start = time.perf_counter()
    generator.append_tokens(tokens)
    while not generator.is_done():
        generator.generate_next_token()
        stats.new_tokens += 1
        stats.seconds = time.perf_counter() - start
        yield stream.decode(generator.get_next_tokens()[0])
