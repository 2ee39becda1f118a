"""Regression gates: limits on a package's measured accuracy. A package over any limit is not published as good.

>>> gates = GatesConfig(max_kl=0.05, max_ppl_ratio=None)
>>> [str(failure) for failure in check_gates({"kl_mean": 0.091}, gates, "cpu-int4")]
['gate failed: kl_mean 0.091 > 0.05 (cpu-int4)']

A value that is not a number (a package whose logits hold NaN) fails every gate on it:

>>> [str(failure) for failure in check_gates({"kl_mean": float("nan")}, gates, "cpu-int4")]
['gate failed: kl_mean nan > 0.05 (cpu-int4)']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from phiexport.errors import UsageError
from phiexport.recipe import GatesConfig

# gate → (metric it limits, True when the limit is a maximum)
GATE_METRICS = {
    "max_kl": ("kl_mean", True),
    "min_top1": ("top1_agreement", False),
    "max_ppl_ratio": ("ppl_ratio", True),
    "min_answer_agreement": ("answer_agreement", False),
}


@dataclass(frozen=True)
class GateFailure:
    package: str
    metric: str
    value: float
    limit: float
    is_maximum: bool

    def __str__(self) -> str:
        relation = ">" if self.is_maximum else "<"
        return f"gate failed: {self.metric} {self.value:.3g} {relation} {self.limit:g} ({self.package})"


def check_gates_measurable(gates: GatesConfig, measured: Iterable[str]) -> None:
    """Refuse, before any work, a gate on a metric the check about to run does not measure."""
    measured = set(measured)
    for gate, limit in gates.model_dump().items():
        metric = GATE_METRICS[gate][0]
        if limit is not None and metric not in measured:
            raise UsageError(
                f"gate {gate} needs {metric}, which this check does not measure",
                f"remove gates.{gate}; this check measures {', '.join(sorted(measured))}",
            )


def split_gates(gates: GatesConfig, measured: Iterable[str]) -> tuple[GatesConfig, list[str]]:
    """The gates a check can apply, and the names of those it leaves to a check that measures their metric (the
    build leaves `min_answer_agreement` to `phiexport eval`, which answers GSM8K problems)."""
    measured = set(measured)
    left = [
        gate
        for gate, limit in gates.model_dump().items()
        if limit is not None and GATE_METRICS[gate][0] not in measured
    ]
    return gates.model_copy(update=dict.fromkeys(left)), left


def check_gates(metrics: dict[str, Any], gates: GatesConfig, package: str) -> list[GateFailure]:
    """Every limit of `gates` that `metrics` crosses; a gate on a metric that was not measured is a usage error."""
    check_gates_measurable(gates, metrics)
    failures = []
    for gate, limit in gates.model_dump().items():
        if limit is None:
            continue
        metric, is_maximum = GATE_METRICS[gate]
        value = float(metrics[metric])
        if math.isnan(value) or ((value > limit) if is_maximum else (value < limit)):
            failures.append(GateFailure(package, metric, value, limit, is_maximum))
    return failures


def gates_report(gates: GatesConfig, failures: list[GateFailure]) -> dict[str, Any]:
    """The `gates` entry of report.json."""
    return {
        "limits": {gate: limit for gate, limit in gates.model_dump().items() if limit is not None},
        "passed": not failures,
        "failed": [str(failure) for failure in failures],
    }
