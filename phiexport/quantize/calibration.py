"""Calibration inputs for the static NPU body graphs, recorded from the fp32 pipeline on GSM8K text.

Prefill samples are every chunk of each conversation; decode samples sit at cache fills drawn log-uniformly, so
short contexts are covered as well as long ones (uniform fills left decode at fill 0 badly encoded: docs/npu.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from phiexport.runtime.static_pipeline import StaticPipeline

Feed = dict[str, np.ndarray]


def record_body_feeds(
    pipeline: StaticPipeline, sequences: list[list[int]], *, decode_samples: int, seed: int
) -> dict[str, list[Feed]]:
    """The exact body inputs the fp32 pipeline sees, per graph (`prefill`, `decode`)."""
    feeds: dict[str, list[Feed]] = {"prefill": [], "decode": []}
    rng = np.random.default_rng(seed)

    def keep(graph: str, feed: Feed) -> None:
        feeds[graph].append({name: array.copy() for name, array in feed.items()})

    for ids in sequences:
        ids = ids[: pipeline.layout.context]
        if len(ids) > 1:
            pipeline.reset()
            pipeline.on_body_step = keep
            pipeline.hidden_states(ids)
        for fill in log_uniform_fills(len(ids), decode_samples, rng):
            pipeline.reset()
            pipeline.on_body_step = None
            if fill:
                pipeline.hidden_states(ids[:fill])
            pipeline.on_body_step = keep
            pipeline.hidden_states(ids[fill : fill + 1])
    pipeline.on_body_step = None
    pipeline.reset()
    return feeds


def log_uniform_fills(length: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` cache fills in [0, length − 1], denser near 0: fill + 1 is log-uniform in [1, length]."""
    return [min(int(math.exp(rng.uniform(0.0, math.log(length)))) - 1, length - 1) for _ in range(count)]


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over recorded feeds."""

    def __init__(self, feeds: list[Feed]):
        self._feeds = feeds
        self._iterator: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)
