#!/usr/bin/env bash
# The SmolLM2 report card of BENCHMARKS.md: the default CPU int4 (GPTQ) and NPU w4a16 packages and a CPU int8 one,
# side by side against the fp32 reference on 32 held-out conversations and 100 GSM8K problems.
#   bash benchmarks/eval_card.sh [WORKDIR]     # packages in WORKDIR/packages, the card in WORKDIR/report
set -euo pipefail
work=${1:-benchmarks/out/eval-card}
phiexport build -o "$work/packages/default" --force
phiexport build --precision int8 --target cpu -o "$work/packages/int8" --force
phiexport eval "$work/packages/default/cpu" "$work/packages/int8/cpu" "$work/packages/default/npu" \
  --limit 100 --sim-problems 2 -o "$work/report"
