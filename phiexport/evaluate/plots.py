"""The report card's figures (matplotlib, no display needed): accuracy bars per package, per-token KL histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ACCURACY_PNG, KL_HISTOGRAM_PNG = "accuracy.png", "kl_histogram.png"
_PNG_METADATA = {"Software": None}  # no matplotlib version stamp: the same numbers give the same file


def write_plots(report: dict[str, Any], token_kl: dict[str, np.ndarray], output: Path) -> list[str]:
    """Write both figures into `output`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 9, "figure.dpi": 110}):
        _accuracy_bars(plt, report, output / ACCURACY_PNG)
        _kl_histogram(plt, token_kl, output / KL_HISTOGRAM_PNG)
    return [ACCURACY_PNG, KL_HISTOGRAM_PNG]


def _accuracy_bars(plt: Any, report: dict[str, Any], path: Path) -> None:
    rows = report["packages"]
    labels = [row["label"] for row in rows]
    gates = report["gates"]
    max_ratio = gates.get("max_ppl_ratio")
    kl = [row["metrics"]["kl_mean"] for row in rows]
    top1 = [100 * row["metrics"]["top1_agreement"] for row in rows]
    ppl_increase = [100 * (row["metrics"]["ppl_ratio"] - 1) for row in rows]
    # (title, values, gate limit, percentages?)
    panels = [
        ("mean KL (nats)", kl, gates.get("max_kl"), False),
        ("top-1 agreement (%)", top1, _pct(gates.get("min_top1")), True),
        ("perplexity above reference (%)", ppl_increase, None if max_ratio is None else 100 * (max_ratio - 1), False),
    ]
    if report["data"]["problems"]:
        reference = 100 * report["reference"]["task"]["accuracy"]
        accuracy = [100 * row["task"]["accuracy"] if row["task"] else np.nan for row in rows]  # nan: not asked
        panels.append((f"GSM8K accuracy (%), reference {reference:.0f}", accuracy, None, True))
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6 + 0.12 * len(labels)))
    colors = [("tab:red" if not row["gates"]["passed"] else "tab:blue") for row in rows]
    for axis, (title, values, limit, percentages) in zip(axes, panels, strict=True):
        positions = np.arange(len(labels))
        axis.barh(positions, values, color=colors)
        axis.set_yticks(positions, labels)
        axis.invert_yaxis()
        axis.set_title(title)
        for position, value in zip(positions, values, strict=True):
            text, at = ("not asked", 0.0) if np.isnan(value) else (f"{value:.3g}", value)
            axis.annotate(text, (at, position), xytext=(3, 0), textcoords="offset points", va="center")
        if limit is not None:
            axis.axvline(limit, color="tab:red", linestyle="--", linewidth=1, label="gate")
            axis.legend(loc="lower right", fontsize=7)
        if percentages:
            axis.set_xlim(0, 118)
        else:
            axis.margins(x=0.25)
    for axis in axes[1:]:
        axis.tick_params(labelleft=False)
    figure.tight_layout()
    figure.savefig(path, metadata=_PNG_METADATA)
    plt.close(figure)


def _kl_histogram(plt: Any, token_kl: dict[str, np.ndarray], path: Path) -> None:
    """Share of scored tokens per KL bin, log-spaced: the tail (tokens the package gets badly wrong) shows."""
    floor = 1e-6
    highest = max(float(kl.max()) for kl in token_kl.values())
    bins = np.logspace(np.log10(floor), np.log10(max(highest, 10 * floor)), 50)
    figure, axis = plt.subplots(figsize=(6.4, 3.4))
    for label, kl in token_kl.items():
        weights = np.full(kl.size, 100.0 / kl.size)
        axis.hist(np.clip(kl, floor, None), bins=bins, weights=weights, histtype="step", linewidth=1.4, label=label)
    axis.set_xscale("log")
    axis.set_xlabel(f"per-token KL(reference ‖ package), nats (values below {floor:g} drawn at {floor:g})")
    axis.set_ylabel("% of scored tokens")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, metadata=_PNG_METADATA)
    plt.close(figure)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value
