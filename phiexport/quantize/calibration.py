"""Calibration inputs for the static NPU body graphs, one decoder layer at a time, on GSM8K text.

Prefill samples are every chunk of each conversation; decode samples sit at cache fills drawn log-uniformly, so
short contexts are covered as well as long ones (uniform fills left decode at fill 0 badly encoded: docs/npu.md).
A layer's samples are what the fp32 pipeline feeds that layer: its input rows come from the previous layer's fp32
graphs, its cache from its own keys and values of the tokens before. Only a layer's rows and keys/values are held
(16 conversations of 512 tokens at Phi-4-mini's width: 100 MB), never the whole pipeline's caches per sample (which
were 128 MB per sample at 32 layers); each sample's cache is built when the calibrator asks for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from phiexport.export.static_graphs import StaticLayout, step_tensors
from phiexport.runtime.static_pipeline import PAD_TOKEN

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class BodyCall:
    """One body step of one conversation: `steps` input rows from `row` on, after `start` cached tokens, of which
    `real` are real tokens (the rest pad the last prompt chunk)."""

    sequence: int
    row: int
    start: int
    steps: int
    real: int


class LayerCalibration:
    """Every calibration sample's body inputs for the current decoder layer; `run_layer` then `advance` move them
    one layer down."""

    def __init__(
        self,
        layout: StaticLayout,
        sequences: list[list[int]],
        *,
        decode_samples: int,
        seed: int,
        cos: np.ndarray,
        sin: np.ndarray,
        embed: Callable[[list[int]], np.ndarray],
    ):
        """`embed(ids)` gives the fp32 embedding rows `[n, hidden]` of token ids; `cos`, `sin` are `[context, R]`."""
        self.layout = layout
        self._cos, self._sin = cos, sin
        rng = np.random.default_rng(seed)
        self.sequences = [ids[: layout.context] for ids in sequences]
        self.calls: dict[str, list[BodyCall]] = {"prefill": [], "decode": []}
        decode_ids: list[list[int]] = []
        for index, ids in enumerate(self.sequences):
            if len(ids) > 1:
                self.calls["prefill"] += [
                    BodyCall(index, start, start, layout.chunk, min(layout.chunk, len(ids) - start))
                    for start in range(0, len(ids), layout.chunk)
                ]
            fills = log_uniform_fills(len(ids), decode_samples, rng)
            self.calls["decode"] += [BodyCall(index, row, fill, 1, 1) for row, fill in enumerate(fills)]
            decode_ids.append([ids[fill] for fill in fills])
        # each sample's input rows for the current layer: the padded prompt's rows, and one row per decode point
        padded = [ids + [PAD_TOKEN] * (-len(ids) % layout.chunk) for ids in self.sequences]
        self.rows = {"prefill": [embed(ids) for ids in padded], "decode": [embed(ids) for ids in decode_ids]}
        self._next_rows = self.rows
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def run_layer(self, sessions: dict[str, Any]) -> None:
        """Run the current layer's fp32 graphs (`prefill`, `decode` sessions of a one-layer layout) over every
        sample: records the layer's keys and values, which its samples' caches hold, and the next layer's rows."""
        lay = self.layout
        self._keys = [np.zeros((1, lay.kv_heads, len(ids), lay.head_dim), np.float32) for ids in self.sequences]
        self._values = [np.zeros_like(keys) for keys in self._keys]
        self._next_rows = {kind: [np.empty_like(rows) for rows in self.rows[kind]] for kind in self.rows}
        for kind in ("prefill", "decode"):  # decode samples read the keys and values every prefill wrote
            for call in self.calls[kind]:
                hidden, keys, values = sessions[kind].run(None, self._feed(kind, call))
                if kind == "prefill":  # the cache as the body updated it, in the slots of the chunk's real tokens
                    stop = call.start + call.real
                    self._keys[call.sequence][:, :, call.start : stop] = keys[:, :, call.start : stop]
                    self._values[call.sequence][:, :, call.start : stop] = values[:, :, call.start : stop]
                self._next_rows[kind][call.sequence][call.row : call.row + call.steps] = hidden[0]

    def reader(self, kind: str) -> FeedReader:
        """The current layer's samples for graph `kind`, built one at a time each time they are read."""
        calls = self.calls[kind]
        return FeedReader(lambda start, stop: (self._feed(kind, call) for call in calls[start:stop]), len(calls))

    def advance(self) -> None:
        """Move to the next layer: its input rows are the outputs `run_layer` recorded."""
        self.rows = self._next_rows

    def _feed(self, kind: str, call: BodyCall) -> Feed:
        """The body inputs of one sample as the pipeline feeds them: the step's tensors from og's `past_seq_len`
        (`call.start + call.steps − 1`), and a cache holding the layer's keys and values of the tokens before."""
        lay = self.layout
        feed = {
            "hidden": self.rows[kind][call.sequence][call.row : call.row + call.steps][None],
            **step_tensors(lay, self._cos, self._sin, call.start + call.steps - 1, call.steps),
        }
        for name, source in (("past_key.0", self._keys), ("past_value.0", self._values)):
            slots = np.zeros((1, lay.kv_heads, lay.context, lay.head_dim), np.float32)
            slots[:, :, : call.start] = source[call.sequence][:, :, : call.start]
            feed[name] = slots
        return feed


def log_uniform_fills(length: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` cache fills in [0, length − 1], denser near 0: fill + 1 is log-uniform in [1, length]."""
    return [min(int(math.exp(rng.uniform(0.0, math.log(length)))) - 1, length - 1) for _ in range(count)]


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over `count` samples made on demand: `samples(start, stop)`
    yields samples start … stop − 1. `set_range` lets onnxruntime's strided calibration read them a batch at a
    time (static_qdq.py)."""

    def __init__(self, samples: Callable[[int, int], Iterator[Feed]], count: int):
        self._samples, self._count = samples, count
        self._iterator = samples(0, count)

    @classmethod
    def of(cls, feeds: list[Feed]) -> FeedReader:
        return cls(lambda start, stop: iter(feeds[start:stop]), len(feeds))

    def __len__(self) -> int:
        return self._count

    def get_next(self) -> Feed | None:
        return next(self._iterator, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iterator = self._samples(start_index, end_index)

    def rewind(self) -> None:
        self._iterator = self._samples(0, self._count)
