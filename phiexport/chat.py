"""`phiexport run`: stream a reply from a package through onnxruntime-genai with the model's chat template."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from phiexport.errors import UsageError


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def stream_reply(
    package_dir: Path, prompt: str, *, max_new_tokens: int, system: str | None, raw: bool, stats: GenerationStats
) -> Iterator[str]:
    """Yield decoded text pieces as they are generated (greedy); fills `stats` as it goes."""
    import onnxruntime_genai as og

    if not (package_dir / "genai_config.json").is_file():
        raise UsageError(
            f"{package_dir} has no genai_config.json", "pass a package directory, e.g. packages/<name>/cpu"
        )
    model = og.Model(str(package_dir))
    tokenizer = og.Tokenizer(model)
    if raw:
        text = prompt
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    tokens = tokenizer.encode(text)
    stats.prompt_tokens = len(tokens)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(tokens) + max_new_tokens)
    generator = og.Generator(model, params)
    stream = tokenizer.create_stream()
    start = time.perf_counter()
    generator.append_tokens(tokens)
    while not generator.is_done():
        generator.generate_next_token()
        stats.new_tokens += 1
        stats.seconds = time.perf_counter() - start
        yield stream.decode(generator.get_next_tokens()[0])
