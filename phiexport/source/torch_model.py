"""Loading a checkpoint into transformers in fp32, quietly: phiexport's own stage line reports the load."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' tqdm bars ("Loading weights", GGUF conversion): under `--json` stderr stays clean, and
    otherwise they would tear through the stage line. The checkpoint is local by now, so no download bar is lost."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_fp32_model(path: Path, *, trust_remote_code: bool = False, **options: Any) -> Any:
    """`AutoModelForCausalLM` in fp32 and eval mode: the reference and the quantizers' starting point."""
    import torch
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=trust_remote_code, **options
        )
    return model.eval()
