"""The torch reference: the source checkpoint in fp32 through transformers, as its authors run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class TorchReference:
    def __init__(self, checkpoint_dir: Path, *, trust_remote_code: bool = False):
        import torch

        from phiexport.source.torch_model import load_fp32_model

        self._torch = torch
        self.model = load_fp32_model(checkpoint_dir, trust_remote_code=trust_remote_code)

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """`[len(token_ids), vocab]` float32 logits of one teacher-forced pass."""
        with self._torch.inference_mode():
            out = self.model(self._torch.tensor([token_ids]), use_cache=False)
        return np.asarray(out.logits[0].float().numpy())

    def greedy(self, prompt_ids: list[int], new_tokens: int, eos_ids: set[int]) -> list[int]:
        """Greedy continuation, stopping after an end-of-sequence token (included) or `new_tokens` tokens."""
        torch = self._torch
        generated: list[int] = []
        past: Any = None
        inputs = torch.tensor([prompt_ids])
        with torch.inference_mode():
            for _ in range(new_tokens):
                out = self.model(inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                if token in eos_ids:
                    break
                inputs = torch.tensor([[token]])
        return generated
