"""Turn one execution provider's section of onnxruntime's docs/OperatorKernels.md into the operator contract
phiexport checks graphs against (phiexport/targets/<name>_ops.json).

    python scripts/operator_kernels.py OperatorKernels.md DmlExecutionProvider DirectML \\
        --commit <sha of microsoft/onnxruntime the file was read at> > phiexport/targets/directml_ops.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DOMAIN_ROW = re.compile(r"^\|\*\*Operator Domain:\*\* \*([\w.]+)\*")


def parse_section(text: str, provider: str) -> dict[str, dict[str, dict[str, list[str]]]]:
    """domain → op → {"versions": [...], "types": [...]} for the table headed `Operators implemented by <provider>`."""
    lines = text.splitlines()
    start = lines.index(f"## Operators implemented by {provider}")
    ops: dict[str, dict[str, dict[str, list[str]]]] = {}
    domain, op = "", ""
    for line in lines[start + 1 :]:
        if line.startswith("## ") or line.startswith("<a name="):
            break
        if match := DOMAIN_ROW.match(line):
            domain = match.group(1)
            continue
        cells = line.split("|")
        if len(cells) < 5 or not domain or cells[1].startswith("-") or cells[1].strip() == "Op Name":
            continue
        op = cells[1].strip() or op
        entry = ops.setdefault(domain, {}).setdefault(op, {"versions": [], "types": []})
        entry["versions"].append(cells[3].strip())
        entry["types"].append(cells[4].strip())
    return ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("markdown", type=Path)
    parser.add_argument("provider", help="section name, e.g. DmlExecutionProvider")
    parser.add_argument("name", help="provider name users know, e.g. DirectML")
    parser.add_argument("--repo", default="microsoft/onnxruntime")
    parser.add_argument("--commit", required=True)
    args = parser.parse_args()
    ops = parse_section(args.markdown.read_text(encoding="utf-8"), args.provider)
    source = {"repo": args.repo, "path": "docs/OperatorKernels.md", "commit": args.commit}
    json.dump({"provider": args.name, "source": source, "ops": ops}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
