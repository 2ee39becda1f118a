"""`phiexport inspect`: what a package holds and how it was made, from its manifest and graphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from phiexport.cli.common import DebugFlag, JsonFlag, reported_errors, stdout_console


def inspect(
    package: Annotated[Path, typer.Argument(help="A package directory, e.g. packages/<recipe>/cpu.")],
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Show a package's source, weights, op types per graph, file sizes and measured accuracy."""
    with reported_errors(as_json, debug):
        from phiexport.package.inspect import summarize_package

        summary = summarize_package(package)
        if as_json:
            print(json.dumps(summary, indent=2))
            return
        console = stdout_console()
        console.print(
            f"[bold]{summary['package']}[/bold]  target {summary['target']['name']}, recipe "
            f"{summary['recipe']}, phiexport {summary['phiexport']}"
        )
        source = summary["source"]
        console.print(f"source: {source['kind']} {source['origin']} ({source['architecture']})")
        weights = summary["weights"]
        console.print("weights: " + ", ".join(f"{k} {v}" for k, v in weights.items() if not isinstance(v, dict)))
        for soc, context in weights.get("contexts", {}).items():
            console.print(
                f"  {soc}: soc_model {context['soc_model']}, v{context['htp_arch']}, shared context binary "
                f"{context['shared_bytes']:,} B (two separate: {context['separate_bytes']:,} B)"
            )
        for graph, ops in summary["graphs"].items():
            console.print(f"{graph}: " + ", ".join(f"{op} {count}" for op, count in ops.items()))
        for name, size in summary["files"].items():
            console.print(f"  {size:>14,d}  {name}")
        console.print(f"  {summary['total_bytes']:>14,d}  total")
        if summary["metrics"]:
            m = summary["metrics"]
            console.print(
                f"accuracy: KL mean {m['kl_mean']:.4g}, p99 {m['kl_p99']:.4g}, top-1 "
                f"{m['top1_agreement']:.1%}, ppl {m['ppl_reference']:.3f} → {m['ppl_package']:.3f}"
            )
