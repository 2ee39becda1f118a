"""Whole `phiexport build` runs on full-size checkpoints: wall time and peak RSS of each stage.

    .venv/bin/python benchmarks/full_size_checkpoint.py phi-4-mini-instruct /data/phi4-mini-shape
    .venv/bin/python benchmarks/scale_build.py /data/phi4-mini-shape --scratch /data/runs
    .venv/bin/python benchmarks/scale_build.py /data/phi4-mini-shape --target npu --parts auto --scratch /data/runs

The build runs in its own process; its RSS (anonymous + file-mapped, the process and its children) and its PSS are
sampled every 0.2 s and each sample is assigned to the stage running at that moment (the stage times of `--json`, in
order). RSS counts a file page once per mapping of it, PSS once (divided among the processes sharing it): they part
where one process maps a file twice, as the NPU build's CPU-EP check does with a part's prefill and decode sessions
reading one weight file.
The random checkpoints are not language models, so the accuracy figures only show that verification ran; the check
is cut to a few sequences and one short greedy prompt (a random model's int4 package agrees with it on almost no
token, the worst case for the speculative greedy check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RECIPE = """version: 1
name: scale-{name}
source:
  model: {model}
targets: [{target}]
evaluation:
  sequences: {sequences}
  greedy_prompts: 1
  greedy_tokens: 4
npu:
  parts: {parts}
"""


def resident_kib(pid: int) -> tuple[int, int]:
    """(RssAnon + RssFile, Pss) of `pid` and its descendants."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                rss += int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return rss, pss
    for child in children:
        child_rss, child_pss = resident_kib(int(child))
        rss, pss = rss + child_rss, pss + child_pss
    return rss, pss


def sampled_build(recipe: Path, output: Path) -> tuple[dict, float, list[tuple[float, int, int]]]:
    """(the build's --json result, wall s, [(seconds since start, RSS KiB, PSS KiB)])."""
    command = [sys.executable, "-m", "phiexport", "build", "-r", str(recipe), "-o", str(output), "--json"]
    samples: list[tuple[float, int, int]] = []
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while process.poll() is None:
            samples.append((time.perf_counter() - start, *resident_kib(process.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"build of {recipe} failed: {stderr.strip().splitlines()[-1:]}")
    return json.loads(stdout), time.perf_counter() - start, samples


def stage_peaks(
    timings: dict[str, float], samples: list[tuple[float, int, int]], wall: float
) -> dict[str, tuple[float, float]]:
    """(peak RSS, peak PSS) GiB within each stage's window; the process's start-up (before the first stage) goes to
    the first."""
    peaks: dict[str, tuple[float, float]] = {}
    edge = wall - sum(timings.values())  # interpreter start-up and argument parsing
    for index, (stage, seconds) in enumerate(timings.items()):
        low, edge = (0.0 if index == 0 else edge), edge + seconds
        inside = [(rss, pss) for t, rss, pss in samples if low <= t < edge]
        peaks[stage] = (
            max((rss for rss, _ in inside), default=0) / 2**20,
            max((pss for _, pss in inside), default=0) / 2**20,
        )
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--sequences", type=int, default=4, help="held-out sequences in the build's check")
    parser.add_argument("--scratch", type=Path, help="where recipes and packages go (default: a temporary folder)")
    parser.add_argument("--target", default="cpu", choices=("cpu", "dml", "npu"), help="the package to build")
    parser.add_argument("--parts", default="auto", help="npu: body parts, N or auto")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for checkpoint in args.checkpoints:
            recipe = Path(scratch) / f"{checkpoint.name}.yaml"
            name = checkpoint.name.lower().replace("_", "-")
            recipe.write_text(
                RECIPE.format(
                    name=name,
                    model=checkpoint.absolute(),
                    sequences=args.sequences,
                    target=args.target,
                    parts=args.parts,
                )
            )
            result, wall, samples = sampled_build(recipe, Path(scratch) / checkpoint.name)
            size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
            package = sum(p.stat().st_size for p in Path(result["packages"][args.target]).rglob("*") if p.is_file())
            peaks = stage_peaks(result["timings_s"], samples, wall)
            rows.append((checkpoint.name, size, package, wall, result["timings_s"], peaks))
    stages = list(rows[0][4])
    header = " | ".join(f"{stage} s / RSS / PSS GiB" for stage in stages)
    print(f"| checkpoint | on disk GB | package GB | wall s | {header} | peak RSS / PSS GiB | RSS ÷ checkpoint |")
    print("|---|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|")
    for name, size, package, wall, timings, peaks in rows:
        cells = " | ".join(
            f"{timings.get(s, 0):.0f} / {peaks.get(s, (0, 0))[0]:.2f} / {peaks.get(s, (0, 0))[1]:.2f}" for s in stages
        )
        rss, pss = (max(peak[i] for peak in peaks.values()) for i in (0, 1))
        print(
            f"| {name} | {size / 1e9:.2f} | {package / 1e9:.2f} | {wall:.0f} | {cells} | {rss:.2f} / {pss:.2f} | "
            f"{rss * 2**30 / size:.2f} |"
        )


if __name__ == "__main__":
    main()
