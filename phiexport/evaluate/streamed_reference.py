"""The torch reference one decoder layer at a time (source/layered.py): every sequence passes a layer before the
next layer's weights are read, so only one layer is in memory. Layer 0's inputs are captured as GPTQ captures them;
the lm_head runs in vocabulary chunks. Greedy text is decoded speculatively with a package as the draft: one layer
pass checks every drafted token, keeps them up to the first the reference would not have chosen and adds its own
token there, so the result is the reference's greedy text, however good or bad the draft.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.evaluate.data import Draft, ScoredSequence
from phiexport.progress import Track
from phiexport.source.layered import LayeredModel

VOCAB_ROWS_PER_CHUNK = 16384  # lm_head rows multiplied at once: 200 MB of fp32 at Phi-4-mini's width


class StreamedReference:
    """The checkpoint's fp32 logits and greedy text, holding one decoder layer's weights at a time."""

    def __init__(self, checkpoint_dir: Path, *, track: Track[Any] | None = None, device: Any = None):
        import torch

        self._torch = torch
        self._device = device or torch.device("cpu")
        self._track = track or (lambda items, _total, _description: items)
        self._source = LayeredModel(checkpoint_dir)
        self._source.norm.to(self._device)

    def scored_logits(self, sequences: Sequence[ScoredSequence]) -> Iterator[np.ndarray]:
        """Each sequence's logits at its scored positions: one layer pass over them all, then the lm_head per
        sequence as it is asked for (a sequence's logits are `[tokens, vocab]`: 260 MB at Phi-4-mini's 320)."""
        hidden = self._final_hidden([s.token_ids for s in sequences])
        for sequence, states in zip(sequences, hidden, strict=True):
            yield self._logits(states[sequence.scored_positions])

    def greedy_many(
        self, prompts: Sequence[list[int]], new_tokens: int, eos_ids: set[int], draft: Draft
    ) -> list[list[int]]:
        """Each prompt's greedy continuation, stopping after an end-of-sequence token (included) or `new_tokens`."""
        generated: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        while active:
            drafts = {i: draft(prompts[i] + generated[i], new_tokens - len(generated[i])) for i in active}
            hidden = self._final_hidden([prompts[i] + generated[i] + drafts[i] for i in active])
            still = []
            for i, states in zip(active, hidden, strict=True):
                checked = states[len(prompts[i]) + len(generated[i]) - 1 :]  # predicts each drafted token, then one
                choices = self._logits(checked).argmax(axis=1).tolist()
                for position, token in enumerate(choices):
                    generated[i].append(token)
                    if token in eos_ids or len(generated[i]) == new_tokens:
                        break
                    if position < len(drafts[i]) and token != drafts[i][position]:
                        still.append(i)
                        break
                else:
                    still.append(i)
            active = still
        return generated

    def _final_hidden(self, sequences: list[list[int]]) -> list[Any]:
        """The normed last hidden states `[tokens, hidden]` of each sequence, a decoder layer at a time (each on the
        device for its turn)."""
        from phiexport.quantize.layerwise import first_layer_calls

        torch = self._torch
        with torch.inference_mode():
            source = self._source
            calls = [call.to(self._device) for call in first_layer_calls(source.model, sequences)]
            count = source.num_layers
            for index in self._track(range(count), count, f"reference, {len(calls)} sequences"):
                layer = source.layer(index).to(self._device)
                calls = [call.through(layer) for call in calls]
                source.release(layer)
            return [source.norm(call.hidden)[0] for call in calls]

    def _logits(self, states: Any) -> np.ndarray:
        """`states @ lm_headᵀ`, reading the lm_head a vocabulary chunk at a time."""
        vocab = self._source.vocab_size
        logits = np.empty((states.shape[0], vocab), dtype=np.float32)
        with self._torch.inference_mode():
            for start in range(0, vocab, VOCAB_ROWS_PER_CHUNK):
                stop = min(start + VOCAB_ROWS_PER_CHUNK, vocab)
                rows = self._source.lm_head_rows(start, stop).to(self._device)
                logits[:, start:stop] = (states @ rows.T).cpu().numpy()
        return logits
