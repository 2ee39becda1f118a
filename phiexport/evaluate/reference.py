"""The torch reference: the source checkpoint in fp32 through transformers, as its authors run it.

A checkpoint whose fp32 weights would take more than `IN_MEMORY_BYTES` is run a decoder layer at a time instead
(streamed_reference.py): the same modules and numbers, a layer's weights in memory instead of the model's. Either
runs on the build's torch device (quantize/device.py): a GPU holds the small model whole, or one layer at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from phiexport.evaluate.data import Draft, ScoredSequence
from phiexport.progress import Track

IN_MEMORY_BYTES = 4 << 30  # fp32 weights up to this size are loaded whole: SmolLM2 (0.5 GB) is, Phi-4-mini (15 GB) not


class Reference(Protocol):
    def scored_logits(self, sequences: Sequence[ScoredSequence]) -> Iterator[np.ndarray]: ...

    def greedy_many(
        self, prompts: Sequence[list[int]], new_tokens: int, eos_ids: set[int], draft: Draft
    ) -> list[list[int]]: ...


def open_reference(
    checkpoint_dir: Path,
    *,
    trust_remote_code: bool = False,
    track: Track[Any] | None = None,
    device: Any = None,
) -> Reference:
    """The whole model when it is small (or brings its own code), else the layer-streamed one (whose passes over
    the layers are shown with `track`), on torch `device` (default: the CPU)."""
    from phiexport.evaluate.streamed_reference import StreamedReference
    from phiexport.source.mapped import MappedWeights

    safetensors = any(checkpoint_dir.glob("*.safetensors"))
    if trust_remote_code or not safetensors or MappedWeights(checkpoint_dir).fp32_bytes() <= IN_MEMORY_BYTES:
        return TorchReference(checkpoint_dir, trust_remote_code=trust_remote_code, device=device)
    return StreamedReference(checkpoint_dir, track=track, device=device)


def reference_device(device: Any) -> str:
    """For reports: `CPU`, or `cuda (<the GPU's name>)`."""
    from phiexport.quantize.device import describe_device

    return "CPU" if device is None or device.type == "cpu" else describe_device(device)


class TorchReference:
    def __init__(self, checkpoint_dir: Path, *, trust_remote_code: bool = False, device: Any = None):
        import torch

        from phiexport.source.torch_model import load_fp32_model

        self._torch = torch
        self._device = device or torch.device("cpu")
        self.model = load_fp32_model(checkpoint_dir, trust_remote_code=trust_remote_code).to(self._device)

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """`[len(token_ids), vocab]` float32 logits of one teacher-forced pass."""
        with self._torch.inference_mode():
            out = self.model(self._ids([token_ids]), use_cache=False)
        return np.asarray(out.logits[0].float().cpu().numpy())

    def _ids(self, rows: list[list[int]]) -> Any:
        return self._torch.tensor(rows, device=self._device)

    def scored_logits(self, sequences: Sequence[ScoredSequence]) -> Iterator[np.ndarray]:
        """Each sequence's logits at its scored positions, computed as they are asked for."""
        for sequence in sequences:
            yield self.logits(sequence.token_ids)[sequence.scored_positions]

    def greedy(self, prompt_ids: list[int], new_tokens: int, eos_ids: set[int]) -> list[int]:
        """Greedy continuation, stopping after an end-of-sequence token (included) or `new_tokens` tokens."""
        torch = self._torch
        generated: list[int] = []
        past: Any = None
        inputs = self._ids([prompt_ids])
        with torch.inference_mode():
            for _ in range(new_tokens):
                out = self.model(inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                if token in eos_ids:
                    break
                inputs = self._ids([[token]])
        return generated

    def greedy_many(
        self, prompts: Sequence[list[int]], new_tokens: int, eos_ids: set[int], draft: Draft
    ) -> list[list[int]]:
        """`greedy` for each prompt; the model is in memory, so it needs no draft."""
        return [self.greedy(prompt, new_tokens, eos_ids) for prompt in prompts]
