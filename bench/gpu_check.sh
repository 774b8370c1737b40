#!/usr/bin/env bash
# GPU figures for the real-model setups (issue 6) in under 8 minutes on one GPU: sampler steps/s
# (GD-size UNet, 256 px, batch 1 and 8), LoRA it/s, batched LoRA of G = 1 and 4 images, FAISS flat search (1.7M x 512 fp16, 100
# queries, k=50), ViT-B-32 images/s; all random weights. `--dry-run`: tiny sizes on the CPU.
# Other flags go to bench/gpu_check.py (--device, --precision, --only). PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
# The 8-minute budget is enforced, so a hung device cannot hold a node.
exec timeout --signal=INT 480 "$PYTHON" bench/gpu_check.py "$@"
